"""Latent Langevin dynamics against MD: thermodynamics, kinetics and cost (three-hole, LJ7, alanine dipeptide).

Usage: python bench/latent_langevin.py [--system threehole|lj7|ala2] [--model PATH] [--walkers 1000]
       [--time T] [--timestep DT] [--frictions G ...] [--overdamped] [--seed 0] [--threads 1]

Each system runs with its shipped model (``models/<system>/model.pt``) and a case below:
MD (the package's ``simulate``, the recipe's integrator and time step) at the model's
training temperature and at one it never had MD for, ``MD_RUNS`` runs each. The latent runs
use the model's F(s; T) and the metric from the MD frames at the first temperature, walkers
started at those frames, a frame at MD's frame spacing (the lifetimes depend on it).

- three-hole (k_BT 0.75, trained there only; unseen 1.0): 4 × 1 500 000 steps, a frame
  every 30 steps (0.3 time units). The latent time step is half MD's: the flow's F rises
  far more steeply than the potential where its data end, and at k_BT 1.0 walkers reach
  those walls (at 0.01 one blew up there).
- LJ7 (k_BT/ε 0.2, trained at 0.2 and 0.5; unseen 0.3): 4 × 1 000 000 steps, a frame
  every 20 steps (0.1 τ), the latent time step MD's, a 200 × 200 latent grid: the shipped
  flow's F jumps by tens of k_BT within a cell of the default grid in places, and the walls
  there cost a narrow state probability (state 3: 0.025 at 100 × 100, 0.036 at 200 × 200,
  the model's 0.040).
- alanine dipeptide (OBC2; 300 K, the walkers' temperature; unseen 330 K between the
  loop's replica temperatures): 4 × 500 000 steps (1 ns), a frame every ps. With
  --overdamped the γ scan is 32–256 ps⁻¹: a Brownian step moves s by √(2 k_BT G dt / γ),
  ≈ 1.7 latent units at γ = 1 ps⁻¹, and walkers leave the support within one report. A
  scan point where a walker leaves the support is reported (``error``) and left out of the fit.

Reported per temperature:

- stationary JS (50 × 50) of the latent walkers' second half against the encoded MD and
  against the model's own generated samples (the latter is the dynamics' exactness: both
  describe p(s | T));
- the state populations of each;
- each state's mean lifetime (contiguous frames in the state, the censored first and last
  segments of each trajectory left out), MD's and the latent runs', as their ratio;
- the mean first-passage times between the model's states (from each entry into i to the
  first later frame in j; ``generation.mean_first_passage_times``), MD's and the latent runs',
  their ratio for the pairs MD passed between at least ``MIN_VISITS`` times, and how many of
  those are within 2× (at the fitted γ);
- the cost: MD's and the latent walkers' simulated time per CPU second.

γ is fitted to one quantity only, the least populated state's lifetime at the first
temperature (of the states MD visits at least 20 times there): the latent runs at
--frictions give log lifetime against log γ, interpolated linearly; every other lifetime
(the other states there, all at the second temperature) is a prediction at that γ.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latf_openmm.errors import LatfError
from latf_openmm.features import resolved_featurizer
from latf_openmm.generation import (
    LatentLangevin,
    js_divergence_2d,
    mean_first_passage_times,
    model_landscape,
    state_lifetimes,
)
from latf_openmm.generation.kinetics import nan_as_none
from latf_openmm.generation.langevin import DEFAULT_BINS
from latf_openmm.models import load_model
from latf_openmm.simulation import seed_for, simulate
from latf_openmm.specs import MDOptions
from latf_openmm.systems import load_system

MD_RUNS = 4
MIN_VISITS = 20  # γ is fitted to a state MD enters at least this often


@dataclass(frozen=True)
class Case:
    """One system's benchmark: the recipe, its two temperatures and the runs' lengths."""

    recipe: str
    temperatures: tuple[float, float]  # the model's own (γ is fitted there), then an unseen one
    md_steps: int
    frame_interval: int
    timestep: float  # latent, in the recipe's time unit
    walker_time: float
    frictions: tuple[float, ...]  # the γ scan the fit interpolates in
    bins: int = DEFAULT_BINS  # the latent grid's points per dimension
    overdamped_frictions: tuple[float, ...] | None = None  # --overdamped's scan, where it differs


CASES = {
    "threehole": Case("threehole", (0.75, 1.0), 1_500_000, 30, 0.005, 300.0, (1.0, 2.0, 4.0, 8.0)),
    "lj7": Case("lj7", (0.2, 0.3), 1_000_000, 20, 0.005, 200.0, (4.0, 8.0, 16.0, 32.0), bins=200),
    "ala2": Case("ala2_obc2", (300.0, 330.0), 500_000, 500, 0.002, 100.0, (1.0, 4.0, 16.0, 64.0),
                 overdamped_frictions=(32.0, 48.0, 64.0, 128.0, 256.0)),
}  # fmt: skip


def md_runs(case: Case, folder: Path, temperature: float) -> tuple[list, float]:
    """The MD runs at ``temperature`` and their simulated time per wall second."""
    molsys = load_system(case.recipe)
    threads = None if molsys.platform == "Reference" else 1
    start = time.perf_counter()
    runs = [
        simulate(molsys, molsys.to_kelvin(temperature), case.md_steps, folder / f"{temperature}_{i}",
                 seed=seed_for(7, i), md=MDOptions(frame_interval=case.frame_interval, threads=threads), progress=False)
        for i in range(MD_RUNS)
    ]  # fmt: skip
    return runs, MD_RUNS * case.md_steps * molsys.timestep / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(CASES), default="threehole")
    parser.add_argument("--model", type=Path, help="default: models/<system>/model.pt")
    parser.add_argument("--walkers", type=int, default=1000)
    parser.add_argument("--time", type=float, help="simulated time per walker (default: the case's)")
    parser.add_argument("--timestep", type=float, help="latent time step (default: the case's)")
    parser.add_argument("--frictions", type=float, nargs="+", help="the γ scan (default: the case's)")
    parser.add_argument("--overdamped", action="store_true", help="Brownian dynamics at the same γ (LatentLangevin)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = CASES[args.system]
    model = load_model(args.model or Path(__file__).parents[1] / f"models/{args.system}/model.pt")
    timestep, walker_time = args.timestep or case.timestep, args.time or case.walker_time
    frictions = args.frictions or list((args.overdamped and case.overdamped_frictions) or case.frictions)
    molsys = load_system(case.recipe)
    interval = case.frame_interval * molsys.timestep
    report = round(interval / timestep)
    own = case.temperatures[0]
    with tempfile.TemporaryDirectory() as tmp:
        md = {t: md_runs(case, Path(tmp), t) for t in case.temperatures}
        featurizer = resolved_featurizer(md[own][0][0].manifest["featurizer"])
        positions = {t: np.concatenate([r.load_trajectory().xyz for r in md[t][0]]).astype(np.float64) for t in md}
    encoded = {t: model.transform(featurizer.transform(positions[t])) for t in md}
    md_states = {t: model.latent_state(encoded[t]).reshape(MD_RUNS, -1).T for t in md}
    md_lifetimes = {t: state_lifetimes(md_states[t], model.n_states, interval) for t in md}
    md_passages = {t: mean_first_passage_times(md_states[t], model.n_states, interval) for t in md}
    steps = round(walker_time / timestep)
    landscapes = {}

    def latent_run(temperature: float, friction: float) -> dict:
        if temperature not in landscapes:
            landscapes[temperature] = model_landscape(
                model, temperature, positions[own], molsys.masses, featurizer=featurizer, bins=case.bins
            )
        dynamics = LatentLangevin(landscapes[temperature], friction, timestep, overdamped=args.overdamped)
        usable = dynamics.inside(encoded[own])
        rng = np.random.default_rng(args.seed)
        start = encoded[own][rng.choice(np.flatnonzero(usable), args.walkers)]
        began = time.perf_counter()
        trajectory = dynamics.run(start, steps, args.seed, report)
        seconds = time.perf_counter() - began
        states = model.latent_state(trajectory.reshape(-1, 2)).reshape(trajectory.shape[:2])
        tail = trajectory[len(trajectory) // 2 :].reshape(-1, 2)
        generated = model.sample(temperature, len(tail), seed=args.seed + 1)
        latent_lifetimes, visits = state_lifetimes(states, model.n_states, interval)
        latent_mfpt, _ = mean_first_passage_times(states, model.n_states, interval)
        return {
            "system": args.system, "temperature": temperature, "friction": friction,
            "js_md": round(js_divergence_2d(encoded[temperature], tail, bins=50), 4),
            "js_model": round(js_divergence_2d(generated, tail, bins=50), 4),
            "populations": np.round(model.latent_populations(tail), 3).tolist(),
            "md_populations": np.round(model.latent_populations(encoded[temperature]), 3).tolist(),
            "model_populations": np.round(model.latent_populations(generated), 3).tolist(),
            "lifetimes": np.round(latent_lifetimes, 3).tolist(), "visits": visits.astype(int).tolist(),
            "md_lifetimes": np.round(md_lifetimes[temperature][0], 3).tolist(),
            "md_visits": md_lifetimes[temperature][1].astype(int).tolist(),
            "mfpt": nan_as_none(latent_mfpt, 3), "md_mfpt": nan_as_none(md_passages[temperature][0], 3),
            "md_passages": md_passages[temperature][1].astype(int).tolist(),
            "metric_spread": round(landscapes[temperature].metric_spread, 3),
            "time_per_second": round(args.walkers * steps * timestep / seconds, 1),
            "md_time_per_second": round(md[temperature][1], 1),
        }  # fmt: skip

    populations, visits = model.latent_populations(encoded[own]), md_lifetimes[own][1]
    fitted_state = int(np.argmin(np.where(visits >= MIN_VISITS, populations, np.inf)))
    scan = []
    for friction in frictions:
        try:
            scan.append(latent_run(own, friction))
        except LatfError as error:  # a walker left the support: γ too small for this step, reported and skipped
            print(json.dumps({"friction": friction, "error": str(error)}), flush=True)
            continue
        print(json.dumps(scan[-1]), flush=True)
    frictions = [row["friction"] for row in scan]
    if not scan:
        raise SystemExit("a walker left the support at every γ of the scan: give larger --frictions")
    log_lifetime = np.log([row["lifetimes"][fitted_state] for row in scan])
    order = np.argsort(log_lifetime)
    target = np.log(md_lifetimes[own][0][fitted_state])
    if not log_lifetime.min() <= target <= log_lifetime.max():
        raise SystemExit(f"MD's state {fitted_state} lifetime at {own} is outside the scan's: widen --frictions")
    fitted = float(np.exp(np.interp(target, log_lifetime[order], np.log(frictions)[order])))
    print(json.dumps({"fitted_friction": round(fitted, 3), "fitted_to": f"state {fitted_state} lifetime at {own}"}))
    for temperature in case.temperatures:
        row = latent_run(temperature, fitted)
        md_time, md_visits = md_lifetimes[temperature]
        ratio = np.array(row["lifetimes"]) / np.where(md_visits > 0, md_time, np.nan)  # NaN: no complete MD visit
        row["lifetime_ratio"] = nan_as_none(ratio, 2)
        md_mfpt, md_count = md_passages[temperature]
        counted = md_count >= MIN_VISITS  # pairs MD passed between at least MIN_VISITS times
        mfpt_ratio = np.where(counted, np.array(row["mfpt"], dtype=float) / np.where(counted, md_mfpt, 1.0), np.nan)
        row["mfpt_ratio"] = nan_as_none(mfpt_ratio, 2)
        compared = mfpt_ratio[np.isfinite(mfpt_ratio)]
        row["mfpt_within_2x"] = f"{int(np.sum((compared >= 0.5) & (compared <= 2)))} of {compared.size}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
