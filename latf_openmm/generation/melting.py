"""Melting curves: a state's population against temperature, its block error, and a two-state fit.

In the two-state model the unfolding equilibrium is K(T) = exp(−ΔG(T)/k_BT) with
ΔG(T) = ΔH (1 − T/T_m), so the folded fraction is

    f(T) = 1 / (1 + exp(−(ΔH/k_B) (1/T − 1/T_m))),

with T_m the melting temperature (f = ½) and ΔH the van 't Hoff enthalpy of unfolding.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import curve_fit

from latf_openmm.errors import LatfError

MELTING_BLOCKS = 5  # blocks of a time series for the error of a fraction


def block_fraction(indicator: np.ndarray, blocks: int = MELTING_BLOCKS) -> tuple[float, float]:
    """Return the mean of a 0/1 time series and its standard error from ``blocks`` contiguous blocks."""
    indicator = np.asarray(indicator, dtype=float)
    if indicator.ndim != 1 or len(indicator) < blocks or blocks < 2:
        raise LatfError(f"a block error needs a 1-D series of at least {max(blocks, 2)} frames, got {indicator.shape}")
    means = np.array([block.mean() for block in np.array_split(indicator, blocks)])
    return float(indicator.mean()), float(means.std(ddof=1) / np.sqrt(blocks))


def two_state_folded_fraction(temperature: np.ndarray, melting_temperature: float, enthalpy: float) -> np.ndarray:
    """Return the two-state folded fraction at ``temperature``; ``enthalpy`` is ΔH/k_B (temperature units)."""
    return 1.0 / (1.0 + np.exp(-enthalpy * (1.0 / np.asarray(temperature) - 1.0 / melting_temperature)))


def two_state_fit(
    temperatures: np.ndarray, folded: np.ndarray, errors: np.ndarray | None = None
) -> dict[str, float] | None:
    """Fit the two-state model to folded fractions; None where the data show no melting.

    The start is the straight line of logit f against 1/T through the points with
    0.01 < f < 0.99; least squares (weighted by ``errors`` where given, floored at 0.01) then
    refines it. Returns ``melting_temperature`` and ``enthalpy`` (ΔH/k_B, in temperature units),
    or None with fewer than two such points, or where f does not fall with T.
    """
    temperatures, folded = np.asarray(temperatures, dtype=float), np.asarray(folded, dtype=float)
    inside = (folded > 0.01) & (folded < 0.99)
    if inside.sum() < 2:
        return None
    slope, intercept = np.polyfit(1.0 / temperatures[inside], np.log(folded[inside] / (1 - folded[inside])), 1)
    if slope <= 0:
        return None
    sigma = None if errors is None else np.maximum(np.asarray(errors, dtype=float), 0.01)
    try:
        (melting, enthalpy), _ = curve_fit(two_state_folded_fraction, temperatures, folded,
                                           p0=(-slope / intercept, slope), sigma=sigma, maxfev=10_000)  # fmt: skip
    except (RuntimeError, ValueError):
        return None
    if not (np.isfinite(melting) and melting > 0 and enthalpy > 0):
        return None
    return {"melting_temperature": float(melting), "enthalpy": float(enthalpy)}
