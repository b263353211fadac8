"""Cost of walkers sharing an OPES bias, as a ratio of sharing intervals within one run.

Usage: python bench/walker_sharing.py [--steps 300000] [--repeats 2]

One OPES walker on the three-hole potential along s = (x, y) (an identity "encoder"),
pace 100, with a second walker's 3000 kernels already in the shared folder. It runs
``--steps`` steps sharing at every deposition (``share_interval = pace``) and at the
default interval (10 × pace), in alternation, ``--repeats`` times each. Prints one JSON
line per run (``share_interval``, ``seconds``) and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from latf_openmm import build_featurizer
from latf_openmm.bias import OPES, LearnedCV
from latf_openmm.models import LatentModel
from latf_openmm.models.network import LatentNetwork
from latf_openmm.simulation import simulate
from latf_openmm.specs import MDOptions
from latf_openmm.systems import load_system

PACE = 100


def identity_cv() -> tuple:
    """Return the three-hole system and a learned CV that is its (x, y)."""
    molsys = load_system("threehole")
    featurizer = build_featurizer(molsys.features, molsys.topology)
    network = LatentNetwork(featurizer.n_features, 2, 2, encoder_layers=0)
    with torch.no_grad():
        network.encoder.weight.copy_(torch.eye(2))
        network.encoder.bias.zero_()
    model = LatentModel(network, {"feature_names": featurizer.names, "data_digest": "identity"})
    return molsys, LearnedCV(model, featurizer)


def walker(cv: LearnedCV, temperature: float, shared: Path, index: int, share_interval: int) -> OPES:
    """Return an OPES walker along s0 sharing through ``shared``."""
    return OPES(cv, temperature, barrier=5.0, components=[0], lower=[-2.0], upper=[2.0], sigma=[0.15], pace=PACE,
                walkers_dir=shared, walker=index, share_interval=share_interval)  # fmt: skip


def main() -> None:
    """Run the comparison and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    molsys, cv = identity_cv()
    temperature = molsys.to_kelvin(1.0)
    md = MDOptions(frame_interval=PACE)
    with tempfile.TemporaryDirectory() as scratch:
        shared = Path(scratch) / "shared"
        # walker 1's 3000 kernels, already in the shared folder
        simulate(molsys, temperature, 3000 * PACE, Path(scratch) / "other", seed=2, md=md, progress=False,
                 bias=walker(cv, temperature, shared, 1, PACE))  # fmt: skip
        seconds: dict[int, list[float]] = {PACE: [], 10 * PACE: []}
        for repeat in range(args.repeats):
            for interval in seconds:
                start = time.perf_counter()
                simulate(molsys, temperature, args.steps, Path(scratch) / f"w{repeat}_{interval}", seed=1, md=md,
                         progress=False, bias=walker(cv, temperature, shared, 0, interval))  # fmt: skip
                seconds[interval].append(time.perf_counter() - start)
                (shared / "walker_0.npz").unlink()
                print(json.dumps({"share_interval": interval, "seconds": round(seconds[interval][-1], 2)}), flush=True)
    every, default = (float(np.median(v)) for v in seconds.values())
    print(json.dumps({"ratio_every_deposition_to_default": round(every / default, 2)}))


if __name__ == "__main__":
    main()
