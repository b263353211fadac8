"""Generation at unseen temperatures: LJ7 trained at k_BT/ε = 0.2 and 0.5, compared with MD at 0.2–0.7.

Usage: python bench/generation.py DATA.npz [DATA.npz ...] [--lags 1 2] [--seeds 0 1 2]
       [--priors flow grid] [--threads 1]

DATA.npz comes from bench/lj7_baoab_data.py (an integrator independent of the package:
10 trajectories × 10 000 frames per temperature, a frame every 0.5 τ). For every data
set, lag, training seed and prior, LaTF is trained on the 0.2 and 0.5 trajectories only,
with the settings of bench/lj7_temperatures.py (7 coordination numbers, 100 k-means labels
on central moments, linear encoder, β 1e-3, lr 2e-3 × 0.98; flow: 20 layers, τ = 2), and
compared at every temperature with the encoded MD there (as many generated samples):
KL (100 × 100 histogram), JS, the largest state-population error, and the 1-D
free-energy-profile RMSE (k_BT, worse of the two CVs). The MBAR baseline is the same
states' populations predicted at each temperature from the two training temperatures'
frames and potential energies alone (pymbar), with the Kish effective sample size behind
it. The generation check is off here, so that a failing flow still shows its figures.
Prints one JSON line per case and temperature, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from lj7_temperatures import SETTINGS as LJ7_SETTINGS  # bench/ is the script's folder

from latf_openmm.generation import free_energy_profile_rmse, js_divergence_2d, kl_divergence_2d
from latf_openmm.models import LaTF, TrainingData
from latf_openmm.reweighting import effective_sample_size, mbar_weights
from latf_openmm.units import reduced_to_kelvin

TRAIN = (0.2, 0.5)
SETTINGS = {**LJ7_SETTINGS, "generation_tolerance": None}


def mbar_populations(model, features, energies, temperatures, target):
    """The model's state populations at ``target`` by MBAR over the training temperatures' frames."""
    train = [temperatures.index(t) for t in TRAIN]
    frames = np.concatenate([features[k].reshape(-1, features.shape[-1]) for k in train])
    per_run = [energies[k].ravel() for k in train]
    weights = np.concatenate(
        mbar_weights(
            per_run,
            [reduced_to_kelvin(t) for t in TRAIN],
            [None, None],
            np.zeros((0, len(frames))),
            reduced_to_kelvin(target),
        )
    )
    return model.latent_populations(model.transform(frames), weights), effective_sample_size(weights)


def run_case(path: Path, lag: int, seed: int, prior: str) -> list[dict]:
    with np.load(path) as raw:
        features, energies = raw["features"], raw["potential_energy"]
        temperatures = [round(float(t), 6) for t in raw["temperatures"]]
    train = [temperatures.index(t) for t in TRAIN]
    trajectories = [traj for k in train for traj in features[k]]
    data = TrainingData(trajectories, temperatures=np.repeat(TRAIN, features.shape[1]))
    start = time.perf_counter()
    model = LaTF(**SETTINGS, lag=lag, seed=seed, prior=prior).fit(data)
    train_s = time.perf_counter() - start
    rows = []
    for k, t in enumerate(temperatures):
        encoded = model.transform(features[k].reshape(-1, features.shape[-1]))
        generated = model.sample(t, len(encoded), seed=seed + 1)
        md = model.latent_populations(encoded)
        baseline, ess = mbar_populations(model, features, energies, temperatures, t)
        rows.append(
            {
                "data": path.stem,
                "lag": lag,
                "seed": seed,
                "prior": prior,
                "temperature": t,
                "n_states": model.n_states,
                "kl": round(kl_divergence_2d(encoded, generated), 4),
                "js": round(js_divergence_2d(encoded, generated), 4),
                "population_error": round(float(np.abs(model.latent_populations(generated) - md).max()), 4),
                "fe_rmse": round(
                    max(free_energy_profile_rmse(encoded[:, i], generated[:, i]) for i in range(encoded.shape[1])), 3
                ),
                "mbar_population_error": round(float(np.abs(baseline - md).max()), 4),
                "mbar_ess": round(ess),
                "train_s": round(train_s, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--lags", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--priors", nargs="+", default=["flow", "grid"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [
        row
        for path in args.data
        for lag in args.lags
        for seed in args.seeds
        for prior in args.priors
        for row in run_case(path, lag, seed, prior)
    ]
    temperatures = sorted({r["temperature"] for r in rows})
    print(
        "\n| data | lag | seed | prior | states | train s | JS at "
        + " / ".join(f"{t:g}" for t in temperatures)
        + " | largest population error | MBAR's |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key in dict.fromkeys((r["data"], r["lag"], r["seed"], r["prior"]) for r in rows):
        case = [r for r in rows if (r["data"], r["lag"], r["seed"], r["prior"]) == key]
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {case[0]['n_states']} | {case[0]['train_s']} | "
            + " / ".join(f"{r['js']:.3f}" for r in case)
            + f" | {max(r['population_error'] for r in case):.3f}"
            + f" | {max(r['mbar_population_error'] for r in case):.3f} |"
        )


if __name__ == "__main__":
    main()
