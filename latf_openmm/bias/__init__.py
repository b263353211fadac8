"""Biasing along the learned CV: restraints and umbrella windows, well-tempered metadynamics, OPES.

A :class:`LearnedCV` turns a trained model and its featurizer into OpenMM forces
(``native`` expressions or openmm-torch ``TorchForce`` s); each bias is one such force
in a force group of its own, and :func:`latf_openmm.simulation.simulate` runs it,
writing a COLVAR row (CV, bias energy, c(t)) with every frame. The ``plumed`` engine
(:class:`PlumedBias`) runs the same bias in PLUMED instead.
"""

from latf_openmm.bias.adaptive import OPES, FrozenGrid, GridBias, Metadynamics
from latf_openmm.bias.base import CVBias
from latf_openmm.bias.build import build_bias
from latf_openmm.bias.cv import BACKENDS, LearnedCV
from latf_openmm.bias.harmonic import NO_WALL, HarmonicBias, set_window
from latf_openmm.bias.plumed import PlumedBias, require_openmm_plumed

__all__ = [
    "BACKENDS",
    "NO_WALL",
    "OPES",
    "CVBias",
    "FrozenGrid",
    "GridBias",
    "HarmonicBias",
    "LearnedCV",
    "Metadynamics",
    "PlumedBias",
    "build_bias",
    "require_openmm_plumed",
    "set_window",
]
