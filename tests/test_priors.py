"""Generative priors behind one interface: normalized densities, samplers that match them, fits, saving."""

import functools
import math

import numpy as np
import pytest
import torch

from latf_openmm.errors import LatfError
from latf_openmm.models.diffusion import DiffusionPrior
from latf_openmm.models.model import PRIOR_TYPES
from latf_openmm.models.priors import FitSettings, VampPrior

CENTRES = np.array([[-1.5, 0.0], [1.5, 0.0], [0.0, 1.5]])
ENERGIES = np.array([0.0, 0.5, 1.0])  # the three basins' free energies (k_B T_ref units)
WIDTH = 0.4  # each basin's standard deviation at T′ = 1; it grows as √T′


def _boltzmann(temperature: float) -> np.ndarray:
    weights = np.exp(-ENERGIES / temperature)
    return weights / weights.sum()


def _basin_samples(temperature: float, n: int, rng: np.random.Generator) -> np.ndarray:
    basin = rng.choice(3, n, p=_boltzmann(temperature))
    return CENTRES[basin] + rng.normal(size=(n, 2)) * WIDTH * math.sqrt(temperature)


def _basin_of(points: np.ndarray) -> np.ndarray:
    return np.argmin(((points[:, None, :] - CENTRES) ** 2).sum(-1), axis=1)


def _grid(half_width: float = 4.5, n: int = 91) -> tuple[np.ndarray, float]:
    axis = np.linspace(-half_width, half_width, n)
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2), (axis[1] - axis[0]) ** 2


@pytest.fixture(scope="module")
def diffusion():
    """A diffusion prior fitted to the three basins at T = 1 and 2 (T_ref = 1), 20 000 points each.

    It starts as trained at T = 1 only; the fit widens its conditioning range to 1–2.
    """
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    latent = np.concatenate([_basin_samples(1.0, 20_000, rng), _basin_samples(2.0, 20_000, rng)])
    temperatures = np.repeat([1.0, 2.0], 20_000)
    torch.manual_seed(0)
    prior = DiffusionPrior(2, reference_temperature=1.0, trained_temperatures=(1.0, 1.0))
    prior.fit_settings = FitSettings(steps=2500, learning_rate=1e-2, batch_size=256, seed=0, check_every=500)
    held_out = np.arange(len(latent)) % 10 == 0
    return prior.fit(latent, np.ones(len(latent)), temperatures, held_out)


@pytest.fixture(scope="module")
def grid_density(diffusion):
    """The prior's ODE density on :func:`_grid` at a temperature (cell masses), each computed once."""
    grid, cell = _grid()
    return functools.cache(lambda temperature: np.exp(diffusion.log_prob(grid, temperature)) * cell)


@pytest.mark.parametrize("temperature", [1.0, 1.5, 2.0, 3.0])
def test_diffusion_density_integrates_to_one(grid_density, temperature):
    """At 3.0, outside the trained range, the network sees 2.0 and the start is wider: still a density."""
    assert grid_density(temperature).sum() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0])
def test_diffusion_sampler_and_ode_density_agree_with_each_other_and_the_truth(diffusion, grid_density, temperature):
    grid, _ = _grid()
    density = grid_density(temperature)
    from_density = np.bincount(_basin_of(grid), weights=density, minlength=3) / density.sum()
    samples = diffusion.sample(temperature, 100_000, seed=2)
    from_samples = np.bincount(_basin_of(samples), minlength=3) / len(samples)
    # one ODE: the sampler's 100 DDIM steps against its RK4 density (outside the trained range too)
    np.testing.assert_allclose(from_samples, from_density, atol=0.02)
    assert samples.std(0) == pytest.approx(_spread(density, grid), rel=0.05)
    if temperature <= 2.0:  # the trained range: the truth
        np.testing.assert_allclose(from_samples, _boltzmann(temperature), atol=0.02)
        # the start is N(0, T′²I): from N(0, I) the deterministic map gives the spread at T′ = 2 far too low
        true_spread = _basin_samples(temperature, 100_000, np.random.default_rng(1)).std(0)
        assert samples.std(0) == pytest.approx(true_spread, rel=0.1)


def _spread(density: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Standard deviation per axis of the grid density (cell masses ``density``)."""
    mean = (density[:, None] * grid).sum(0) / density.sum()
    return np.sqrt((density[:, None] * (grid - mean) ** 2).sum(0) / density.sum())


def test_diffusion_saved_and_loaded_gives_identical_samples_and_densities(diffusion):
    loaded = PRIOR_TYPES["diffusion"].from_state(diffusion.state())
    np.testing.assert_array_equal(loaded.sample(1.3, 500, seed=4), diffusion.sample(1.3, 500, seed=4))
    points = diffusion.sample(1.0, 50, seed=1)
    np.testing.assert_array_equal(loaded.log_prob(points, 1.0), diffusion.log_prob(points, 1.0))
    assert loaded.trained_temperatures == diffusion.trained_temperatures == (1.0, 2.0)
    assert not np.array_equal(diffusion.sample(1.3, 500, seed=4), diffusion.sample(1.3, 500, seed=5))


def test_diffusion_bad_input_is_one_line():
    prior = DiffusionPrior(2, reference_temperature=1.0, trained_temperatures=(1.0, 1.0))
    for call, match in [
        (lambda: DiffusionPrior(2, 1.0, trained_temperatures=(1.0, 0.0)), "temperature must be positive"),
        (lambda: prior.sample(0.0, 10), "temperature must be positive"),
        (lambda: prior.sample(-1.0, 10), "temperature must be positive"),
        (lambda: prior.log_prob(np.zeros((4, 3)), 1.0), r"shape \(n, 2\)"),
        (lambda: prior.log_prob(np.full((4, 2), np.nan), 1.0), "NaN"),
        (lambda: prior.sample(1.0, -5), "non-negative"),
    ]:
        with pytest.raises(LatfError, match=match):
            call()


def test_vamp_prior_is_normalized_its_fit_recovers_the_weights_and_it_refuses_other_temperatures():
    rng = np.random.default_rng(3)
    prior = VampPrior(CENTRES, math.log(WIDTH**2), np.log(np.full(3, 1 / 3)), temperatures=[1.0])
    grid, cell = _grid(6.0, 121)
    assert np.exp(prior.log_prob(grid, 1.0)).sum() * cell == pytest.approx(1.0, abs=1e-3)
    points = _basin_samples(1.0, 40_000, rng)
    weights = np.where(_basin_of(points) == 2, 3.0, 1.0)  # the third basin counts 3×
    fitted = prior.fit(points, weights, np.ones(len(points)))
    truth = _boltzmann(1.0) * [1, 1, 3]
    np.testing.assert_allclose(np.exp(fitted.log_weights), truth / truth.sum(), atol=0.01)
    samples = fitted.sample(1.0, 100_000, seed=0)
    np.testing.assert_allclose(np.bincount(_basin_of(samples)) / 1e5, truth / truth.sum(), atol=0.01)
    with pytest.raises(LatfError, match="no temperature dependence"):
        fitted.sample(2.0, 10)
