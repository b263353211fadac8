"""Models: the SPIB, LaTF and D-SPIB estimators, the trained model, and its generative priors."""

from latf_openmm.models.data import TrainingData, initial_labels
from latf_openmm.models.model import LatentModel, load_model
from latf_openmm.models.training import DSPIB, SPIB, LaTF, TrainingConfig, estimator

__all__ = [
    "DSPIB",
    "SPIB",
    "LaTF",
    "LatentModel",
    "TrainingConfig",
    "TrainingData",
    "estimator",
    "initial_labels",
    "load_model",
]
