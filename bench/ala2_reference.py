"""Reference ΔG between the φ > 0 (C7ax/αL) and φ < 0 (C7eq/C5) basins of alanine dipeptide (OBC2, 300 K),
and the same ΔG from a `latf loop` run.

Usage: python bench/ala2_reference.py [--ns 5] [--seed 11] [--out DIR] [--loop RUN_DIR]

A finished reference in ``--out DIR`` (``reference_fes.npy``, ``reference.json``) is reused, not rerun.

The reference is well-tempered metadynamics on φ and ψ themselves, with OpenMM's own
``openmm.app.Metadynamics`` (an implementation independent of latf_openmm's): hills of
1.2 kJ/mol every 1 ps, widths 0.35 rad, γ = 6, 2 fs steps, 1 thread. ΔG = G(B) − G(A) with
B = 0° < φ < 130° and A the rest of φ, from the final free-energy surface (the second
half's average surface is also printed, as a convergence check). With ``--loop``, ΔG is
also computed from the loop: (1) ``dG_loop_reweighted``, the frames of every round that
inform 300 K, weighted as the loop weighs them (replica-exchange frames of every temperature
by MBAR, walker frames by their bias, each run by its independent samples), classified by
φ; (2) ``dG_loop_generated``, the final LaTF model's generated state populations at 300 K,
each learned state assigned to the φ basin most of its frames are in. Prints one JSON line:
``dG_reference`` (kJ/mol), both loop values and their differences from the reference, timings
(the loop's total CPU time included).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

import latf_openmm  # noqa: F401  (torch before openmm)
from latf_openmm.files import atomic_path, write_json
from latf_openmm.loop.estimate import load_estimate
from latf_openmm.models import load_model
from latf_openmm.simulation import select_platform
from latf_openmm.systems import load_system
from latf_openmm.units import KB_KJ_PER_MOL_K

KT = KB_KJ_PER_MOL_K * 300.0
PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)


def in_basin_b(phi: np.ndarray) -> np.ndarray:
    """C7ax/αL: 0 < φ < 130° (radians in, booleans out)."""
    return (phi > 0) & (phi < np.radians(130))


def delta_g_from_surface(free: np.ndarray, phi_axis: np.ndarray) -> float:
    """G(B) − G(A) from a free-energy surface F[ψ, φ] (kJ/mol) on a φ axis (radians)."""
    weight = np.exp(-(free - free.min()) / KT).sum(axis=0)
    b = in_basin_b(phi_axis)
    return float(-KT * np.log(weight[b].sum() / weight[~b].sum()))


def reference(ns: float, seed: int, out: Path) -> dict[str, float]:
    """ΔG at the end and averaged over the second half, with the run's length, seed and
    seconds (read back from ``OUT/reference.json`` when the reference was run before)."""
    saved, record = out / "reference_fes.npy", out / "reference.json"
    if saved.is_file() and record.is_file():
        final, second_half = _delta_g(np.load(saved))
        return json.loads(record.read_text()) | {"dG_reference": final, "dG_reference_second_half": second_half}
    molsys = load_system("ala2_obc2")
    system = openmm.XmlSerializer.clone(molsys.system)
    variables = []
    for atoms in (PHI, PSI):
        torsion = openmm.CustomTorsionForce("theta")
        torsion.addTorsion(*atoms, [])
        variables.append(app.BiasVariable(torsion, -np.pi, np.pi, 0.35, True, 73))
    meta = app.Metadynamics(system, variables, 300 * u.kelvin, 6.0, 1.2 * u.kilojoule_per_mole, 500)
    platform, properties = select_platform("CPU", threads=1)
    integrator = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picoseconds)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(molsys.topology, system, integrator, platform, properties)
    simulation.context.setPositions(molsys.positions * u.nanometer)
    simulation.minimizeEnergy()
    simulation.context.setVelocitiesToTemperature(300 * u.kelvin, seed)
    steps = int(ns * 500_000)
    start = time.perf_counter()
    surfaces = []
    for _ in range(20):
        meta.step(simulation, steps // 20)
        surfaces.append(meta.getFreeEnergy().value_in_unit(u.kilojoule_per_mole))
    seconds = time.perf_counter() - start
    with atomic_path(saved) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.array(surfaces))
    write_json(record, {"ns": ns, "seed": seed, "reference_s": round(seconds, 1)})
    final, second_half = _delta_g(np.array(surfaces))
    return {"ns": ns, "seed": seed, "reference_s": round(seconds, 1), "dG_reference": final,
            "dG_reference_second_half": second_half}  # fmt: skip


def _delta_g(surfaces: np.ndarray) -> tuple[float, float]:
    phi_axis = np.linspace(-np.pi, np.pi, surfaces.shape[-1])
    halves = [delta_g_from_surface(f, phi_axis) for f in surfaces[len(surfaces) // 2 :]]
    return delta_g_from_surface(surfaces[-1], phi_axis), float(np.mean(halves))


def from_loop(run_dir: Path) -> dict[str, float]:
    """ΔG from a loop run: its data at 300 K with the loop's weights, and its final model's generated populations."""
    summary = json.loads((run_dir / "summary.json").read_text())
    model = load_model(run_dir / summary["final_model"])  # paths in a loop folder are relative to it
    last = sorted(run_dir.glob("round_*/round.json"))[-1].parent
    by_run = load_estimate(last / "estimate.npz").weights(300.0)  # the loop's own estimate of 300 K
    series = [np.load(Path(run) / "timeseries.npz") for run in by_run]
    features = [s["features"].astype(np.float64) for s in series]
    names = [str(n) for n in series[0]["feature_names"]]
    weights = list(by_run.values())
    basin_b = np.zeros(2)  # weight in A, B
    state_phi = np.zeros((model.n_states, 2))  # per learned state: weight in A, B
    for f, w in zip(features, weights, strict=True):
        sin_phi, cos_phi = (f[:, names.index(f"{trig}(phi2)")] for trig in ("sin", "cos"))
        b = in_basin_b(np.arctan2(sin_phi, cos_phi)).astype(int)
        basin_b += np.bincount(b, weights=w, minlength=2)
        np.add.at(state_phi, (model.predict_state(f), b), w)
    generated = np.array(summary["targets"]["300"]["state_populations"])
    in_b = state_phi[:, 1] > state_phi[:, 0]  # each learned state goes to the basin most of its frames are in
    both = in_b.any() and not in_b.all()  # else the learned states do not tell the basins apart
    return {
        "dG_loop_reweighted": float(-KT * np.log(basin_b[1] / basin_b[0])),
        "dG_loop_generated": float(-KT * np.log(generated[in_b].sum() / generated[~in_b].sum())) if both else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", help="folder for the reference surfaces (default: temporary)")
    parser.add_argument("--loop", help="a 'latf loop' run folder (e.g. from workflows/ala2.toml)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="ala2_reference_"))
    out.mkdir(parents=True, exist_ok=True)
    line = {k: round(v, 2) if isinstance(v, float) else v for k, v in reference(args.ns, args.seed, out).items()}
    final = line["dG_reference"]
    if args.loop:
        loop = from_loop(Path(args.loop))
        summary = json.loads((Path(args.loop) / "summary.json").read_text())
        line |= {k: v and round(v, 2) for k, v in loop.items()} | {
            "difference_reweighted": round(loop["dG_loop_reweighted"] - final, 2),
            "difference_generated": loop["dG_loop_generated"] and round(loop["dG_loop_generated"] - final, 2),
            "loop_wall_s": summary["wall_seconds_last_session"],
            "loop_cpu_hours": round(summary["cpu_seconds"] / 3600, 2),
        }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
