"""The loop's tasks, run on Dask workers (arguments are plain data).

Round 0's MD, training, the walkers, the runs under a fixed bias, validation MD, the final fit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from latf_openmm.bias import LearnedCV, build_bias
from latf_openmm.features import build_featurizer
from latf_openmm.loop.config import PRODUCTION_SEED_INDEX, REPLICA_SEED_INDEX, VALIDATION_SEED_INDEX, LoopConfig
from latf_openmm.loop.estimate import load_estimate
from latf_openmm.models import TrainingConfig, TrainingData, estimator, initial_labels, load_model
from latf_openmm.reweighting import (
    EquilibriumEstimate,
    load_training_data,
)
from latf_openmm.simulation import Run, find_runs, replica_exchange, seed_for, simulate, simulate_temperatures
from latf_openmm.systems import load_system

if TYPE_CHECKING:
    from latf_openmm.bias import FrozenGrid, GridBias, PlumedBias
    from latf_openmm.features import Featurizer
    from latf_openmm.models import LatentModel
    from latf_openmm.systems import MolecularSystem

TaskResult = TypeVar("TaskResult")


def load_workflow_system(config: LoopConfig) -> MolecularSystem:
    """Build the workflow's system from its name and builder options."""
    return load_system(config.system, **config.system_args)


def export_featurizer(config: LoopConfig, model: LatentModel) -> Featurizer | None:
    """Return the featurizer to export ``model`` with: None, the one it keeps, or else the workflow system's.

    A model keeps none when trained on runs made before run folders recorded their featurizer.
    """
    if model.featurizer is not None:
        return None
    molsys = load_workflow_system(config)
    return build_featurizer(molsys.features, molsys.topology)


def _md_options(config: LoopConfig) -> dict[str, Any]:
    """Return ``simulate``'s MD options for the loop's runs.

    ``[md] threads`` also sets the tasks' torch threads, so OpenMM gets them on the CPU platform only.
    """
    on_cpu = config.md.platform in (None, "CPU")
    return {"md": config.md if on_cpu else dataclasses.replace(config.md, threads=None), "progress": False}


# -- tasks (run on Dask workers; arguments are plain data) -------------------------------
def train_task(config: LoopConfig, data: list[str], labels_from: str | None, estimate: str, out: str) -> str:
    """Train the workflow's model (``[train] model``, LaTF by default) on the runs ``data``; write it to ``out``.

    Biased runs are reweighted.

    With a previous model (``labels_from``), the initial states are a grid over its CV. The
    prior is fitted (and checked) to the previous round's estimate (the file ``estimate``)
    along the new CV after training (:func:`_prior_fitted_to_estimate`); training skips the
    prior's own polishing and check.
    """
    torch.set_num_threads(config.md.threads or 1)
    training = load_training_data(data)
    trainer = estimator(
        TrainingConfig(**{"seed": config.seed, **config.train, "polish_steps": 0, "generation_tolerance": None})
    )
    if labels_from is not None:
        previous = load_model(labels_from)
        latent = np.concatenate([previous.transform(f.astype(np.float64)) for f in training.features])
        labels = initial_labels(latent, trainer.config.n_initial_states, trainer.config.seed, method="grid")
        training = dataclasses.replace(training, labels=np.split(labels, np.cumsum(training.lengths)[:-1]))
    model = trainer.fit(training)
    _prior_fitted_to_estimate(config, model, training, data, load_estimate(estimate)).save(out)
    return out


def final_task(config: LoopConfig, model_path: str, data: list[str], estimate: str, out: str) -> str:
    """Fit the last round's model's prior to the last round's estimate and write the model to ``out``.

    The estimate is the file ``estimate``, over all runs ``data``, the last round's included (its
    model was trained before they ran). This is the model the loop's generated distributions come from.
    """
    torch.set_num_threads(config.md.threads or 1)
    model, training = load_model(model_path), load_training_data(data)
    _prior_fitted_to_estimate(config, model, training, data, load_estimate(estimate)).save(out)
    return out


