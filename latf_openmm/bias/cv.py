"""The learned CV inside OpenMM: CV values in Python and forces whose energy is a function of the CV.

Every bias is one ``CustomCVForce`` whose collective variables ``s0 … s{d-1}`` are one
force per CV component. Two backends compute those components:

``native``
    A ``CustomCompoundBondForce`` evaluates features, normalization and encoder as
    compiled OpenMM expressions (:mod:`latf_openmm.export.expressions`): no libtorch
    on the hot path, and it runs on every platform. For small encoders; the fastest
    (see ``bench/bias_overhead.py``).
``torch``
    An openmm-torch ``TorchForce`` running the exported TorchScript CV: any encoder
    size, CPU and CUDA.

``auto`` picks ``native`` when the encoder has an expression form small enough to
compile quickly, else ``torch``. Either way the CV values recorded in Python come from
the TorchScript module that ``latf export`` writes. Tabulated biases live in the
``CustomCVForce``, whose ``updateParametersInContext`` is cheap; in a force that also
holds the network's expressions it would recompile them (seconds) at every update.
"""

from __future__ import annotations

import numpy as np
import openmm
import torch

from latf_openmm.errors import LatfError
from latf_openmm.export import CollectiveVariable, paired_featurizer
from latf_openmm.export.expressions import cv_expression
from latf_openmm.features import Featurizer
from latf_openmm.files import array_digest
from latf_openmm.models import LatentModel

BACKENDS = ("auto", "native", "torch")


class LearnedCV:
    """A trained encoder with its featurizer, as OpenMM forces and as a Python function.

    Parameters
    ----------
    model
        A trained SPIB or LaTF model.
    featurizer
        The featurizer the model was trained with; default the one the model keeps
        (:func:`~latf_openmm.export.paired_featurizer` refuses any other).
    backend
        ``"auto"``, ``"native"`` or ``"torch"`` (see the module documentation).
    cuda_graphs
        Let a ``TorchForce`` on the CUDA platform capture the CV's evaluation as a CUDA graph
        (openmm-torch's ``useCUDAGraphs``): one launch per step instead of one per kernel.
        Correct here, since the exported CV has static shapes and no host synchronization;
        other platforms ignore it.
    """

    def __init__(
        self, model: LatentModel, featurizer: Featurizer | None = None, backend: str = "auto", cuda_graphs: bool = True
    ) -> None:
        if backend not in BACKENDS:
            raise LatfError(f"unknown CV backend {backend!r}; use one of {BACKENDS}")
        featurizer = paired_featurizer(model, featurizer)
        self.model = model
        self.featurizer = featurizer
        self.dim = model.latent_dim
        self._module = torch.jit.script(CollectiveVariable(featurizer, model).eval())
        self.digest = array_digest(tensor.cpu().numpy() for tensor in self._module.state_dict().values())
        self.expression = None
        if backend != "torch":
            try:
                self.expression = cv_expression(model, featurizer)
            except LatfError:
                if backend == "native":
                    raise
        self.backend = "native" if self.expression is not None else "torch"
        self.cuda_graphs = cuda_graphs

    def values(self, positions: np.ndarray, box: np.ndarray | None = None) -> np.ndarray:
        """CV of positions (n_atoms, 3) or (n_frames, n_atoms, 3) in nm, with optional box vectors."""
        positions_t = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
        box_t = None if box is None else torch.as_tensor(np.asarray(box), dtype=torch.float64)
        with torch.no_grad():
            return self._module(positions_t, box_t).numpy()

    def energy_force(self, energy: str, periodic: bool = False) -> openmm.CustomCVForce:
        """Return a ``CustomCVForce`` whose energy is ``energy``, an expression in ``s0 … s{d-1}``.

        The caller adds the global parameters and tabulated functions the expression uses.
        """
        force = openmm.CustomCVForce(energy)
        for k in range(self.dim):
            force.addCollectiveVariable(f"s{k}", self.component_force(k, periodic))
        return force

    def component_force(self, component: int, periodic: bool = False) -> openmm.Force:
        """Return a force whose energy (kJ/mol) equals CV component ``component``."""
        if self.expression is not None:
            force = openmm.CustomCompoundBondForce(len(self.expression.atoms), self.expression.energy(f"s{component}"))
            force.addBond(self.expression.atoms, [])
        else:
            from openmmtorch import TorchForce

            module = CollectiveVariable(self.featurizer, self.model, component=component).eval()
            force = TorchForce(torch.jit.script(module))
            force.setProperty("useCUDAGraphs", "true" if self.cuda_graphs else "false")
        force.setUsesPeriodicBoundaryConditions(periodic)
        return force


__all__ = ["BACKENDS", "LearnedCV"]
