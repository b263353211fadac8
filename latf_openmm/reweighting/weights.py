"""Per-frame equilibrium weights of biased and multi-temperature runs (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from latf_openmm._quiet import quiet_import
from latf_openmm.bias.harmonic import wall_energies
from latf_openmm.errors import LatfError
from latf_openmm.files import write_npz
from latf_openmm.models import TrainingData
from latf_openmm.simulation.run import Run
from latf_openmm.units import KB_KJ_PER_MOL_K

ANCHOR_LADDER = 8  # ladder points uniform in 1/T across the sampled temperatures and the span asked for
ANCHOR_ESS_FRACTION = 0.25  # a ladder point's ESS, as a fraction of the smallest at a sampled temperature


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (Σw)² / Σw²."""
    weights = np.asarray(weights, dtype=float).ravel()
    return float(weights.sum() ** 2 / np.sum(weights**2)) if weights.size else 0.0


def _normalized(log_weights: list[np.ndarray]) -> list[np.ndarray]:
    """exp(log w), scaled so that all runs together sum to their number of frames."""
    total = sum(len(w) for w in log_weights)
    shift = logsumexp(np.concatenate(log_weights)) - np.log(total)
    return [np.exp(w - shift) for w in log_weights]


def bias_weights(energy: np.ndarray, constant: np.ndarray, kt: float) -> np.ndarray:
    """Unbiasing weights exp((V − c(t))/k_BT), mean 1, of frames with bias ``energy`` and c(t) ``constant``.

    Both in kJ/mol: the bias and ``rct`` columns of any COLVAR, this package's or PLUMED's.
    """
    return _normalized([(np.asarray(energy, dtype=float) - np.asarray(constant, dtype=float)) / kt])[0]


def without_transient(weights: np.ndarray) -> np.ndarray:
    """Return ``weights`` with the frames before the start that maximizes the rest's Kish ESS weighing 0.

    An adaptive bias's first frames, sampled before it is quasi-static, can carry most of
    the weight: with PLUMED's OPES_METAD, whose bias starts at −ΔE, one walker's Kish ESS
    was 13 of 5000 frames, one early frame holding 15 % of the weight (1789 without its
    first 5 % of frames). This is the rule of :func:`pymbar.timeseries.detect_equilibration`,
    which maximizes the uncorrelated samples left, applied to the weights; the start is
    sought in the first half, where a transient is. The result keeps the mean 1.
    """
    weights = np.asarray(weights, dtype=float)
    if weights.size == 0 or not (np.isfinite(weights).all() and weights.min() >= 0 and weights.max() > 0):
        raise LatfError("unbiasing weights must be finite, non-negative and not all zero")
    scaled = weights / weights.max()  # no underflow of the squares below
    tail_sum, tail_squares = (np.cumsum(a[::-1])[::-1] for a in (scaled, scaled**2))
    candidates = (weights.size + 1) // 2
    sizes = np.divide(tail_sum**2, tail_squares, out=np.zeros(weights.size), where=tail_squares > 0)
    start = int(np.argmax(sizes[:candidates]))
    kept = np.where(np.arange(weights.size) >= start, weights, 0.0)
    return kept * (weights.size / kept.sum())


