"""Bias: OpenMM forces along a learned CV.

So far: harmonic restraints (umbrella windows) with optional flat-bottom walls, as one
``CustomCVForce`` over one exported TorchForce per CV component. The window's centre,
force constant and walls are context parameters, so moving to another window is a
``context.setParameter`` call, not a rebuild. Metadynamics and OPES come next.

Context parameters (for a d-dimensional CV, k = 0 … d−1):
``latf_k`` (kJ/mol per CV unit²), ``latf_c{k}`` (centres), ``latf_wall_k`` and
``latf_lower{k}`` / ``latf_upper{k}`` (walls; ±1e6 means no wall).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openmm

from latf_openmm.errors import LatfError
from latf_openmm.export import export_cv
from latf_openmm.features import Featurizer
from latf_openmm.models import SPIBModel

NO_WALL = 1e6


def cv_component_forces(
    model: SPIBModel, featurizer: Featurizer, directory: str | Path, periodic: bool = False
) -> list[openmm.Force]:
    """One TorchForce per CV component (each exported to ``directory/cv{k}.pt``)."""
    from openmmtorch import TorchForce

    forces = []
    for component in range(model.latent_dim):
        path = export_cv(model, featurizer, Path(directory) / f"cv{component}.pt", component=component)
        force = TorchForce(str(path))
        force.setUsesPeriodicBoundaryConditions(periodic)
        forces.append(force)
    return forces


def harmonic_bias(
    cv_forces: Sequence[openmm.Force],
    centre: Sequence[float],
    force_constant: float,
    lower: Sequence[float | None] | None = None,
    upper: Sequence[float | None] | None = None,
    wall_constant: float = 0.0,
) -> openmm.CustomCVForce:
    """E = ½ k Σ (s_i − c_i)² + ½ k_wall Σ [max(0, s_i − upper_i)² + max(0, lower_i − s_i)²].

    Parameters
    ----------
    cv_forces
        One force per CV component (see :func:`cv_component_forces`).
    centre
        Window centre, one value per component.
    force_constant
        k, kJ/mol per CV unit² (≥ 0; 0 gives walls only).
    lower, upper
        Optional wall positions per component (``None`` entries: no wall).
    wall_constant
        k_wall, kJ/mol per CV unit².
    """
    dim = len(cv_forces)
    lower = list(lower) if lower is not None else [None] * dim
    upper = list(upper) if upper is not None else [None] * dim
    if dim == 0 or len(centre) != dim or len(lower) != dim or len(upper) != dim:
        raise LatfError(f"centre and walls need one value per CV component ({dim}), got centre {list(centre)}")
    values = [float(force_constant), float(wall_constant), *map(float, centre)]
    if not np.all(np.isfinite(values)) or force_constant < 0 or wall_constant < 0:
        raise LatfError("force constants must be finite and ≥ 0, and the centre finite")
    terms = [f"0.5*latf_k*(s{k}-latf_c{k})^2" for k in range(dim)]
    terms += [
        f"0.5*latf_wall_k*(step(s{k}-latf_upper{k})*(s{k}-latf_upper{k})^2"
        f" + step(latf_lower{k}-s{k})*(latf_lower{k}-s{k})^2)"
        for k in range(dim)
    ]
    force = openmm.CustomCVForce(" + ".join(terms))
    force.addGlobalParameter("latf_k", float(force_constant))
    force.addGlobalParameter("latf_wall_k", float(wall_constant))
    for k, cv in enumerate(cv_forces):
        force.addGlobalParameter(f"latf_c{k}", float(centre[k]))
        force.addGlobalParameter(f"latf_lower{k}", -NO_WALL if lower[k] is None else float(lower[k]))
        force.addGlobalParameter(f"latf_upper{k}", NO_WALL if upper[k] is None else float(upper[k]))
        force.addCollectiveVariable(f"s{k}", cv)
    return force


def set_window(context: openmm.Context, centre: Sequence[float], force_constant: float | None = None) -> None:
    """Move a :func:`harmonic_bias` in ``context`` to another window (no rebuild)."""
    for k, value in enumerate(centre):
        context.setParameter(f"latf_c{k}", float(value))
    if force_constant is not None:
        context.setParameter("latf_k", float(force_constant))


__all__ = ["NO_WALL", "cv_component_forces", "harmonic_bias", "set_window"]
