"""SPIB/LaTF building blocks and models: flows, the tilted prior, training, saving, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from latf_openmm import LatfError
from latf_openmm.generation import (
    free_energy_profile_change,
    free_energy_profile_rmse,
    js_divergence_2d,
    kl_divergence_2d,
)
from latf_openmm.models import SPIB, LaTF, TrainingData, initial_labels, tilted
from latf_openmm.models.flow import RealNVP


def _randomized_flow(dim: int, seed: int = 0) -> RealNVP:
    torch.manual_seed(seed)
    flow = RealNVP(dim, n_layers=6, hidden=8).double()
    with torch.no_grad():  # move away from the identity initialization
        for parameter in flow.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return flow


def test_new_flow_is_identity_and_its_scales_get_gradients():
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=4, hidden=8)
    u = torch.randn(256, 2) * torch.tensor([2.0, 0.5])
    z, log_det = flow(u)
    torch.testing.assert_close(z, u)
    (0.5 * z.pow(2).sum(-1) - log_det).mean().backward()
    for layer in flow.layers[1:]:
        raw_scale_rows = layer.conditioner[-1].weight.grad[:2]  # the conditioner's outputs are (s̃, t)
        assert float(raw_scale_rows.abs().sum()) > 0  # the scale branch learns, not only the shift


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_flow_inverse_is_inverse_and_log_det_is_jacobian(dim):
    flow = _randomized_flow(dim)
    u = torch.randn(64, dim, dtype=torch.float64)
    z, log_det = flow(u)
    assert not torch.allclose(z, u)  # the flow is not the identity
    back, inv_log_det = flow.inverse(z)
    torch.testing.assert_close(back, u, atol=1e-5, rtol=0)
    torch.testing.assert_close(inv_log_det, -log_det, atol=1e-8, rtol=0)
    for i in range(8):
        jacobian = torch.autograd.functional.jacobian(lambda x: flow(x[None])[0][0], u[i])
        assert float(torch.slogdet(jacobian)[1]) == pytest.approx(float(log_det[i].detach()), abs=1e-8)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize(("tau", "t_scaled"), [(3.0, 1.0), (2.0, 2.5), (0.5, 0.3)])
def test_tilted_gaussian_is_normalized(dim, tau, t_scaled):
    sphere = 2 * math.pi ** (dim / 2) / math.gamma(dim / 2)
    radial = integrate.quad(
        lambda r: (
            r ** (dim - 1) * math.exp(tau * r - r * r / (2 * t_scaled) - tilted.log_normalizer(tau, dim, t_scaled))
        ),
        0,
        np.inf,
    )[0]
    assert sphere * radial == pytest.approx(1.0, abs=1e-8)


def test_tilted_gaussian_normalized_on_a_grid_in_2d():
    axis = np.linspace(-9, 9, 601)
    grid = torch.from_numpy(np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2))
    density = torch.exp(tilted.log_prob(grid, 3.0, 1.3)).numpy()
    assert density.sum() * (axis[1] - axis[0]) ** 2 == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_tilted_gaussian_sampler_matches_density(dim):
    tau, t_scaled = 3.0, 0.8
    z = tilted.sample(40_000, dim, tau, t_scaled, torch.Generator().manual_seed(dim)).numpy()
    radius = np.linalg.norm(z, axis=1)

    def cdf(r):
        log_z = tilted.log_normalizer(tau, dim, t_scaled)
        sphere = 2 * math.pi ** (dim / 2) / math.gamma(dim / 2)
        return (
            sphere
            * integrate.quad(lambda x: x ** (dim - 1) * math.exp(tau * x - x * x / (2 * t_scaled) - log_z), 0, r)[0]
        )

    grid = np.linspace(0, radius.max(), 200)
    table = np.array([cdf(r) for r in grid])
    assert stats.kstest(radius, lambda r: np.interp(r, grid, table)).pvalue > 1e-3
    # directions are uniform: the mean direction vanishes
    assert np.abs((z / radius[:, None]).mean(0)).max() < 0.02
    # the wrong temperature is detected by the same test
    hotter = np.linalg.norm(tilted.sample(40_000, dim, tau, 1.2 * t_scaled).numpy(), axis=1)
    assert stats.kstest(hotter, lambda r: np.interp(r, grid, table)).pvalue < 1e-6


def test_metrics():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50_000, 2))
    b = rng.normal(size=(50_000, 2))
    assert kl_divergence_2d(a, a) == pytest.approx(0.0, abs=1e-12)
    # two samples of one distribution: only the sparse-tail floor (ε = 1e-10 is harsh there)
    assert kl_divergence_2d(a, b) < 0.4 < 1.0 < kl_divergence_2d(a, b + np.array([1.5, 0.0]))
    assert js_divergence_2d(a, b + 1) == pytest.approx(js_divergence_2d(b + 1, a))
    assert 0 < js_divergence_2d(a, b + 1) < math.log(2)
    # profiles of the same distribution agree; a shifted one does not
    assert free_energy_profile_rmse(a[:, 0], b[:, 0]) < 0.1 < free_energy_profile_rmse(a[:, 0], 1.5 * b[:, 0])


def test_profile_change_is_the_rms_free_energy_difference():
    rng = np.random.default_rng(0)
    edges = np.linspace(-4, 5, 41)
    same = free_energy_profile_change(rng.normal(size=400_000), rng.normal(size=400_000), edges)
    assert same < 0.03
    # N(0, 1) → N(0.5, 1): ΔF(x) = 0.5 x + const, whose RMS under the new distribution is 0.5 k_BT
    shifted = free_energy_profile_change(rng.normal(size=400_000), rng.normal(0.5, size=400_000), edges)
    assert shifted == pytest.approx(0.5, abs=0.03)
    # weights count: the same shift expressed as weights on one sample
    x = rng.normal(size=400_000)
    assert free_energy_profile_change(x, x, edges, weights_after=np.exp(0.5 * x)) == pytest.approx(0.5, abs=0.03)
    # a region the old data never reached is a large change
    assert free_energy_profile_change(np.abs(x), x, edges) > 5


def test_initial_labels_grid_and_kmeans():
    rng = np.random.default_rng(1)
    two = rng.uniform(size=(1000, 2))
    labels = initial_labels(two, 16)
    assert labels.max() + 1 == 16
    cell = np.floor((two - two.min(0)) / (two.max(0) - two.min(0)) * 4).clip(0, 3)  # 4 × 4 equal bins
    assert len({(tuple(c), lab) for c, lab in zip(cell.tolist(), labels.tolist(), strict=True)}) == 16
    many = np.concatenate([rng.normal(size=(200, 5)) + 10 * k for k in range(3)])
    assert len(np.unique(initial_labels(many, 3))) == 3


def test_initial_labels_from_central_moments_ignore_particle_order():
    """Two 'isomers' of four identical particles (coordinations 1, 1, 1, 4 and 4, 4, 4, 1, as in
    LJ7's labels): with the particles shuffled in every frame, only the central moments sort them."""
    rng = np.random.default_rng(2)
    isomer = np.repeat([0, 1], 500)
    features = np.where(isomer[:, None] == 0, [1.0, 1.0, 1.0, 4.0], [4.0, 4.0, 4.0, 1.0])
    features = rng.permuted(features + rng.normal(scale=0.1, size=features.shape), axis=1)
    labels = initial_labels(features, 2, seed=3, method="kmeans", descriptors="central_moments")
    assert set(zip(labels.tolist(), isomer.tolist(), strict=True)) in ({(0, 0), (1, 1)}, {(0, 1), (1, 0)})
    by_features = initial_labels(features, 2, seed=3, method="kmeans")
    assert len(set(zip(by_features.tolist(), isomer.tolist(), strict=True))) > 2  # the raw features mix them
    with pytest.raises(LatfError, match="descriptors must be one of"):
        initial_labels(features, 2, descriptors="moments")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": [np.zeros((10, 2)), np.zeros((10, 3))]}, "every trajectory needs"),
        ({"features": [np.array([[0.0, np.nan]] * 5)]}, "NaN"),
        ({"features": [np.zeros((10, 2))], "labels": [np.zeros(9)]}, "one per frame"),
        ({"features": [np.zeros((10, 2))], "labels": [np.zeros(10)]}, "single state"),
        ({"features": [np.zeros((10, 2))], "weights": [-np.ones(10)]}, "non-negative"),
        ({"features": [np.zeros((10, 2))], "temperatures": [0.0]}, "positive"),
        ({"features": [np.zeros((10, 2))] * 2, "temperatures": [1.0]}, "one per trajectory"),
    ],
)
def test_bad_training_data(kwargs, message):
    with pytest.raises(LatfError, match=message):
        TrainingData(**kwargs)


