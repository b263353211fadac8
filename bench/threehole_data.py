"""Make three-hole training data for bench/train_threehole.py.

Usage: python bench/threehole_data.py OUT.npz [--trajectories 10] [--frames 20000] [--kt 0.75]

Runs independent `latf simulate` trajectories (frames every 0.03 time units) and writes
``traj`` (n_traj, n_frames, 2) and grid ``labels`` (n_traj, n_frames; 10 × 10 grid,
as in the LaTF paper's initial labels).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from latf_openmm.files import write_npz
from latf_openmm.models import initial_labels
from latf_openmm.simulation import seed_for, simulate
from latf_openmm.systems import load_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--trajectories", type=int, default=10)
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--kt", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    molsys = load_system("threehole")
    trajs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.trajectories):
            run = simulate(
                molsys,
                molsys.to_kelvin(args.kt),
                args.frames * molsys.frame_interval,
                f"{tmp}/{i}",
                seed=seed_for(args.seed, i),
                progress=False,
            )
            trajs.append(run.load_timeseries()["features"])
    traj = np.stack(trajs)
    labels = initial_labels(traj.reshape(-1, 2), 100).reshape(traj.shape[:2])
    write_npz(args.out, traj=traj, labels=labels, kt=np.array(args.kt))
    print(f"wrote {args.out}: traj {traj.shape}, {labels.max() + 1} initial states")


if __name__ == "__main__":
    main()
