"""Long unbiased reference for the φ free-energy profile of alanine dipeptide (vacuum, 300 K).

Usage: python bench/ala2_phi_reference.py [--ns 4] [--seed 5] [--out tests/data/ala2_vacuum_phi_300K.json]

Plain OpenMM (no latf_openmm code on the sampling path): ff14SB in vacuum, LangevinMiddle
at 300 K, 2 fs, friction 1/ps, CPU with 1 thread; φ every 0.1 ps with mdtraj. Writes F(φ)
in 10° bins (kJ/mol, minimum 0) and its standard error from 8 blocks; bins the run visited
too rarely are null. ``tests/test_reweighting.py`` compares reweighted metadynamics with
this profile where the error is small (the well regions). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.unit as u

import latf_openmm  # noqa: F401  (torch before openmm)
from latf_openmm.files import write_json
from latf_openmm.systems import load_system
from latf_openmm.units import KB_KJ_PER_MOL_K

DEFAULT_OUT = Path(__file__).parents[1] / "tests" / "data" / "ala2_vacuum_phi_300K.json"
EDGES = np.radians(np.arange(-180, 181, 10))
BLOCKS = 8


def profile(phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F(φ) (kJ/mol, min 0, NaN where unvisited) and its block standard error at 300 K."""
    kt = KB_KJ_PER_MOL_K * 300.0
    counts = np.array([np.histogram(block, EDGES)[0] for block in np.array_split(phi, BLOCKS)], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = -kt * np.log(counts.sum(0) / counts.sum())
        per_block = -kt * np.log(counts / counts.sum(1, keepdims=True))
        error = np.where(np.isfinite(per_block).all(0), per_block.std(0, ddof=1) / np.sqrt(BLOCKS), np.nan)
    total[~np.isfinite(total)] = np.nan
    return total - np.nanmin(total), error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    molsys = load_system("ala2_vacuum")
    integrator = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picoseconds)
    integrator.setRandomNumberSeed(args.seed)
    platform = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(molsys.system, integrator, platform, {"Threads": "1"})
    context.setPositions(molsys.positions * u.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(300 * u.kelvin, args.seed)
    n_frames = int(args.ns * 10_000)
    positions = np.empty((n_frames, molsys.system.getNumParticles(), 3), np.float32)
    start = time.perf_counter()
    for frame in range(n_frames):
        integrator.step(50)
        positions[frame] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    seconds = time.perf_counter() - start
    topology = mdtraj.Topology.from_openmm(molsys.topology)
    phi = mdtraj.compute_phi(mdtraj.Trajectory(positions, topology))[1][:, 0]
    free, error = profile(phi)
    centres = np.round(np.degrees(0.5 * (EDGES[1:] + EDGES[:-1])), 6)
    write_json(args.out, {
        "system": "ala2_vacuum", "temperature_K": 300.0, "ns": args.ns, "seed": args.seed,
        "phi_deg": centres.tolist(),
        "free_energy_kJ": [None if np.isnan(f) else round(float(f), 4) for f in free],
        "standard_error_kJ": [None if np.isnan(e) else round(float(e), 4) for e in error],
    })  # fmt: skip
    print(json.dumps({"ns": args.ns, "seconds": round(seconds, 1), "out": args.out,
                      "ns_per_day": round(args.ns * 86400 / seconds, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
