"""Temperature replica exchange (parallel tempering) with openmmtools' multistate sampler.

One replica per temperature; every iteration each replica runs ``frame_interval`` Langevin
steps (openmmtools' ``LangevinDynamicsMove``, seeded) and, every ``exchange_interval``
iterations, exchanges are attempted between all pairs of temperatures (``swap-all``),
optionally with one fixed learned-CV bias on every replica. openmmtools stores everything in
``OUT/replicas.nc`` and checkpoints it, so a killed run resumes from its last iteration
when called again. When the run is complete, frames are demultiplexed by temperature into
``OUT/T<temperature>/`` folders holding exactly what :func:`latf_openmm.simulation.simulate`
writes (trajectory, topology, ``timeseries.npz`` with energies and features, manifest), so
training reads them the same way, and ``OUT/exchange.json`` reports the acceptance rates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import openmm
import openmm.unit as u

from latf_openmm._quiet import quiet_import
from latf_openmm.errors import LatfError
from latf_openmm.files import write_json
from latf_openmm.simulation.md import run_label, run_settings, write_run
from latf_openmm.simulation.platforms import select_platform
from latf_openmm.simulation.protocol import SimulationBias
from latf_openmm.simulation.run import MANIFEST, Run
from latf_openmm.specs import MDOptions
from latf_openmm.systems import MolecularSystem
from latf_openmm.units import KB_KJ_PER_MOL_K

if TYPE_CHECKING:
    from types import ModuleType

STORAGE = "replicas.nc"
IDENTITY = "replicas_settings.json"  # what the storage was started with, to refuse resuming other settings
EXCHANGE = "exchange.json"


@dataclass(frozen=True)
class ReplicaExchangeResult:
    """Per-temperature runs (demultiplexed) and the exchange statistics."""

    runs: list[Run]
    acceptance: np.ndarray  # (n_T, n_T): accepted / proposed swaps between temperatures

    @property
    def neighbour_acceptance(self) -> list[float]:
        """Acceptance rate between neighbouring temperatures."""
        return [float(self.acceptance[k, k + 1]) for k in range(len(self.acceptance) - 1)]


def _multistate() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """Import openmmtools' cache, multistate and states modules, with :mod:`latf_openmm.simulation.multistate`."""
    cache, multistate, states = (quiet_import(f"openmmtools.{name}") for name in ("cache", "multistate", "states"))
    logging.getLogger("openmmtools.multistate").setLevel(logging.ERROR)  # "the API is experimental", per call
    from latf_openmm.simulation import multistate as latf_multistate

    return cache, latf_multistate, multistate, states


