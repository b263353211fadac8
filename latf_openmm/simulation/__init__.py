"""Simulation: multi-temperature Langevin MD with checkpoints, and temperature replica exchange (``latf simulate``)."""

from latf_openmm.simulation.colvar import parse_colvar, read_colvar, write_colvar
from latf_openmm.simulation.md import (
    degrees_of_freedom,
    run_label,
    seed_for,
    simulate,
    simulate_temperatures,
)
from latf_openmm.simulation.platforms import available_platforms, select_platform
from latf_openmm.simulation.replica import ReplicaExchangeResult, replica_exchange
from latf_openmm.simulation.run import Run, find_runs

__all__ = [
    "ReplicaExchangeResult",
    "Run",
    "available_platforms",
    "degrees_of_freedom",
    "find_runs",
    "parse_colvar",
    "read_colvar",
    "replica_exchange",
    "run_label",
    "seed_for",
    "select_platform",
    "simulate",
    "simulate_temperatures",
    "write_colvar",
]