def _prior_fitted_to_estimate(
    config: LoopConfig, model: LatentModel, training: TrainingData, data: list[str], estimate: EquilibriumEstimate
) -> LatentModel:
    """Return ``model`` with its prior fitted (its own weighted fit: polishing, the latent free energy) to ``estimate``.

    The fit is along the model's CV, to the estimate at its anchor temperatures (the simulated
    ones, and between them and the targets wherever MBAR has the overlap:
    :meth:`EquilibriumEstimate.anchors`): each of the estimate's runs counts at each with its
    frames' MBAR weights there. Runs outside the estimate (adaptive walkers) are left out, so
    that the model generates what the loop reports.
    """
    anchored = estimate.training_data(training, data, estimate.anchors(config.targets))
    overrides = {"seed": config.seed, **config.train, "reference_temperature": model.reference_temperature}
    return estimator(TrainingConfig(**overrides)).refit_prior(model, anchored)


def _learned_bias(
    config: LoopConfig, model_path: str, engine: str | None = None, **placement: str | Path | int
) -> tuple[MolecularSystem, GridBias | PlumedBias, float]:
    """Return the system and the workflow's adaptive bias along the model's CV at the walker temperature (K).

    ``engine`` overrides ``[bias] engine``; ``placement``: ``walkers_dir``, ``walker`` and ``walkers``, for a walker.
    """
    torch.set_num_threads(config.md.threads or 1)
    molsys = load_workflow_system(config)
    cv = LearnedCV(load_model(model_path), build_featurizer(molsys.features, molsys.topology))
    temperature = molsys.to_kelvin(config.walker_temperature or config.md_temperatures[0])
    periodic = molsys.system.usesPeriodicBoundaryConditions()
    spec = config.bias if engine is None else dataclasses.replace(config.bias, engine=engine)
    return molsys, build_bias(spec, cv, temperature, periodic, **placement), temperature


def fixed_bias(config: LoopConfig, model_path: str, shared: str | Path) -> tuple[MolecularSystem, GridBias, float]:
    """Return :func:`_learned_bias` continued from the depositions of the walkers in ``shared``, held fixed.

    This is the bias of production runs, replicas and the estimate, on the openmm engine whichever
    engine the walkers ran (with ``plumed``, their saved states hold PLUMED's depositions).
    """
    molsys, bias, temperature = _learned_bias(config, model_path, engine="openmm")
    bias.load(shared)
    bias.freeze()
    return molsys, bias, temperature


def frozen_grid(config: LoopConfig, model: LatentModel, shared: str | Path, temperature: float) -> FrozenGrid:
    """Return :func:`fixed_bias`'s bias as numbers (:class:`~latf_openmm.bias.FrozenGrid`), without the system.

    ``temperature`` is the walkers' (K). The CV uses the model's own featurizer (the workflow
    system's only for a model that keeps none), and the bias's force never enters a system, so
    the system is not built: for chignolin that is 6.5 s per round in the loop's process.
    """
    cv = LearnedCV(model, export_featurizer(config, model))
    bias = build_bias(dataclasses.replace(config.bias, engine="openmm"), cv, temperature, periodic=False)
    bias.load(shared)
    bias.freeze()
    return bias.frozen_grid()


def walker_task(config: LoopConfig, number: int, model_path: str, shared: str, walker: int, out: str) -> str:
    """One biased walker of round ``number`` along the model's CV; returns its run folder."""
    molsys, bias, temperature = _learned_bias(config, model_path, walkers_dir=shared, walker=walker,
                                              walkers=config.walkers)  # fmt: skip
    index = number * 1000 + walker
    run = simulate(molsys, temperature, config.walker_steps, out, seed=seed_for(config.seed, index),
                   bias=bias, **_md_options(config))  # fmt: skip
    return str(run.directory)


