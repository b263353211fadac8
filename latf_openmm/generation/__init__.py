"""Generation: latent samples, free energies and populations at any temperature, metrics, latent dynamics, kinetics."""

from latf_openmm.generation.kinetics import mean_first_passage_times, state_lifetimes
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
    "mean_first_passage_times",
    "metric_at_frames",
    "model_landscape",
    "reweighted_populations",
    "state_lifetimes",
    "two_state_fit",
    "two_state_folded_fraction",
    "write_latent_run",
]
