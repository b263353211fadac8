"""Unbiased Langevin MD with checkpoint/restart and atomic outputs.

A run directory holds, when the run is complete::

    trajectory.dcd | trajectory.xtc   frames (nm), readable by mdtraj with topology.pdb
    topology.pdb                      topology and starting structure
    timeseries.npz                    time (ps), step, potential_energy (kJ/mol),
                                      temperature (K, instantaneous), features, feature_names
    manifest.json                     written last: settings, seed, versions, timings

A biased run (``bias=``, see :mod:`latf_openmm.bias`) also writes ``colvar.dat``, a
PLUMED-style COLVAR file with one row per frame (time in ps, CV components, bias
energy in kJ/mol and, for metadynamics/OPES, c(t) in kJ/mol), the same rows in
``timeseries.npz`` (``colvar``, ``colvar_fields``), and ``bias_state.npz``, from which
another run can continue the bias (``GridBias.load``). A bias on the ``plumed`` engine
keeps PLUMED's input and output files in ``plumed/``.

While it runs, the frames live in ``partial/segment_NNNNNN.npz`` files. Each segment
holds a block of frames *and* the OpenMM checkpoint taken right after its last frame,
in one atomically written file, so data and checkpoint can never disagree. A killed
run restarts from its last segment; the finished run gathers the segments into the
final files and removes them. A complete run is recognised by its manifest.

:func:`simulate` is an engine loop in the style of OpenMM's ``Simulation``: it steps to
each frame (the bias depositing at its pace), and hands every frame to its reporters: the
frame reporter (positions, energies, COLVAR row), the progress bar (ns/day) and the segment
reporter (the recorded frames with a checkpoint).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
from tqdm.auto import tqdm

from latf_openmm.errors import LatfError, blew_up
from latf_openmm.features import build_featurizer
from latf_openmm.files import atomic_path, write_json, write_npz
from latf_openmm.simulation.colvar import write_colvar
from latf_openmm.simulation.platforms import select_platform
from latf_openmm.simulation.protocol import SimulationBias
from latf_openmm.simulation.run import MANIFEST, TIMESERIES, TOPOLOGY, Run
from latf_openmm.specs import MDOptions
from latf_openmm.systems import MolecularSystem
from latf_openmm.units import KB_KJ_PER_MOL_K
from latf_openmm.versions import versions

PARTIAL = "partial"
COLVAR = "colvar.dat"
BIAS_STATE = "bias_state.npz"
_SEGMENT_FIELDS = ("first_frame", "positions", "boxes", "potential_energy", "temperature", "colvar")
_BIAS_STATE = "bias_state_"


def seed_for(base_seed: int, index: int) -> int:
    """Independent OpenMM seed (1 … 2³¹−1) for run ``index`` of a set started from ``base_seed``."""
    state = np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0]
    return int(state % (2**31 - 2)) + 1


def degrees_of_freedom(system: openmm.System) -> int:
    """Kinetic degrees of freedom: 3 per massive particle, less constraints and COM motion."""
    dof = sum(3 for i in range(system.getNumParticles()) if system.getParticleMass(i) > 0 * u.dalton)
    dof -= system.getNumConstraints()
    if any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces()):
        dof -= 3
    return dof


def simulate(
    molsys: MolecularSystem,
    temperature: float,
    n_steps: int,
    out_dir: str | Path,
    *,
    seed: int,
    md: MDOptions | None = None,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
    bias: SimulationBias | None = None,
) -> Run:
    """Run (or resume, or return the finished) Langevin MD of a system at one temperature.

    Parameters
    ----------
    molsys
        The system (see :func:`latf_openmm.systems.load_system`).
    temperature
        Temperature in K (for reduced-unit systems use ``molsys.to_kelvin``).
    n_steps
        Number of integration steps, a multiple of ``frame_interval``.
    out_dir
        Run directory; created if needed.
    seed
        Random seed (≥ 1) for initial velocities and the Langevin noise.
    md
        Frame interval, timestep, friction (default: the system's), platform, precision,
        threads (:func:`latf_openmm.simulation.select_platform`; the platform defaults to the
        system's preferred one, else CUDA when present, else CPU) and trajectory format.
    checkpoint_seconds
        Wall-clock seconds between checkpoints (0: after every frame).
    progress
        Show a progress bar with ns/day.
    bias
        A bias along a learned CV (restraint, metadynamics, OPES); its state is saved
        with every checkpoint, so a resumed run continues the same bias.

    Returns
    -------
    Run
    """
    out_dir = Path(out_dir)
    md = md or MDOptions()
    settings = run_settings(molsys, temperature, n_steps, seed, md)
    if bias is not None:
        settings["bias"] = bias.settings()
    finished = _finished_run(out_dir, settings)
    if finished is not None:
        return finished

    platform_obj, properties = select_platform(settings["platform"], md.precision, md.threads)
    integrator = openmm.LangevinMiddleIntegrator(
        settings["temperature_K"] * u.kelvin,
        settings["friction_per_ps"] / u.picosecond,
        settings["timestep_ps"] * u.picoseconds,
    )
    integrator.setRandomNumberSeed(seed)
    segments = _Segments(out_dir / PARTIAL, settings)
    if bias is not None and segments.frames_done():
        bias.restore(segments.last_bias_state())  # before its force is made: PLUMED reads its state at creation
    system = molsys.system if bias is None else bias.add_to(molsys.system, out_dir)
    with nullcontext() if bias is None else bias.session():
        try:
            context = openmm.Context(system, integrator, platform_obj, properties)
        except openmm.OpenMMException as error:  # e.g. PLUMED refusing its input
            raise LatfError(f"OpenMM could not set up the run: {_one_line(error)}") from None
        frames_done = _prepare_context(context, molsys, segments, bias, settings["temperature_K"], seed)

        n_frames = n_steps // settings["frame_interval"]
        frames = _FrameReporter(bias, settings, degrees_of_freedom(molsys.system),
                                molsys.system.usesPeriodicBoundaryConditions())  # fmt: skip
        progress_bar = _ProgressReporter(molsys, settings, n_steps, frames_done, progress)
        checkpoints = _SegmentReporter(segments, frames, checkpoint_seconds)
        with progress_bar:
            for frame in range(frames_done, n_frames):
                step = (frame + 1) * settings["frame_interval"]
                _advance_to(integrator, context, bias, step, settings)
                now = time.perf_counter()
                for reporter in (frames, progress_bar, checkpoints):
                    reporter.report(context, frame, now, frame + 1 == n_frames)
        del context  # a finished run's forces end within the session (PLUMED logs its timings there)
    wall = time.perf_counter() - progress_bar.started
    steps_run = (n_frames - frames_done) * settings["frame_interval"]
    result = write_run(molsys, out_dir, settings, segments.chunks(), properties, wall, steps_run, bias)
    shutil.rmtree(segments.folder, ignore_errors=True)
    return result


def _finished_run(out_dir: Path, settings: dict[str, Any]) -> Run | None:
    """Return the finished run in ``out_dir``, if any; raise if it was made with other settings."""
    if not (out_dir / MANIFEST).is_file():
        return None
    run = Run.open(out_dir)
    if run.manifest.get("settings") != settings:
        raise LatfError(
            f"{out_dir} holds a finished run with other settings (or from another latf_openmm version); "
            "choose a new output directory"
        )
    return run


def _prepare_context(
    context: openmm.Context,
    molsys: MolecularSystem,
    segments: _Segments,
    bias: SimulationBias | None,
    temperature_k: float,
    seed: int,
) -> int:
    """Resume ``context`` from the last segment, or set up the start; attach the bias; return the frames done.

    A resumed run loads the last checkpoint (the bias's state was restored before its force
    was made); a new one gets the system's positions and box, is minimized if the system
    asks for it, and draws velocities at ``temperature_k`` (K) with ``seed``.
    """
    frames_done = segments.frames_done()
    if frames_done:
        context.loadCheckpoint(segments.last_checkpoint())
    else:
        context.setPositions(molsys.positions * u.nanometer)
        if molsys.topology.getPeriodicBoxVectors() is not None:
            context.setPeriodicBoxVectors(*molsys.topology.getPeriodicBoxVectors())
        if molsys.minimize:
            openmm.LocalEnergyMinimizer.minimize(context)
        context.setVelocitiesToTemperature(temperature_k * u.kelvin, seed)
    if bias is not None:
        bias.attach(context)
    return frames_done


def _advance_to(
    integrator: openmm.Integrator,
    context: openmm.Context,
    bias: SimulationBias | None,
    step: int,
    settings: dict[str, Any],
) -> None:
    """Run MD from one frame before ``step`` up to ``step``; raise if the simulation blew up or stopped."""
    try:
        _advance(integrator, context, bias, step - settings["frame_interval"], step)
    except openmm.OpenMMException as error:  # the CPU platform refuses NaN coordinates
        if "NaN" not in str(error):  # e.g. PLUMED's CV leaving its METAD grid
            raise LatfError(f"the run stopped before step {step}: {_one_line(error)}") from None
        raise blew_up(step, settings["timestep_ps"]) from None


class _FrameReporter:
    """Record each frame in ``buffer``: positions, box, potential energy, temperature and the bias's COLVAR row.

    A frame with a non-finite energy or position is a blow-up (an error).
    """

    def __init__(self, bias: SimulationBias | None, settings: dict[str, Any], dof: int, periodic: bool) -> None:
        self.bias, self.settings, self.dof, self.periodic = bias, settings, dof, periodic
        self.buffer = _FrameBuffer()

    def report(self, context: openmm.Context, frame: int, now: float, last: bool) -> None:
        """Add the frame now in ``context`` (frame number ``frame``) to the buffer."""
        step = (frame + 1) * self.settings["frame_interval"]
        state = context.getState(getPositions=True, getEnergy=True)
        epot = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        with np.errstate(over="ignore", invalid="ignore"):
            positions = state.getPositions(asNumpy=True).value_in_unit(u.nanometer).astype(np.float32)
        if not (np.isfinite(epot) and np.isfinite(positions).all()):
            raise blew_up(step, self.settings["timestep_ps"])
        kinetic = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        self.buffer.add(
            positions,
            state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer) if self.periodic else None,
            epot,
            2 * kinetic / (self.dof * KB_KJ_PER_MOL_K) if self.dof else 0.0,
            None if self.bias is None else self.bias.observe(context, step),
        )


def _one_line(error: Exception, limit: int = 400) -> str:
    """Return an error's message as one line (PLUMED's span many), cut at ``limit`` characters."""
    return " ".join(str(error).split())[:limit]


def _advance(
    integrator: openmm.Integrator, context: openmm.Context, bias: SimulationBias | None, start: int, end: int
) -> None:
    """Step from ``start`` to ``end``, letting the bias deposit at every multiple of its pace."""
    if bias is None or not bias.interval:
        integrator.step(end - start)
        return
    step = start
    while step < end:
        target = min(end, (step // bias.interval + 1) * bias.interval)
        integrator.step(target - step)
        step = target
        if step % bias.interval == 0:
            bias.update(context, step)


def simulate_temperatures(
    molsys: MolecularSystem,
    temperatures: list[float],
    n_steps: int,
    out_dir: str | Path,
    *,
    seed: int,
    **options: MDOptions | SimulationBias | float | bool | None,
) -> list[Run]:
    """Run independent simulations at several temperatures (K), each with its own seed.

    Run ``i`` goes to ``out_dir/<label>`` (``T0.75`` in reduced units, ``T300K`` in
    kelvin) with seed :func:`seed_for` ``(seed, i)``; ``options`` go to :func:`simulate`.
    """
    if not temperatures:
        raise LatfError("give at least one temperature")
    if int(seed) < 1:
        raise LatfError(f"seed must be a positive integer, got {seed}")
    labels = [run_label(molsys, t) for t in temperatures]
    if len(set(labels)) != len(labels):
        raise LatfError(f"temperatures must be distinct, got {labels}")
    return [
        simulate(molsys, t, n_steps, Path(out_dir) / label, seed=seed_for(seed, i), **options)
        for i, (t, label) in enumerate(zip(temperatures, labels, strict=True))
    ]


def run_label(molsys: MolecularSystem, temperature: float) -> str:
    """Folder name of a run at ``temperature`` (K): the user-facing temperature."""
    shown = temperature * KB_KJ_PER_MOL_K if molsys.reduced_units else temperature
    return f"T{shown:.6g}" + ("" if molsys.reduced_units else "K")


def _ns_per_day(steps: int, timestep_ps: float, seconds: float) -> float | None:
    """Return the simulated ns per wall-clock day, or None before anything was timed."""
    return steps * timestep_ps * 1e-3 * 86400 / seconds if seconds > 0 and steps else None


def run_settings(molsys: MolecularSystem, temperature: float, n_steps: int, seed: int, md: MDOptions) -> dict[str, Any]:
    """Return what a run's manifest records of how it was made.

    A finished run with other settings is not resumed.
    """
    temperature_k = float(temperature.value_in_unit(u.kelvin)) if u.is_quantity(temperature) else float(temperature)
    if not np.isfinite(temperature_k) or temperature_k <= 0:
        raise LatfError(f"temperature must be positive, got {temperature_k} K")
    frame_interval = int(md.frame_interval or molsys.frame_interval)
    timestep = float(md.timestep or molsys.timestep)
    friction = float(molsys.friction if md.friction is None else md.friction)
    if int(n_steps) < frame_interval or int(n_steps) % frame_interval:
        raise LatfError(f"steps ({n_steps}) must be a positive multiple of the frame interval ({frame_interval})")
    if int(seed) < 1:
        raise LatfError(f"seed must be a positive integer, got {seed}")
    platform_name = select_platform(md.platform or molsys.platform, md.precision, md.threads)[0].getName()
    return {
        "system": molsys.name,
        "n_atoms": molsys.system.getNumParticles(),
        "temperature_K": temperature_k,
        "temperature": temperature_k * KB_KJ_PER_MOL_K if molsys.reduced_units else temperature_k,
        "temperature_unit": molsys.temperature_unit,
        "seed": int(seed),
        "n_steps": int(n_steps),
        "frame_interval": frame_interval,
        "timestep_ps": timestep,
        "friction_per_ps": friction,
        "platform": platform_name,
        "precision": md.precision,
        "threads": md.threads,
        "trajectory_format": md.trajectory_format,
    }


class _FrameBuffer:
    """Frames collected since the last checkpoint."""

    def __init__(self) -> None:
        self.positions: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        self.energies: list[float] = []
        self.temperatures: list[float] = []
        self.colvar: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.positions)

    def add(
        self,
        positions: np.ndarray,
        box: np.ndarray | None,
        energy: float,
        temperature: float,
        colvar: np.ndarray | None,
    ) -> None:
        self.positions.append(positions)
        if box is not None:
            self.boxes.append(np.asarray(box, dtype=np.float32))
        self.energies.append(energy)
        self.temperatures.append(temperature)
        if colvar is not None:
            self.colvar.append(colvar)


class _ProgressReporter:
    """Show the progress bar with ns/day, redrawn at most every half second and after the last frame."""

    def __init__(
        self, molsys: MolecularSystem, settings: dict[str, Any], n_steps: int, frames_done: int, enabled: bool
    ) -> None:
        self.frames_done, self.frame_interval = frames_done, settings["frame_interval"]
        self.timestep_ps = settings["timestep_ps"]
        self.started = self.last_report = time.perf_counter()
        self.bar = tqdm(
            total=n_steps,
            initial=frames_done * self.frame_interval,
            unit="step",
            disable=not enabled,
            desc=f"{molsys.name} {settings['temperature']:g} {settings['temperature_unit']}",
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def __enter__(self) -> _ProgressReporter:
        """Open the bar."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the bar."""
        self.bar.close()

    def report(self, context: openmm.Context, frame: int, now: float, last: bool) -> None:
        """Advance the bar to ``frame`` (just completed) and show the speed so far."""
        if now - self.last_report < 0.5 and not last:
            return
        steps_now = (frame + 1 - self.frames_done) * self.frame_interval
        self.bar.update(self.frames_done * self.frame_interval + steps_now - self.bar.n)
        rate = _ns_per_day(steps_now, self.timestep_ps, now - self.started)
        self.bar.set_postfix_str(f"{rate:.4g} ns/day" if rate else "")
        self.last_report = now


class _SegmentReporter:
    """Write the frames ``frames`` recorded since the last segment as the next one.

    Every ``checkpoint_seconds`` of wall time, and after the last frame, they go to a new
    segment with the OpenMM checkpoint and the bias's state after them (atomically), so that
    a killed run resumes there (the bias is the frame reporter's).
    """

    def __init__(self, segments: _Segments, frames: _FrameReporter, checkpoint_seconds: float) -> None:
        self.segments, self.frames, self.checkpoint_seconds = segments, frames, checkpoint_seconds
        self.last_write = time.perf_counter()

    def report(self, context: openmm.Context, frame: int, now: float, last: bool) -> None:
        """Write the recorded frames as a segment if it is time, ``frame`` being the last of them."""
        if not last and now - self.last_write < self.checkpoint_seconds:
            return
        bias = self.frames.bias
        state = {} if bias is None else bias.state()
        buffer = self.frames.buffer
        self.segments.write(buffer, frame + 1 - len(buffer), context.createCheckpoint(), state)
        self.frames.buffer = _FrameBuffer()
        self.last_write = now


class _Segments:
    """The ``partial/`` folder: blocks of frames, each with the checkpoint after its last frame."""

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        self.folder = folder
        # n_steps may grow between attempts; everything else must match to resume.
        self.identity = json.dumps({k: v for k, v in settings.items() if k != "n_steps"}, sort_keys=True)
        self.paths = sorted(folder.glob("segment_*.npz")) if folder.is_dir() else []
        for path in self.paths:
            with np.load(path) as seg:
                if str(seg["identity"]) != self.identity:
                    raise LatfError(
                        f"{folder} holds an unfinished run with other settings (or from another latf_openmm "
                        "version); "
                        "rerun with the same settings to resume it, or choose a new output directory"
                    )

    def frames_done(self) -> int:
        if not self.paths:
            return 0
        with np.load(self.paths[-1]) as seg:
            return int(seg["first_frame"]) + len(seg["potential_energy"])

    def last_checkpoint(self) -> bytes:
        with np.load(self.paths[-1]) as seg:
            return seg["checkpoint"].tobytes()

    def last_bias_state(self) -> dict[str, np.ndarray]:
        with np.load(self.paths[-1]) as seg:
            return {k.removeprefix(_BIAS_STATE): seg[k] for k in seg.files if k.startswith(_BIAS_STATE)}

    def write(self, buffer: _FrameBuffer, first_frame: int, checkpoint: bytes, bias_state: dict) -> None:
        path = self.folder / f"segment_{len(self.paths):06d}.npz"
        write_npz(
            path,
            identity=np.array(self.identity),
            first_frame=np.array(first_frame),
            positions=np.stack(buffer.positions),
            boxes=np.stack(buffer.boxes) if buffer.boxes else np.zeros((0, 3, 3), np.float32),
            potential_energy=np.array(buffer.energies),
            temperature=np.array(buffer.temperatures),
            checkpoint=np.frombuffer(checkpoint, dtype=np.uint8),
            colvar=np.array(buffer.colvar) if buffer.colvar else np.zeros((len(buffer), 0)),
            **{_BIAS_STATE + key: value for key, value in bias_state.items()},
        )
        self.paths.append(path)

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield the segments' frames and time series, one segment at a time."""
        for path in self.paths:
            with np.load(path) as seg:
                yield {key: seg[key] for key in _SEGMENT_FIELDS}


@contextmanager
def _trajectory_writer(path: Path, trajectory_format: str) -> Iterator[Callable[[mdtraj.Trajectory], None]]:
    """Yield a function that appends frames to a new DCD or XTC file (mdtraj's writers)."""
    if trajectory_format == "dcd":
        handle = mdtraj.formats.DCDTrajectoryFile(str(path), "w")

        def write(frames: mdtraj.Trajectory) -> None:  # DCD stores Å
            lengths = None if frames.unitcell_lengths is None else frames.unitcell_lengths * 10
            handle.write(frames.xyz * 10, cell_lengths=lengths, cell_angles=frames.unitcell_angles)
    else:
        handle = mdtraj.formats.XTCTrajectoryFile(str(path), "w")

        def write(frames: mdtraj.Trajectory) -> None:
            handle.write(frames.xyz, time=frames.time, box=frames.unitcell_vectors)

    with handle:
        yield write


def write_run(
    molsys: MolecularSystem,
    out_dir: Path,
    settings: dict[str, Any],
    chunks: Iterator[dict[str, np.ndarray]],
    properties: dict[str, str],
    wall: float,
    steps_run: int,
    bias: SimulationBias | None = None,
    extra: dict[str, Any] | None = None,
) -> Run:
    """Write a run folder from blocks of frames (``_SEGMENT_FIELDS``); the manifest comes last.

    Used by :func:`simulate` and by replica exchange (one folder per temperature, whose
    blocks also carry the ``replica`` behind each frame; plain MD is replica 0);
    ``extra`` goes into the manifest.
    """
    topology = mdtraj.Topology.from_openmm(molsys.topology)
    featurizer = build_featurizer(molsys.features, topology) if molsys.features else None
    series: dict[str, list[np.ndarray]] = {
        "potential_energy": [], "temperature": [], "features": [], "colvar": [], "replica": []
    }  # fmt: skip
    trajectory_name = f"trajectory.{settings['trajectory_format']}"
    with atomic_path(out_dir / trajectory_name) as tmp, _trajectory_writer(tmp, settings["trajectory_format"]) as write:
        for chunk in chunks:
            steps = (int(chunk["first_frame"]) + 1 + np.arange(len(chunk["positions"]))) * settings["frame_interval"]
            frames = mdtraj.Trajectory(chunk["positions"], topology, time=steps * settings["timestep_ps"])
            if len(chunk["boxes"]):
                frames.unitcell_vectors = chunk["boxes"]
            write(frames)
            series["potential_energy"].append(chunk["potential_energy"])
            series["temperature"].append(chunk["temperature"])
            series["colvar"].append(chunk["colvar"])
            series["replica"].append(chunk.get("replica", np.zeros(len(chunk["positions"]), np.int64)))
            if featurizer is not None:
                boxes = chunk["boxes"] if len(chunk["boxes"]) else None
                series["features"].append(featurizer.transform(chunk["positions"], boxes).astype(np.float32))
    n_frames = sum(len(e) for e in series["potential_energy"])
    steps = (np.arange(n_frames) + 1) * settings["frame_interval"]
    with atomic_path(out_dir / TOPOLOGY) as tmp, open(tmp, "w") as handle:
        app.PDBFile.writeFile(molsys.topology, molsys.positions * u.nanometer, handle)
    write_npz(
        out_dir / TIMESERIES,
        time=steps * settings["timestep_ps"],
        step=steps,
        potential_energy=np.concatenate(series["potential_energy"]),
        temperature=np.concatenate(series["temperature"]),
        features=np.concatenate(series["features"]) if featurizer else np.zeros((n_frames, 0), np.float32),
        feature_names=np.array(featurizer.names if featurizer else [], dtype=str),
        colvar=np.concatenate(series["colvar"]),
        colvar_fields=np.array(bias.fields if bias else [], dtype=str),
        replica=np.concatenate(series["replica"]),
    )
    files = {"trajectory": trajectory_name, "topology": TOPOLOGY, "timeseries": TIMESERIES}
    if bias is not None:
        files["colvar"] = COLVAR
        write_colvar(
            out_dir / COLVAR,
            ["time", *bias.fields],
            np.column_stack([steps * settings["timestep_ps"], np.concatenate(series["colvar"])]),
        )
        files["bias_state"] = BIAS_STATE
        write_npz(out_dir / BIAS_STATE, **bias.state())
    manifest = {
        "complete": True,
        "settings": settings,
        "system_description": molsys.description,
        "recipe": molsys.recipe,
        "n_frames": n_frames,
        "features": molsys.features,
        "featurizer": featurizer.resolved() if featurizer else None,  # what made the features, as numbers
        "platform_properties": properties,
        "files": files,
        "wall_seconds_last_session": round(wall, 3),
        "ns_per_day_last_session": (_ns_per_day(steps_run, settings["timestep_ps"], wall)),
        "versions": versions(),
        **(extra or {}),
    }
    write_json(out_dir / MANIFEST, manifest)
    return Run(out_dir, manifest, ran_now=True)
