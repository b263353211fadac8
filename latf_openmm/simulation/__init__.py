"""Simulation: plain multi-temperature Langevin MD with checkpoints (``latf simulate``)."""

from latf_openmm.simulation.md import (
    RunResult,
    degrees_of_freedom,
    run_label,
    seed_for,
    simulate,
    simulate_temperatures,
)
from latf_openmm.simulation.platforms import available_platforms, select_platform

__all__ = [
    "RunResult",
    "available_platforms",
    "degrees_of_freedom",
    "run_label",
    "seed_for",
    "select_platform",
    "simulate",
    "simulate_temperatures",
]