def run_weights(run: Run | str | Path) -> np.ndarray:
    """Unbiasing weights of one run's frames (all 1 for an unbiased run), mean 1.

    An adaptive bias's frames weigh exp((V − c(t))/k_BT) from the start that maximizes
    their Kish effective sample size (:func:`without_transient`); earlier frames weigh 0.
    ``run`` is a :class:`~latf_openmm.simulation.Run` or its folder.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    energy, constant, kt = run.bias_energy(), run.reweighting_constant(), KB_KJ_PER_MOL_K * run.temperature_K
    if energy is None:
        return np.ones(run.n_frames)
    if constant is None or run.bias.get("frozen"):  # a restraint, or a bias held fixed
        return bias_weights(energy, np.zeros_like(energy) if constant is None else constant, kt)
    return without_transient(bias_weights(energy, constant, kt))


def restraint_energy(settings: dict, cv: np.ndarray) -> np.ndarray:
    """Energy (kJ/mol) of a ``HarmonicBias`` with these settings at CV values (n, d)."""
    cv = np.atleast_2d(cv)
    centre = np.asarray(settings["centre"], dtype=float)
    energy = 0.5 * settings["force_constant"] * np.sum((cv - centre) ** 2, axis=1)
    return energy + wall_energies(cv, settings["lower"], settings["upper"], settings["wall_constant"])


@dataclass(frozen=True)
class MultistateEstimate:
    """MBAR's solution for runs at several temperatures, each unbiased or under one of several fixed biases.

    It gives equilibrium weights of all their frames at any temperature. Made by
    :func:`multistate_estimate`; the free energies of the sampled states are solved once, so
    each further temperature costs one pass over the frames.
    """

    energies: np.ndarray  # (n_frames,) potential energy without any bias, kJ/mol
    log_denominator: np.ndarray  # (n_frames,) ln Σ_k N_k exp(f_k − u_k(x)), with the 1/g scaling
    run_starts: np.ndarray  # first frame of each run after the first

    def weights(self, temperature: float) -> list[np.ndarray]:
        """Return per run its frames' equilibrium weights at ``temperature`` (K).

        All runs together sum to their number of frames.
        """
        if not temperature > 0:
            raise LatfError(f"temperatures must be positive, got target {temperature}")
        log_w = -self.energies / (KB_KJ_PER_MOL_K * temperature) - self.log_denominator
        return _normalized(np.split(log_w, self.run_starts))


@dataclass(frozen=True)
class EquilibriumEstimate:
    """One MBAR over a set of runs, solved once: each run's frames' equilibrium weights at any temperature.

    Temperatures are in the runs' user-facing unit. Saved and loaded whole, so that it is
    computed once and handed on (the loop: training, the round's record, the final fit).
    """

    runs: tuple[str, ...]
    mbar: MultistateEstimate
    kelvin_per_unit: float  # a user-facing temperature times this is K
    temperatures: tuple[float, ...]  # the runs' temperatures (the sampled ones), ascending

    @classmethod
    def of_runs(
        cls, runs: Sequence[str | Path], settings: Sequence[dict], mbar: MultistateEstimate
    ) -> EquilibriumEstimate:
        """Return the estimate ``mbar`` solved over ``runs``, whose manifests' settings are ``settings``."""
        kelvin_per_unit = settings[0]["temperature_K"] / settings[0]["temperature"]
        temperatures = tuple(sorted({s["temperature"] for s in settings}))
        return cls(tuple(map(str, runs)), mbar, kelvin_per_unit, temperatures)

    def weights(self, temperature: float) -> dict[str, np.ndarray]:
        """Run → its frames' weights at ``temperature``; all runs together sum to their frames."""
        return dict(zip(self.runs, self.mbar.weights(temperature * self.kelvin_per_unit), strict=True))

    def frame_weights(self, temperature: float) -> np.ndarray:
        """Every frame's weight at ``temperature``, the runs one after another in ``runs``' order."""
        return np.concatenate(self.mbar.weights(temperature * self.kelvin_per_unit))

    def anchors(self, span: Sequence[float] = ()) -> tuple[float, ...]:
        """Return the temperatures at which a prior is fitted to this estimate, ascending.

        They are the sampled temperatures and a ladder of ``ANCHOR_LADDER`` points uniform in
        1/T across them and ``span`` (e.g. the temperatures to generate at), each ladder point
        kept where the weights' Kish effective sample size is at least ``ANCHOR_ESS_FRACTION``
        of the smallest at a sampled temperature. Where MBAR has that much overlap, a prior
        fitted there reproduces it (LJ7 from 0.2 and 0.5, 18 cases: the grid prior's largest
        population error at 0.3 went from 0.007–0.022 to 0.001–0.010); beyond, the prior's own
        temperature form extrapolates.
        """
        floor = ANCHOR_ESS_FRACTION * min(effective_sample_size(self.frame_weights(t)) for t in self.temperatures)
        extremes = 1.0 / np.array([min(*self.temperatures, *span), max(*self.temperatures, *span)])
        ladder = [float(t) for t in 1.0 / np.linspace(*extremes, ANCHOR_LADDER)]
        new = [t for t in ladder if min(abs(t - sampled) for sampled in self.temperatures) > 1e-9 * t]
        kept = [t for t in new if effective_sample_size(self.frame_weights(t)) >= floor]
        return tuple(sorted({*self.temperatures, *kept}))

    def training_data(self, data: TrainingData, runs: Sequence[str], temperatures: Sequence[float]) -> TrainingData:
        """Return the estimate's runs among ``data`` (whose trajectory k is ``runs[k]``) at each of ``temperatures``.

        Each run counts at each temperature with its frames' MBAR weights there as equilibrium
        weights (a run's frames inform every temperature, not only its own): the data a prior
        is fitted to so that it generates what the estimate says.
        """
        index = {run: k for k, run in enumerate(runs)}
        missing = [run for run in self.runs if run not in index]
        if missing:
            raise LatfError(f"the estimate's run {missing[0]} is not among the training data")
        members = [(t, index[run], w) for t in temperatures for run, w in self.weights(t).items()]
        return TrainingData(
            [data.features[k] for _, k, _ in members],
            temperatures=np.array([t for t, _, _ in members]),
            equilibrium_weights=[w for _, _, w in members],
            temperature_unit=data.temperature_unit,
            feature_names=data.feature_names,
            segments=None if data.segments is None else [data.segments[k] for _, k, _ in members],
            featurizer=data.featurizer,
        )

    def save(self, path: str | Path) -> None:
        """Write the estimate to an ``.npz``, atomically."""
        write_npz(path, runs=np.array(self.runs), energies=self.mbar.energies,
                  log_denominator=self.mbar.log_denominator, run_starts=self.mbar.run_starts,
                  kelvin_per_unit=np.array(self.kelvin_per_unit), temperatures=np.array(self.temperatures))  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> EquilibriumEstimate:
        """Read an estimate written by :meth:`save`."""
        try:
            with np.load(path) as data:
                mbar = MultistateEstimate(data["energies"], data["log_denominator"], data["run_starts"])
                runs, temperatures = tuple(str(r) for r in data["runs"]), tuple(data["temperatures"].tolist())
                return cls(runs, mbar, float(data["kelvin_per_unit"]), temperatures)
        except (OSError, KeyError, ValueError) as exc:
            raise LatfError(f"cannot read the equilibrium estimate {path}: {exc}") from exc


def multistate_estimate(
    energies: Sequence[np.ndarray],
    kelvin: Sequence[float],
    sampled_bias: Sequence[int | None],
    bias_energies: np.ndarray,
    inefficiency: Sequence[float] | None = None,
) -> MultistateEstimate:
    """Run MBAR (pymbar) over runs made at several temperatures, each unbiased or under one of several fixed biases.

    The returned estimate gives equilibrium weights at any temperature. The sampled states are
    the distinct (temperature, bias) pairs of the runs; every frame's reduced potential
    β_k (U + V_b) is evaluated in each of them, and a target is β U.
    Correlated frames are handled as pymbar advises: the free energies f_k come from every
    g-th frame of each run (g its statistical inefficiency), the states count those
    uncorrelated samples, and every frame then gets its weight, scaled by 1/g.

    Parameters
    ----------
    energies
        Per run, each frame's potential energy without any bias, kJ/mol.
    kelvin
        Per run, its temperature, K.
    sampled_bias
        Per run, the row of ``bias_energies`` it was sampled under, or None if unbiased.
    bias_energies
        (n_biases, n_frames): each fixed bias (kJ/mol) at every frame of all runs, in order.
    inefficiency
        Per run, its statistical inefficiency g ≥ 1 (:func:`statistical_inefficiency`);
        default 1 (uncorrelated frames).
    """
    lengths = [len(e) for e in energies]
    inefficiency = np.ones(len(lengths)) if inefficiency is None else np.asarray(inefficiency, dtype=float)
    if inefficiency.shape != (len(lengths),) or not (inefficiency >= 1).all():
        raise LatfError(f"MBAR needs one statistical inefficiency ≥ 1 per run, got {inefficiency.tolist()}")
    if not (len(lengths) == len(kelvin) == len(sampled_bias)) or not lengths:
        raise LatfError("MBAR needs one temperature and one sampled bias per run")
    if min(kelvin) <= 0:
        raise LatfError(f"temperatures must be positive, got runs at {sorted(set(kelvin))}")
    all_energy = np.concatenate(energies).astype(float)
    rows = np.vstack([np.zeros(len(all_energy)), np.asarray(bias_energies, dtype=float).reshape(-1, len(all_energy))])
    if not np.isfinite(rows).all() or not np.isfinite(all_energy).all():
        raise LatfError("MBAR: the energies or bias energies are not finite")
    state_of_run = [(float(t), 0 if b is None else int(b) + 1) for t, b in zip(kelvin, sampled_bias, strict=True)]
    states = sorted(set(state_of_run))
    starts = np.cumsum([0, *lengths])
    kept = [
        s + np.unique(np.arange(0, n, g).astype(int))
        for s, n, g in zip(starts[:-1], lengths, inefficiency, strict=True)
    ]
    counts = np.array([sum(len(k) for s, k in zip(state_of_run, kept, strict=True) if s == state) for state in states])
    reduced = np.stack([(all_energy + rows[b]) / (KB_KJ_PER_MOL_K * t) for t, b in states])
    mbar = quiet_import("pymbar").MBAR(reduced[:, np.concatenate(kept)], counts, solver_protocol="robust")
    log_denominator = logsumexp(mbar.f_k[:, None] - reduced, b=counts[:, None], axis=0)
    log_denominator -= np.repeat([np.log(len(k) / n) for k, n in zip(kept, lengths, strict=True)], lengths)
    return MultistateEstimate(all_energy, log_denominator, starts[1:-1])


def statistical_inefficiency(series: np.ndarray) -> float:
    """Return a run's statistical inefficiency g along a time series (n_frames, k).

    It is pymbar's, the largest over the columns (1 for constant columns).
    """
    timeseries = quiet_import("pymbar.timeseries")
    series = np.asarray(series, dtype=float).reshape(len(series), -1)
    return max((timeseries.statistical_inefficiency(c) for c in series.T if np.ptp(c) > 0), default=1.0)


def umbrella_weights(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Unbiased weights of the frames of umbrella-window runs (restraints on the same CV), by MBAR."""
    runs = [Run.open(p) for p in paths]
    settings = [run.bias or {} for run in runs]
    if any(s.get("kind") != "restraint" for s in settings):
        raise LatfError("umbrella_weights needs runs biased by restraints ('latf bias --method restraint')")
    temperatures = {run.temperature_K for run in runs}
    if len(temperatures) != 1:
        raise LatfError(f"umbrella windows must share one temperature, got {sorted(temperatures)} K")
    kelvin = temperatures.pop()
    cvs = [run.cv() for run in runs]
    restraints = np.stack([restraint_energy(s, np.concatenate(cvs)) for s in settings])
    zeros = [np.zeros(len(c)) for c in cvs]  # one temperature: the potential energy cancels
    return multistate_estimate(zeros, [kelvin] * len(runs), range(len(runs)), restraints).weights(kelvin)


def temperature_estimate(paths: Sequence[str | Path]) -> EquilibriumEstimate:
    """Run MBAR over the potential energies of runs at several temperatures.

    The result gives their frames' unbiased weights at any temperature, in the runs'
    user-facing unit (:meth:`EquilibriumEstimate.weights`; in K: its ``mbar``).

    The runs are unbiased, or all carry one fixed bias (replica exchange with a bias): the
    sampled states are then β_k (U + V) and the target β U.
    """
    runs = [Run.open(p) for p in paths]
    settings, biases = [run.settings for run in runs], [run.bias for run in runs]
    if any(biases) and not (biases[0] and biases[0].get("frozen") and all(b == biases[0] for b in biases)):
        raise LatfError(
            "temperature reweighting takes unbiased runs or replicas sharing one fixed bias; "
            "reweight other biased runs with run_weights"
        )
    energies, kelvin = [run.unbiased_energy() for run in runs], [run.temperature_K for run in runs]
    fixed = (
        np.concatenate([run.bias_energy() for run in runs])[None]
        if biases[0]
        else np.zeros((0, sum(map(len, energies))))
    )
    mbar = multistate_estimate(energies, kelvin, [0 if biases[0] else None] * len(paths), fixed)
    return EquilibriumEstimate.of_runs(paths, settings, mbar)


__all__ = [
    "EquilibriumEstimate",
    "MultistateEstimate",
    "effective_sample_size",
    "multistate_estimate",
    "restraint_energy",
    "run_weights",
    "statistical_inefficiency",
    "temperature_estimate",
    "umbrella_weights",
    "without_transient",
]
