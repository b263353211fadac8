"""Two-stage LaTF training on three-hole data, timed on one core.

Usage: python bench/train_threehole.py DATA.npz [--threads 1] [--device cpu|cuda|auto] [--dump OUT.npz]

DATA.npz holds ``traj`` (n_traj, n_frames, 2) and ``labels`` (n_traj, n_frames), e.g.
from bench/threehole_data.py; its temperature is ``kt`` if present, else 0.75. Settings
as in the LaTF paper: lag 30 frames, β = 1e-4, τ = 3, encoder 2 × 16, flow 10 layers of
16 units, learning rate 1e-3 × 0.99 per epoch, 10 refinements. To fit one core in about a
minute, SPIB rounds stop at 12 epochs (more refinement rounds instead) and the joint stage at
5, after which the flow is polished alone (TrainingConfig.polish_*: 9000 steps of 512 on the
encoded frames, about 35 s). Prints one JSON line:
``train_s``, ``n_states``, ``populations`` (final states on the data), ``kl`` (encoded MD
vs as many generated samples at the data's temperature, 100 × 100 histogram), ``js`` (on a
50 × 50 one), ``threads``, ``device``. ``--prior grid`` fits the latent free energy instead of the flow
(no joint stage; the flow settings are then unused).
``--dump`` also saves ``md_latent``, ``generated`` and ``states``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from latf_openmm.files import write_npz
from latf_openmm.generation import js_divergence_2d, kl_divergence_2d
from latf_openmm.models import LaTF, TrainingData

SETTINGS = dict(  # the LaTF paper's three-hole settings; bench/generation.py uses them too
    lag=30,
    beta=1e-4,
    tau=3.0,
    encoder_hidden=16,
    flow_layers=10,
    flow_hidden=16,
    learning_rate=1e-3,
    lr_decay=0.99,
    refinements=10,
    max_epochs=12,
    joint_max_epochs=5,
)


def data_kt(raw) -> float:
    """The k_BT of an opened bench/threehole_data.py file (0.75 in files older than its ``kt``)."""
    return float(raw["kt"]) if "kt" in raw.files else 0.75


def load_data(path) -> tuple[np.ndarray, TrainingData, float]:
    """The trajectories (n_traj, n_frames, 2) of a bench/threehole_data.py file, as TrainingData, and its k_BT."""
    with np.load(path) as raw:
        traj, labels, kt = raw["traj"], raw["labels"], data_kt(raw)
    return traj, TrainingData(list(traj), labels=list(labels), temperatures=np.full(len(traj), kt)), kt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dump")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior", choices=["flow", "grid"], default="flow")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda or auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    traj, data, kt = load_data(args.data)
    estimator = LaTF(**SETTINGS, seed=args.seed, prior=args.prior, generation_tolerance=None, device=args.device)
    start = time.perf_counter()
    model = estimator.fit(data)
    train_s = time.perf_counter() - start
    frames = traj.reshape(-1, traj.shape[-1])
    md_latent = model.transform(frames)
    generated = model.sample(kt, len(frames), seed=args.seed + 1)
    states = model.latent_state(md_latent)
    print(
        json.dumps(
            {
                "data": args.data,
                "seed": args.seed,
                "prior": args.prior,
                "kt": kt,
                "train_s": round(train_s, 2),
                "n_states": model.n_states,
                "populations": np.round(model.latent_populations(md_latent), 4).tolist(),
                "generated_populations": np.round(model.state_populations(kt, len(frames), args.seed + 1), 4).tolist(),
                "kl": round(kl_divergence_2d(md_latent, generated), 4),
                "js": round(js_divergence_2d(md_latent, generated, bins=50), 4),
                "threads": torch.get_num_threads(),
                "device": args.device,
            }
        )
    )
    if args.dump:
        write_npz(args.dump, md_latent=md_latent, generated=generated, states=states)


if __name__ == "__main__":
    main()