def test_lagged_pairs_stay_inside_trajectories_and_unbroken_replica_stretches():
    features = [np.zeros((6, 1)), np.zeros((4, 1))]
    assert TrainingData(features).lagged_starts(2).tolist() == [0, 1, 2, 3, 6, 7]
    # trajectory 0 is replica 0, 0, 1, 1, 0, 0 (two exchanges): replica 0 comes back but is not continuous
    segments = [np.array([0, 0, 1, 1, 0, 0]), np.zeros(4)]
    assert TrainingData(features, segments=segments).lagged_starts(1).tolist() == [0, 2, 4, 6, 7, 8]
    assert TrainingData(features, segments=segments).lagged_starts(2).tolist() == [6, 7]


def test_lag_longer_than_trajectory_fails_before_training():
    data = TrainingData([np.random.default_rng(0).normal(size=(20, 2))], labels=[np.arange(20) % 2])
    with pytest.raises(LatfError, match="lag"):
        SPIB(lag=20).fit(data)
    with pytest.raises(LatfError, match="unknown training option"):
        SPIB(lagtime=2)
    with pytest.raises(LatfError, match="beta"):
        SPIB(beta=-1)


def test_flow_polishing_fits_the_flow_alone_and_keeps_the_encoder():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    side = rng.integers(0, 2, size=(4, 1))
    trajectories = [rng.normal(size=(600, 2)) * 0.3 + np.array([2.0, 0.0]) * (2 * s - 1) for s in side]
    data = TrainingData(trajectories, labels=[np.full(600, int(s[0])) for s in side])
    # undertrained on purpose (this tests the polishing's mechanics): no generation check
    settings = dict(
        lag=2, max_epochs=3, refinements=0, joint_max_epochs=3, flow_layers=4, seed=0, generation_tolerance=None
    )

    plain = LaTF(**settings, polish_steps=0).fit(data)
    polished = LaTF(**settings, polish_steps=1500, polish_batch_size=128).fit(data)
    frames = np.concatenate(trajectories)
    np.testing.assert_array_equal(plain.transform(frames), polished.transform(frames))  # encoder frozen
    checks = [r for r in polished.info["history"] if r["stage"] == "polish"]
    assert [r["epoch"] for r in checks] == [1000, 1500]
    assert not [r for r in plain.info["history"] if r["stage"] == "polish"]
    latent = plain.transform(frames)
    assert polished.log_prob(latent, 1.0).mean() > plain.log_prob(latent, 1.0).mean()  # a better density fit
    with pytest.raises(LatfError, match="polish"):
        LaTF(polish_steps=-1)
