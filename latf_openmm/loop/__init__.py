"""The iterative loop: unbiased MD → train → biased walkers along the learned CV → reweight → retrain.

``latf loop WORKFLOW.toml --out RUN_DIR`` (or :func:`run_loop`). The run directory holds::

    round_000/md/T…/            round 0: unbiased MD (independent runs, or replica exchange with
                                ``replica_exchange = true``), unless ``initial_data`` names the user's runs
    round_001/model.pt          LaTF trained on all data so far (biased frames reweighted)
    round_001/cv.pt             its CV, exported (TorchScript)
    round_001/fes.png           generated F(s; T) at the target temperatures (generated.npz: the data)
    round_001/walkers/walker_i/ biased walkers (metadynamics or OPES) sharing round_001/shared/
    round_001/production/walker_i/  then each walker goes on (``production_steps``) with the bias
                                all walkers built, fixed
    round_001/replicas/T…/      with ``replicas_along_cv = true``: replica exchange over
                                ``replica_temperatures`` with that fixed bias on every replica
    round_NNN/frozen_bias.npz   the grid of the bias the round's walkers built, fixed (bias.FrozenGrid)
    round_NNN/estimate.npz      the round's equilibrium estimate over all runs so far (one MBAR;
                                round_000/estimate.npz: round 0's)
    round_NNN/round.json        written last: the round's populations, convergence, hashes, timings
    summary.json                per target temperature: generated state populations and free-energy
                                profiles, beside MBAR's populations from the same runs and their
                                effective sample size (the physics baseline)
    summary.png, fes.png        populations against temperature, convergence, walker CVs; F(s; T)
    final/                      the final model.pt; its CV: cv.pt, scalar components cv_s<k>.pt (OpenMM
                                TorchForce), plumed/ (model.ptc, plumed.dat); metadata.json

The loop's estimate of equilibrium at each simulated temperature (the reweighted populations,
the convergence test, the density the prior is fitted to) is one MBAR over every run whose
bias is known at every frame: the unbiased runs and the runs under each round's fixed bias,
with every fixed bias evaluated at every frame from its saved grid (:func:`equilibrium_estimate`).
It is computed once per round and handed on: to the round's record, to the next round's
training and convergence test, and to the final fit and the summary. The adaptive
walkers find new regions and teach SPIB the dynamics (their frames reweighted by
exp((V − c(t))/k_BT)), but their bias changes as they run, so they stay out of the estimate.

A round is complete when its ``round.json`` exists; running the same command again skips
complete rounds and resumes the first incomplete one (its walkers resume from their
checkpoints). Walkers and training are tasks on Dask distributed: a local cluster by
default, or an existing scheduler (``scheduler = "tcp://host:port"``, e.g. dask-jobqueue
on SLURM). Each round after the first warm-starts from the previous model: its initial
labels are a grid of ``n_initial_states`` cells over the previous model's CV (all frames),
which SPIB's refinement merges into metastable states. A region the walkers reached for the
first time gets cells of its own and can become a new state; with the previous model's
states as labels it could only have joined one of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mdtraj
import numpy as np
import torch
from dask.distributed import Client, LocalCluster

from latf_openmm._quiet import quiet_stdout
from latf_openmm.bias import FrozenGrid, LearnedCV, build_bias
from latf_openmm.errors import LatfError
from latf_openmm.export import export_cv, read_metadata
from latf_openmm.export.plumed import write_plumed
from latf_openmm.features import build_featurizer
from latf_openmm.files import write_json
from latf_openmm.generation import (
    free_energy_profile_change,
    free_energy_profile_rmse,
    generate,
    kl_divergence_2d,
    reweighted_populations,
)
from latf_openmm.models import LaTF, TrainingConfig, initial_labels, load_model
from latf_openmm.reports import plot_loop
from latf_openmm.reweighting import (
    EquilibriumEstimate,
    effective_sample_size,
    load_training_data,
    multistate_estimate,
    run_energies,
    run_weights,
    statistical_inefficiency,
)
from latf_openmm.simulation import find_runs, replica_exchange, seed_for, simulate, simulate_temperatures
from latf_openmm.specs import ADAPTIVE_METHODS, BiasSpec, MDOptions, read_spec
from latf_openmm.systems import load_system
from latf_openmm.units import KB_KJ_PER_MOL_K
from latf_openmm.versions import versions

ROUND_FILE = "round.json"
ESTIMATE = "estimate.npz"  # round_NNN/estimate.npz: the round's equilibrium estimate over all runs so far
FROZEN_BIAS = "frozen_bias.npz"  # round_NNN/frozen_bias.npz: the grid of the bias its walkers built, fixed
SUMMARY = "summary.json"
ROUND_SUMMARY_KEYS = (
    "round",
    "populations",
    "estimate_effective_sample_size",
    "population_change",
    "fes_change_kT",
    "effective_sample_size",
    "train_seconds",
    "walker_seconds",
    "production_seconds",
    "replica_seconds",
    "cpu_seconds",
)
# Seed indices (simulation.seed_for(seed, index)), one block of 1000 per round: round r's walker i
# uses 1000 r + i, its production 1000 r + 500 + i and its replicas 1000 r + 999; round 0's MD at
# temperature k uses k and the validation MD at target k uses 500 + k.
REPLICA_SEED_INDEX = 999
PRODUCTION_SEED_INDEX = VALIDATION_SEED_INDEX = 500
FINAL = "final"  # RUN_DIR/final/: the final model and its CV for OpenMM and PLUMED, with metadata.json
PROFILE_BINS = 40  # bins of the per-component free-energy profiles compared between rounds


@dataclasses.dataclass
class LoopConfig:
    """A workflow: what to simulate, how to train and bias, when to stop. Temperatures are in the
    system's user-facing unit (K, or k_BT/ε for reduced-unit systems)."""

    system: str
    system_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 1
    rounds: int = 3
    tolerance: float = 0.02
    fes_tolerance: float = 0.3
    md_temperatures: list[float] = dataclasses.field(default_factory=list)
    md_steps: int = 100_000
    replica_exchange: bool = False
    exchange_interval: int = 1
    initial_data: list[str] = dataclasses.field(default_factory=list)
    walkers: int = 2
    walker_steps: int = 100_000
    production_steps: int = 0
    walker_temperature: float | None = None
    replicas_along_cv: bool = False
    replica_temperatures: list[float] = dataclasses.field(default_factory=list)
    replica_steps: int | None = None
    md: MDOptions = dataclasses.field(default_factory=MDOptions)
    bias: BiasSpec = dataclasses.field(default_factory=BiasSpec)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    targets: list[float] = dataclasses.field(default_factory=list)
    samples: int = 100_000
    validation_steps: int = 0
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.md, MDOptions):  # an [md] table, e.g. from config.json
            self.md = read_spec(MDOptions, self.md, "workflow [md]")
        if not isinstance(self.bias, BiasSpec):
            self.bias = read_spec(BiasSpec, self.bias, "workflow [bias]")

    @classmethod
    def from_toml(cls, path: str | Path) -> LoopConfig:
        """Read a workflow file (top-level keys are the field names; ``[bias]``, ``[train]`` tables)."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LatfError(f"cannot read workflow {path}: {exc}") from exc
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise LatfError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
        if "system" not in raw:
            raise LatfError(f"{path}: 'system' is required")
        raw["md"] = read_spec(MDOptions, raw.get("md", {}), f"{path} [md]")
        raw["bias"] = read_spec(BiasSpec, raw.get("bias", {}), f"{path} [bias]")
        config = cls(**raw)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`LatfError` for out-of-range settings."""

        checks = [
            (self.rounds >= 1, "rounds must be ≥ 1"),
            (self.tolerance > 0 and self.fes_tolerance > 0, "tolerance and fes_tolerance must be positive"),
            (self.walkers >= 1 and self.walker_steps >= 1 and self.md_steps >= 1, "walkers and steps must be ≥ 1"),
            (self.walkers < PRODUCTION_SEED_INDEX, f"at most {PRODUCTION_SEED_INDEX - 1} walkers"),
            (self.production_steps >= 0, "production_steps must be ≥ 0"),
            (self.replica_steps is None or self.replica_steps >= 1, "replica_steps must be ≥ 1"),
            (
                len(self.md_temperatures) <= VALIDATION_SEED_INDEX and len(self.targets) < VALIDATION_SEED_INDEX,
                f"at most {VALIDATION_SEED_INDEX} MD temperatures and {VALIDATION_SEED_INDEX - 1} targets",
            ),
            (self.exchange_interval >= 1, "exchange_interval must be ≥ 1"),
            (self.validation_steps >= 0, "validation_steps must be ≥ 0"),
            (self.bias.method in ADAPTIVE_METHODS, "the [bias] method must be 'opes' or 'metad'"),
            (
                all(t > 0 for t in [*self.md_temperatures, *self.replica_temperatures, *self.targets]),
                "temperatures must be positive",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise LatfError(f"workflow: {message}")
        known = {f.name for f in dataclasses.fields(TrainingConfig)}
        if set(self.train) - known:
            raise LatfError(f"workflow [train]: unknown option(s) {sorted(set(self.train) - known)}")
        TrainingConfig(**self.train)
        if not (self.production_steps > 0 or self.replicas_along_cv):
            raise LatfError(
                "workflow: the estimate needs runs under a fixed bias; set production_steps (each walker goes on "
                "with the round's bias fixed) or replicas_along_cv = true"
            )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_system(config: LoopConfig):

    return load_system(config.system, **config.system_args)


def _md_options(config: LoopConfig) -> dict[str, Any]:
    """``simulate``'s MD options for the loop's runs; ``[md] threads`` also sets the tasks' torch
    threads, so OpenMM gets them on the CPU platform only."""
    on_cpu = config.md.platform in (None, "CPU")
    return {"md": config.md if on_cpu else dataclasses.replace(config.md, threads=None), "progress": False}


# -- tasks (run on Dask workers; arguments are plain data) -------------------------------
def train_task(config: LoopConfig, data: list[str], labels_from: str | None, estimate: str, out: str) -> str:
    """Train LaTF on the runs ``data`` (biased ones reweighted), write the model to ``out``.

    With a previous model (``labels_from``), the initial states are a grid over its CV. The
    prior is fitted (and checked) to the previous round's estimate (the file ``estimate``)
    along the new CV after training (:func:`_prior_fitted_to_estimate`); training skips the
    flow's own polishing and check.
    """

    torch.set_num_threads(config.md.threads or 1)
    training = load_training_data(data)
    estimator = LaTF(
        TrainingConfig(**{"seed": config.seed, **config.train, "polish_steps": 0, "generation_tolerance": None})
    )
    if labels_from is not None:
        previous = load_model(labels_from)
        latent = np.concatenate([previous.transform(f.astype(np.float64)) for f in training.features])
        labels = initial_labels(latent, estimator.config.n_initial_states, estimator.config.seed, method="grid")
        training = dataclasses.replace(training, labels=np.split(labels, np.cumsum(training.lengths)[:-1]))
    model = estimator.fit(training)
    _prior_fitted_to_estimate(config, model, training, data, EquilibriumEstimate.load(estimate)).save(out)
    return out


def final_task(config: LoopConfig, model_path: str, data: list[str], estimate: str, out: str) -> str:
    """The last round's model with its prior fitted to the last round's estimate (the file
    ``estimate``, over all runs ``data``, the last round's included: its model was trained
    before they ran), written to ``out``: the model the loop's generated distributions come from."""

    torch.set_num_threads(config.md.threads or 1)
    model, training = load_model(model_path), load_training_data(data)
    _prior_fitted_to_estimate(config, model, training, data, EquilibriumEstimate.load(estimate)).save(out)
    return out


def _prior_fitted_to_estimate(config: LoopConfig, model, training, data: list[str], estimate: EquilibriumEstimate):
    """``model`` with its prior fitted (flow polishing or the latent free energy) to ``estimate``
    (each run at its own temperature) along its CV; runs outside the estimate (adaptive walkers)
    weigh nothing there, so that it generates the distribution the loop reports."""

    weights = {t: estimate.weights(t) for t in set(training.temperatures)}
    equilibrium = [
        weights[t].get(run, np.zeros(n))
        for run, t, n in zip(data, training.temperatures, training.lengths, strict=True)
    ]
    estimator = LaTF(TrainingConfig(**{"seed": config.seed, **config.train}))
    return estimator.refit_prior(model, dataclasses.replace(training, equilibrium_weights=equilibrium))


def _learned_bias(config: LoopConfig, model_path: str, **placement: Any):
    """The system and the workflow's adaptive bias along the model's CV at the walker
    temperature (K); ``placement``: ``walkers_dir`` and ``walker``, for a walker."""

    torch.set_num_threads(config.md.threads or 1)
    molsys = _load_system(config)
    cv = LearnedCV(load_model(model_path), build_featurizer(molsys.features, molsys.topology))
    temperature = molsys.to_kelvin(config.walker_temperature or config.md_temperatures[0])
    periodic = molsys.system.usesPeriodicBoundaryConditions()
    return molsys, build_bias(config.bias, cv, temperature, periodic, **placement), temperature


def _fixed_bias(config: LoopConfig, model_path: str, shared: str | Path):
    """:func:`_learned_bias` continued from the depositions of the walkers that shared the
    folder ``shared``, held fixed: the bias of production runs, replicas and the estimate."""
    molsys, bias, temperature = _learned_bias(config, model_path)
    bias.load(shared)
    bias.freeze()
    return molsys, bias, temperature


def _round_number(folder: Path) -> int:
    return int(folder.name.split("_")[1])


def walker_task(config: LoopConfig, model_path: str, shared: str, walker: int, out: str) -> str:
    """One biased walker along the model's CV; returns its run folder."""

    molsys, bias, temperature = _learned_bias(config, model_path, walkers_dir=shared, walker=walker)
    index = _round_number(Path(out).parent.parent) * 1000 + walker
    run = simulate(molsys, temperature, config.walker_steps, out, seed=seed_for(config.seed, index),
                   bias=bias, **_md_options(config))  # fmt: skip
    return str(run.directory)


def production_task(config: LoopConfig, model_path: str, shared: str, walker: int, walker_run: str, out: str) -> str:
    """Walker number ``walker`` continued from the last frame of its run ``walker_run`` with the
    bias all walkers built (in ``shared``) held fixed, so that its frames' weights are exact;
    returns its run folder."""

    molsys, bias, temperature = _fixed_bias(config, model_path, shared)
    run_folder = Path(walker_run)
    manifest = json.loads((run_folder / "manifest.json").read_text())
    files, last_frame = manifest["files"], manifest["n_frames"] - 1
    with quiet_stdout():  # mdtraj's DCD reader prints the file's format
        last = mdtraj.load_frame(
            str(run_folder / files["trajectory"]), last_frame, top=str(run_folder / files["topology"])
        )
    molsys = dataclasses.replace(molsys, positions=last.xyz[0].astype(np.float64), minimize=False)
    index = _round_number(Path(out).parent.parent) * 1000 + PRODUCTION_SEED_INDEX + walker
    run = simulate(molsys, temperature, config.production_steps, out, seed=seed_for(config.seed, index), bias=bias,
                   **_md_options(config))  # fmt: skip
    return str(run.directory)


def replica_task(config: LoopConfig, model_path: str, shared: str, out: str) -> list[str]:
    """Replica exchange over ``replica_temperatures`` (``replica_steps`` per replica) with the
    bias the round's walkers built (in ``shared``), fixed on every replica; returns the
    per-temperature run folders."""

    molsys, bias, _ = _fixed_bias(config, model_path, shared)
    seed = seed_for(config.seed, _round_number(Path(out).parent) * 1000 + REPLICA_SEED_INDEX)
    return _replica_exchange(config, molsys, config.replica_temperatures, config.replica_steps, Path(out), seed, bias)


def _replica_exchange(config: LoopConfig, molsys, temperatures: list[float], steps: int, out: Path, seed: int,
                      bias=None) -> list[str]:  # fmt: skip
    """Replica exchange over ``temperatures`` (``steps`` per replica) in ``out``; the run folders."""

    kelvin = [molsys.to_kelvin(t) for t in temperatures]
    frame_interval = config.md.frame_interval or molsys.frame_interval
    result = replica_exchange(molsys, kelvin, steps // frame_interval, out, md=_md_options(config)["md"], seed=seed,
                              exchange_interval=config.exchange_interval, bias=bias)  # fmt: skip
    return [str(run.directory) for run in result.runs]


def validation_task(config: LoopConfig, temperature: float, out: str) -> str:
    """Unbiased MD at a target temperature, to compare the generated distribution with."""

    molsys = _load_system(config)
    index = VALIDATION_SEED_INDEX + config.targets.index(temperature)
    run = simulate(molsys, molsys.to_kelvin(temperature), config.validation_steps, out,
                   seed=seed_for(config.seed, index), **_md_options(config))  # fmt: skip
    return str(run.directory)


def _cpu_timed(task, *args):
    """Run ``task(*args)`` (on a worker); returns its result and the CPU seconds its process
    spent meanwhile (OpenMM and torch threads included; workers run one task at a time)."""
    start = time.process_time()
    result = task(*args)
    return result, time.process_time() - start


# -- the loop -------------------------------------------------------------------------
def _client(config: LoopConfig):

    if config.scheduler:
        return Client(config.scheduler)
    cluster = LocalCluster(
        n_workers=config.walkers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    return Client(cluster)


def equilibrium_estimate(model, runs: list[str], rounds: Sequence[Path] = ()) -> EquilibriumEstimate:
    """The loop's estimate of equilibrium from ``runs``: one MBAR over every run whose bias is
    known at every frame, solved once (weights at any temperature).

    The members are the unbiased runs and the runs under a round's fixed bias (production
    walkers, replicas along the CV). Each of ``rounds`` (round folders) holds its model and
    its fixed bias's grid (``model.pt``, ``frozen_bias.npz``): that round's CV is computed at
    every frame of every member, and its bias evaluated there from the grid alone, without
    the system or OpenMM. Each run counts by its uncorrelated samples (statistical
    inefficiency) along ``model``'s CV (along the features when ``model`` is None), so a long
    run that seldom crosses between states does not outweigh short ones that cross often.
    Adaptive walkers are left out.
    """

    settings = [json.loads((Path(run) / "manifest.json").read_text())["settings"] for run in runs]
    members = [k for k, s in enumerate(settings) if s.get("bias") is None or s["bias"].get("frozen")]
    features = [f.astype(np.float64) for f in load_training_data([runs[k] for k in members]).features]
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
    kelvin_per_unit = settings[members[0]]["temperature_K"] / settings[members[0]]["temperature"]
    return EquilibriumEstimate(tuple(runs[k] for k in members), mbar, kelvin_per_unit)


def _reweighted(
    estimate: EquilibriumEstimate, model, temperatures: Sequence[float]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per temperature (keyed by its label): the latent CV of every frame of the estimate's
    runs along ``model``'s CV, and the frame's weight there."""

    features = load_training_data(list(estimate.runs)).features
    latent = np.concatenate([model.transform(f.astype(np.float64)) for f in features])
    return {f"{t:g}": (latent, np.concatenate(list(estimate.weights(t).values()))) for t in temperatures}


def _simulated_temperatures(estimate: EquilibriumEstimate) -> list[float]:
    """The temperatures (the runs' unit) of the estimate's runs."""
    return sorted(
        {json.loads((Path(r) / "manifest.json").read_text())["settings"]["temperature"] for r in estimate.runs}
    )


def _round_estimates(model_path: str, before: EquilibriumEstimate, after: EquilibriumEstimate) -> dict[str, Any]:
    """The round's record of its estimate ``after`` (all data): reweighted state populations per
    simulated temperature and the Kish effective sample size of its weights, and how much the
    round's data changed the populations and the free-energy profiles along each CV component
    since the estimate ``before`` (the previous round's).

    Both are measured with this round's model, so states and CV axes are the same on both sides.
    """

    model = load_model(model_path)
    old = _reweighted(before, model, _simulated_temperatures(before))
    new = _reweighted(after, model, _simulated_temperatures(after))
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


def _effective_sample_sizes(runs: list[str]) -> dict[str, float]:
    """Kish effective sample size of each run's unbiasing weights."""

    return {run: effective_sample_size(run_weights(run)) for run in runs}


def _converged(config: LoopConfig, record: dict[str, Any]) -> bool:
    """A round from the second on whose data changed populations and profiles below the tolerances."""
    return (
        record["round"] >= 2
        and record["population_change"] < config.tolerance
        and record["fes_change_kT"] < config.fes_tolerance
    )


def run_loop(config: LoopConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) the loop of ``config`` in ``out_dir``; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    molsys = _load_system(config)
    md_temperatures = config.md_temperatures or [
        t * KB_KJ_PER_MOL_K if molsys.reduced_units else t for t in molsys.temperatures
    ]
    config = dataclasses.replace(
        config,
        md_temperatures=md_temperatures,
        targets=config.targets or md_temperatures,
        replica_temperatures=config.replica_temperatures or md_temperatures,
        replica_steps=config.replica_steps or config.md_steps,
    )
    if config.replica_exchange and len(md_temperatures) < 2:
        raise LatfError("workflow: replica exchange in round 0 needs at least two md_temperatures")
    if config.replicas_along_cv and len(config.replica_temperatures) < 2:
        raise LatfError("workflow: replicas along the CV need at least two replica_temperatures (or md_temperatures)")
    write_json(out / "config.json", dataclasses.asdict(config))
    started = time.perf_counter()

    round_zero = out / "round_000"
    history: list[dict[str, Any]] = []
    previous_model: str | None = None
    client = None
    try:
        if not (round_zero / ROUND_FILE).is_file():
            client = _client(config)
            runs, cpu = client.submit(_cpu_timed, round_zero_task, config, str(round_zero), pure=False).result()
            record = {"round": 0, "runs": runs, "effective_sample_size": _effective_sample_sizes(runs),
                      "cpu_seconds": round(cpu, 1)}  # fmt: skip
            write_json(round_zero / ROUND_FILE, record)
        round_zero_record = json.loads((round_zero / ROUND_FILE).read_text())
        runs = round_zero_record["runs"]
        estimate = round_zero / ESTIMATE  # round 0's, along the features: round 1 trains with it
        if not estimate.is_file():
            equilibrium_estimate(None, runs).save(estimate)
        rounds: list[Path] = []
        for number in range(1, config.rounds + 1):
            folder = out / f"round_{number:03d}"
            record_path = folder / ROUND_FILE
            if record_path.is_file():
                record = json.loads(record_path.read_text())
            else:
                client = client or _client(config)
                record = _new_round(config, client, folder, number, runs, previous_model, estimate, rounds)
                write_json(record_path, record)
            history.append(record)
            runs = runs + record["walkers"] + record.get("production", []) + record.get("replicas", [])
            previous_model, estimate = record["model"], folder / ESTIMATE
            rounds.append(folder)
            if _converged(config, record):
                break
        final_model = out / FINAL / "model.pt"
        final_cpu = _final_cpu_seconds(out / FINAL, history[-1])
        if final_cpu is None:
            client = client or _client(config)
            final_future = client.submit(_cpu_timed, final_task, config, previous_model, runs, str(estimate),
                                         str(final_model), pure=False)  # fmt: skip
        validation = {}
        if config.validation_steps:
            client = client or _client(config)
            folders = {t: str(out / "validation" / f"T{t:g}") for t in config.targets}
            futures = {
                t: client.submit(_cpu_timed, validation_task, config, t, f, pure=False) for t, f in folders.items()
            }
            validation = {t: future.result() for t, future in futures.items()}
        if final_cpu is None:
            final_cpu = final_future.result()[1]
    finally:
        if client is not None:
            client.close()
    cpu = round_zero_record["cpu_seconds"] + sum(r["cpu_seconds"] for r in history) + final_cpu
    cpu += sum(seconds for _, seconds in validation.values())
    validation = {t: run for t, (run, _) in validation.items()}
    return _summarize(config, out, history, final_model, EquilibriumEstimate.load(estimate), final_cpu, validation,
                      time.perf_counter() - started, cpu)  # fmt: skip


def _final_cpu_seconds(folder: Path, last: dict[str, Any]) -> float | None:
    """The CPU seconds of the final flow fit in ``folder`` if it is complete (its ``metadata.json``,
    written last, names the last round, that round's model and the final model file by hash), else None."""
    try:
        metadata = json.loads((folder / "metadata.json").read_text())
        if (
            metadata["round"] == last["round"]
            and metadata["round_model_sha256"] == _sha256(Path(last["model"]))
            and metadata["sha256"]["model.pt"] == _sha256(folder / "model.pt")
        ):
            return float(metadata["final_cpu_seconds"])
    except (OSError, ValueError, KeyError):  # none yet, half-written, or from before the final flow fit
        pass
    return None


def _new_round(
    config: LoopConfig,
    client,
    folder: Path,
    number: int,
    runs: list[str],
    previous_model: str | None,
    previous_estimate: Path,
    rounds: list[Path],
) -> dict[str, Any]:
    """Train on ``runs`` (the prior fitted to the previous round's estimate), export, run the
    walkers, fix and save their bias's grid, run under it, and estimate once over all runs
    (``folder/estimate.npz``, with ``rounds`` and this one): the round's record."""
    folder.mkdir(parents=True, exist_ok=True)
    t0, here = time.perf_counter(), time.process_time()
    model_path = str(folder / "model.pt")
    cpu = 0.0
    if not Path(model_path).is_file():
        cpu += client.submit(_cpu_timed, train_task, config, runs, previous_model, str(previous_estimate), model_path,
                             pure=False).result()[1]  # fmt: skip
    t1 = time.perf_counter()
    _export(config, model_path, folder / "cv.pt")
    futures = [
        client.submit(
            _cpu_timed,
            walker_task,
            config,
            model_path,
            str(folder / "shared"),
            i,
            str(folder / "walkers" / f"walker_{i}"),
            pure=False,
        )
        for i in range(config.walkers)
    ]
    walkers, walker_cpu = zip(*(f.result() for f in futures), strict=True)
    walkers = list(walkers)
    cpu += sum(walker_cpu)
    _, fixed, _ = _fixed_bias(config, model_path, folder / "shared")
    fixed.frozen_grid().save(folder / FROZEN_BIAS)
    t2 = time.perf_counter()
    production: list[str] = []
    if config.production_steps:
        shared = str(folder / "shared")
        futures = [
            client.submit(
                _cpu_timed,
                production_task,
                config,
                model_path,
                shared,
                i,
                walker_run,
                str(folder / "production" / f"walker_{i}"),
                pure=False,
            )
            for i, walker_run in enumerate(walkers)
        ]
        production, production_cpu = (list(v) for v in zip(*(f.result() for f in futures), strict=True))
        cpu += sum(production_cpu)
    t_production = time.perf_counter()
    replicas: list[str] = []
    if config.replicas_along_cv:
        replicas, replica_cpu = client.submit(_cpu_timed, replica_task, config, model_path, str(folder / "shared"),
                                              str(folder / "replicas"), pure=False).result()  # fmt: skip
        cpu += replica_cpu
    t3 = time.perf_counter()
    estimate = equilibrium_estimate(load_model(model_path), runs + walkers + production + replicas, [*rounds, folder])
    estimate.save(folder / ESTIMATE)
    estimates = _round_estimates(model_path, EquilibriumEstimate.load(previous_estimate), estimate)
    data_digest = _report_round(config, model_path, folder)
    cpu += time.process_time() - here
    return {
        "round": number,
        "model": model_path,
        "model_sha256": _sha256(Path(model_path)),
        "data_digest": data_digest,
        "versions": versions(),
        "walkers": walkers,
        "production": production,
        "replicas": replicas,
        **estimates,
        "effective_sample_size": _effective_sample_sizes(walkers + production + replicas),
        "train_seconds": round(t1 - t0, 2),
        "walker_seconds": round(t2 - t1, 2),
        "production_seconds": round(t_production - t2, 2),
        "replica_seconds": round(t3 - t_production, 2),
        "cpu_seconds": round(cpu, 1),
    }


def _report_round(config: LoopConfig, model_path: str, folder: Path) -> str:
    """A round's generated distributions and (2-D) free-energy surfaces at the targets; the data digest."""

    model = load_model(model_path)
    plot = folder / "fes.png" if model.latent_dim == 2 else None
    generate(model, config.targets, min(config.samples, 50_000), folder / "generated.npz", plot=plot)
    return model.info["data_digest"]


def round_zero_task(config: LoopConfig, out: str) -> list[str]:
    """Round 0's runs: the user's data, or unbiased MD (independent runs or replica exchange)."""

    molsys, folder = _load_system(config), Path(out)
    if config.initial_data:
        return [str(p.resolve()) for p in find_runs(config.initial_data)]
    if config.replica_exchange:
        return _replica_exchange(config, molsys, config.md_temperatures, config.md_steps, folder / "md", config.seed)
    kelvin = [molsys.to_kelvin(t) for t in config.md_temperatures]
    runs = simulate_temperatures(
        molsys, kelvin, config.md_steps, folder / "md", seed=config.seed, **_md_options(config)
    )
    return [str(run.directory) for run in runs]


def _export(config: LoopConfig, model_path: str, out: Path) -> None:

    molsys = _load_system(config)
    featurizer = build_featurizer(molsys.features, molsys.topology)
    export_cv(load_model(model_path), featurizer, out, feature_description=molsys.features)


def _write_final(config: LoopConfig, folder: Path, last: dict[str, Any], summary: dict[str, Any],
                 final_cpu: float) -> None:  # fmt: skip
    """Next to the final model ``folder/model.pt`` (:func:`final_task`; ``latf bias``, ``latf
    generate``), its exports, ready to use elsewhere: ``cv.pt`` (positions → CV, TorchScript),
    ``cv_s<k>.pt`` (component k as a scalar: an OpenMM TorchForce, e.g. inside a
    CustomCVForce), ``plumed/`` (``model.ptc`` and a ``plumed.dat`` with the workflow's bias)
    and ``metadata.json`` (provenance, the states' populations, file hashes, the final fit's
    CPU time, and the CV of the system's starting structure, which a copy of the files must
    reproduce)."""

    molsys = _load_system(config)
    model = load_model(folder / "model.pt")
    featurizer = build_featurizer(molsys.features, molsys.topology)
    exports = {"cv.pt": None} | {f"cv_s{k}.pt": k for k in range(model.latent_dim)}
    for name, component in exports.items():
        export_cv(model, featurizer, folder / name, component=component, feature_description=molsys.features)
    temperature = molsys.to_kelvin(config.walker_temperature or config.md_temperatures[0])
    write_plumed(model, featurizer, folder / "plumed", temperature, config.bias)
    box = molsys.topology.getPeriodicBoxVectors()
    box = None if box is None else torch.tensor(box.value_in_unit(box.unit), dtype=torch.float64)
    cv = torch.jit.load(str(folder / "cv.pt"))(torch.as_tensor(molsys.positions, dtype=torch.float64), box)
    files = ("model.pt", *exports, "plumed/model.ptc", "plumed/plumed.dat")
    metadata = {
        "format": "latf_openmm.loop_final",
        "system": config.system,
        "system_args": config.system_args,
        "round": last["round"],
        "round_model_sha256": _sha256(Path(last["model"])),  # the same CV; the flow refitted to all data
        "final_cpu_seconds": final_cpu,
        "converged": summary["converged"],
        "temperature_unit": summary["temperature_unit"],
        "reweighted_state_populations": last["populations"],
        "generated_state_populations": {t: v["state_populations"] for t, v in summary["targets"].items()},
        "starting_structure_cv": cv.tolist(),
        "sha256": {name: _sha256(folder / name) for name in files},
        "cv": read_metadata(folder / "cv.pt"),
        "workflow": dataclasses.asdict(config),
    }
    write_json(folder / "metadata.json", metadata)


def _compare_with_md(model, samples: np.ndarray, run: str) -> dict[str, Any]:
    """Generated vs encoded MD at one temperature: KL (2-D), free-energy-profile RMSE per component."""

    with np.load(Path(run) / "timeseries.npz") as series:
        encoded = model.transform(series["features"].astype(np.float64))
    comparison: dict[str, Any] = {
        "md_run": run,
        "profile_rmse_kT": [free_energy_profile_rmse(encoded[:, k], samples[:, k]) for k in range(model.latent_dim)],
        "md_state_populations": model.latent_populations(encoded).tolist(),
    }
    if model.latent_dim == 2:
        comparison["kl"] = kl_divergence_2d(encoded, samples)
    return comparison


def _summarize(
    config, out: Path, history, model_path, estimate: EquilibriumEstimate, final_cpu, validation: dict, seconds,
    cpu_seconds,
) -> dict[str, Any]:  # fmt: skip
    """The summary: per target temperature the final model's generated populations and
    profiles beside MBAR's prediction from all runs whose bias is known at every frame (the
    last round's ``estimate``, at the target); validation MD where asked; the rounds; the costs."""

    model = load_model(model_path)
    baseline = _reweighted(estimate, model, config.targets)
    targets: dict[str, Any] = {}
    for k, temperature in enumerate(config.targets):
        samples = model.sample(temperature, config.samples, seed=config.seed + k)
        profiles = []
        for component in range(model.latent_dim):
            counts, edges = np.histogram(samples[:, component], bins=50)
            with np.errstate(divide="ignore"):
                free = -np.log(counts / counts.max())
            profiles.append(
                {
                    "s": (0.5 * (edges[1:] + edges[:-1])).tolist(),
                    "free_energy_kT": np.where(counts, free, None).tolist(),
                }
            )
        mbar_populations, mbar_size = reweighted_populations(model, *baseline[f"{temperature:g}"])
        targets[f"{temperature:g}"] = {
            "state_populations": model.latent_populations(samples).tolist(),
            "mbar_state_populations": mbar_populations.tolist(),
            "mbar_effective_sample_size": round(mbar_size, 1),
            "free_energy_profiles": profiles,
        }
        if temperature in validation:
            targets[f"{temperature:g}"]["md_comparison"] = _compare_with_md(model, samples, validation[temperature])
    summary = {
        "temperature_unit": model.info.get("temperature_unit"),
        "targets": targets,
        "rounds": [{k: r.get(k) for k in ROUND_SUMMARY_KEYS} for r in history],
        "final_model": str(model_path),
        "converged": bool(history) and _converged(config, history[-1]),
        "wall_seconds_last_session": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
    }
    write_json(out / SUMMARY, summary)
    plot_loop(summary, history, out / "summary.png")
    _write_final(config, out / FINAL, history[-1], summary, final_cpu)
    if model.latent_dim == 2:
        generate(model, config.targets, min(config.samples, 50_000), out / "generated.npz", plot=out / "fes.png")
    return summary


__all__ = [
    "LoopConfig",
    "equilibrium_estimate",
    "final_task",
    "production_task",
    "replica_task",
    "round_zero_task",
    "run_loop",
    "train_task",
    "walker_task",
]