def replica_exchange(
    molsys: MolecularSystem,
    temperatures: list[float],
    n_iterations: int,
    out_dir: str | Path,
    *,
    md: MDOptions | None = None,
    seed: int = 1,
    exchange_interval: int = 1,
    bias: SimulationBias | None = None,
) -> ReplicaExchangeResult:
    """Run (or resume) temperature replica exchange; temperatures in K, ascending.

    Parameters
    ----------
    molsys
        The system.
    temperatures
        One replica per temperature (K), at least two, distinct.
    n_iterations
        Exchange iterations; each is ``frame_interval`` MD steps and saves one frame per temperature.
    out_dir
        Output folder.
    md
        As in :func:`latf_openmm.simulation.simulate`.
    exchange_interval
        Frames between exchange attempts. Each temperature's ``timeseries.npz`` records the
        replica behind every frame, and training pairs frames only within one replica's
        unbroken stretch, so exchange less often than the training lag.
    bias
        The same bias on every replica, held fixed (:meth:`SimulationBias.freeze`): a restraint, or
        an adaptive bias at the state it was loaded with. Each frame's CV and bias energy
        go to ``COLVAR`` and ``timeseries.npz``, and the energies include the bias, so
        :func:`latf_openmm.reweighting.temperature_estimate` (MBAR) and
        :func:`~latf_openmm.reweighting.run_weights` unbias the frames.
    seed
        Seeds the Langevin integrator and numpy's generator, which openmmtools uses for the
        exchanges; the same seed on the same platform and thread count repeats the run.
    """
    temperatures = sorted(float(t) for t in temperatures)
    if len(temperatures) < 2 or len(set(temperatures)) != len(temperatures) or temperatures[0] <= 0:
        given = ", ".join(f"{t / molsys.to_kelvin(1.0):g}" for t in temperatures)  # in the user's unit
        raise LatfError(
            f"replica exchange needs ≥ 2 distinct positive temperatures, got {given} {molsys.temperature_unit}"
        )
    if int(exchange_interval) < 1:
        raise LatfError(f"the exchange interval must be ≥ 1 frame, got {exchange_interval}")
    if int(n_iterations) < 1:
        raise LatfError(f"replica exchange needs ≥ 1 iteration (one frame interval of steps), got {n_iterations}")
    out = Path(out_dir)
    md = md or MDOptions()
    steps = int(n_iterations) * int(md.frame_interval or molsys.frame_interval)
    per_temperature = [run_settings(molsys, t, steps, seed, md) for t in temperatures]
    if bias is not None:
        bias.freeze()
        for settings in per_temperature:
            settings["bias"] = bias.settings()
    folders = [out / run_label(molsys, t) for t in temperatures]
    identity = json.loads(json.dumps({"settings": per_temperature, "exchange_interval": int(exchange_interval)}))
    finished = all((f / MANIFEST).is_file() for f in folders)
    if finished:
        saved = {**identity, "settings": [Run.open(f).manifest.get("settings") for f in folders]}
    else:
        saved = json.loads((out / IDENTITY).read_text()) if (out / IDENTITY).is_file() else None
    if (finished or (out / STORAGE).is_file()) and saved != identity:
        raise LatfError(
            f"{out} holds a{' finished' if finished else 'n unfinished'} replica-exchange run with other settings "
            "(or from another latf_openmm version); rerun with its settings, or choose a new output directory"
        )
    if finished:
        return _result(out, folders, ran_now=False)
    cache, latf_multistate, multistate, states = _multistate()
    system = molsys.system if bias is None else bias.add_to(molsys.system)
    settings = per_temperature[0]
    platform_obj, properties = select_platform(settings["platform"], md.precision, md.threads)
    context_cache = cache.ContextCache(platform=platform_obj, platform_properties=properties or None)
    out.mkdir(parents=True, exist_ok=True)
    storage = out / STORAGE
    if not storage.is_file():
        write_json(out / IDENTITY, identity)
    latf_multistate.seed_exchanges(seed)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), latf_multistate.termination_guard_off_main_thread():
        reporter = multistate.MultiStateReporter(str(storage), checkpoint_interval=1)
        if storage.is_file():
            sampler = latf_multistate.IntervalReplicaExchangeSampler.from_storage(reporter)
        else:
            move = latf_multistate.SeededLangevinMove(
                seed=settings["seed"],
                timestep=settings["timestep_ps"] * u.picoseconds,
                collision_rate=settings["friction_per_ps"] / u.picosecond,
                n_steps=settings["frame_interval"],
                reassign_velocities=False,
            )
            sampler = latf_multistate.IntervalReplicaExchangeSampler(
                mcmc_moves=move,
                number_of_iterations=int(n_iterations),
                online_analysis_interval=None,
                exchange_interval=int(exchange_interval),
            )
            thermodynamic_states = [states.ThermodynamicState(system, t * u.kelvin) for t in temperatures]
            box = molsys.topology.getPeriodicBoxVectors()
            start = states.SamplerState(molsys.positions * u.nanometer, box_vectors=box)
            sampler.create(thermodynamic_states, [start] * len(temperatures), reporter)
        sampler.energy_context_cache = context_cache
        sampler.sampler_context_cache = context_cache
        first = sampler.iteration
        sampler.run()
        reporter.close()
    wall = time.perf_counter() - started
    colvar = None if bias is None else partial(_colvar, bias, system, platform_obj, properties, settings)
    _demultiplex(molsys, out, folders, per_temperature, properties, wall, (sampler.iteration - first), bias, colvar)
    return _result(out, folders, ran_now=True)


