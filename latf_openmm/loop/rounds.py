"""One round: train, export, walkers, their bias fixed and saved, the runs under it, the estimate, the record."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask.distributed import Client, Future, LocalCluster, as_completed
from tqdm.auto import tqdm

from latf_openmm.errors import LatfError
from latf_openmm.export import export_cv
from latf_openmm.files import write_json
from latf_openmm.generation import (
    generate,
)
from latf_openmm.loop.config import ESTIMATE, FROZEN_BIAS, ROUND_FILE, LoopConfig, located_path, stored_path
from latf_openmm.loop.estimate import (
    effective_sample_sizes,
    equilibrium_estimate,
    load_estimate,
    round_record,
    save_estimate,
)
from latf_openmm.loop.tasks import (
    cpu_timed,
    export_featurizer,
    frozen_grid,
    production_task,
    replica_task,
    train_task,
    walker_task,
)
from latf_openmm.models import LatentModel, load_model
from latf_openmm.simulation import Run
from latf_openmm.versions import versions

log = logging.getLogger(__name__)
RECORD_PATH_KEYS = ("model", "runs", "walkers", "production", "replicas")
FEW_EFFECTIVE_FRAMES = 50  # a run of the estimate worth fewer frames than this after unbiasing is reported
ROUND_REPORT_BINS = 40  # grid points per latent axis of each round's free-energy surfaces


def sha256_of(path: Path) -> str:
    """Return the SHA-256 hex digest of the file at ``path``."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the loop -------------------------------------------------------------------------
def dask_client(config: LoopConfig) -> Client:
    """Connect to the workflow's scheduler, or start a local cluster: one single-threaded worker process per walker."""
    if config.scheduler:
        return Client(config.scheduler)
    cluster = LocalCluster(
        n_workers=config.walkers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",  # any free port: two loops on one machine do not clash (no warning)
        silence_logs=logging.CRITICAL,  # a failed task reaches the caller as its exception, not a log dump
    )
    return Client(cluster)


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Write a round's record (``folder/round.json``, last), its paths relative to the run folder."""
    write_json(folder / ROUND_FILE, relative_record(record, folder.parent))


