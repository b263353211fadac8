"""The learned CV inside OpenMM: CV values in Python and forces whose energy is a function of the CV.

Two backends compute the CV inside OpenMM:

``native``
    One ``CustomCompoundBondForce`` evaluates features, encoder and bias as compiled
    OpenMM expressions (:mod:`latf_openmm.export.expressions`): the network runs once
    per step for all components, without libtorch, on every platform. For small
    encoders; the fastest (see ``bench/bias_overhead.py``).
``torch``
    A ``CustomCVForce`` over one openmm-torch ``TorchForce`` per CV component (the
    exported TorchScript CV): any encoder size, CPU and CUDA.

``auto`` picks ``native`` when the encoder has an expression form small enough to
compile quickly, else ``torch``. Either way the CV values recorded in Python come
from the same TorchScript module that ``latf export`` writes.
"""

from __future__ import annotations

import numpy as np
import openmm
import torch

from latf_openmm.errors import LatfError
from latf_openmm.export import CollectiveVariable, check_compatible
from latf_openmm.export.expressions import cv_expression
from latf_openmm.features import Featurizer
from latf_openmm.models import SPIBModel

BACKENDS = ("auto", "native", "torch")


class LearnedCV:
    """A trained encoder with its featurizer, as OpenMM forces and as a Python function.

    Parameters
    ----------
    model
        A trained SPIB or LaTF model.
    featurizer
        The featurizer the model was trained with.
    backend
        ``"auto"``, ``"native"`` or ``"torch"`` (see the module documentation).
    """

    def __init__(self, model: SPIBModel, featurizer: Featurizer, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise LatfError(f"unknown CV backend {backend!r}; use one of {BACKENDS}")
        check_compatible(featurizer, model)
        self.model = model
        self.featurizer = featurizer
        self.dim = model.latent_dim
        self._module = torch.jit.script(CollectiveVariable(featurizer, model).eval())
        self.expression = None
        if backend != "torch":
            try:
                self.expression = cv_expression(model, featurizer)
            except LatfError:
                if backend == "native":
                    raise
        self.backend = "native" if self.expression is not None else "torch"

    def values(self, positions: np.ndarray, box: np.ndarray | None = None) -> np.ndarray:
        """CV of positions (n_atoms, 3) or (n_frames, n_atoms, 3) in nm, with optional box vectors."""
        positions_t = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
        box_t = None if box is None else torch.as_tensor(np.asarray(box), dtype=torch.float64)
        with torch.no_grad():
            return self._module(positions_t, box_t).numpy()

    def energy_force(self, energy: str, periodic: bool = False) -> openmm.Force:
        """A force whose energy is ``energy``, an expression in the CV components ``s0 … s{d-1}``.

        The caller adds the global parameters and tabulated functions the expression
        uses; both force types support ``updateParametersInContext``.
        """
        if self.expression is not None:
            force = openmm.CustomCompoundBondForce(len(self.expression.atoms), self.expression.energy(energy))
            force.addBond(self.expression.atoms, [])
        else:
            from openmmtorch import TorchForce

            force = openmm.CustomCVForce(energy)
            for k in range(self.dim):
                component = torch.jit.script(CollectiveVariable(self.featurizer, self.model, component=k).eval())
                cv_force = TorchForce(component)
                cv_force.setUsesPeriodicBoundaryConditions(periodic)
                force.addCollectiveVariable(f"s{k}", cv_force)
        if isinstance(force, openmm.CustomCompoundBondForce):
            force.setUsesPeriodicBoundaryConditions(periodic)
        return force


__all__ = ["BACKENDS", "LearnedCV"]
