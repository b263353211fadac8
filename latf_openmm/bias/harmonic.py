"""Harmonic restraints and umbrella windows along the learned CV, with flat-bottom walls.

E = ½ k Σ (s_i − c_i)² + ½ k_wall Σ [max(0, s_i − upper_i)² + max(0, lower_i − s_i)²].
The window's centre, force constant and walls are context parameters, so moving to
another window is a :func:`set_window` call, not a rebuild. Parameters (k = 0 … d−1):
``latf_k`` (kJ/mol per CV unit²), ``latf_c{k}`` (centres), ``latf_wall_k`` and
``latf_lower{k}`` / ``latf_upper{k}`` (walls; ±1e6 means no wall).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import openmm

from latf_openmm.bias.base import CVBias
from latf_openmm.bias.cv import LearnedCV
from latf_openmm.errors import LatfError
from latf_openmm.specs import BiasSpec

NO_WALL = 1e6


def wall_energy(component: int, lower: str, upper: str, constant: str) -> str:
    """Expression of flat-bottom walls on ``s{component}`` (names or numbers for the bounds)."""
    s = f"s{component}"
    return f"0.5*{constant}*(step({s}-{upper})*({s}-{upper})^2 + step({lower}-{s})*({lower}-{s})^2)"


def wall_energies(values: np.ndarray, lower: Sequence, upper: Sequence, constant: float) -> np.ndarray:
    """Return the walls of :func:`wall_energy` (kJ/mol) at CV values (n, k).

    There is one bound pair per column; a bound of None has no wall.
    """
    high = np.array([np.inf if b is None else b for b in upper], dtype=float)
    low = np.array([-np.inf if b is None else b for b in lower], dtype=float)
    beyond = np.clip(values - high, 0, None) ** 2 + np.clip(low - values, 0, None) ** 2
    return 0.5 * constant * beyond.sum(axis=1)


class HarmonicBias(CVBias):
    """A harmonic restraint (umbrella window) on all CV components, with optional walls.

    Parameters
    ----------
    cv
        The learned CV.
    centre
        Window centre, one value per component.
    force_constant
        k, kJ/mol per CV unit² (≥ 0; 0 gives walls only).
    lower, upper
        Optional wall positions per component (``None`` entries: no wall).
    wall_constant
        k_wall, kJ/mol per CV unit².
    periodic
        Whether the system is periodic (the CV then uses the minimum image).
    """

    kind = "restraint"

    def __init__(
        self,
        cv: LearnedCV,
        centre: Sequence[float],
        force_constant: float,
        lower: Sequence[float | None] | None = None,
        upper: Sequence[float | None] | None = None,
        wall_constant: float = BiasSpec.wall_constant,
        periodic: bool = False,
    ) -> None:
        dim = cv.dim
        lower = list(lower) if lower is not None else [None] * dim
        upper = list(upper) if upper is not None else [None] * dim
        if len(centre) != dim or len(lower) != dim or len(upper) != dim:
            raise LatfError(f"centre and walls need one value per CV component ({dim}), got centre {list(centre)}")
        values = [float(force_constant), float(wall_constant), *map(float, centre)]
        if not np.all(np.isfinite(values)) or force_constant < 0 or wall_constant < 0:
            raise LatfError("force constants must be finite and ≥ 0, and the centre finite")
        terms = [f"0.5*latf_k*(s{k}-latf_c{k})^2" for k in range(dim)]
        terms += [wall_energy(k, f"latf_lower{k}", f"latf_upper{k}", "latf_wall_k") for k in range(dim)]
        force = cv.energy_force(" + ".join(terms), periodic)
        force.addGlobalParameter("latf_k", float(force_constant))
        force.addGlobalParameter("latf_wall_k", float(wall_constant))
        for k in range(dim):
            force.addGlobalParameter(f"latf_c{k}", float(centre[k]))
            force.addGlobalParameter(f"latf_lower{k}", -NO_WALL if lower[k] is None else float(lower[k]))
            force.addGlobalParameter(f"latf_upper{k}", NO_WALL if upper[k] is None else float(upper[k]))
        super().__init__(cv, force)
        self._settings = {
            "centre": [float(c) for c in centre],
            "force_constant": float(force_constant),
            "lower": lower,
            "upper": upper,
            "wall_constant": float(wall_constant),
        }

    def settings(self) -> dict[str, Any]:
        """Return the base settings plus the window's centre, force constant and walls."""
        return {**super().settings(), **self._settings}


def set_window(context: openmm.Context, centre: Sequence[float], force_constant: float | None = None) -> None:
    """Move a :class:`HarmonicBias` in ``context`` to another window (no rebuild)."""
    for k, value in enumerate(centre):
        context.setParameter(f"latf_c{k}", float(value))
    if force_constant is not None:
        context.setParameter("latf_k", float(force_constant))


__all__ = ["NO_WALL", "HarmonicBias", "set_window", "wall_energies", "wall_energy"]
