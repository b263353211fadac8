"""Generation: latent samples, free-energy surfaces and populations at any temperature, metrics, latent dynamics."""

from latf_openmm.generation.langevin import (
    LatentLandscape,
    LatentLangevin,
    metric_at_frames,
    model_landscape,
    write_latent_run,
)
from latf_openmm.generation.melting import block_fraction, two_state_fit, two_state_folded_fraction
from latf_openmm.generation.metrics import (
    free_energy_profile_change,
    free_energy_profile_rmse,
    js_divergence_2d,
    kl_divergence_2d,
)
from latf_openmm.generation.sampling import FES_CAP_KT, generate, reweighted_populations

__all__ = [
    "FES_CAP_KT",
    "LatentLandscape",
    "LatentLangevin",
    "block_fraction",
    "free_energy_profile_change",
    "free_energy_profile_rmse",
    "generate",
    "js_divergence_2d",
    "kl_divergence_2d",
    "metric_at_frames",
    "model_landscape",
    "reweighted_populations",
    "two_state_fit",
    "two_state_folded_fraction",
    "write_latent_run",
]
