"""Training data: per-trajectory features with optional labels, weights and temperatures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latf_openmm.errors import LatfError
from latf_openmm.files import array_digest


@dataclass
class TrainingData:
    """Trajectories of features, validated.

    Attributes
    ----------
    features
        One (n_frames_i, n_features) float array per trajectory.
    labels
        Optional initial state per frame (non-negative integers), one array per trajectory.
    weights
        Optional non-negative data weight per frame (e.g. reweighting factors of biased runs).
    equilibrium_weights
        Optional per-frame weights of the best estimate of the equilibrium distribution at
        each trajectory's temperature, for LaTF's density (the flow's prior term); default:
        ``weights``. The loop puts its MBAR estimate here
        (:func:`latf_openmm.loop.equilibrium_estimate`; adaptive walkers' frames weigh
        nothing); counted by their own weights, a short transient of a biased run can
        outweigh the rest. SPIB's state-predictive loss keeps ``weights``
        (every frame counts once with the training option ``spib_weights = 'sampled'``).
    temperatures
        Optional temperature of each trajectory (any unit, used consistently).
    temperature_unit
        Unit of ``temperatures`` (``"K"``, ``"kT/eps"`` or ``""`` when unknown).
    feature_names
        Name of each feature column.
    segments
        Optional per-frame id of the continuous stretch of dynamics each frame comes from
        (replica exchange: the replica that produced it); a lagged pair joins only frames
        of one unbroken stretch. None: every trajectory is continuous.
    featurizer
        The featurizer that made the features, as numbers (:meth:`Featurizer.resolved`), when
        known (run folders record it); a model trained on the data keeps it.
    """

    features: list[np.ndarray]
    labels: list[np.ndarray] | None = None
    weights: list[np.ndarray] | None = None
    temperatures: np.ndarray | None = None
    temperature_unit: str = ""
    feature_names: list[str] | None = None
    segments: list[np.ndarray] | None = None
    equilibrium_weights: list[np.ndarray] | None = None
    featurizer: dict[str, object] | None = None

    def __post_init__(self) -> None:
        """Convert the arrays to float64 (labels and segments to int64) and reject malformed data."""
        if isinstance(self.features, np.ndarray) and self.features.dtype != object:
            if self.features.ndim not in (2, 3):
                raise LatfError(
                    f"features of shape {self.features.shape}: give (n_frames, n_features) for one trajectory, "
                    "(n_trajectories, n_frames, n_features), or a list of (n_frames, n_features) arrays"
                )
            self.features = [self.features] if self.features.ndim == 2 else list(self.features)
        if not len(self.features):
            raise LatfError("training data holds no trajectories")
        try:
            self.features = [np.asarray(f, dtype=np.float64) for f in self.features]
        except (TypeError, ValueError) as exc:
            raise LatfError(f"features must be numbers: {exc}") from None
        n_features = self.features[0].shape[-1] if self.features[0].ndim == 2 else "n_features"
        self._check_features(n_features)
        lengths = [len(f) for f in self.features]
        self.labels = self._per_frame(self.labels, "labels", lengths, np.int64)
        self.weights = self._per_frame(self.weights, "weights", lengths, np.float64)
        self.equilibrium_weights = self._per_frame(self.equilibrium_weights, "equilibrium_weights", lengths, np.float64)
        self.segments = self._per_frame(self.segments, "segments", lengths, np.int64)
        self._check_labels()
        self._check_weights()
        if self.temperatures is not None:
            self.temperatures = np.asarray(self.temperatures, dtype=np.float64).reshape(-1)
            self._check_temperatures()
        if self.feature_names is None:
            self.feature_names = [f"f{i}" for i in range(n_features)]
        elif len(self.feature_names) != n_features:
            raise LatfError(f"{len(self.feature_names)} feature names for {n_features} features")

    def _check_features(self, n_features: int | str) -> None:
        """Raise unless every trajectory is a finite (n_frames, n_features) array."""
        for i, traj in enumerate(self.features):
            if traj.ndim != 2 or traj.shape[1] != n_features:
                raise LatfError(
                    f"features of trajectory {i} have shape {traj.shape}; every trajectory needs "
                    f"(n_frames, {n_features})"
                )
            if not np.isfinite(traj).all():
                bad = np.argwhere(~np.isfinite(traj))[0]
                raise LatfError(
                    f"features of trajectory {i} contain NaN or inf (first at frame {bad[0]}, column {bad[1]})"
                )

    def _check_labels(self) -> None:
        """Raise unless the labels, if given, are non-negative and name at least two states."""
        if self.labels is not None and any(np.any(lab < 0) for lab in self.labels):
            raise LatfError("labels must be non-negative integers")
        if self.labels is not None and len(np.unique(np.concatenate(self.labels))) < 2:
            raise LatfError("the initial labels hold a single state; SPIB needs at least two")

    def _check_weights(self) -> None:
        """Raise unless both kinds of weights, where given, are finite, non-negative and not all zero."""
        for name in ("weights", "equilibrium_weights"):
            if getattr(self, name) is not None:
                flat = np.concatenate(getattr(self, name))
                if not np.isfinite(flat).all() or np.any(flat < 0):
                    raise LatfError(f"{name} must be finite and non-negative")
                if flat.sum() <= 0:
                    raise LatfError(f"{name} are all zero")

    def _check_temperatures(self) -> None:
        """Raise unless there is one finite, positive temperature per trajectory."""
        if len(self.temperatures) != len(self.features):
            raise LatfError(
                f"{len(self.temperatures)} temperatures for {len(self.features)} trajectories; give one per trajectory"
            )
        if not np.isfinite(self.temperatures).all() or np.any(self.temperatures <= 0):
            raise LatfError(f"temperatures must be positive, got {self.temperatures.tolist()}")

    @staticmethod
    def _per_frame(
        arrays: list[np.ndarray] | np.ndarray | None,
        name: str,
        lengths: list[int],
        dtype: type[np.int64] | type[np.float64],
    ) -> list[np.ndarray] | None:
        """Return ``arrays`` as one ``dtype`` array per trajectory, checked against the frame counts."""
        if arrays is None:
            return None
        if isinstance(arrays, np.ndarray) and arrays.ndim == 2:
            arrays = list(arrays)
        if len(arrays) != len(lengths):
            raise LatfError(f"{name}: {len(arrays)} arrays for {len(lengths)} trajectories")
        out = []
        for i, (values, n) in enumerate(zip(arrays, lengths, strict=True)):
            values = np.asarray(values)
            if values.shape != (n,):
                raise LatfError(f"{name} of trajectory {i} have shape {values.shape}; expected ({n},), one per frame")
            if dtype is np.int64 and not np.issubdtype(values.dtype, np.integer):
                if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
                    raise LatfError(f"{name} of trajectory {i} must be integers")
            out.append(values.astype(dtype))
        return out

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return self.features[0].shape[1]

    @property
    def lengths(self) -> list[int]:
        """Frames per trajectory."""
        return [len(f) for f in self.features]

    def lagged_starts(self, lag: int) -> np.ndarray:
        """Return the frames t whose frame t + lag follows in the same trajectory and unbroken stretch.

        The frames t are indices into the concatenated trajectories; a stretch is an unbroken
        stretch of dynamics.
        """
        trajectory = np.repeat(np.arange(len(self.features)), self.lengths)
        segment = np.concatenate(self.segments) if self.segments is not None else np.zeros_like(trajectory)
        breaks = (trajectory[1:] != trajectory[:-1]) | (segment[1:] != segment[:-1])
        stretch = np.concatenate([[0], np.cumsum(breaks)])
        return np.flatnonzero(stretch[:-lag] == stretch[lag:]) if 0 < lag < len(stretch) else np.zeros(0, np.int64)

    def digest(self) -> str:
        """SHA-256 of the data (features, labels, both weights, temperatures, segments), for provenance."""
        temperatures = [] if self.temperatures is None else [self.temperatures]
        groups = (self.features, self.labels or [], self.weights or [], self.segments or [], temperatures,
                  self.equilibrium_weights or [])  # fmt: skip
        return array_digest(array for group in groups for array in group)


LABEL_METHODS = ("auto", "grid", "kmeans")
LABEL_DESCRIPTORS = ("features", "central_moments")


def initial_labels(
    features: np.ndarray, n_states: int, seed: int = 0, method: str = "auto", descriptors: str = "features"
) -> np.ndarray:
    """Assign an initial state to each frame: a regular grid or k-means clusters of per-frame descriptors.

    ``descriptors="features"`` clusters the features themselves; ``"central_moments"`` the 2nd
    and 3rd central moments of each frame's features, which do not change when identical
    particles swap (the LaTF paper's initial labels for LJ7's coordination numbers).
    ``method="grid"``: ⌈n_states^(1/D)⌉ equal-width bins per descriptor over the data's
    range; ``"kmeans"``: scikit-learn k-means with ``n_states`` clusters (one seeded
    initialization); ``"auto"``: grid for ≤ 2 descriptors, else k-means.
    """
    features = np.asarray(features, dtype=np.float64)
    if n_states < 2:
        raise LatfError(f"the number of initial states must be at least 2, got {n_states}")
    if method not in LABEL_METHODS:
        raise LatfError(f"initial-label method must be one of {', '.join(LABEL_METHODS)}, got {method!r}")
    if descriptors not in LABEL_DESCRIPTORS:
        raise LatfError(f"initial-label descriptors must be one of {', '.join(LABEL_DESCRIPTORS)}, got {descriptors!r}")
    if descriptors == "central_moments":
        centred = features - features.mean(1, keepdims=True)
        features = np.stack([(centred**2).mean(1), (centred**3).mean(1)], axis=1)
    if method == "grid" or (method == "auto" and features.shape[1] <= 2):
        bins = int(np.ceil(n_states ** (1 / features.shape[1]) - 1e-9))
        low, high = features.min(0), features.max(0)
        index = np.floor((features - low) / np.where(high > low, high - low, 1) * bins).astype(np.int64)
        index = np.clip(index, 0, bins - 1)
        flat = np.ravel_multi_index(tuple(index.T), (bins,) * features.shape[1])
    else:
        from sklearn.cluster import KMeans

        flat = KMeans(n_clusters=n_states, n_init=1, random_state=seed).fit_predict(features)
    return np.unique(flat, return_inverse=True)[1].astype(np.int64)
