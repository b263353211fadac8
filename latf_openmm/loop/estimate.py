"""The loop's estimate of equilibrium, once per round, and what a round's record says of it.

The record gives populations, effective sample sizes and convergence.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from latf_openmm.bias import FrozenGrid
from latf_openmm.errors import LatfError
from latf_openmm.files import file_stamp
from latf_openmm.generation import (
    free_energy_profile_change,
)
from latf_openmm.loop.config import FROZEN_BIAS, PROFILE_BINS, LoopConfig, located_path, stored_path
from latf_openmm.models import load_model
from latf_openmm.reweighting import (
    EquilibriumEstimate,
    effective_sample_size,
    multistate_estimate,
    run_weights,
    statistical_inefficiency,
)
from latf_openmm.simulation import Run
from latf_openmm.simulation.run import MANIFEST

if TYPE_CHECKING:
    from latf_openmm.models import LatentModel

# The loop's process keeps what its estimate reads of each run (features, energies) and each round's CV
# of each run: a round then reads and encodes only its new runs. A least-recently-used cache read in
# the same order each round keeps nothing once full, so these are far above a loop's runs and rounds.
CACHED_RUNS = 2048
CACHED_LATENTS = 16384
CACHED_MODELS = 64


def equilibrium_estimate(runs: list[str], rounds: Sequence[Path] = ()) -> EquilibriumEstimate:
    """Return the loop's estimate of equilibrium from ``runs``: one MBAR, solved once (weights at any temperature).

    Its members are every run whose bias is known at every frame: the unbiased runs and the
    runs under a round's fixed bias (production walkers, replicas along the CV). Each of
    ``rounds`` (round folders) holds its model and its fixed bias's grid (``model.pt``,
    ``frozen_bias.npz``): that round's CV is computed at every frame of every member
    (:func:`latent_of_run`, kept from earlier rounds) and its bias evaluated there from the grid
    alone, without the system or OpenMM. Each run counts by its uncorrelated samples
    (statistical inefficiency) along the last round's CV (along the features without rounds), so
    a long run that seldom crosses between states does not outweigh short ones that cross
    often. Adaptive walkers are left out.
    """
    kept = [(run, s) for run, s in ((run, Run.open(run).settings) for run in runs)
            if s.get("bias") is None or s["bias"].get("frozen")]  # fmt: skip
    members, member_settings = [run for run, _ in kept], [s for _, s in kept]
    rows, row_of = [], {}
    for folder in rounds:
        grid = FrozenGrid.load(Path(folder) / FROZEN_BIAS)
        row_of[json.dumps(grid.settings, sort_keys=True)] = len(rows)
        model_file = Path(folder) / "model.pt"
        rows.append(grid.energy_at(np.concatenate([latent_of_run(model_file, run) for run in members])))
    sampled = []
    for run, run_settings in zip(members, member_settings, strict=True):
        key = run_settings.get("bias") and json.dumps(run_settings["bias"], sort_keys=True)
        if key and key not in row_of:
            raise LatfError(
                f"{run} ran under a fixed bias that none of the loop's rounds holds: the loop's estimate takes "
                "runs under a fixed bias only from its own rounds; leave others out of initial_data"
            )
        sampled.append(row_of[key] if key else None)
    energies = [_frames(run).energies for run in members]
    kelvin = [s["temperature_K"] for s in member_settings]
    along = [latent_of_run(Path(rounds[-1]) / "model.pt", run) if rounds else _frames(run).features for run in members]
    biases = np.array(rows).reshape(len(rows), sum(map(len, energies)))
    mbar = multistate_estimate(energies, kelvin, sampled, biases, list(map(statistical_inefficiency, along)))
    return EquilibriumEstimate.of_runs(members, member_settings, mbar)


class _RunFrames(NamedTuple):
    """What the estimate reads of a finished run, each frame's: features (float64) and energy without its bias."""

    features: np.ndarray
    energies: np.ndarray


def _stamped(path: Path) -> tuple[Path, tuple[int, int, int, int]]:
    """Return ``path`` resolved and its :func:`~latf_openmm.files.file_stamp` (the key of a cached read)."""
    return path.resolve(), file_stamp(path)


def _frames(run: str | Path) -> _RunFrames:
    """Return a finished run's features and unbiased energies, read once while its manifest is unchanged."""
    return _run_frames(*_stamped(Path(run) / MANIFEST))


@functools.lru_cache(maxsize=CACHED_RUNS)
def _run_frames(manifest: Path, stamp: tuple[int, int, int, int]) -> _RunFrames:
    """Return a run's features and unbiased energies (read-only), for its manifest as at ``stamp``."""
    run = Run.open(manifest.parent)
    frames = _RunFrames(run.load_timeseries()["features"].astype(np.float64), run.unbiased_energy())
    for array in frames:
        array.flags.writeable = False
    return frames


def latent_of_run(model_file: str | Path, run: str | Path) -> np.ndarray:
    """Return the latent CV of every frame of ``run`` under the model saved in ``model_file``.

    Each is kept in memory (read-only) while both files are unchanged, as are each run's
    features and energies: the loop's estimate needs every earlier round's CV of every run
    again each round.
    """
    return _latent(*_stamped(Path(model_file)), *_stamped(Path(run) / MANIFEST))


@functools.lru_cache(maxsize=CACHED_LATENTS)
def _latent(model_file: Path, model_stamp: tuple, manifest: Path, run_stamp: tuple) -> np.ndarray:
    """Return :func:`latent_of_run`'s CV (read-only), for the two files as at their stamps."""
    latent = _model(model_file, model_stamp).transform(_run_frames(manifest, run_stamp).features)
    latent.flags.writeable = False
    return latent


@functools.lru_cache(maxsize=CACHED_MODELS)
def _model(model_file: Path, model_stamp: tuple) -> LatentModel:
    """Return the model saved in ``model_file`` as at ``model_stamp``, loaded once (only to encode)."""
    return load_model(model_file)


def latent_by_run(model_file: str | Path, runs: Sequence[str]) -> dict[str, np.ndarray]:
    """Return the latent CV of every frame of each of ``runs`` under the model in ``model_file``, keyed by run."""
    return {run: latent_of_run(model_file, run) for run in runs}


def reweighted(
    estimate: EquilibriumEstimate, latent: dict[str, np.ndarray], temperatures: Sequence[float]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return per temperature (keyed by its label) the latent CV of the estimate's frames and their weights.

    ``latent`` holds the latent CV of each of the estimate's runs (:func:`latent_by_run`); each
    frame's weight is its weight at that temperature.
    """
    frames = np.concatenate([latent[run] for run in estimate.runs])
    return {f"{t:g}": (frames, estimate.frame_weights(t)) for t in temperatures}


def round_record(model_file: Path, before: EquilibriumEstimate, after: EquilibriumEstimate) -> dict[str, Any]:
    """Return the round's record of its estimate ``after`` (all data).

    It holds the reweighted state populations per simulated temperature and the Kish effective
    sample size of its weights, and how much the round's data changed the populations and the
    free-energy profiles along each CV component since the estimate ``before`` (the previous round's).

    Both are measured with this round's model (in ``model_file``), so states and CV axes are the
    same on both sides.
    """
    model = _model(*_stamped(model_file))  # the one that encodes the runs, loaded once
    latent = latent_by_run(model_file, list(dict.fromkeys([*after.runs, *before.runs])))  # each run's CV once
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
