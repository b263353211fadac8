"""Simulation: multi-temperature Langevin MD with checkpoints, and temperature replica exchange (``latf simulate``)."""

from latf_openmm.simulation.md import (
    RunResult,
    degrees_of_freedom,
    run_label,
    seed_for,
    simulate,
    simulate_temperatures,
)
from latf_openmm.simulation.platforms import available_platforms, select_platform
from latf_openmm.simulation.replica import ReplicaExchangeResult, replica_exchange

__all__ = [
    "ReplicaExchangeResult",
    "RunResult",
    "available_platforms",
    "degrees_of_freedom",
    "replica_exchange",
    "run_label",
    "seed_for",
    "select_platform",
    "simulate",
    "simulate_temperatures",
]
