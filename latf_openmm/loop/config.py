"""Define the loop's workflow and the names of what it writes.

A workflow (:class:`LoopConfig`) is read from TOML and validated before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

from latf_openmm.bias import require_openmm_plumed
from latf_openmm.errors import LatfError
from latf_openmm.export.plumed import require_shared_walkers
from latf_openmm.models import TrainingConfig
from latf_openmm.specs import ADAPTIVE_METHODS, BiasSpec, MDOptions, bias_region_problem, read_spec

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
    "train_cpu_seconds",
    "walker_seconds",
    "production_seconds",
    "replica_seconds",
    "estimate_seconds",
    "round_seconds",
    "cpu_seconds",
)
# Seed indices (simulation.seed_for(seed, index)), one block of 1000 per round: round r's walker i
# uses 1000 r + i, its production 1000 r + 500 + i and its replicas 1000 r + 999; round 0's MD at
# temperature k uses k, the validation MD at target k uses 500 + k, and validation by replica exchange 999.
REPLICA_SEED_INDEX = 999
PRODUCTION_SEED_INDEX = VALIDATION_SEED_INDEX = 500
FINAL = "final"  # RUN_DIR/final/: the final model and its CV for OpenMM and PLUMED, with metadata.json
PROFILE_BINS = 40  # bins of the per-component free-energy profiles compared between rounds
CONFIG = "config.json"  # RUN_DIR/config.json: the workflow the run was made with, its defaults filled in
CONFIG_FORMAT = 2  # of config.json; 2: paths in the run folder's files are relative to it
RESUMABLE_KEYS = ("rounds", "scheduler")  # what may change when a run is resumed: more rounds, another cluster


@dataclasses.dataclass
class LoopConfig:
    """A workflow: what to simulate, how to train and bias, when to stop.

    Temperatures are in the system's user-facing unit (K, or k_BT/ε for reduced-unit systems).
    """

    system: str
    system_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 1
    rounds: int = 3
    tolerance: float = 0.02
    fes_tolerance: float = 0.3
    md_temperatures: list[float] = dataclasses.field(default_factory=list)
    md_steps: int = 150_000  # defaults: multiples of every shipped frame interval (3, 20, 500)
    replica_exchange: bool = False
    exchange_interval: int = 1
    initial_data: list[str] = dataclasses.field(default_factory=list)
    walkers: int = 2
    walker_steps: int = 150_000
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
    validation_replica_exchange: bool = False
    scheduler: str | None = None

    def __post_init__(self) -> None:
        """Turn ``[md]`` and ``[bias]`` tables (e.g. from ``config.json``) into their specs."""
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
            moved = sorted(unknown & {f.name for f in dataclasses.fields(MDOptions)})
            hint = f" ({', '.join(moved)}: MD options go in the [md] table)" if moved else ""
            raise LatfError(f"{path}: unknown key(s) {sorted(unknown)}{hint}; allowed: {sorted(names)}")
        if "system" not in raw:
            raise LatfError(f"{path}: 'system' is required")
        config = read_spec(cls, raw, str(path)).located(Path(path).parent)
        config.validate(str(path))
        return config

    def located(self, base: Path) -> LoopConfig:
        """Return the workflow with a recipe path and ``initial_data`` made absolute, from ``base`` if relative."""
        system = str((base / self.system).resolve()) if self.system.endswith(".toml") else self.system
        return dataclasses.replace(
            self, system=system, initial_data=[str((base / folder).resolve()) for folder in self.initial_data]
        )

    def validate(self, source: str = "workflow") -> None:
        """Raise :class:`LatfError` for out-of-range settings, naming ``source`` (the workflow file)."""
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
                raise LatfError(f"{source}: {message}")
        if self.validation_replica_exchange and not self.validation_steps:
            raise LatfError(f"{source}: validation_replica_exchange needs validation_steps (steps per replica)")
        if self.bias.engine == "plumed":
            require_openmm_plumed()
            if self.walkers > 1:
                try:
                    require_shared_walkers(self.bias.method)
                except LatfError as error:
                    raise LatfError(f"{source}: {error} (or walkers = 1)") from None
        training = read_spec(TrainingConfig, self.train, f"{source} [train]")
        try:
            training.validate()
        except LatfError as error:
            raise LatfError(f"{source} [train]: {str(error).removeprefix('training config: ')}") from None
        bias, dim = self.bias, training.latent_dim
        problem = bias_region_problem(bias.components, bias.lower, bias.upper, bias.sigma, bias.bins, cv_dim=dim)
        if problem is not None:
            raise LatfError(f"{source} [bias]: {problem} (the CV is {dim}-dimensional: [train] latent_dim)")
        if not (self.production_steps > 0 or self.replicas_along_cv):
            raise LatfError(
                f"{source}: the estimate needs runs under a fixed bias; set production_steps (each walker goes on "
                "with the round's bias fixed) or replicas_along_cv = true"
            )

    def check_steps(self, frame_interval: int) -> None:
        """Raise unless every run's steps are a multiple of the frame interval (the system's, or ``[md]``'s)."""
        names = ("md_steps", "walker_steps", "production_steps", "replica_steps", "validation_steps")
        bad = [f"{name} = {getattr(self, name)}" for name in names if (getattr(self, name) or 0) % frame_interval]
        if bad:
            raise LatfError(f"workflow: {', '.join(bad)}: steps must be a multiple of the frame interval "
                            f"({frame_interval} steps; [md] frame_interval sets it)")  # fmt: skip

    def check_resume(self, stored: dict[str, Any], out: Path) -> None:
        """Raise unless this workflow may continue the run in ``out``, made with ``stored`` (its ``config.json``).

        Only :data:`RESUMABLE_KEYS` may differ: the rest defines the data already there. Paths
        may move with the run (``initial_data``; a recipe file, compared by its content). A run
        folder from an earlier version of the loop (another :data:`CONFIG_FORMAT`) is refused.
        """
        if stored.get("format") != CONFIG_FORMAT:
            raise LatfError(
                f"{out} was made by an earlier version of the loop; run this workflow in a new output folder"
            )
        current, stored = _flat(self.stored()), _flat(stored)
        ignored = {*RESUMABLE_KEYS, "initial_data"}  # round 0's record keeps the runs it read
        if "system_recipe_sha256" in current and "system_recipe_sha256" in stored:
            ignored.add("system")  # a recipe that moved with the run: compared by its content
        differ = sorted(key for key in {*current, *stored} if key not in ignored
                        and current.get(key) != stored.get(key))  # fmt: skip
        if differ:
            changes = "; ".join(f"{key}: {stored.get(key)!r} → {current.get(key)!r}" for key in differ)
            raise LatfError(
                f"{out} holds a loop run made with other settings ({changes}); only "
                f"{' and '.join(RESUMABLE_KEYS)} may change on resume: choose a new output directory"
            )

    def stored(self) -> dict[str, Any]:
        """Return the workflow as ``config.json`` keeps it (JSON types, its format, a recipe file's SHA-256)."""
        table = {"format": CONFIG_FORMAT, **json.loads(json.dumps(dataclasses.asdict(self)))}
        if self.system.endswith(".toml"):
            table["system_recipe_sha256"] = hashlib.sha256(Path(self.system).read_bytes()).hexdigest()
        return table


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return a nested table as one level, its keys joined by dots (``bias.pace``)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):  # an empty table adds no key
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stored_path(path: str | Path, out: Path) -> str:
    """Return ``path`` as a run folder's records keep it: relative to ``out`` when inside it, so the folder can move."""
    path = Path(path).resolve()
    return str(path.relative_to(out)) if path.is_relative_to(out) else str(path)


def located_path(path: str | Path, out: Path) -> str:
    """Return a path kept by :func:`stored_path` as a path to use now."""
    return str(out / path)
