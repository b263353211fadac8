"""Harmonic restraints and walls along a learned CV, as OpenMM forces."""

import copy

import numpy as np
import openmm
import openmm.unit as u
import pytest

from latf_openmm import LatfError
from latf_openmm.bias import cv_component_forces, harmonic_bias, set_window
from latf_openmm.models import SPIBModel

KJ = u.kilojoule_per_mole


@pytest.fixture(scope="module")
def biased_context(cv_setup, tmp_path_factory):
    """A context whose only force is a window on the 2-D CV (float64 encoder, for finite differences)."""
    featurizer, model, frames = cv_setup
    model_64 = SPIBModel(copy.deepcopy(model.network).double(), model.info)
    forces = cv_component_forces(model_64, featurizer, tmp_path_factory.mktemp("cv"))
    bias = harmonic_bias(forces, centre=[0.1, -0.2], force_constant=80.0, upper=[None, 0.0], wall_constant=500.0)
    system = openmm.System()
    for _ in range(22):
        system.addParticle(12.0)
    system.addForce(bias)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    return context, model_64.transform(featurizer.transform(frames)), frames


def _energy(context, positions):
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)


def expected_energy(cv, centre, k, upper1, wall_k):
    over = max(0.0, cv[1] - upper1)
    return 0.5 * k * np.sum((cv - centre) ** 2) + 0.5 * wall_k * over**2


def test_energy_windows_and_walls(biased_context):
    context, cvs, frames = biased_context
    set_window(context, [0.1, -0.2], 80.0)
    for cv, frame in zip(cvs[:20], frames[:20], strict=True):
        assert _energy(context, frame) == pytest.approx(expected_energy(cv, [0.1, -0.2], 80.0, 0.0, 500.0), rel=1e-6)
    set_window(context, [-0.3, 0.4], 20.0)  # another window, same context
    for cv, frame in zip(cvs[:20], frames[:20], strict=True):
        assert _energy(context, frame) == pytest.approx(expected_energy(cv, [-0.3, 0.4], 20.0, 0.0, 500.0), rel=1e-6)
    assert any(cv[1] > 0 for cv in cvs[:20]) and any(cv[1] < 0 for cv in cvs[:20])  # the wall is exercised


def test_forces_are_minus_the_energy_gradient(biased_context):
    context, _, frames = biased_context
    set_window(context, [0.1, -0.2], 80.0)
    x0 = frames[3]
    context.setPositions(x0)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(KJ / u.nanometer)
    h = 1e-6
    for atom in (1, 4, 6, 16):
        for dim in range(3):
            plus, minus = x0.copy(), x0.copy()
            plus[atom, dim] += h
            minus[atom, dim] -= h
            numeric = -(_energy(context, plus) - _energy(context, minus)) / (2 * h)
            assert forces[atom, dim] == pytest.approx(numeric, rel=1e-4, abs=1e-4)


def test_bad_bias_input(cv_setup, tmp_path):
    featurizer, model, _ = cv_setup
    forces = cv_component_forces(model, featurizer, tmp_path)
    with pytest.raises(LatfError, match="one value per CV component"):
        harmonic_bias(forces, centre=[0.0], force_constant=1.0)
    with pytest.raises(LatfError, match="finite"):
        harmonic_bias(forces, centre=[0.0, np.nan], force_constant=1.0)
    with pytest.raises(LatfError, match="≥ 0"):
        harmonic_bias(forces, centre=[0.0, 0.0], force_constant=-1.0)
