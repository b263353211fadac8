"""Latent Langevin dynamics: the stationary distribution against quadrature, for a linear and a nonlinear CV."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latf_openmm.errors import LatfError
from latf_openmm.generation import mean_first_passage_times, state_lifetimes
from latf_openmm.generation.langevin import LatentLandscape, LatentLangevin, _CellTable, metric_at_frames
from latf_openmm.simulation import read_colvar
from latf_openmm.systems.builders import threehole_energy, threehole_populations, threehole_well

KT = 1.0
SHIPPED = Path(__file__).parents[1] / "models" / "threehole" / "model.pt"
MASS = 2.0
LINEAR = np.array([[1.0, 0.5], [0.0, 2.0]])  # s = A (x, y): G = A Aᵀ / m, constant


def _sinh_cv(x: torch.Tensor) -> torch.Tensor:
    """s = (sinh x, y): det J = cosh x varies, so the potential's ½ k_BT log det G term matters."""
    return torch.stack([torch.sinh(x[..., 0, 0]), x[..., 0, 1]], -1)


def _linear_cv(x: torch.Tensor) -> torch.Tensor:
    return x[..., 0, :2] @ torch.from_numpy(LINEAR).T


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "latf_openmm.cli", *map(str, args)], capture_output=True, text=True)


CASES = {
    # the CV, its inverse (s → x, y), and F(s) by the change of variables: U(x(s)) + k_BT log |det ∂s/∂x|
    "sinh": (_sinh_cv, lambda s: (np.arcsinh(s[:, 0]), s[:, 1]), lambda s: 0.5 * KT * np.log1p(s[:, 0] ** 2)),
    "linear": (_linear_cv, lambda s: tuple(np.linalg.solve(LINEAR, s.T)), lambda s: 0.0 * s[:, 0]),
}


@pytest.fixture(scope="module")
def quadrature_frames():
    """Grid points of the three-hole plane with their Boltzmann weights at k_BT = 1: exact equilibrium frames."""
    axis = np.linspace(-3.3, 3.3, 331)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    weights = np.exp(-threehole_energy(x, y) / KT).ravel()
    keep = weights > 1e-12 * weights.max()
    positions = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], -1)[keep, None, :]
    return positions, weights[keep] / weights[keep].sum()


def _landscape(case: str, frames) -> tuple[LatentLandscape, np.ndarray, np.ndarray]:
    cv, inverse, log_jacobian = CASES[case]
    positions, weights = frames
    latent, metric = metric_at_frames(cv, positions, np.array([MASS]))

    def free_energy(s: np.ndarray) -> np.ndarray:
        return threehole_energy(*inverse(s)) + log_jacobian(s)

    return LatentLandscape.from_frames(free_energy, KT, latent, metric, weights, bins=120), latent, weights


def test_metric_at_frames_is_j_inverse_mass_jt(quadrature_frames):
    positions = quadrature_frames[0][::97]
    latent, metric = metric_at_frames(_sinh_cv, positions, np.array([MASS]))
    x = positions[:, 0, 0]
    np.testing.assert_allclose(latent[:, 0], np.sinh(x))
    np.testing.assert_allclose(metric[:, 0, 0], np.cosh(x) ** 2 / MASS)
    np.testing.assert_allclose(metric[:, 1, 1], 1 / MASS)
    np.testing.assert_allclose(metric[:, 0, 1], 0, atol=1e-15)
    _, linear = metric_at_frames(_linear_cv, positions, np.array([MASS]))
    np.testing.assert_allclose(linear, np.broadcast_to(LINEAR @ LINEAR.T / MASS, linear.shape))


