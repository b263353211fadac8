"""Latent Langevin dynamics against MD: thermodynamics, kinetics and cost (three-hole).

Usage: python bench/latent_langevin.py [--model models/threehole/model.pt] [--walkers 1000]
       [--time 300] [--timestep 0.005] [--frictions 1 2 4 8] [--seed 0] [--threads 1]

MD: 4 × 1 500 000 steps of the package's three-hole MD (a frame every 30 steps, 0.3 time
units) at k_BT 0.75 (the model's training temperature) and 1.0 (unseen by the model). The
latent runs use the model's F(s; T) and the metric from the MD frames at 0.75, walkers
started at MD frames, a frame every 0.3 time units as MD's (the lifetimes depend on the
frame spacing). The latent time step is half MD's by default: the flow's F rises far more
steeply than the potential where its data end, and at k_BT 1.0 walkers reach those walls
(at 0.01 one blew up there). Reported per temperature:

- stationary JS (50 × 50) of the latent walkers' second half against the encoded MD and
  against the model's own generated samples (the latter is the dynamics' exactness: both
  describe p(s | T));
- the state populations of each;
- each state's mean lifetime (contiguous frames in the state, the censored first and last
  segments of each trajectory left out), MD's and the latent runs', as their ratio;
- the cost: MD's and the latent walkers' simulated time per CPU second.

γ is fitted to one quantity only, the least populated state's lifetime at 0.75: the latent
runs at --frictions at 0.75 give log lifetime against log γ, interpolated linearly; every
other lifetime (the other states at 0.75, all at 1.0) is a prediction at that γ.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from latf_openmm.features import resolved_featurizer
from latf_openmm.generation import LatentLangevin, js_divergence_2d, model_landscape
from latf_openmm.models import load_model
from latf_openmm.simulation import seed_for, simulate
from latf_openmm.specs import MDOptions
from latf_openmm.systems import load_system

TEMPERATURES = (0.75, 1.0)
MD_STEPS, MD_RUNS, FRAME_INTERVAL, MD_TIMESTEP = 1_500_000, 4, 30, 0.01


def lifetimes(states: np.ndarray, n_states: int, interval: float) -> np.ndarray:
    """Mean residence time per state of trajectories ``states`` (frames, trajectories), censored ends left out."""
    totals, counts = np.zeros(n_states), np.zeros(n_states)
    for column in states.T:
        change = np.flatnonzero(np.diff(column)) + 1
        bounds = np.concatenate([[0], change, [len(column)]])
        lengths, labels = np.diff(bounds)[1:-1], column[bounds[1:-2]]
        np.add.at(totals, labels, lengths)
        np.add.at(counts, labels, 1)
    return interval * totals / np.maximum(counts, 1)


def md_runs(folder: Path, temperature: float) -> tuple[list, float]:
    """The MD runs at ``temperature`` and their simulated time per wall second."""
    molsys = load_system("threehole")
    start = time.perf_counter()
    runs = [
        simulate(molsys, molsys.to_kelvin(temperature), MD_STEPS, folder / f"{temperature}_{i}",
                 seed=seed_for(7, i), md=MDOptions(frame_interval=FRAME_INTERVAL), progress=False)
        for i in range(MD_RUNS)
    ]  # fmt: skip
    return runs, MD_RUNS * MD_STEPS * MD_TIMESTEP / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(__file__).parents[1] / "models/threehole/model.pt")
    parser.add_argument("--walkers", type=int, default=1000)
    parser.add_argument("--time", type=float, default=300.0, help="simulated time per walker")
    parser.add_argument("--timestep", type=float, default=0.005)
    parser.add_argument("--frictions", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    interval = FRAME_INTERVAL * MD_TIMESTEP
    report = round(interval / args.timestep)
    with tempfile.TemporaryDirectory() as tmp:
        md = {t: md_runs(Path(tmp), t) for t in TEMPERATURES}
        featurizer = resolved_featurizer(md[0.75][0][0].manifest["featurizer"])
        positions = {t: np.concatenate([r.load_trajectory().xyz for r in md[t][0]]).astype(np.float64) for t in md}
    masses = load_system("threehole").masses
    encoded = {t: model.transform(featurizer.transform(positions[t])) for t in md}
    md_states = {t: model.latent_state(encoded[t]).reshape(MD_RUNS, -1).T for t in md}
    md_lifetimes = {t: lifetimes(md_states[t], model.n_states, interval) for t in md}
    steps = round(args.time / args.timestep)

    def latent_run(temperature: float, friction: float) -> dict:
        landscape = model_landscape(model, temperature, positions[0.75], masses, featurizer=featurizer)
        dynamics = LatentLangevin(landscape, friction, args.timestep)
        usable = dynamics.inside(encoded[0.75])
        rng = np.random.default_rng(args.seed)
        start = encoded[0.75][rng.choice(np.flatnonzero(usable), args.walkers)]
        began = time.perf_counter()
        trajectory = dynamics.run(start, steps, args.seed, report)
        seconds = time.perf_counter() - began
        states = model.latent_state(trajectory.reshape(-1, 2)).reshape(trajectory.shape[:2])
        tail = trajectory[len(trajectory) // 2 :].reshape(-1, 2)
        generated = model.sample(temperature, len(tail), seed=args.seed + 1)
        return {
            "temperature": temperature, "friction": friction,
            "js_md": round(js_divergence_2d(encoded[temperature], tail, bins=50), 4),
            "js_model": round(js_divergence_2d(generated, tail, bins=50), 4),
            "populations": np.round(model.latent_populations(tail), 3).tolist(),
            "md_populations": np.round(model.latent_populations(encoded[temperature]), 3).tolist(),
            "model_populations": np.round(model.latent_populations(generated), 3).tolist(),
            "lifetimes": np.round(lifetimes(states, model.n_states, interval), 3).tolist(),
            "md_lifetimes": np.round(md_lifetimes[temperature], 3).tolist(),
            "time_per_second": round(args.walkers * steps * args.timestep / seconds, 1),
            "md_time_per_second": round(md[temperature][1], 1),
        }  # fmt: skip

    smallest = int(np.argmin(model.latent_populations(encoded[0.75])))
    scan = [latent_run(0.75, g) for g in args.frictions]
    for row in scan:
        print(json.dumps(row), flush=True)
    log_lifetime = np.log([row["lifetimes"][smallest] for row in scan])
    order = np.argsort(log_lifetime)
    target = np.log(md_lifetimes[0.75][smallest])
    fitted = float(np.exp(np.interp(target, log_lifetime[order], np.log(args.frictions)[order])))
    print(json.dumps({"fitted_friction": round(fitted, 3), "fitted_to": f"state {smallest} lifetime at 0.75"}))
    for temperature in TEMPERATURES:
        row = latent_run(temperature, fitted)
        row["lifetime_ratio"] = np.round(np.array(row["lifetimes"]) / md_lifetimes[temperature], 2).tolist()
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
