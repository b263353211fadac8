"""The latent free energy H(s) − T·S(s) on a grid: exact populations at unseen temperatures, small
states, a normalized density, an exact sampler, and saving."""

import numpy as np
import pytest

from latf_openmm.errors import LatfError
from latf_openmm.models import TrainingData, free_energy
from latf_openmm.models.free_energy import LatentFreeEnergy, LatentFreeEnergyModel
from latf_openmm.reweighting import EquilibriumEstimate, multistate_estimate
from latf_openmm.units import KB_KJ_PER_MOL_K

NODES = 128  # per axis: the default 256 is four times the work, and these densities are smooth
AXIS = np.linspace(-3, 3, 601)
POINTS = np.stack(np.meshgrid(AXIS, AXIS, indexing="ij"), -1).reshape(-1, 2)


def _energy(points: np.ndarray, top_depth: float = 2.0) -> np.ndarray:
    """Three wells of different depths and widths (so different energies and entropies), rotated by
    30° so that the grid's principal axes are not the coordinate axes."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    x, y = (points @ np.array([[c, -s], [s, c]])).T
    return (
        -3 * np.exp(-((x - 1) ** 2 + y**2) / 0.3)
        - 2.5 * np.exp(-((x + 1) ** 2 + y**2) / 0.8)
        - top_depth * np.exp(-(x**2 + (y - 1.5) ** 2) / 0.15)
        + 0.2 * (x**2 + y**2)
    )


def _state(points: np.ndarray) -> np.ndarray:
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    x, y = (points @ np.array([[c, -s], [s, c]])).T
    return np.where(y > 0.9, 2, np.where(x > 0, 0, 1))


def _boltzmann(kt: float, top_depth: float = 2.0, hidden: float = 0.0) -> np.ndarray:
    """The marginal on the plane; well 1 carries 2·``hidden`` hidden harmonic degrees of freedom,
    whose integral is ∝ kt**hidden there (a heat capacity of ``hidden`` k_B)."""
    weight = np.exp(-_energy(POINTS, top_depth) / kt) * kt ** (hidden * (_state(POINTS) == 1))
    return weight / weight.sum()


def _exact_populations(kt: float, top_depth: float = 2.0, hidden: float = 0.0) -> np.ndarray:
    return np.bincount(_state(POINTS), _boltzmann(kt, top_depth, hidden), 3)


def _draw(kt: float, n: int, rng, top_depth: float = 2.0, hidden: float = 0.0) -> np.ndarray:
    """Exact samples at k_BT = ``kt`` (a fine grid's Boltzmann weights, jittered within its cells)."""
    picked = rng.choice(len(POINTS), n, p=_boltzmann(kt, top_depth, hidden))
    return POINTS[picked] + rng.uniform(-0.005, 0.005, (n, 2))


def _blocks(n: int) -> np.ndarray:
    return (np.arange(n) // 1000) % 10 == 3


@pytest.fixture(scope="module")
def two_temperature_data():
    rng = np.random.default_rng(3)
    return np.vstack([_draw(0.5, 60_000, rng), _draw(1.0, 60_000, rng)]), np.repeat([0.5, 1.0], 60_000)


@pytest.fixture(scope="module")
def two_temperatures(two_temperature_data):
    latent, temperatures = two_temperature_data
    return LatentFreeEnergy(nodes=NODES).fit(latent, temperatures, held_out=_blocks(len(latent)))


def test_the_pyramid_solve_ends_within_a_few_hundredths_of_its_optimum(two_temperature_data, monkeypatch):
    # At a small λ (1e-6: the roughness penalty holds little, so the fine grid's smooth parts
    # converge slowly) against the same objective solved with 1000 iterations per level instead
    # of 300, itself within 0.02 of the 2000-iteration optimum: the shipped solve is 0.008–0.017
    # from it (probability-weighted RMS of ln p at each k_BT). The two-level solve it replaced
    # (128 nodes started from 64 only) is 0.07–0.27 from its own 1000-iteration solve.
    latent, temperatures = two_temperature_data
    shipped = LatentFreeEnergy(nodes=NODES, smoothing=1e-6).fit(latent, temperatures)
    monkeypatch.setattr(free_energy, "FINAL_ITERATIONS", 1000)
    longer = LatentFreeEnergy(nodes=NODES, smoothing=1e-6).fit(latent, temperatures)
    for kt in (0.5, 0.7, 1.0):
        difference = shipped.log_prob(POINTS, kt) - longer.log_prob(POINTS, kt)
        assert np.sqrt(np.sum(_boltzmann(kt) * difference**2)) < 0.04, kt


@pytest.mark.parametrize("kt", [0.4, 0.7, 1.3])
def test_populations_at_unseen_temperatures_match_quadrature(two_temperatures, kt):
    # between the two training temperatures (0.7) and beyond them (0.4, 1.3): ln p is linear in
    # 1/T here (H = U, S = 0), so the van 't Hoff form is exact and only sampling noise is left
    samples = two_temperatures.sample(kt, 200_000, None)
    generated = np.bincount(_state(samples), minlength=3) / len(samples)
    np.testing.assert_allclose(generated, _exact_populations(kt), atol=0.01)


def test_a_heat_capacity_is_fitted_from_three_temperatures_and_carries_the_curvature_in_one_over_t():
    # well 1 has 8 hidden oscillators (C = 4 k_B): ln p is then not linear in 1/T, and the
    # van 't Hoff line through two temperatures is 0.05 off between them (measured); from three,
    # the heat-capacity table makes the Gibbs–Helmholtz form exact (measured 0.006, 0.005)
    rng = np.random.default_rng(3)
    fits = {}
    for temperatures in ([0.5, 1.0], [0.5, 0.7, 1.0]):
        latent = np.vstack([_draw(t, 60_000, rng, hidden=4.0) for t in temperatures])
        held_out = _blocks(len(latent))
        fits[len(temperatures)] = LatentFreeEnergy(nodes=NODES).fit(
            latent, np.repeat(temperatures, 60_000), None, held_out
        )
    assert not fits[2].heat_capacity.any()
    for kt in (0.6, 0.8):
        exact = _exact_populations(kt, hidden=4.0)
        errors = [
            np.abs(np.bincount(_state(fits[k].sample(kt, 200_000, 1)), minlength=3) / 200_000 - exact).max()
            for k in (2, 3)
        ]
        assert errors[0] > 0.025 and errors[1] < 0.012, errors


def test_density_is_normalized_and_the_sampler_draws_from_it(two_temperatures):
    axis = np.linspace(-3.5, 3.5, 351)
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(two_temperatures.log_prob(grid, 0.7))
    cell = (axis[1] - axis[0]) ** 2
    assert density.sum() * cell == pytest.approx(1.0, abs=0.01)
    samples = two_temperatures.sample(0.7, 400_000, None)
    edges = np.linspace(-3.5, 3.5, 36)
    counts = np.histogram2d(samples[:, 0], samples[:, 1], [edges, edges])[0] / len(samples)
    expected = np.histogram2d(grid[:, 0], grid[:, 1], [edges, edges], weights=density * cell)[0]
    assert np.abs(counts - expected).max() < 0.003
    assert np.isneginf(two_temperatures.log_prob(np.array([[50.0, 50.0]]), 0.7)).all()


def test_a_two_percent_state_is_generated_within_a_quarter_of_its_population():
    rng = np.random.default_rng(4)
    depth = 0.6  # the top well holds about 2 % at k_BT = 0.5
    exact = _exact_populations(0.5, depth)[2]
    assert 0.01 < exact < 0.03
    latent = _draw(0.5, 100_000, rng, depth)
    model = LatentFreeEnergy(nodes=NODES).fit(latent, np.full(len(latent), 0.5), held_out=_blocks(len(latent)))
    samples = model.sample(0.5, 400_000, None)
    generated = np.mean(_state(samples) == 2)
    assert abs(generated - exact) < 0.25 * exact


def test_fitted_to_an_mbar_estimate_at_its_anchors_two_temperatures_carry_the_heat_capacity():
    # the previous test's system from 0.5 and 1.0 only, with each frame's potential energy (its
    # hidden oscillators' energy drawn exactly): MBAR over the two temperatures reweights their
    # frames to the ladder between them, and the fit to those anchors gets the curvature in 1/T
    # that the two temperatures' own frames cannot give (measured: plain 0.025 / 0.049 off at
    # 0.6 / 0.8, anchored 0.003 / 0.004)
    rng = np.random.default_rng(5)
    latent = [_draw(kt, 60_000, rng, hidden=4.0) for kt in (0.5, 1.0)]
    energies = [
        _energy(points) + np.where(_state(points) == 1, rng.gamma(4.0, kt, len(points)), 0.0)
        for points, kt in zip(latent, (0.5, 1.0), strict=True)
    ]
    kelvin_per_unit = 1.0 / KB_KJ_PER_MOL_K  # k_BT in kJ/mol is the reduced temperature
    mbar = multistate_estimate(energies, [0.5 * kelvin_per_unit, kelvin_per_unit], [None, None], np.zeros((0, 120_000)))
    estimate = EquilibriumEstimate(("low", "high"), mbar, kelvin_per_unit, (0.5, 1.0))
    anchors = estimate.anchors()
    assert anchors[0] == 0.5 and anchors[-1] == 1.0 and len(anchors) == 8  # every ladder point has the overlap
    assert max(estimate.anchors((10.0,))) < 1.2  # towards 10, MBAR's overlap ends near 1.1 (measured)
    anchored = estimate.training_data(TrainingData(latent, temperatures=np.array([0.5, 1.0])), ["low", "high"], anchors)
    estimator = LatentFreeEnergy(nodes=NODES)
    weights = np.concatenate(anchored.equilibrium_weights)
    frames_at = np.repeat(anchored.temperatures, anchored.lengths)
    fits = {
        "plain": estimator.fit(np.vstack(latent), np.repeat([0.5, 1.0], 60_000), None, _blocks(120_000), _state),
        "anchored": estimator.fit(np.vstack(anchored.features), frames_at, weights, _blocks(len(weights)), _state),
    }
    for kt in (0.6, 0.8):
        exact = _exact_populations(kt, hidden=4.0)
        errors = {name: np.abs(_state_masses(fit, kt) - exact).max() for name, fit in fits.items()}
        assert errors["plain"] > 0.02 and errors["anchored"] < 0.01, errors


def _state_masses(model, kt: float) -> np.ndarray:
    """Each state's mass under the model's density at ``kt``, by quadrature over the model's whole box.

    The box reaches beyond the data (a tenth of their span on each side), and a smooth fit puts
    mass there (10 % at λ = 1e-3 here), so the data's square alone would miss it.
    """
    axes = [np.linspace(low, high, 1201) for low, high in zip(model.lower, model.upper, strict=True)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2) @ model.axes.T + model.centre
    density = np.exp(model.log_prob(points, kt))
    return np.bincount(_state(points), density, 3) / density.sum()


def test_given_the_states_each_keeps_its_share_at_both_temperatures_whatever_the_smoothing():
    rng = np.random.default_rng(4)
    latent = np.vstack([_draw(0.5, 60_000, rng, 0.6), _draw(1.0, 60_000, rng, 0.6)])  # the top well: 2 % at 0.5
    temperatures = np.repeat([0.5, 1.0], 60_000)
    shares = [np.bincount(_state(latent[temperatures == kt]), minlength=3) / 60_000 for kt in (0.5, 1.0)]
    assert 0.01 < shares[0][2] < 0.03
    for smoothing in (1e-6, 1e-3):
        matched = LatentFreeEnergy(nodes=NODES, smoothing=smoothing).fit(latent, temperatures, states=_state)
        for kt, share in zip((0.5, 1.0), shares, strict=True):
            np.testing.assert_allclose(_state_masses(matched, kt), share, atol=0.002)  # measured ≤ 0.0009
    plain = LatentFreeEnergy(nodes=NODES, smoothing=1e-3).fit(latent, temperatures)
    assert _state_masses(plain, 0.5)[2] > 3 * shares[0][2]  # the smoothing alone smears the 2 % well (measured 5×)


def test_at_more_temperatures_than_the_form_can_join_each_state_still_keeps_its_share_at_each():
    # the top well's depth changes irregularly with T, so its share is no S − H/T′ + C·(…) of T:
    # constants in the tables alone leave it 0.027 off at worst, the level offsets do not
    rng = np.random.default_rng(6)
    temperatures, depths = (0.5, 0.6, 0.7, 0.85, 1.0), (2.0, 2.6, 1.6, 2.4, 1.8)
    latent = np.vstack([_draw(kt, 40_000, rng, depth) for kt, depth in zip(temperatures, depths, strict=True)])
    at = np.repeat(temperatures, 40_000)
    model = LatentFreeEnergy(nodes=NODES, smoothing=1e-6).fit(latent, at, states=_state)
    shares = [np.bincount(_state(latent[at == kt]), minlength=3) / 40_000 for kt in temperatures]
    errors = [np.abs(_state_masses(model, kt) - share).max() for kt, share in zip(temperatures, shares, strict=True)]
    assert max(errors) < 0.002, errors  # measured ≤ 0.0005
    reloaded = LatentFreeEnergyModel.from_state(model.state())
    between = _state_masses(reloaded, 0.65)  # the offsets, saved, interpolated in 1/T between 0.6 and 0.7
    np.testing.assert_allclose(between, _state_masses(model, 0.65), atol=1e-12)
    assert min(shares[1][2], shares[2][2]) < between[2] < max(shares[1][2], shares[2][2])
    model.level_offsets[:] = 0.0
    without = [np.abs(_state_masses(model, kt) - share).max() for kt, share in zip(temperatures, shares, strict=True)]
    assert max(without) > 0.005, without  # measured 0.027


def test_one_temperature_generates_there_only_and_saving_round_trips(two_temperatures):
    rng = np.random.default_rng(5)
    latent = _draw(0.5, 20_000, rng)
    model = LatentFreeEnergy(nodes=NODES, smoothing=1e-6).fit(latent, np.full(len(latent), 0.5))
    assert not model.enthalpy.any()
    with pytest.raises(LatfError, match="one temperature"):
        model.sample(0.7, 10)
    restored = LatentFreeEnergyModel.from_state(two_temperatures.state())
    np.testing.assert_array_equal(restored.log_prob(latent, 0.8), two_temperatures.log_prob(latent, 0.8))
    before_heat_capacity = {k: v for k, v in two_temperatures.state().items() if k != "heat_capacity"}
    older = LatentFreeEnergyModel.from_state(before_heat_capacity)  # a model file from before C: C = 0
    np.testing.assert_array_equal(older.log_prob(latent, 0.8), two_temperatures.log_prob(latent, 0.8))


@pytest.mark.parametrize(
    "latent, weights, message",
    [
        (np.zeros((10, 4)), None, "d ≤ 3"),
        (np.full((10, 2), np.nan), None, "finite"),
        (np.zeros((10, 2)), -np.ones(10), "weights"),
    ],
)
def test_bad_input(latent, weights, message):
    with pytest.raises(LatfError, match=message):
        LatentFreeEnergy(smoothing=1e-3).fit(latent, np.ones(len(latent)), weights)


def test_holding_out_a_whole_temperature_is_refused():
    rng = np.random.default_rng(6)
    latent, temperatures = rng.normal(size=(3000, 2)), np.repeat([0.5, 1.0], 1500)
    with pytest.raises(LatfError, match="every point at T = 1 is held out"):
        LatentFreeEnergy(nodes=16).fit(latent, temperatures, None, temperatures == 1.0)
