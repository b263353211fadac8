"""Reweighting: per-frame weights that turn biased or multi-temperature data into equilibrium averages.

- One biased run (:func:`run_weights`): well-tempered metadynamics and OPES frames weigh
  exp((V − c(t))/k_BT), with c(t) from the run's COLVAR; a restraint's frames exp(V/k_BT).
- Umbrella windows (:func:`umbrella_weights`): MBAR (pymbar) over the windows' restraint
  energies, evaluated from each frame's CV in COLVAR.
- Several temperatures (:func:`temperature_weights`): MBAR over the reduced potentials
  E/k_BT of every run at every temperature, to any target temperature.
- A mixed set of runs (:func:`weights_by_temperature`): each of those, run by run, at every
  simulated temperature.

Weights are returned normalized to sum to the number of frames, one array per run;
:func:`effective_sample_size` says how many independent frames they are worth.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from latf_openmm._quiet import quiet_import
from latf_openmm.errors import LatfError
from latf_openmm.units import KB_KJ_PER_MOL_K


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (Σw)² / Σw²."""
    weights = np.asarray(weights, dtype=float).ravel()
    return float(weights.sum() ** 2 / np.sum(weights**2)) if weights.size else 0.0


def pooled_weights(weights: Sequence[np.ndarray], series: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Weights of several runs rescaled so that each run counts by its independent samples.

    A run's total weight becomes its Kish effective sample size divided by the statistical
    inefficiency g of its ``series`` (n_frames, k) (pymbar; the largest over columns). So a
    long, slowly decorrelating run does not outweigh short runs that cross barriers often,
    as it would if every frame counted once.
    """
    timeseries = quiet_import("pymbar.timeseries")
    pooled = []
    for w, x in zip(weights, series, strict=True):
        w, x = np.asarray(w, dtype=float), np.asarray(x, dtype=float).reshape(len(w), -1)
        g = max(
            (timeseries.statistical_inefficiency(column) for column in x.T if np.ptp(column) > 0),
            default=1.0,
        )
        pooled.append(w * (effective_sample_size(w) / g / w.sum()))
    return pooled


def _normalized(log_weights: list[np.ndarray]) -> list[np.ndarray]:
    """exp(log w), scaled so that all runs together sum to their number of frames."""
    total = sum(len(w) for w in log_weights)
    shift = logsumexp(np.concatenate(log_weights)) - np.log(total)
    return [np.exp(w - shift) for w in log_weights]


def _manifest(path: str | Path) -> dict:
    """A finished run's manifest."""
    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.is_file():
        raise LatfError(f"{path} is not a finished run (no manifest.json)")
    return json.loads(manifest_path.read_text())


def _run(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A finished run's manifest and time series."""
    manifest = _manifest(path)
    with np.load(Path(path) / manifest["files"]["timeseries"]) as series:
        return manifest, {key: series[key] for key in series.files}


def _bias_columns(series: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    fields = [str(f) for f in series.get("colvar_fields", [])]
    return {name: series["colvar"][:, k] for k, name in enumerate(fields)}


def _bias_energy(series: dict[str, np.ndarray], bias: dict) -> np.ndarray:
    """The bias energy (kJ/mol) of each frame of a run biased by ``bias`` (its settings)."""
    return _bias_columns(series)[f"{bias['kind']}.bias"]


def run_weights(path: str | Path) -> np.ndarray:
    """Unbiasing weights of one run's frames (all 1 for an unbiased run), mean 1."""
    manifest, series = _run(path)
    bias = manifest["settings"].get("bias")
    if bias is None:
        return np.ones(len(series["time"]))
    kt = KB_KJ_PER_MOL_K * manifest["settings"]["temperature_K"]
    energy = _bias_energy(series, bias)
    constant = _bias_columns(series).get(f"{bias['kind']}.rct", np.zeros_like(energy))
    return _normalized([(energy - constant) / kt])[0]


def restraint_energy(settings: dict, cv: np.ndarray) -> np.ndarray:
    """Energy (kJ/mol) of a ``HarmonicBias`` with these settings at CV values (n, d)."""
    cv = np.atleast_2d(cv)
    centre = np.asarray(settings["centre"], dtype=float)
    energy = 0.5 * settings["force_constant"] * np.sum((cv - centre) ** 2, axis=1)
    for k, (low, high) in enumerate(zip(settings["lower"], settings["upper"], strict=True)):
        if high is not None:
            energy += 0.5 * settings["wall_constant"] * np.clip(cv[:, k] - high, 0, None) ** 2
        if low is not None:
            energy += 0.5 * settings["wall_constant"] * np.clip(low - cv[:, k], 0, None) ** 2
    return energy


def _mbar_log_weights(reduced: np.ndarray, counts: np.ndarray, target: np.ndarray) -> np.ndarray:
    """log weights of every frame in the target state: u_kn (K, N) reduced potentials of the
    sampled states, N_k frames from each, u_target (N,)."""
    mbar = quiet_import("pymbar").MBAR(reduced, counts, solver_protocol="robust")
    log_denominator = logsumexp(mbar.f_k[:, None] - reduced, b=counts[:, None], axis=0)
    return -target - log_denominator


def umbrella_weights(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Unbiased weights of the frames of umbrella-window runs (restraints on the same CV), by MBAR."""
    runs = [_run(p) for p in paths]
    settings = [m["settings"].get("bias") or {} for m, _ in runs]
    if any(s.get("kind") != "restraint" for s in settings):
        raise LatfError("umbrella_weights needs runs biased by restraints ('latf bias --method restraint')")
    temperatures = {m["settings"]["temperature_K"] for m, _ in runs}
    if len(temperatures) != 1:
        raise LatfError(f"umbrella windows must share one temperature, got {sorted(temperatures)} K")
    kt = KB_KJ_PER_MOL_K * temperatures.pop()
    dim = settings[0]["cv_dim"]
    cvs = [series["colvar"][:, :dim] for _, series in runs]
    all_cv = np.concatenate(cvs)
    reduced = np.stack([restraint_energy(s, all_cv) / kt for s in settings])
    log_w = _mbar_log_weights(reduced, np.array([len(c) for c in cvs]), np.zeros(len(all_cv)))
    return _normalized(np.split(log_w, np.cumsum([len(c) for c in cvs])[:-1]))


def temperature_weights(paths: Sequence[str | Path], temperature: float) -> list[np.ndarray]:
    """Unbiased weights at ``temperature`` (K) of the frames of runs at several temperatures, by
    MBAR over their potential energies.

    The runs are unbiased, or all carry one fixed bias (replica exchange with a bias): their
    energies then include the bias V, the sampled states are β_k (U + V) and the target
    β (U + V − V).
    """
    runs = [_run(p) for p in paths]
    biases = [m["settings"].get("bias") for m, _ in runs]
    if any(biases) and not (biases[0] and biases[0].get("frozen") and all(b == biases[0] for b in biases)):
        raise LatfError(
            "temperature_weights takes unbiased runs or replicas sharing one fixed bias; "
            "reweight other biased runs with run_weights"
        )
    if not temperature > 0:
        raise LatfError(f"the target temperature must be positive, got {temperature}")
    energies = [series["potential_energy"] for _, series in runs]
    all_energy = np.concatenate(energies)
    bias_energy = np.concatenate([_bias_energy(series, biases[0]) for _, series in runs]) if biases[0] else 0.0
    betas = np.array([1 / (KB_KJ_PER_MOL_K * m["settings"]["temperature_K"]) for m, _ in runs])
    unique, index = np.unique(betas, return_inverse=True)
    counts = np.bincount(index, weights=[len(e) for e in energies]).astype(float)
    target = (all_energy - bias_energy) / (KB_KJ_PER_MOL_K * temperature)
    log_w = _mbar_log_weights(unique[:, None] * all_energy, counts, target)
    return _normalized(np.split(log_w, np.cumsum([len(e) for e in energies])[:-1]))


def weights_by_temperature(paths: Sequence[str | Path]) -> dict[float, dict[int, np.ndarray]]:
    """Equilibrium weights at each simulated temperature of every run that informs it.

    Runs that :func:`temperature_weights` can combine — unbiased runs, or replicas sharing one
    fixed bias — and that span several temperatures count at each temperature of their span,
    by MBAR; every other run counts at its own temperature with :func:`run_weights`.

    Returns
    -------
    dict
        Temperature (the runs' own unit: K, or reduced for toy systems) → {index of the run
        in ``paths`` → its frames' weights}.
    """
    settings = [_manifest(p)["settings"] for p in paths]
    kelvin = {run["temperature"]: run["temperature_K"] for run in settings}
    groups: dict[str, list[int]] = {}
    for k, run in enumerate(settings):
        bias = run.get("bias")
        if bias is None or bias.get("frozen"):
            groups.setdefault(json.dumps(bias, sort_keys=True), []).append(k)
    weights: dict[float, dict[int, np.ndarray]] = {t: {} for t in sorted(kelvin)}
    for members in groups.values():
        span = [settings[k]["temperature"] for k in members]
        if len(set(span)) < 2:
            continue
        for t in weights:
            if min(span) <= t <= max(span):
                mbar = temperature_weights([paths[k] for k in members], kelvin[t])
                weights[t] |= dict(zip(members, mbar, strict=True))
    for k, run in enumerate(settings):
        if k not in weights[run["temperature"]]:
            weights[run["temperature"]][k] = run_weights(paths[k])
    return weights


__all__ = [
    "effective_sample_size",
    "pooled_weights",
    "restraint_energy",
    "run_weights",
    "temperature_weights",
    "umbrella_weights",
    "weights_by_temperature",
]
