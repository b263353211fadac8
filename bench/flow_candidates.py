"""What costs the published LaTF flow its accuracy on three-hole: issue 13's candidates, each measured.

Usage: python bench/flow_candidates.py DATA.npz [--seeds 0 1 2] [--threads 1]

One data set (bench/threehole_data.py), the paper settings of bench/train_threehole.py, and
per training seed these candidates, each compared as bench/generation.py compares (encoded
MD against as many generated samples at the data's temperature):

- ``published``: the joint stage capped at 5 epochs, no polishing (the published model's
  training, shortened);
- ``polish 3000`` / ``polish 9000`` (the default) / ``polish 27000``: then the flow alone
  fitted for that many steps to the frozen encoder's latent means (the polishing budget);
- ``polish noisy``: 9000 steps on the noisy latent μ + σε that the joint stage fits, instead
  of the means the samples are compared with (what the polishing fits);
- ``joint 50``: the joint stage capped at 50 epochs (the package's default) instead of 5,
  then the default polishing (the capped joint stage);
- ``flow 20x32``: twice the coupling layers and twice their width, default polishing (the
  flow's capacity);
- ``spline``: zuko's rational-quadratic neural spline flow (NSF: 4 autoregressive transforms
  of 8 bins, 2 × 64 hidden) onto the same tilted Gaussian, fitted like the polishing (9000
  Adam steps of 512, cosine-decayed) to the ``published`` model's latent means (a better
  flow); skipped, saying so, if zuko is not installed (``pip install zuko``);
- ``grid``: the latent free energy (``prior = 'grid'``), trained anew (no joint stage).

Prints one JSON line per candidate and seed, then a Markdown table: KL (100 × 100), JS
(50 × 50), the largest state-population error, the seconds the candidate added.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from train_threehole import SETTINGS, load_data  # bench/ is the script's folder

from latf_openmm.generation import js_divergence_2d, kl_divergence_2d
from latf_openmm.models import LaTF, TrainingConfig, TrainingData, estimator, tilted

try:
    import zuko
except ImportError:  # the spline candidate is optional
    zuko = None


def figures(model, encoded: np.ndarray, generated: np.ndarray) -> dict:
    """KL, JS and the largest state-population error of ``generated`` against the encoded MD."""
    error = np.abs(model.latent_populations(generated) - model.latent_populations(encoded)).max()
    return {
        "kl": round(kl_divergence_2d(encoded, generated), 4),
        "js": round(js_divergence_2d(encoded, generated, bins=50), 4),
        "population_error": round(float(error), 4),
    }


def spline_samples(latent: np.ndarray, n: int, seed: int, steps: int = 9000) -> np.ndarray:
    """Fit a zuko NSF onto the tilted Gaussian (T′ = 1) to ``latent`` (n, 2) by maximum likelihood; its samples."""
    torch.manual_seed(seed)
    tau = SETTINGS["tau"]
    mean, scale = latent.mean(0), latent.std(0)
    data = torch.from_numpy((latent - mean) / scale).float()
    flow = zuko.flows.NSF(features=2, transforms=4, bins=8, hidden_features=(64, 64))
    optimizer = torch.optim.Adam(flow.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = data[torch.randint(len(data), (512,), generator=generator)]
        z, log_det = flow().transform.call_and_ladj(batch)
        loss = -(tilted.log_prob(z, tau, 1.0) + log_det).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        z = tilted.sample(n, 2, tau, 1.0, torch.Generator().manual_seed(seed + 1)).float()
        x = flow().transform.inv(z).double().numpy()
    return x * scale + mean


def candidates(data: TrainingData, traj: np.ndarray, kt: float, seed: int) -> list[dict]:
    """Every candidate for one training seed: its figures and seconds."""
    frames = traj.reshape(-1, traj.shape[-1])
    common = {**SETTINGS, "seed": seed, "generation_tolerance": None}
    rows = []

    def timed(name: str, make) -> None:
        start = time.perf_counter()
        model = make()
        seconds = round(time.perf_counter() - start, 1)
        encoded = model.transform(frames)
        row = {"seed": seed, "candidate": name, "n_states": model.n_states, "seconds": seconds}
        rows.append(row | figures(model, encoded, model.sample(kt, len(frames), seed=seed + 1)))
        print(json.dumps(rows[-1]), flush=True)
        return model

    published = timed("published", lambda: LaTF(**common, polish_steps=0).fit(data))
    for steps in (3000, 9000, 27000):
        config = TrainingConfig(**common, polish_steps=steps)
        timed(f"polish {steps}", lambda config=config: estimator(config).refit_prior(published, data))
    noisy = TrainingConfig(**common, polish_noise=1.0)
    timed("polish noisy", lambda: estimator(noisy).refit_prior(published, data))
    timed("joint 50", lambda: LaTF(**{**common, "joint_max_epochs": 50}).fit(data))
    timed("flow 20x32", lambda: LaTF(**{**common, "flow_layers": 20, "flow_hidden": 32}).fit(data))
    if zuko is None:
        print(json.dumps({"seed": seed, "candidate": "spline", "skipped": "zuko is not installed"}), flush=True)
    else:
        encoded = published.transform(frames)
        start = time.perf_counter()
        generated = spline_samples(encoded.astype(np.float64), len(frames), seed)
        row = {"seed": seed, "candidate": "spline", "n_states": published.n_states}
        row |= {"seconds": round(time.perf_counter() - start, 1)} | figures(published, encoded, generated)
        rows.append(row)
        print(json.dumps(row), flush=True)
    timed("grid", lambda: LaTF(**{**common, "prior": "grid"}).fit(data))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    traj, data, kt = load_data(args.data)
    rows = [row for seed in args.seeds for row in candidates(data, traj, kt, seed)]
    print("\n| candidate | training seed | states | s | KL | JS | largest population error |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['candidate']} | {row['seed']} | {row['n_states']} | {row['seconds']} | {row['kl']:.3f} | "
            f"{row['js']:.4f} | {row['population_error']:.4f} |"
        )


if __name__ == "__main__":
    main()
