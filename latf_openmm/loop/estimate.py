"""The loop's estimate of equilibrium, once per round, and what a round's record says of it.

The record gives populations, effective sample sizes and convergence.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latf_openmm.bias import FrozenGrid
from latf_openmm.errors import LatfError
from latf_openmm.generation import (
    free_energy_profile_change,
)
from latf_openmm.loop.config import FROZEN_BIAS, PROFILE_BINS, LoopConfig, located_path, stored_path
from latf_openmm.models import load_model
from latf_openmm.reweighting import (
    EquilibriumEstimate,
    effective_sample_size,
    multistate_estimate,
    run_energies,
    run_weights,
    statistical_inefficiency,
)
from latf_openmm.simulation import Run

if TYPE_CHECKING:
    from latf_openmm.models import LatentModel


def equilibrium_estimate(
    model: LatentModel | None, runs: list[str], rounds: Sequence[Path] = ()
) -> EquilibriumEstimate:
    """Return the loop's estimate of equilibrium from ``runs``: one MBAR, solved once (weights at any temperature).

    Its members are every run whose bias is known at every frame: the unbiased runs and the
    runs under a round's fixed bias (production walkers, replicas along the CV). Each of
    ``rounds`` (round folders) holds its model and its fixed bias's grid (``model.pt``,
    ``frozen_bias.npz``): that round's CV is computed at every frame of every member, and its
    bias evaluated there from the grid alone, without the system or OpenMM. Each run counts by
    its uncorrelated samples (statistical inefficiency) along ``model``'s CV (along the features
    when ``model`` is None), so a long run that seldom crosses between states does not outweigh
    short ones that cross often. Adaptive walkers are left out.
    """
    settings = [Run.open(run).settings for run in runs]
    members = [k for k, s in enumerate(settings) if s.get("bias") is None or s["bias"].get("frozen")]
    features = _features([runs[k] for k in members])
    every_frame = np.concatenate(features)
    rows, row_of = [], {}
    for folder in rounds:
        grid = FrozenGrid.load(Path(folder) / FROZEN_BIAS)
        row_of[json.dumps(grid.settings, sort_keys=True)] = len(rows)
        rows.append(grid.energy_at(load_model(Path(folder) / "model.pt").transform(every_frame)))
    sampled = []
    for k in members:
        key = settings[k].get("bias") and json.dumps(settings[k]["bias"], sort_keys=True)
        if key and key not in row_of:
            raise LatfError(
                f"{runs[k]} ran under a fixed bias that none of the loop's rounds holds: the loop's estimate takes "
                "runs under a fixed bias only from its own rounds; leave others out of initial_data"
            )
        sampled.append(row_of[key] if key else None)
    energies = [run_energies(runs[k])[0] for k in members]
    kelvin = [settings[k]["temperature_K"] for k in members]
    inefficiency = [statistical_inefficiency(f if model is None else model.transform(f)) for f in features]
    biases = np.array(rows).reshape(len(rows), len(every_frame))
    mbar = multistate_estimate(energies, kelvin, sampled, biases, inefficiency)
    return EquilibriumEstimate.of_runs([runs[k] for k in members], [settings[k] for k in members], mbar)


def _features(runs: Sequence[str]) -> list[np.ndarray]:
    """Return each run's features (float64), from its time series."""
    return [Run.open(run).load_timeseries()["features"].astype(np.float64) for run in runs]


def latent_by_run(model: LatentModel, runs: Sequence[str]) -> dict[str, np.ndarray]:
    """Return ``model``'s latent CV of every frame of each of ``runs``, keyed by run."""
    return {run: model.transform(f) for run, f in zip(runs, _features(runs), strict=True)}


def reweighted(
    estimate: EquilibriumEstimate, latent: dict[str, np.ndarray], temperatures: Sequence[float]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return per temperature (keyed by its label) the latent CV of the estimate's frames and their weights.

    ``latent`` holds the latent CV of each of the estimate's runs (:func:`latent_by_run`); each
    frame's weight is its weight at that temperature.
    """
    frames = np.concatenate([latent[run] for run in estimate.runs])
    return {f"{t:g}": (frames, estimate.frame_weights(t)) for t in temperatures}


def round_record(model: LatentModel, before: EquilibriumEstimate, after: EquilibriumEstimate) -> dict[str, Any]:
    """Return the round's record of its estimate ``after`` (all data).

    It holds the reweighted state populations per simulated temperature and the Kish effective
    sample size of its weights, and how much the round's data changed the populations and the
    free-energy profiles along each CV component since the estimate ``before`` (the previous round's).

    Both are measured with this round's ``model``, so states and CV axes are the same on both sides.
    """
    latent = latent_by_run(model, list(dict.fromkeys([*after.runs, *before.runs])))  # each run's CV once
    old = reweighted(before, latent, before.temperatures)
    new = reweighted(after, latent, after.temperatures)
    populations = {
        t: model.latent_populations(latent, weights).tolist() for t, (latent, weights) in sorted(new.items())
    }
    shared = [t for t in new if t in old]
    population_change = max(
        float(np.max(np.abs(np.subtract(populations[t], model.latent_populations(*old[t]))))) for t in shared
    )
    fes_change = 0.0
    for t in shared:
        (old_latent, old_weights), (all_latent, all_weights) = old[t], new[t]
        for component in range(model.latent_dim):
            edges = np.linspace(*np.percentile(all_latent[:, component], [0, 100]), PROFILE_BINS + 1)
            change = free_energy_profile_change(old_latent[:, component], all_latent[:, component], edges,
                                                old_weights, all_weights)  # fmt: skip
            fes_change = max(fes_change, change)
    return {
        "populations": populations,
        "estimate_effective_sample_size": {t: effective_sample_size(w) for t, (_, w) in sorted(new.items())},
        "population_change": population_change,
        "fes_change_kT": fes_change,
    }


def save_estimate(estimate: EquilibriumEstimate, path: Path) -> None:
    """Save a round's estimate (``RUN_DIR/round_NNN/estimate.npz``), its runs named relative to the run folder."""
    out = path.resolve().parent.parent
    dataclasses.replace(estimate, runs=tuple(stored_path(run, out) for run in estimate.runs)).save(path)


def load_estimate(path: str | Path) -> EquilibriumEstimate:
    """Load a round's estimate saved by :func:`save_estimate`, its runs located from the run folder."""
    path = Path(path)
    estimate = EquilibriumEstimate.load(path)
    out = path.resolve().parent.parent
    return dataclasses.replace(estimate, runs=tuple(located_path(run, out) for run in estimate.runs))


def effective_sample_sizes(runs: list[str]) -> dict[str, float]:
    """Kish effective sample size of each run's unbiasing weights."""
    return {run: effective_sample_size(run_weights(run)) for run in runs}


def converged(config: LoopConfig, record: dict[str, Any]) -> bool:
    """Return whether the round of ``record`` has converged.

    It has if it is the second round or a later one and its data changed populations and
    profiles below the tolerances.
    """
    return (
        record["round"] >= 2
        and record["population_change"] < config.tolerance
        and record["fes_change_kT"] < config.fes_tolerance
    )
