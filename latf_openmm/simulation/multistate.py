"""openmmtools pieces for :mod:`latf_openmm.simulation.replica`: seeding and an exchange interval.

- openmmtools' ``LangevinDynamicsMove`` leaves the integrator's random seed at 0, which makes
  OpenMM pick a new seed for every Context, and its swap-all exchanges draw from numba's
  generator, which ``numpy.random.seed`` does not reach. :func:`seed_exchanges` and
  :class:`SeededLangevinMove` seed both, so a seed repeats a run.
- :class:`IntervalReplicaExchangeSampler` attempts exchanges only every ``exchange_interval``
  iterations (frames). Between exchanges each temperature's frames are one replica's
  continuous dynamics, which is what time-lagged training needs.
- :func:`termination_guard_off_main_thread`: openmmtools (through mpiplus) holds off
  SIGINT/SIGTERM while it writes its storage by installing signal handlers, which Python
  allows only in the main thread; in a worker thread (a Dask task) it would fail, so there
  the writes run unguarded. (No guard covers SIGKILL either way; a run resumes from its
  last checkpoint.)

They live in their own module because openmmtools stores moves by module and class name and
imports them again when a run resumes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from latf_openmm._quiet import quiet_import

if TYPE_CHECKING:
    import openmm
    from openmmtools.states import ThermodynamicState

LangevinDynamicsMove = quiet_import("openmmtools.mcmc").LangevinDynamicsMove
_multistate = quiet_import("openmmtools.multistate")
_StoredProperty = _multistate.MultiStateSampler._StoredProperty


@njit(cache=False)
def _seed_numba(seed: int) -> None:
    np.random.seed(seed)  # noqa: NPY002  (inside numba this seeds numba's own generator)


@contextlib.contextmanager
def termination_guard_off_main_thread() -> Iterator[None]:
    """Inside, openmmtools' signal-based write guard is a no-op when not on the main thread."""
    mpiplus = quiet_import("mpiplus.mpiplus")
    if threading.current_thread() is threading.main_thread():
        yield
        return
    guard = mpiplus.delay_termination
    mpiplus.delay_termination = contextlib.nullcontext
    try:
        yield
    finally:
        mpiplus.delay_termination = guard


def seed_exchanges(seed: int) -> None:
    """Seed the generators openmmtools draws its replica exchanges from (numpy's and numba's)."""
    np.random.seed(seed)  # noqa: NPY002
    _seed_numba(seed)


class SeededLangevinMove(LangevinDynamicsMove):
    """``LangevinDynamicsMove`` whose integrator draws from ``seed`` (a positive int)."""

    def __init__(self, seed: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seed = int(seed)

    def _get_integrator(self, thermodynamic_state: ThermodynamicState) -> openmm.Integrator:
        """Return openmmtools' integrator for ``thermodynamic_state``, seeded with ``seed``."""
        integrator = super()._get_integrator(thermodynamic_state)
        integrator.setRandomNumberSeed(self.seed)
        return integrator

    def __getstate__(self) -> dict:
        """Return the move's serialization, seed included."""
        return {**super().__getstate__(), "seed": self.seed}

    def __setstate__(self, serialization: dict) -> None:
        """Restore the move from :meth:`__getstate__`'s serialization, seed included."""
        super().__setstate__(serialization)
        self.seed = int(serialization["seed"])


class IntervalReplicaExchangeSampler(_multistate.ReplicaExchangeSampler):
    """Replica exchange that attempts swaps only after every ``exchange_interval``-th iteration."""

    def __init__(self, exchange_interval: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.exchange_interval = exchange_interval

    exchange_interval = _StoredProperty("exchange_interval", lambda _, value: max(int(value), 1))

    def _mix_replicas(self) -> np.ndarray:
        """Attempt exchanges on every ``exchange_interval``-th iteration; otherwise keep the states."""
        if self._iteration % self.exchange_interval:
            self._n_accepted_matrix[:, :] = 0
            self._n_proposed_matrix[:, :] = 0
            return self._replica_thermodynamic_states
        return super()._mix_replicas()