def production_task(
    config: LoopConfig, number: int, model_path: str, shared: str, walker: int, walker_run: str, out: str
) -> str:
    """Continue walker number ``walker`` of round ``number`` from the last frame of its run ``walker_run``.

    The bias all walkers built (in ``shared``) is held fixed, so that its frames' weights are
    exact; returns its run folder.
    """
    molsys, bias, temperature = fixed_bias(config, model_path, shared)
    last = Run.open(walker_run).load_frame(-1)
    molsys = dataclasses.replace(molsys, positions=last.xyz[0].astype(np.float64), minimize=False)
    index = number * 1000 + PRODUCTION_SEED_INDEX + walker
    run = simulate(molsys, temperature, config.production_steps, out, seed=seed_for(config.seed, index), bias=bias,
                   **_md_options(config))  # fmt: skip
    return str(run.directory)


def replica_task(config: LoopConfig, number: int, model_path: str, shared: str, out: str) -> list[str]:
    """Run round ``number``'s replica exchange over ``replica_temperatures`` under a fixed bias.

    ``replica_steps`` per replica; the bias the round's walkers built (in ``shared``) is fixed on
    every replica; returns the per-temperature run folders.
    """
    molsys, bias, _ = fixed_bias(config, model_path, shared)
    seed = seed_for(config.seed, number * 1000 + REPLICA_SEED_INDEX)
    return _replica_exchange(config, molsys, config.replica_temperatures, config.replica_steps, Path(out), seed, bias)


def _replica_exchange(config: LoopConfig, molsys: MolecularSystem, temperatures: list[float], steps: int, out: Path,
                      seed: int, bias: GridBias | None = None) -> list[str]:  # fmt: skip
    """Replica exchange over ``temperatures`` (``steps`` per replica) in ``out``; the run folders."""
    kelvin = [molsys.to_kelvin(t) for t in temperatures]
    frame_interval = config.md.frame_interval or molsys.frame_interval
    result = replica_exchange(molsys, kelvin, steps // frame_interval, out, md=_md_options(config)["md"], seed=seed,
                              exchange_interval=config.exchange_interval, bias=bias)  # fmt: skip
    return [str(run.directory) for run in result.runs]


def validation_task(config: LoopConfig, temperature: float, out: str) -> str:
    """Unbiased MD at a target temperature, to compare the generated distribution with."""
    molsys = load_workflow_system(config)
    index = VALIDATION_SEED_INDEX + config.targets.index(temperature)
    run = simulate(molsys, molsys.to_kelvin(temperature), config.validation_steps, out,
                   seed=seed_for(config.seed, index), **_md_options(config))  # fmt: skip
    return str(run.directory)


def reference_task(config: LoopConfig, out: str) -> list[str]:
    """Unbiased replica exchange over the target temperatures, the reference the generated ensembles are checked on.

    ``validation_steps`` per replica; returns the run folders in the order of ``targets``.
    """
    seed = seed_for(config.seed, REPLICA_SEED_INDEX)  # round 0's block: its MD and validation use 0 … 998
    return _replica_exchange(config, load_workflow_system(config), config.targets, config.validation_steps, Path(out),
                             seed)  # fmt: skip


def cpu_timed(task: Callable[..., TaskResult], *args: object) -> tuple[TaskResult, float]:
    """Run ``task(*args)`` (on a worker); return its result and the CPU seconds its process spent meanwhile.

    OpenMM and torch threads are included; workers run one task at a time.
    """
    start = time.process_time()
    result = task(*args)
    return result, time.process_time() - start


def round_zero_task(config: LoopConfig, out: str) -> list[str]:
    """Round 0's runs: the user's data, or unbiased MD (independent runs or replica exchange)."""
    molsys, folder = load_workflow_system(config), Path(out)
    if config.initial_data:
        return [str(p.resolve()) for p in find_runs(config.initial_data)]
    if config.replica_exchange:
        return _replica_exchange(config, molsys, config.md_temperatures, config.md_steps, folder / "md", config.seed)
    kelvin = [molsys.to_kelvin(t) for t in config.md_temperatures]
    runs = simulate_temperatures(
        molsys, kelvin, config.md_steps, folder / "md", seed=config.seed, **_md_options(config)
    )
    return [str(run.directory) for run in runs]