def relative_record(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """Return a round's record with its paths relative to the run folder ``out`` (as files keep them)."""
    return _record_paths(record, lambda path: stored_path(path, out))


def read_record(folder: Path) -> dict[str, Any]:
    """Read a round's record, its paths located from the run folder (wherever it is now)."""
    record = json.loads((folder / ROUND_FILE).read_text())
    return _record_paths(record, lambda path: located_path(path, folder.parent))


def _record_paths(record: dict[str, Any], convert: Callable[[str], str]) -> dict[str, Any]:
    """Return ``record`` with ``convert`` applied to its paths: the model, the runs, and its runs' ESS keys."""
    converted = dict(record)
    for key in RECORD_PATH_KEYS:
        if key in record:
            value = record[key]
            converted[key] = convert(value) if isinstance(value, str) else [convert(path) for path in value]
    if "effective_sample_size" in record:
        converted["effective_sample_size"] = {convert(run): v for run, v in record["effective_sample_size"].items()}
    return converted


def _results(futures: list[Future], description: str) -> list[Any]:
    """Return the futures' results in order, with a progress bar of how many have finished."""
    for _ in tqdm(as_completed(futures), total=len(futures), desc=description, unit="run", leave=False):
        pass
    return [future.result() for future in futures]


def completed_round(folder: Path) -> dict[str, Any]:
    """Return the record of a complete round; raise if an earlier version of the loop made it."""
    if not ((folder / ESTIMATE).is_file() and (folder / FROZEN_BIAS).is_file()):
        raise LatfError(
            f"{folder} was made by an earlier version of the loop (no {ESTIMATE} or {FROZEN_BIAS}); "
            "run this workflow in a new output folder"
        )
    return read_record(folder)


def new_round(
    config: LoopConfig,
    client: Client,
    folder: Path,
    number: int,
    runs: list[str],
    previous_model: str | None,
    previous_estimate: Path,
    rounds: list[Path],
) -> dict[str, Any]:
    """Run round ``number`` in ``folder`` and return the round's record.

    Train on ``runs`` (the prior fitted to the previous round's estimate), export, run the
    walkers, fix and save their bias's grid, run under it, and estimate once over all runs
    (``folder/estimate.npz``, with ``rounds`` and this one).
    """
    folder.mkdir(parents=True, exist_ok=True)
    t0, here = time.perf_counter(), time.process_time()
    model_path = str(folder / "model.pt")
    train_cpu = 0.0  # the training task's CPU time (its wall time counts waits for the shared cores)
    if not Path(model_path).is_file():
        log.info("round %d: training on %d runs", number, len(runs))
        train_cpu = client.submit(cpu_timed, train_task, config, runs, previous_model, str(previous_estimate),
                                  model_path, pure=False).result()[1]  # fmt: skip
    t1 = time.perf_counter()
    cpu = train_cpu
    model = load_model(model_path)
    export_cv(model, export_featurizer(config, model), folder / "cv.pt")
    futures = [
        client.submit(
            cpu_timed,
            walker_task,
            config,
            number,
            model_path,
            str(folder / "shared"),
            i,
            str(folder / "walkers" / f"walker_{i}"),
            pure=False,
        )
        for i in range(config.walkers)
    ]
    log.info(
        "round %d: trained (%.0f s); %d walkers, %d steps each", number, t1 - t0, config.walkers, config.walker_steps
    )
    walkers, walker_cpu = zip(*_results(futures, f"round {number} walkers"), strict=True)
    walkers = list(walkers)
    cpu += sum(walker_cpu)
    t2 = time.perf_counter()
    production: list[str] = []
    if config.production_steps:
        shared = str(folder / "shared")
        futures = [
            client.submit(
                cpu_timed,
                production_task,
                config,
                number,
                model_path,
                shared,
                i,
                walker_run,
                str(folder / "production" / f"walker_{i}"),
                pure=False,
            )
            for i, walker_run in enumerate(walkers)
        ]
        production, production_cpu = (
            list(v) for v in zip(*_results(futures, f"round {number} runs under the fixed bias"), strict=True)
        )
        cpu += sum(production_cpu)
    t_production = time.perf_counter()
    replicas: list[str] = []
    if config.replicas_along_cv:
        replicas, replica_cpu = client.submit(cpu_timed, replica_task, config, number, model_path,
                                              str(folder / "shared"), str(folder / "replicas"),
                                              pure=False).result()  # fmt: skip
        cpu += replica_cpu
    t3 = time.perf_counter()
    frozen_grid(config, model, folder / "shared", Run.open(walkers[0]).temperature_K).save(folder / FROZEN_BIAS)
    estimate = equilibrium_estimate(runs + walkers + production + replicas, [*rounds, folder])
    save_estimate(estimate, folder / ESTIMATE)
    estimates = round_record(Path(model_path), load_estimate(previous_estimate), estimate)
    data_digest = _report_round(config, model, folder)
    cpu += time.process_time() - here
    t_end = time.perf_counter()
    return {
        "round": number,
        "model": model_path,
        "model_sha256": sha256_of(Path(model_path)),
        "data_digest": data_digest,
        "versions": versions(),
        "walkers": walkers,
        "production": production,
        "replicas": replicas,
        **estimates,
        "effective_sample_size": effective_sample_sizes(walkers + production + replicas),
        "train_seconds": round(t1 - t0, 2),
        "train_cpu_seconds": round(train_cpu, 1),
        "walker_seconds": round(t2 - t1, 2),
        "production_seconds": round(t_production - t2, 2),
        "replica_seconds": round(t3 - t_production, 2),
        "estimate_seconds": round(t_end - t3, 2),  # the frozen grid, the estimate, the record, the report
        "round_seconds": round(t_end - t0, 2),
        "cpu_seconds": round(cpu, 1),
    }


def describe_round(config: LoopConfig, record: dict[str, Any]) -> str:
    """Return one line on a finished round: its time, populations and changes against the tolerances."""
    populations = "; ".join(f"{t}: {' / '.join(f'{p:.3f}' for p in v)}" for t, v in record["populations"].items())
    return (
        f"round {record['round']} done in {record['round_seconds']:.0f} s: populations {populations}; "
        f"change {record['population_change']:.3g} (tolerance {config.tolerance:g}), "
        f"free energy {record['fes_change_kT']:.3g} k_BT (tolerance {config.fes_tolerance:g})"
    )


def few_frames_warnings(record: dict[str, Any]) -> list[str]:
    """Return one line per production run or replica of a round worth fewer than ``FEW_EFFECTIVE_FRAMES``.

    The count is the Kish effective sample size of the run's unbiasing weights. Such a run's
    fixed bias has driven it where the estimate gives its frames little weight, so the
    populations it contributes rest on a handful of frames (on alanine dipeptide, rounds
    whose replicas had 16–65 lost a state in the next training; one had 3).
    """
    sizes = record.get("effective_sample_size", {})
    return [
        f"round {record['round']}: {run} is worth {sizes[run]:.0f} frames after unbiasing (Kish effective sample "
        f"size, below {FEW_EFFECTIVE_FRAMES}): its bias drove it where the estimate weighs its frames little; "
        "a weaker bias or longer runs give the next round more to learn from"
        for run in [*record.get("production", []), *record.get("replicas", [])]
        if run in sizes and sizes[run] < FEW_EFFECTIVE_FRAMES
    ]


def _report_round(config: LoopConfig, model: LatentModel, folder: Path) -> str:
    """Write a round's generated distributions and (2-D) free-energy surfaces at the targets; return the data digest.

    The surfaces are on a grid of ``ROUND_REPORT_BINS`` per axis (the final model's, 80): a
    D-SPIB density is an ODE solve per grid point, ≈ 11 s per temperature on 80 × 80.
    """
    plot = folder / "fes.png" if model.latent_dim == 2 else None
    samples = min(config.samples, 50_000)
    generate(model, config.targets, samples, folder / "generated.npz", bins=ROUND_REPORT_BINS, plot=plot)
    return model.info["data_digest"]