def _colvar(
    bias: SimulationBias,
    system: openmm.System,
    platform: openmm.Platform,
    properties: dict,
    settings: dict,
    positions: np.ndarray,
) -> np.ndarray:
    """Return the COLVAR rows (without time) of frames (n, n_atoms, 3) under the fixed ``bias``.

    The frames are one every ``frame_interval`` steps of the run's ``settings``.
    """
    # never stepped: the integrator's step size only names the run's timestep in a blow-up error
    context = openmm.Context(system, openmm.VerletIntegrator(settings["timestep_ps"]), platform, properties)
    bias.attach(context)
    rows = []
    for frame_number, frame in enumerate(positions, start=1):
        context.setPositions(frame)
        rows.append(bias.observe(context, frame_number * settings["frame_interval"]))
    return np.array(rows).reshape(len(positions), len(bias.fields))


def _demultiplex(
    molsys: MolecularSystem,
    out: Path,
    folders: list[Path],
    per_temperature: list[dict[str, Any]],
    properties: dict[str, str],
    wall: float,
    iterations_run: int,
    bias: SimulationBias | None,
    colvar: Callable[[np.ndarray], np.ndarray] | None,
) -> None:
    """Write each temperature's frames, gathered from the replicas, as a run folder in ``folders``.

    The exchange statistics go to ``exchange.json``; ``colvar`` gives the COLVAR rows of a
    biased run's frames.
    """
    _, _, multistate, _ = _multistate()
    with contextlib.redirect_stdout(io.StringIO()):
        reporter = multistate.MultiStateReporter(str(out / STORAGE), open_mode="r")
        try:
            n_iterations = reporter.read_last_iteration()
            replica_state = reporter.read_replica_thermodynamic_states()  # (n_iter + 1, n_replicas)
            reduced, _, _ = reporter.read_energies()  # (n_iter + 1, n_replicas, n_states)
            positions = np.stack(
                [
                    [s.positions.value_in_unit(u.nanometer) for s in reporter.read_sampler_states(it)]
                    for it in range(1, n_iterations + 1)
                ]
            ).astype(np.float32)  # (n_iter, n_replicas, n_atoms, 3)
            accepted, proposed = reporter.read_mixing_statistics()
        finally:
            reporter.close()
    accepted, proposed = np.sum(accepted, axis=0), np.sum(proposed, axis=0)
    acceptance = np.divide(accepted + accepted.T, proposed + proposed.T, out=np.zeros(accepted.shape),
                           where=(proposed + proposed.T) > 0)  # fmt: skip
    write_json(out / EXCHANGE, {"acceptance": acceptance.tolist(), "n_iterations": int(n_iterations)})
    states_by_iteration = replica_state[1 : n_iterations + 1]
    for k, (folder, settings) in enumerate(zip(folders, per_temperature, strict=True)):
        replica = np.argmax(states_by_iteration == k, axis=1)  # which replica held temperature k
        rows = np.arange(n_iterations)
        kt = KB_KJ_PER_MOL_K * settings["temperature_K"]
        chunk = {
            "first_frame": np.array(0),
            "positions": positions[rows, replica],
            "boxes": np.zeros((0, 3, 3), np.float32),
            "potential_energy": reduced[1 : n_iterations + 1][rows, replica, k] * kt,
            "temperature": np.full(n_iterations, settings["temperature_K"]),
            "colvar": np.zeros((n_iterations, 0)) if colvar is None else colvar(positions[rows, replica]),
            "replica": replica,
        }
        extra = {"replica_exchange": {"storage": f"../{STORAGE}", "temperature_index": k}}  # relative: folders move
        steps_run = iterations_run * settings["frame_interval"]
        write_run(molsys, folder, settings, iter([chunk]), properties, wall, steps_run, bias=bias, extra=extra)


def _result(out: Path, folders: list[Path], ran_now: bool) -> ReplicaExchangeResult:
    """Return the result of the replica-exchange run in ``out``; ``ran_now``: whether this call ran MD."""
    runs = [dataclasses.replace(Run.open(f), ran_now=ran_now) for f in folders]
    acceptance = np.array(json.loads((out / EXCHANGE).read_text())["acceptance"])
    return ReplicaExchangeResult(runs, acceptance)


__all__ = ["ReplicaExchangeResult", "replica_exchange"]
