"""Alanine dipeptide (OBC2, 300 K): 2-D well-tempered metadynamics along a learned CV vs unbiased MD.

Usage: python bench/ala2_metad.py [--ns 0.5] [--out DIR] [--threads 1]

1. Short unbiased data: 250 ps at 800 K (frames every 0.2 ps), where φ flips between its basins.
2. SPIB on sin/cos of φ and ψ (encoder 4 → 16 ReLU → 2-D), initial labels from a 4 × 4
   grid over (φ, ψ); the CV runs inside OpenMM as native expressions.
3. ``--ns`` of metadynamics along both CV components at 300 K (hills 2 kJ/mol every
   0.5 ps, σ = 1/15 of the training data's CV range, γ = 10) and of unbiased MD from the
   same start.
4. Crossings between the φ < 0 basin (C7eq/C5: −170° < φ < −50°) and the φ > 0 basin
   (C7ax/αL: 30° < φ < 100°), counted with hysteresis: a crossing is a visit to one basin
   after the other, so recrossings at the barrier top do not count.

5. The reweighted φ free-energy profile of the metadynamics run (frames weighted by
   exp((V − c(t))/k_BT)) against the unbiased run's, inside the basin where the unbiased
   run spent most of its time (10° bins with ≥ 30 unbiased frames; profiles aligned by
   their mean difference): RMSE in kJ/mol.

Prints one JSON line: ``crossings_biased``, ``crossings_unbiased``, ``ns``,
``phi_profile_rmse_kJ``, timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import latf_openmm  # noqa: F401  (torch before openmm)
from latf_openmm import build_featurizer
from latf_openmm.bias import LearnedCV, Metadynamics
from latf_openmm.models import SPIB, TrainingData
from latf_openmm.reweighting import run_weights
from latf_openmm.simulation import simulate
from latf_openmm.specs import MDOptions
from latf_openmm.systems import load_system
from latf_openmm.units import KB_KJ_PER_MOL_K

DIHEDRALS = [{"kind": "dihedrals", "angles": ["phi", "psi"]}]
FRAME_INTERVAL = 250  # 0.5 ps


def crossings(phi_degrees: np.ndarray) -> int:
    """Transitions between φ < 0 (−170°…−50°) and φ > 0 (30°…100°), with hysteresis."""
    basin = np.where(
        (phi_degrees > -170) & (phi_degrees < -50), 0, np.where((phi_degrees > 30) & (phi_degrees < 100), 1, -1)
    )
    visited = basin[basin >= 0]
    return int(np.count_nonzero(np.diff(visited)))


def well_profile_rmse(phi_biased, weights, phi_unbiased) -> float:
    """RMSE (kJ/mol) of −k_BT ln p(φ) between reweighted biased and unbiased frames, in the unbiased
    run's main basin (φ < 0 or φ > 0)."""
    edges = np.arange(-180, 181, 10)
    counts = np.histogram(phi_unbiased, edges)[0]
    biased = np.histogram(phi_biased, edges, weights=weights)[0]
    positive = edges[:-1] >= 0
    main_basin = positive if counts[positive].sum() > counts[~positive].sum() else ~positive
    keep = main_basin & (counts >= 30) & (biased > 0)
    kt = KB_KJ_PER_MOL_K * 300.0
    difference = -kt * np.log(biased[keep] / biased[keep].sum()) + kt * np.log(counts[keep] / counts[keep].sum())
    return float(np.sqrt(np.mean((difference - difference.mean()) ** 2)))


def phi_of(run) -> np.ndarray:
    features = run.load_timeseries()["features"]
    return np.degrees(np.arctan2(features[:, 0], features[:, 2]))  # sin φ, sin ψ, cos φ, cos ψ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=float, default=0.5)
    parser.add_argument("--out", help="output folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="ala2_metad_"))
    molsys = dataclasses.replace(load_system("ala2_obc2"), features=DIHEDRALS)
    md = MDOptions(frame_interval=FRAME_INTERVAL, platform="CPU", threads=args.threads)
    timings = {}

    start = time.perf_counter()
    hot = simulate(molsys, 800.0, 125_000, out / "hot", seed=args.seed, md=dataclasses.replace(md, frame_interval=100),
                   progress=False)  # fmt: skip
    features = hot.load_timeseries()["features"].astype(np.float64)
    phi, psi = np.arctan2(features[:, 0], features[:, 2]), np.arctan2(features[:, 1], features[:, 3])
    labels = np.digitize(phi, np.linspace(-np.pi, np.pi, 5)[1:-1]) * 4 + np.digitize(
        psi, np.linspace(-np.pi, np.pi, 5)[1:-1]
    )
    timings["data_s"] = time.perf_counter() - start

    start = time.perf_counter()
    model = SPIB(lag=5, encoder_layers=1, encoder_hidden=16, beta=1e-3, refinements=4, seed=args.seed).fit(
        TrainingData([features], labels=[labels])
    )
    timings["train_s"] = time.perf_counter() - start
    cv = LearnedCV(model, build_featurizer(DIHEDRALS, molsys.topology), backend="native")
    low, high = (np.array(v) for v in model.info["latent_range"])
    margin = 0.15 * (high - low)
    bias = Metadynamics(
        cv, 300.0, height=2.0, bias_factor=10.0, components=[0, 1], lower=low - margin, upper=high + margin,
        sigma=(high - low) / 15, pace=250,
    )  # fmt: skip
    steps = round(args.ns * 1e3 / molsys.timestep / FRAME_INTERVAL) * FRAME_INTERVAL
    start = time.perf_counter()
    biased = simulate(molsys, 300.0, steps, out / "metad", seed=args.seed + 1, bias=bias, md=md, progress=False)
    timings["biased_s"] = time.perf_counter() - start
    start = time.perf_counter()
    unbiased = simulate(molsys, 300.0, steps, out / "unbiased", seed=args.seed + 1, md=md, progress=False)
    timings["unbiased_s"] = time.perf_counter() - start
    print(
        json.dumps(
            {
                "crossings_biased": crossings(phi_of(biased)),
                "crossings_unbiased": crossings(phi_of(unbiased)),
                "phi_profile_rmse_kJ": round(
                    well_profile_rmse(phi_of(biased), run_weights(biased.directory), phi_of(unbiased)), 2
                ),
                "ns": args.ns,
                "n_states": model.n_states,
                **{k: round(v, 1) for k, v in timings.items()},
                "threads": args.threads,
                "out": str(out),
            }
        )
    )


if __name__ == "__main__":
    main()
