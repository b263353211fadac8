"""Models: SPIB and LaTF estimators, trained models, and their building blocks."""

from latf_openmm.models.data import TrainingData, initial_labels
from latf_openmm.models.model import LaTFModel, SPIBModel, load_model
from latf_openmm.models.training import SPIB, LaTF, TrainingConfig

__all__ = [
    "SPIB",
    "LaTF",
    "LaTFModel",
    "SPIBModel",
    "TrainingConfig",
    "TrainingData",
    "initial_labels",
    "load_model",
]
