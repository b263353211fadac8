"""Training data from files: ``.npz`` arrays or ``latf simulate`` run folders.

Biased runs' frames carry their unbiasing weights (the adapter between run folders and the
models, which take arrays only).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from latf_openmm.errors import LatfError
from latf_openmm.models import TrainingData
from latf_openmm.reweighting.weights import run_weights
from latf_openmm.simulation.run import Run, find_runs


def load_training_data(paths: Sequence[str | Path]) -> TrainingData:
    """Load training data from ``.npz`` files or ``latf simulate`` run folders.

    An ``.npz`` holds ``features`` shaped (n_traj, n_frames, n_features) or as an object
    array of per-trajectory arrays, and optionally ``labels``, ``weights``,
    ``equilibrium_weights``, ``segments`` (per frame), ``temperatures`` (per trajectory) and
    ``feature_names``. A run folder (or
    a folder of run folders) contributes one trajectory per run, at the run's temperature
    (in the system's user-facing unit); a biased run's frames carry its unbiasing weights
    (:func:`latf_openmm.reweighting.run_weights`), and a replica-exchange temperature's
    frames their replica as segments. Several sources are concatenated.
    """
    parts: list[TrainingData] = []
    for path in map(Path, paths):
        if path.suffix == ".npz":
            parts.append(_from_npz(path))
        else:
            parts.extend(_from_run(run) for run in find_runs([path]))
    if not parts:
        raise LatfError("no training data given")
    names = parts[0].feature_names
    for part in parts[1:]:
        if part.n_features != parts[0].n_features:
            raise LatfError("training data sources have different numbers of features")
    units = {p.temperature_unit for p in parts}
    with_t = [p.temperatures is not None for p in parts]
    if any(with_t) and not all(with_t):
        raise LatfError("some training data sources have temperatures and others do not")
    if len(units) > 1:
        raise LatfError(f"training data sources use different temperature units: {sorted(units)}")
    has_labels = [p.labels is not None for p in parts]
    if any(has_labels) and not all(has_labels):
        raise LatfError("some training data sources have labels and others do not")

    def per_frame(name: str, default: float) -> list[np.ndarray] | None:
        """One array per trajectory of every part; parts without it get ``default``."""
        if all(getattr(p, name) is None for p in parts):
            return None
        return [a for p in parts for a in (getattr(p, name) or [np.full(n, default) for n in p.lengths])]

    equilibrium = None
    if any(p.equilibrium_weights is not None for p in parts):  # a part without them: its data weights
        equilibrium = [w for p in parts for w in p.equilibrium_weights or p.weights or [np.ones(n) for n in p.lengths]]
    return TrainingData(
        features=[f for p in parts for f in p.features],
        labels=[lab for p in parts for lab in p.labels] if all(has_labels) else None,
        weights=per_frame("weights", 1.0),
        equilibrium_weights=equilibrium,
        temperatures=np.concatenate([p.temperatures for p in parts]) if all(with_t) else None,
        temperature_unit=units.pop(),
        feature_names=names,
        segments=per_frame("segments", 0),
        featurizer=_common_featurizer(parts),
    )


def _from_npz(path: Path) -> TrainingData:
    if not path.is_file():
        raise LatfError(f"data file not found: {path}")
    try:
        data = np.load(path, allow_pickle=True)  # per-trajectory arrays of unequal length are object arrays
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise LatfError(f"cannot read {path}: not a NumPy .npz file ({exc})") from exc
    with data:
        if "features" not in data.files:
            raise LatfError(f"{path} has no 'features' array (it has: {', '.join(data.files)})")

        def get(key: str) -> list[np.ndarray] | np.ndarray | None:
            """Return array ``key`` (a list of per-trajectory arrays if it is an object array), or None."""
            return (
                list(data[key])
                if key in data.files and data[key].dtype == object
                else (data[key] if key in data.files else None)
            )

        names = [str(n) for n in data["feature_names"]] if "feature_names" in data.files else None
        return TrainingData(
            get("features"), get("labels"), get("weights"), get("temperatures"), feature_names=names,
            segments=get("segments"), equilibrium_weights=get("equilibrium_weights"),
        )  # fmt: skip


def _common_featurizer(parts: list[TrainingData]) -> dict[str, object] | None:
    """Return the featurizer all parts were made with, None if some do not record one; raise if they differ."""
    recorded = [p.featurizer for p in parts]
    if any(f is not None and f != recorded[0] for f in recorded):
        raise LatfError("the training runs were made with different featurizers (another system or features)")
    return None if any(f is None for f in recorded) else recorded[0]


def _from_run(path: Path) -> TrainingData:
    run = Run.open(path)
    series = run.load_timeseries()
    features, names = series["features"], [str(n) for n in series["feature_names"]]
    replicas = [series["replica"]] if "replica" in series else None
    settings = run.settings
    return TrainingData(
        [features],
        weights=[run_weights(run)] if run.bias else None,
        temperatures=np.array([settings["temperature"]]),
        temperature_unit=settings["temperature_unit"],
        feature_names=names,
        segments=replicas,
        featurizer=run.featurizer,
    )


__all__ = ["load_training_data"]
