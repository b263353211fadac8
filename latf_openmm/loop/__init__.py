"""The iterative loop: unbiased MD → train → biased walkers along the learned CV → reweight → retrain.

``latf loop WORKFLOW.toml --out RUN_DIR`` (or :func:`run_loop`). The run directory holds::

    config.json                 the workflow, its defaults filled in; a rerun may change only its
                                rounds and scheduler (``RESUMABLE_KEYS``)
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
    melting.png                 where the system names a melting region (chignolin's folded state): its
                                population against T, generated, by MBAR and in the reference, with
                                two-state fits
    validation/T…/              with ``validation_steps``: unbiased MD at each target (or, with
                                ``validation_replica_exchange``, one replica exchange over the targets)
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

Every path the folder's files keep is relative to it, so it can be moved or copied.
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
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latf_openmm.errors import LatfError
from latf_openmm.files import check_output, write_json
from latf_openmm.loop.config import CONFIG, ESTIMATE, FINAL, RESUMABLE_KEYS, ROUND_FILE, LoopConfig
from latf_openmm.loop.estimate import (
    converged,
    effective_sample_sizes,
    equilibrium_estimate,
    load_estimate,
    save_estimate,
)
from latf_openmm.loop.final import final_cpu_seconds, population_table, summarize
from latf_openmm.loop.rounds import (
    completed_round,
    dask_client,
    describe_round,
    few_frames_warnings,
    new_round,
    read_record,
    write_record,
)
from latf_openmm.loop.tasks import (
    cpu_timed,
    final_task,
    load_workflow_system,
    reference_task,
    round_zero_task,
    validation_task,
)
from latf_openmm.units import KB_KJ_PER_MOL_K

if TYPE_CHECKING:
    from dask.distributed import Client

log = logging.getLogger(__name__)


def _prepared(config: LoopConfig, out_dir: str | Path) -> tuple[LoopConfig, Path]:
    """Return the workflow with its temperature defaults filled in and the run folder, checked and ready.

    A run folder already there must hold a run of the same workflow (up to
    :data:`RESUMABLE_KEYS`); ``config.json`` is written only then.
    """
    out = check_output(out_dir, "folder").resolve()
    config = config.located(Path.cwd())  # a LoopConfig made in Python: paths from here
    molsys = load_workflow_system(config)
    config.check_steps(config.md.frame_interval or molsys.frame_interval)
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
    if config.validation_replica_exchange and len(config.targets) < 2:
        raise LatfError("workflow: validation_replica_exchange needs at least two targets (or md_temperatures)")
    if config.replicas_along_cv and len(config.replica_temperatures) < 2:
        raise LatfError("workflow: replicas along the CV need at least two replica_temperatures (or md_temperatures)")
    if (out / CONFIG).is_file():
        config.check_resume(json.loads((out / CONFIG).read_text()), out)
    elif out.is_dir() and any(out.iterdir()):
        raise LatfError(f"{out_dir} is not empty and holds no loop run ({CONFIG}); choose a new output directory")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, config.stored())
    return config, out


def _run_round_zero(config: LoopConfig, client: Client, folder: Path) -> None:
    """Run round 0 (the user's data, or unbiased MD) on the cluster and write its record in ``folder``."""
    what = (
        "the user's runs"
        if config.initial_data
        else f"unbiased MD at {config.md_temperatures}, {config.md_steps} steps"
    )
    log.info("round 0: %s", what)
    runs, cpu = client.submit(cpu_timed, round_zero_task, config, str(folder), pure=False).result()
    write_record(folder, {"round": 0, "runs": runs, "effective_sample_size": effective_sample_sizes(runs),
                          "cpu_seconds": round(cpu, 1)})  # fmt: skip


def _run_validation(config: LoopConfig, client: Client, folder: Path) -> dict[float, tuple[str, float]]:
    """Run the validation MD at the targets; return each target's run folder and CPU seconds.

    Independent runs, or one replica exchange over the targets (``validation_replica_exchange``),
    whose CPU time is shared equally among its replicas.
    """
    if config.validation_replica_exchange:
        runs, cpu = client.submit(cpu_timed, reference_task, config, str(folder), pure=False).result()
        return {t: (run, cpu / len(runs)) for t, run in zip(config.targets, runs, strict=True)}
    folders = {t: str(folder / f"T{t:g}") for t in config.targets}
    futures = {t: client.submit(cpu_timed, validation_task, config, t, f, pure=False) for t, f in folders.items()}
    return {t: future.result() for t, future in futures.items()}


def run_loop(config: LoopConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) the loop of ``config`` in ``out_dir``; returns the summary.

    A run folder keeps its paths relative to itself, so it can be moved or copied and
    resumed from anywhere. Resuming with other settings than :data:`RESUMABLE_KEYS` is refused.
    """
    config, out = _prepared(config, out_dir)
    started = time.perf_counter()

    round_zero = out / "round_000"
    history: list[dict[str, Any]] = []
    previous_model: str | None = None
    client = None
    try:
        if not (round_zero / ROUND_FILE).is_file():
            client = dask_client(config)
            _run_round_zero(config, client, round_zero)
        round_zero_record = read_record(round_zero)
        runs = round_zero_record["runs"]
        estimate = round_zero / ESTIMATE  # round 0's, along the features: round 1 trains with it
        if not estimate.is_file():
            save_estimate(equilibrium_estimate(runs), estimate)
        rounds: list[Path] = []
        for number in range(1, config.rounds + 1):
            folder = out / f"round_{number:03d}"
            record_path = folder / ROUND_FILE
            if record_path.is_file():
                record = completed_round(folder)
            else:
                client = client or dask_client(config)
                record = new_round(config, client, folder, number, runs, previous_model, estimate, rounds)
                write_record(folder, record)
            log.info("%s (elapsed %.0f s)", describe_round(config, record), time.perf_counter() - started)
            for warning in few_frames_warnings(record):
                log.warning(warning)
            history.append(record)
            runs = runs + record["walkers"] + record.get("production", []) + record.get("replicas", [])
            previous_model, estimate = record["model"], folder / ESTIMATE
            rounds.append(folder)
            if converged(config, record):
                break
        final_model = out / FINAL / "model.pt"
        final_cpu = final_cpu_seconds(out / FINAL, history[-1])
        if final_cpu is None:
            client = client or dask_client(config)
            final_future = client.submit(cpu_timed, final_task, config, previous_model, runs, str(estimate),
                                         str(final_model), pure=False)  # fmt: skip
        validation = {}
        if config.validation_steps:
            client = client or dask_client(config)
            validation = _run_validation(config, client, out / "validation")
        if final_cpu is None:
            final_cpu = final_future.result()[1]
    finally:
        if client is not None:
            client.close()
    validation_cpu = sum(seconds for _, seconds in validation.values())
    cpu = round_zero_record["cpu_seconds"] + sum(r["cpu_seconds"] for r in history) + final_cpu + validation_cpu
    validation = {t: run for t, (run, _) in validation.items()}
    return summarize(config, out, history, final_model, load_estimate(estimate), final_cpu, validation,
                      time.perf_counter() - started, cpu, validation_cpu)  # fmt: skip


__all__ = ["RESUMABLE_KEYS", "LoopConfig", "equilibrium_estimate", "population_table", "run_loop"]
