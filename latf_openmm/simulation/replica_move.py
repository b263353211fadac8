"""Seeding for :mod:`latf_openmm.simulation.replica`: the Langevin move and the exchanges.

openmmtools' ``LangevinDynamicsMove`` leaves the integrator's random seed at 0, which makes
OpenMM pick a new seed for every Context, and its swap-all exchanges draw from numba's
generator, which ``numpy.random.seed`` does not reach. :func:`seed_exchanges` and
:class:`SeededLangevinMove` seed both. The move lives in its own module because openmmtools
stores moves by module and class name and imports them again when a run resumes.
"""

from __future__ import annotations

import contextlib
import io

with contextlib.redirect_stdout(io.StringIO()):  # pymbar's import banner
    from openmmtools.mcmc import LangevinDynamicsMove

import numpy as np
from numba import njit


@njit(cache=False)
def _seed_numba(seed: int) -> None:
    np.random.seed(seed)  # noqa: NPY002  (inside numba this seeds numba's own generator)


def seed_exchanges(seed: int) -> None:
    """Seed the generators openmmtools draws its replica exchanges from (numpy's and numba's)."""
    np.random.seed(seed)  # noqa: NPY002
    _seed_numba(seed)


class SeededLangevinMove(LangevinDynamicsMove):
    """``LangevinDynamicsMove`` whose integrator draws from ``seed`` (a positive int)."""

    def __init__(self, seed: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = int(seed)

    def _get_integrator(self, thermodynamic_state):
        integrator = super()._get_integrator(thermodynamic_state)
        integrator.setRandomNumberSeed(self.seed)
        return integrator

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "seed": self.seed}

    def __setstate__(self, serialization: dict) -> None:
        super().__setstate__(serialization)
        self.seed = int(serialization["seed"])