@pytest.mark.parametrize("case", ["sinh", "linear"])
@pytest.mark.parametrize("overdamped", [False, True])
def test_latent_dynamics_keep_the_quadrature_marginal(quadrature_frames, case, overdamped):
    """Walkers started at equilibrium stay there: the wells' populations and ⟨s₁²⟩ against quadrature.

    Measured (sinh CV, 2000 walkers): ⟨s₁²⟩ 1.592 for both integrators against 1.591 exact; with the
    potential's ½ k_BT log det G term left out of the dynamics ⟨s₁²⟩ is about 25 % off.
    """
    torch.set_num_threads(1)
    landscape, latent, weights = _landscape(case, quadrature_frames)
    # G depends on s alone for both CVs: the spread is the binned average's error (cosh² x grows fast)
    assert landscape.metric_spread < (0.2 if case == "sinh" else 1e-9)
    start = latent[np.random.default_rng(0).choice(len(weights), 1000, p=weights)]
    timestep, steps = (0.002, 15_000) if overdamped else (0.01, 3_000)
    dynamics = LatentLangevin(landscape, friction=1.0, timestep=timestep, overdamped=overdamped)
    trajectory = dynamics.run(start, steps, seed=1, report_interval=steps // 30)
    s = trajectory[10:].reshape(-1, 2)
    inverse = CASES[case][1]
    populations = np.bincount(threehole_well(np.stack(inverse(s), -1)), minlength=3) / len(s)
    np.testing.assert_allclose(populations, threehole_populations(KT), atol=0.025)
    exact_second_moment = np.average(latent[:, 0] ** 2, weights=weights)
    assert (s[:, 0] ** 2).mean() == pytest.approx(exact_second_moment, rel=0.05)


def test_latent_dynamics_are_walled_in_where_f_jumps_past_the_cap_within_a_cell(quadrature_frames):
    """A learned F with a hole of 1000 k_BT below the right well (a flow's rough edge: a jump within a cell).

    Before F was capped for differencing, the cells next to the jump were unusable and the run
    stopped at its first report ("left the region"). Now the wall pushes walkers back: none
    enters the hole, and the wells keep the populations of the F with the hole. The wall's
    force spreads over about two cells, whose mass (here 0.009) is lost: a hole of radius 0.3
    in the well's centre instead gives the right well 0.36 against 0.42.
    """
    torch.set_num_threads(1)
    positions, weights = quadrature_frames
    _, inverse, _ = CASES["linear"]
    latent, metric = metric_at_frames(_linear_cv, positions, np.array([MASS]))

    def in_hole(xy: np.ndarray) -> np.ndarray:
        return np.hypot(xy[:, 0] - 1.0, xy[:, 1] + 1.2) < 0.3

    def free_energy(s: np.ndarray) -> np.ndarray:
        x, y = inverse(s)
        return threehole_energy(x, y) + 1000.0 * KT * in_hole(np.stack([x, y], -1))

    landscape = LatentLandscape.from_frames(free_energy, KT, latent, metric, weights, bins=120)
    outside = ~in_hole(positions[:, 0, :2])
    kept = np.where(outside, weights, 0.0) / weights[outside].sum()
    exact = np.bincount(threehole_well(positions[:, 0, :2]), kept, minlength=3)
    dynamics = LatentLangevin(landscape, friction=1.0, timestep=0.01)
    off_the_wall = np.where(dynamics.inside(latent), kept, 0.0)
    start = latent[np.random.default_rng(0).choice(len(weights), 1000, p=off_the_wall / off_the_wall.sum())]
    trajectory = dynamics.run(start, 3_000, seed=1, report_interval=100)
    xy = np.stack(inverse(trajectory[10:].reshape(-1, 2)), -1)
    np.testing.assert_allclose(np.bincount(threehole_well(xy), minlength=3) / len(xy), exact, atol=0.025)
    assert in_hole(xy).mean() < 1e-3


def test_the_walkers_grid_interpolation_is_exact_for_multilinear_fields_and_clamps_outside():
    # multilinear interpolation reproduces a + b x + c y + e x y exactly, in 1-D and 2-D; outside: the edge's value
    axes = (np.linspace(-1.0, 2.0, 7), np.linspace(0.5, 1.5, 5))
    x, y = np.meshgrid(*axes, indexing="ij")
    fields = np.stack([1 + 2 * x - 3 * y + 0.5 * x * y, x * y], -1)
    points = np.random.default_rng(0).uniform([-1.0, 0.5], [2.0, 1.5], size=(500, 2))
    exact = np.stack([1 + 2 * points[:, 0] - 3 * points[:, 1] + 0.5 * points.prod(1), points.prod(1)], -1)
    table = _CellTable(fields, axes, torch.device("cpu"))
    np.testing.assert_allclose(table(torch.from_numpy(points)).numpy(), exact, atol=1e-12)
    outside = torch.tensor([[5.0, 0.0], [-4.0, 9.0], [float("nan"), 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(table(outside).numpy()[:2, 1], [2.0 * 0.5, -1.0 * 1.5])
    assert np.isfinite(table(outside).numpy()).all()
    line = _CellTable((2 - 0.5 * axes[0])[:, None], axes[:1], torch.device("cpu"))
    np.testing.assert_allclose(line(torch.tensor([[0.3], [7.0]], dtype=torch.float64)).numpy()[:, 0], [1.85, 1.0])


def test_latent_dynamics_are_reproducible_from_the_seed(quadrature_frames):
    landscape, latent, _ = _landscape("sinh", quadrature_frames)
    dynamics = LatentLangevin(landscape, friction=2.0, timestep=0.01)
    start = latent[[len(latent) // 3, len(latent) // 2]]
    first = dynamics.run(start, 200, seed=5, report_interval=10)
    assert first.shape == (20, 2, 2)
    np.testing.assert_array_equal(first, dynamics.run(start, 200, seed=5, report_interval=10))
    assert not np.array_equal(first, dynamics.run(start, 200, seed=6, report_interval=10))


def test_latent_dynamics_bad_input_is_one_line(quadrature_frames):
    landscape, latent, _ = _landscape("linear", quadrature_frames)
    start = latent[:1]
    for call, match in [
        (lambda: LatentLangevin(landscape, friction=0.0, timestep=0.01), "friction must be positive"),
        (lambda: LatentLangevin(landscape, friction=1.0, timestep=-1.0), "timestep must be positive"),
        (lambda: LatentLangevin(landscape, 1.0, 0.01).run(np.zeros((2, 3)), 10, seed=0), r"shape \(walkers, 2\)"),
        (lambda: LatentLangevin(landscape, 1.0, 0.01).run(start + 100.0, 10, seed=0), "left the region"),
        (lambda: LatentLangevin(landscape, 1.0, 50.0).run(start, 50, seed=0), "left the region"),
        (lambda: LatentLangevin(landscape, 1.0, 50.0).run(start, 50, seed=0, report_interval=25), "left the region"),
        (
            lambda: LatentLandscape.from_frames(
                lambda s: s[:, 0], KT, *metric_at_frames(lambda x: x[..., 0, [0, 0]], quadrature_frames[0], [1.0])
            ),
            "singular",
        ),
        (
            lambda: LatentLandscape.from_frames(lambda s: s[:, 0], KT, np.zeros((5, 3)), np.zeros((5, 3, 3))),
            "d = 1 or 2",
        ),
        (lambda: metric_at_frames(_linear_cv, np.zeros((4, 2)), np.ones(1)), "positions must be"),
        (
            lambda: LatentLandscape.from_frames(lambda s: s[:, 0], KT, np.full((5, 2), np.nan), np.ones((5, 2, 2))),
            "NaN",
        ),
    ]:
        with pytest.raises(LatfError, match=match):
            call()


def test_latf_langevin_writes_a_colvar_and_timeseries_and_bad_input_is_one_line(tmp_path):
    """The shipped three-hole LaTF model (which keeps no featurizer: the runs' is used) at an unseen k_BT."""
    result = _cli("simulate", "--system", "threehole", "--temperatures", 0.75, "--steps", 210_000,
                  "--out", tmp_path / "md", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "latent"
    args = ["langevin", SHIPPED, "--runs", tmp_path / "md", "--steps", 600, "--walkers", 40]
    result = _cli(*args, "--temperature", 1.0, "--out", out, "--report-interval", 30, "--seed", 3)
    assert result.returncode == 0, result.stderr
    columns = read_colvar(out / "COLVAR")
    assert list(columns) == ["time", "walker", "s0", "s1", "state"]
    with np.load(out / "timeseries.npz") as series:
        assert series["latent"].shape == (20, 40, 2) and series["state"].shape == (20, 40)
        np.testing.assert_allclose(columns["s0"], series["latent"][..., 0].ravel(), rtol=1e-9)
        np.testing.assert_allclose(series["time"], 0.3 * np.arange(1, 21))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["temperature"] == 1.0 and sum(summary["state_populations"]) == pytest.approx(1.0, abs=1e-3)
    with np.load(out / "timeseries.npz") as series:  # the kinetics of the written state series
        n_states = len(summary["state_populations"])
        lifetimes, visits = state_lifetimes(series["state"], n_states, 0.3)
        passage_times, passages = mean_first_passage_times(series["state"], n_states, 0.3)
    np.testing.assert_allclose(summary["state_lifetimes"], lifetimes, atol=1e-6)
    assert summary["complete_visits"] == visits.tolist() and summary["first_passages"] == passages.tolist()
    assert [[v is None for v in row] for row in summary["mean_first_passage_times"]] == np.isnan(passage_times).tolist()
    for extra, message in [
        (["--temperature", 0.0], "--temperature must be positive"),
        (["--temperature", 1.0, "--friction", -1.0], "--friction must be positive"),
        (["--temperature", 1.0, "--walkers", 0], "--walkers must be"),
    ]:
        result = _cli(*args, *extra, "--out", tmp_path / "bad")
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def _markov_chain(transition, n_frames, n_trajectories, seed):
    """States (frames, trajectories) of a discrete-time Markov chain, all trajectories stepped at once."""
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(transition, axis=1)
    states = np.zeros((n_frames, n_trajectories), dtype=int)
    for t in range(1, n_frames):
        states[t] = (rng.random(n_trajectories)[:, None] > cumulative[states[t - 1]]).sum(1)
    return states


def test_first_passage_times_and_lifetimes_of_a_markov_chain_match_its_exact_values():
    # 0 ⇄ 1 ⇄ 2 in a line: from 0 the chain leaves with 0.02 per frame, so MFPT(0 → 1) = 50 frames
    # and 0's lifetime is 50; MFPT(0 → 2) = 50 + MFPT(1 → 2) with MFPT(1 → 2) = (1 + 0.1 · 50) / 0.1 = 60
    transition = np.array([[0.98, 0.02, 0.0], [0.1, 0.8, 0.1], [0.0, 0.05, 0.95]])
    states = _markov_chain(transition, 40_000, 20, seed=3)
    mfpt, passages = mean_first_passage_times(states, 3, interval=0.5)
    assert passages[0, 1] > 1000 and np.isnan(mfpt[0, 0])
    np.testing.assert_allclose(mfpt[0, 1], 0.5 * 50, rtol=0.05)
    np.testing.assert_allclose(mfpt[1, 2], 0.5 * 60, rtol=0.05)
    np.testing.assert_allclose(mfpt[0, 2], 0.5 * 110, rtol=0.05)
    lifetimes, visits = state_lifetimes(states, 3, interval=0.5)
    np.testing.assert_allclose(lifetimes, 0.5 / (1 - np.diag(transition)), rtol=0.05)
    assert (visits > 1000).all()
    one = np.array([0, 0, 1, 1, 1, 0, 2, 2, 0])  # a trajectory by hand: entries into 0 at frames 5 and 8
    mfpt, passages = mean_first_passage_times(one, 3, interval=1.0)
    assert mfpt[0, 2] == 1.0 and passages[0, 2] == 1 and np.isnan(mfpt[2, 1])  # from frame 5; 8 is censored
    with pytest.raises(LatfError, match="states must lie in 0"):
        mean_first_passage_times(one, 2, 1.0)
