"""latf_openmm: learn collective variables and equilibrium distributions from simulations.

It learns CVs and temperature-dependent equilibrium distributions (SPIB, LaTF) and drives
OpenMM simulations with them.
"""

# torch must be imported before openmm: openmm-torch's plugins link libnvrtc.so.12,
# which only resolves once torch has loaded its CUDA libraries (see _plugins).
import torch  # noqa: F401, I001
import openmm  # noqa: F401

from latf_openmm import _plugins  # noqa: F401
from latf_openmm.errors import LatfError
from latf_openmm.features import Featurizer, build_featurizer
from latf_openmm.simulation import Run, select_platform, simulate, simulate_temperatures
from latf_openmm.systems import MolecularSystem, available_systems, load_system

__version__ = "0.1.0"

__all__ = [
    "Featurizer",
    "LatfError",
    "MolecularSystem",
    "Run",
    "__version__",
    "available_systems",
    "build_featurizer",
    "load_system",
    "select_platform",
    "simulate",
    "simulate_temperatures",
]
