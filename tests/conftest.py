"""Shared fixtures."""

import numpy as np
import pytest

import latf_openmm  # noqa: F401  (imports torch before openmm; see latf_openmm/__init__.py)


@pytest.fixture(scope="session")
def ala2_vacuum():
    from latf_openmm.systems import load_system

    return load_system("ala2_vacuum")


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)
