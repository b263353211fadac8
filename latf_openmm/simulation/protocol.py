"""What a simulation needs of a bias.

This is the small protocol that :func:`~latf_openmm.simulation.simulate` and
:func:`~latf_openmm.simulation.replica_exchange` run, so that MD does not depend on the
biases' layer (``latf_openmm.bias.CVBias`` satisfies it).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import openmm


class SimulationBias(Protocol):
    """A bias that a run carries: its force, its COLVAR columns and its state (checkpointed)."""

    interval: int  # steps between updates (0: never updated)
    fields: list[str]  # COLVAR columns after time

    def settings(self) -> dict[str, Any]:
        """Return everything that defines the bias (part of a run's identity)."""

    def add_to(self, system: openmm.System, folder: Path | None = None) -> openmm.System:
        """Return a copy of ``system`` with the bias's force added.

        ``folder`` is the run's folder, for a bias that keeps files of its own there (PLUMED's).
        A resumed run calls :meth:`restore` first.
        """

    def session(self) -> AbstractContextManager[None]:
        """Return what holds while the run's Context exists (after :meth:`add_to`; PLUMED's log file)."""

    def attach(self, context: openmm.Context) -> None:
        """Bring the force in ``context`` up to date."""

    def observe(self, context: openmm.Context, step: int) -> np.ndarray:
        """Return the COLVAR row (without time) now."""

    def update(self, context: openmm.Context, step: int) -> None:
        """Deposit (every ``interval`` steps)."""

    def state(self) -> dict[str, np.ndarray]:
        """Return the arrays to checkpoint."""

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state`."""

    def freeze(self) -> None:
        """Hold the bias fixed from now on."""


__all__ = ["SimulationBias"]
