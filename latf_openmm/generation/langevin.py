"""Langevin dynamics in a learned latent space (Bruce, Aghili, Marinescu, Sabo: "Latent Spaces for Langevin Dynamics").

For a CV s = f(x) of the positions x (masses M), the coarse Hamiltonian is

    H(s, p) = ½ pᵀ G(s) p + V(s),    G(s) = ⟨J M⁻¹ Jᵀ | s⟩,  J = ∂f/∂x,

with G the mass-weighted metric of the map, averaged over the equilibrium microstates
that share s (it varies among them unless f is linear; :func:`metric_at_frames` gives it per
frame, :meth:`LatentLandscape.from_frames` its conditional mean and spread).

**The potential.** Integrating the momenta out of exp(−H/k_BT),

    ∫ exp(−pᵀG p / 2k_BT) dp = (2π k_BT)^{d/2} det G(s)^{−1/2},

leaves the marginal p(s) ∝ exp(−V(s)/k_BT) det G(s)^{−1/2}. For the marginal to be the
model's p(s | T) = exp(−F(s; T)/k_BT), the potential must be

    V(s) = F(s; T) − ½ k_BT log det G(s),

and then every latent trajectory at equilibrium samples the model's distribution at T.

**Underdamped dynamics.** ds = G p dt, dp = −∂H/∂s dt − γ p dt + √(2γ k_BT) G^{−1/2} dW, with

    ∂H/∂s_k = ½ pᵀ (∂_k G) p + ∂_k F − ½ k_BT ∂_k log det G.

The friction acts on G p = ds/dt, as an atomic friction γ does on a linear CV's velocity, and
the noise is its fluctuation–dissipation partner: at fixed s the momenta relax to
N(0, k_BT G⁻¹), the conditional of exp(−H/k_BT). The integrator is the half-step
Ornstein–Uhlenbeck solution at fixed s, the generalized leapfrog (Störmer–Verlet for a
non-separable H: implicit half-kick and drift, solved by fixed-point iteration), and the
other half-step OU; time-reversible and symplectic in its Hamiltonian part.

**Overdamped dynamics** (Brownian, Itô, Euler–Maruyama) with D(s) = k_BT G(s)/γ:

    ds = [−G ∇F / γ + k_BT (∇·G) / γ] dt + √(2 k_BT / γ) G^{1/2} dW,   (∇·G)_i = Σ_j ∂_j G_ij,

whose stationary density is exp(−F/k_BT): here F enters without the log det term, and the
divergence drift carries the metric's variation.

F, ∇F, G, ∂G and ∇ log det G live on a regular latent grid (d = 1 or 2), interpolated
multilinearly (which keeps G positive-definite: a convex combination of positive-definite
matrices); the derivatives are central differences on the grid. Walkers are torch tensors,
all stepped at once, on the CPU or CUDA. G is the frames' binned, smoothed mean, shrunk to
its global mean where frames are few; F bounds the region: a walker that leaves the grid,
or reaches F more than ``SUPPORT_CAP_KT`` k_BT above its minimum, stops the run with an
error (a blow-up, or a model whose F does not confine), rather than drifting into noise.
F is capped at ``WALL_KT`` k_BT above its minimum (twice that) before it is differenced:
where a learned F jumps past the cap within one grid cell (a flow's rough edge), the cells
next to it stay usable and the wall pushes walkers back. Such a wall's force spreads over
about two cells, whose probability is lost (``tests/test_langevin.py``: 0.009 beside a hole
in a well's tail; a hole in a well's centre costs that well 0.06), so a finer ``bins`` grid
sharpens it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from latf_openmm.devices import torch_device
from latf_openmm.errors import LatfError
from latf_openmm.export import LatentMean, paired_featurizer
from latf_openmm.features import Featurizer
from latf_openmm.files import write_json, write_npz
from latf_openmm.generation.kinetics import mean_first_passage_times, nan_as_none, state_lifetimes
from latf_openmm.models import LatentModel
from latf_openmm.simulation.colvar import write_colvar

FIXED_POINT_ITERATIONS = 4
DEFAULT_BINS = 100
SUPPORT_CAP_KT = 50.0  # a walker whose F is more than this above its minimum (k_BT) has escaped: a blow-up
WALL_KT = 2 * SUPPORT_CAP_KT  # F is capped here (k_BT above its minimum) before differencing
PRIOR_FRAMES = 1.0  # G's binned mean is shrunk to its global mean with the weight of this many frames


def metric_at_frames(
    cv: Callable[[torch.Tensor], torch.Tensor], positions: np.ndarray, masses: np.ndarray, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Return the CV s (n, d) and the metric J M⁻¹ Jᵀ (n, d, d) at frames ``positions`` (n, atoms, 3).

    ``cv`` maps positions (..., atoms, 3) to the CV (..., d) (e.g. the exported featurizer and
    encoder); J by autograd, d backward passes per batch of frames.
    """
    positions = np.asarray(positions, dtype=np.float64)
    masses = np.asarray(masses, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[2] != 3 or masses.shape != (positions.shape[1],):
        raise LatfError(f"positions must be (n, atoms, 3), one mass per atom; got {positions.shape}, {masses.shape}")
    if not np.isfinite(positions).all() or (masses <= 0).any():
        raise LatfError("positions must be finite and masses positive")
    inverse_mass = torch.from_numpy(1.0 / masses)[None, :, None]
    latents, metrics = [], []
    for chunk in torch.from_numpy(positions).split(batch_size):
        x = chunk.clone().requires_grad_(True)
        s = cv(x)
        rows = [torch.autograd.grad(s[:, k].sum(), x, retain_graph=k < s.shape[1] - 1)[0] for k in range(s.shape[1])]
        jacobian = torch.stack(rows, 1).flatten(2)  # (n, d, atoms·3)
        weighted = (torch.stack(rows, 1) * inverse_mass[:, None]).flatten(2)
        metrics.append(torch.einsum("nka,nla->nkl", jacobian, weighted).detach())
        latents.append(s.detach())
    return torch.cat(latents).numpy(), torch.cat(metrics).numpy()


@dataclass(frozen=True)
class LatentLandscape:
    """F(s; T) and the metric G(s) on a regular latent grid: everything the latent dynamics needs.

    Attributes
    ----------
    axes
        The grid's coordinates along each latent dimension (d arrays, ascending, equally spaced).
    free_energy
        F on the grid (shape of the axes), in the energy unit of ``kt``.
    metric
        G on the grid (..., d, d), symmetric positive-definite where ``supported``.
    kt
        k_BT at the landscape's temperature.
    supported
        Where F and G are known (F finite, G positive-definite).
    metric_spread
        The weighted mean of ‖G(x) − G(s)‖ / ‖G(s)‖ over the frames: how far one microstate's
        metric is from its s's average (0 for a linear CV); None when G was given directly.
    """

    axes: tuple[np.ndarray, ...]
    free_energy: np.ndarray
    metric: np.ndarray
    kt: float
    supported: np.ndarray
    metric_spread: float | None = None

    def __post_init__(self) -> None:
        """Check the grid, the shapes, k_BT and that G is positive-definite where supported."""
        d = len(self.axes)
        shape = tuple(len(a) for a in self.axes)
        if d not in (1, 2):
            raise LatfError(f"latent Langevin dynamics supports d = 1 or 2, got d = {d}")
        if any(len(a) < 3 or not np.allclose(np.diff(a), a[1] - a[0]) or a[1] <= a[0] for a in self.axes):
            raise LatfError("the latent grid's axes must be ascending, equally spaced, with at least 3 points")
        if self.free_energy.shape != shape or self.metric.shape != (*shape, d, d) or self.supported.shape != shape:
            raise LatfError(f"free energy, metric and support must match the grid {shape} (metric: {(*shape, d, d)})")
        if not self.kt > 0:
            raise LatfError(f"k_BT must be positive, got {self.kt}")
        if not self.supported.any():
            raise LatfError("the latent landscape has no supported cell")
        eigenvalues = np.linalg.eigvalsh(self.metric[self.supported])
        if not np.isfinite(self.free_energy[self.supported]).all() or not (eigenvalues > 0).all():
            raise LatfError(
                "the latent metric J M⁻¹ Jᵀ is singular or not finite where the free energy is supported: "
                "the CV does not vary with the positions there"
            )

    @classmethod
    def from_frames(
        cls,
        free_energy: Callable[[np.ndarray], np.ndarray],
        kt: float,
        latent: np.ndarray,
        metric: np.ndarray,
        weights: np.ndarray | None = None,
        bins: int = DEFAULT_BINS,
        smoothing: float = 1.5,
    ) -> LatentLandscape:
        """Build the landscape from frames' CV values and metrics (:func:`metric_at_frames`).

        Parameters
        ----------
        free_energy
            F(s) at latent points (n, d), e.g. ``lambda s: model.free_energy(s, T)``.
        kt
            k_BT in F's unit.
        latent, metric, weights
            The frames' s (n, d), J M⁻¹ Jᵀ (n, d, d) and equilibrium weights (uniform if None).
        bins
            Grid points per latent dimension, spanning the frames' range plus 25 % on each side.
        smoothing
            Width (grid cells) of the Gaussian that smooths the binned average of G. Where few
            frames are, the average is shrunk to G's global mean (the weight of
            ``PRIOR_FRAMES`` frames), so that G is positive-definite everywhere; F alone
            bounds where the dynamics may go.
        """
        latent = np.asarray(latent, dtype=np.float64)
        metric = np.asarray(metric, dtype=np.float64)
        n, d = latent.shape if latent.ndim == 2 else (0, 0)
        if n == 0 or metric.shape != (n, d, d):
            raise LatfError(f"latent (n, d) and metric (n, d, d) must match, got {latent.shape} and {metric.shape}")
        if not (np.isfinite(latent).all() and np.isfinite(metric).all()):
            raise LatfError("the frames' latent points or metrics contain NaN or inf")
        weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        if weights.shape != (n,) or (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise LatfError("weights must be (n,), finite, non-negative and not all zero")
        if d not in (1, 2):
            raise LatfError(f"latent Langevin dynamics supports d = 1 or 2, got d = {d}")
        low, high = latent.min(0), latent.max(0)
        pad = 0.25 * np.maximum(high - low, 1e-12)
        axes = tuple(np.linspace(low[k] - pad[k], high[k] + pad[k], bins) for k in range(d))
        edges = [np.concatenate([a - 0.5 * (a[1] - a[0]), [a[-1] + 0.5 * (a[1] - a[0])]]) for a in axes]
        mass, _ = np.histogramdd(latent, bins=edges, weights=weights)
        mass = ndimage.gaussian_filter(mass, smoothing, mode="constant")
        sums = np.stack(
            [
                ndimage.gaussian_filter(np.histogramdd(latent, bins=edges, weights=weights * metric[:, i, j])[0],
                                        smoothing, mode="constant")
                for i in range(d) for j in range(d)
            ],
            -1,
        )  # fmt: skip
        prior = PRIOR_FRAMES * weights.sum() / n
        mean_metric = np.average(metric, axis=0, weights=weights).reshape(d * d)
        grid_metric = ((sums + prior * mean_metric) / (mass + prior)[..., None]).reshape(*mass.shape, d, d)
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
        f = np.asarray(free_energy(grid), dtype=np.float64).reshape(mass.shape)
        supported = np.isfinite(f)
        grid_table = _CellTable(grid_metric.reshape(*mass.shape, d * d), axes, torch.device("cpu"))
        at_frames = grid_table(torch.from_numpy(latent))
        deviation = np.linalg.norm(metric.reshape(n, -1) - at_frames.numpy(), axis=1)
        spread = float(np.average(deviation / np.linalg.norm(at_frames.numpy(), axis=1).clip(1e-300), weights=weights))
        return cls(axes, f, grid_metric, float(kt), supported, spread)


def model_landscape(
    model: LatentModel,
    temperature: float,
    positions: np.ndarray,
    masses: np.ndarray,
    weights: np.ndarray | None = None,
    featurizer: Featurizer | None = None,
    bins: int = DEFAULT_BINS,
) -> LatentLandscape:
    """Return the landscape of ``model`` at ``temperature``: its F(s; T), and G from MD frames.

    Parameters
    ----------
    model
        A model with a temperature-dependent prior (LaTF or D-SPIB; SPIB only at its own T).
    temperature
        In the model's unit; k_BT follows :attr:`LatentModel.boltzmann_constant`.
    positions, masses, weights
        Frames (n, atoms, 3) in nm, the atoms' masses (amu) and the frames' equilibrium
        weights; G's conditional mean is taken over them at their own temperature(s).
    featurizer
        The model's featurizer, if the model does not keep it.
    """
    featurizer = paired_featurizer(model, featurizer)
    encoder = LatentMean(model)

    def cv(x: torch.Tensor) -> torch.Tensor:
        return encoder(featurizer(x))

    latent, metric = metric_at_frames(cv, positions, masses)
    kt = model.boltzmann_constant * float(temperature)
    return LatentLandscape.from_frames(lambda s: model.free_energy(s, temperature), kt, latent, metric, weights, bins)


def write_latent_run(
    out: str | Path, trajectory: np.ndarray, interval: float, model: LatentModel, summary: dict
) -> None:
    """Write a latent run to folder ``out``: ``COLVAR`` (time, walker, s, state), ``timeseries.npz``, ``summary.json``.

    ``trajectory`` is (frames, walkers, d), a frame every ``interval`` time units; every file
    is written atomically. The summary adds the state populations, lifetimes and mean
    first-passage times (:mod:`latf_openmm.generation.kinetics`) to ``summary``.
    """
    frames, walkers, d = trajectory.shape
    states = model.latent_state(trajectory.reshape(-1, d)).reshape(frames, walkers)
    time = interval * np.arange(1, frames + 1)
    out = Path(out)
    write_npz(out / "timeseries.npz", time=time, latent=trajectory, state=states)
    table = np.concatenate(
        [
            np.repeat(time, walkers)[:, None],
            np.tile(np.arange(walkers), frames)[:, None],
            trajectory.reshape(-1, d),
            states.reshape(-1, 1),
        ],
        1,
    )
    write_colvar(out / "COLVAR", ["time", "walker", *(f"s{k}" for k in range(d)), "state"], table)
    populations = np.bincount(states.ravel(), minlength=model.n_states) / states.size
    lifetimes, visits = state_lifetimes(states, model.n_states, interval)
    passage_times, passages = mean_first_passage_times(states, model.n_states, interval)
    kinetics = {
        "state_lifetimes": lifetimes.round(6).tolist(),
        "complete_visits": visits.astype(int).tolist(),
        "mean_first_passage_times": nan_as_none(passage_times),
        "first_passages": passages.astype(int).tolist(),
    }
    write_json(out / "summary.json", {**summary, "state_populations": populations.round(4).tolist(), **kinetics})


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))


class _CellTable:
    """Multilinear interpolation of grid values (n_1[, n_2], C), clamped to the grid, on ``device``.

    Each cell keeps its interpolant's 2^d polynomial coefficients in one row (in the cell's
    fractional coordinates u: 1, u₂, u₁, u₁u₂ for d = 2, each C wide), so that a call is one
    gather and d fused multiply-adds. The walkers' hot path is a few dozen small ops per step,
    whose fixed cost dominates for thousands of walkers (batched matrix products and
    reductions over small axes cost far more than elementwise ops there).
    """

    def __init__(self, values: np.ndarray, axes: tuple[np.ndarray, ...], device: torch.device) -> None:
        d = len(axes)
        coefficients = np.asarray(values, dtype=np.float64)
        for k in reversed(range(d)):  # along k: the value at the cell's lower corner, and the step to its upper one
            lower, upper = np.delete(coefficients, -1, axis=k), np.delete(coefficients, 0, axis=k)
            coefficients = np.stack([lower, upper - lower], axis=d)
        self._width = values.shape[-1]
        self._table = _as_tensor(coefficients.reshape(-1, 2**d * self._width)).to(device)
        self._inverse_spacing = _as_tensor([1 / float(a[1] - a[0]) for a in axes]).to(device)
        self._offset = -_as_tensor([float(a[0]) for a in axes]).to(device) * self._inverse_spacing  # grid units
        shape = values.shape[:d]
        self._last_point = _as_tensor([n - 1.0 for n in shape]).to(device)
        self._zero = torch.zeros_like(self._last_point)
        self._cell_strides = _as_tensor([math.prod(n - 1 for n in shape[k + 1 :]) for k in range(d)]).to(device)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Return the values (w, C) at ``points`` (w, d); a non-finite point gets some cell's values.

        The walkers' support check reports such a point.
        """
        position = torch.nan_to_num(torch.addcmul(self._offset, points, self._inverse_spacing), nan=0.0)
        position = position.clamp(self._zero, self._last_point)
        cell = torch.minimum(position.floor(), self._last_point - 1)
        fraction = position - cell
        values = self._table.index_select(0, torch.mv(cell, self._cell_strides).long())
        for k in range(fraction.shape[1]):  # the coefficients of u_k: its constant half, then its linear one
            half = values.shape[1] // 2
            values = torch.addcmul(values[:, :half], fraction[:, k : k + 1], values[:, half:])
        return values


def _combine(blocks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_m w_m B_m for blocks B (w, m·n), m contiguous blocks of n entries, and weights (w, m): (w, n).

    A symmetric matrix (row-major) times a vector is ``_combine(matrix, vector)``. Elementwise
    multiply-adds: batched matrix products and reductions over small axes cost far more here.
    """
    count = weights.shape[1]
    width = blocks.shape[1] // count
    result = blocks[:, :width] * weights[:, :1]
    for m in range(1, count):
        result = torch.addcmul(result, blocks[:, m * width : (m + 1) * width], weights[:, m : m + 1])
    return result


def _normal(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw standard normal noise shaped, typed and placed as ``like``, from the CPU ``generator``.

    Drawn in float32, whose sampler is vectorized (float64's costs 4× more per number on the
    CPU, the largest single op of a step); the noise needs no more precision.
    """
    return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)


def _cholesky_times(metric: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """L v for G = L Lᵀ (w, d·d, row-major), d ≤ 2, in closed form (batched LAPACK costs far more on 2 × 2)."""
    if vector.shape[1] == 1:
        return metric.sqrt() * vector
    l11, l21, l22 = _cholesky_2x2(metric)
    return torch.stack([l11 * vector[:, 0], l21 * vector[:, 0] + l22 * vector[:, 1]], -1)


def _cholesky_solve_transposed(metric: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """L⁻ᵀ v for G = L Lᵀ (w, d·d, row-major), d ≤ 2, in closed form. A non-positive-definite G gives NaN."""
    if vector.shape[1] == 1:
        return vector / metric.sqrt()
    l11, l21, l22 = _cholesky_2x2(metric)
    second = vector[:, 1] / l22
    return torch.stack([(vector[:, 0] - l21 * second) / l11, second], -1)


def _cholesky_2x2(metric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the entries L₁₁, L₂₁, L₂₂ (w,) of G = L Lᵀ for symmetric 2 × 2 matrices G (w, 4, row-major)."""
    l11 = metric[:, 0].sqrt()
    l21 = metric[:, 2] / l11
    return l11, l21, (metric[:, 3] - l21 * l21).sqrt()


class LatentLangevin:
    """Walkers in a :class:`LatentLandscape`: underdamped (default) or overdamped Langevin dynamics.

    Parameters
    ----------
    landscape
        F, G and k_BT.
    friction
        γ (1/time), the one free parameter of the kinetics.
    timestep
        The integration step (time).
    overdamped
        Brownian dynamics with D = k_BT G / γ instead.
    device
        Where the walkers live: ``"auto"`` (CUDA where torch finds it), ``"cpu"``, ``"cuda"``.
    """

    def __init__(
        self,
        landscape: LatentLandscape,
        friction: float,
        timestep: float,
        overdamped: bool = False,
        device: str = "auto",
    ) -> None:
        if not (math.isfinite(friction) and friction > 0):
            raise LatfError(f"friction must be positive, got {friction}")
        if not (math.isfinite(timestep) and timestep > 0):
            raise LatfError(f"timestep must be positive, got {timestep}")
        self.landscape, self.friction, self.timestep, self.overdamped = landscape, friction, timestep, overdamped
        self.device = torch_device(device)
        self.dim = len(landscape.axes)
        channels, usable, height = _fields(landscape)
        if not usable.any():
            raise LatfError("the latent landscape's support is too thin for derivatives: use a finer grid")
        # what each step reads at a walker: underdamped ∇V, G, ∂G; overdamped ∇F, G, ∇·G
        names = (
            ("free_energy_gradient", "metric", "divergence")
            if overdamped
            else ("potential_gradient", "metric", "metric_gradient")
        )
        self._split = [channels[name].shape[-1] for name in names]
        self._fields = _CellTable(np.concatenate([channels[name] for name in names], -1), landscape.axes, self.device)
        self._metric = _CellTable(channels["metric"], landscape.axes, self.device)
        self._usable = _CellTable(np.stack([usable.astype(np.float64), height], -1), landscape.axes, self.device)

    def _at(self, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """At ``s``: ∇V (w, d), G (w, d·d), ∂_k G_ij (w, d·d·d, k last); overdamped ∇F, G, ∇·G (w, d)."""
        return self._fields(s).split(self._split, dim=1)

    def inside(self, latent: np.ndarray | torch.Tensor) -> np.ndarray:
        """Whether each point (n, d) lies where F, G and their derivatives are known, F within the cap."""
        s = torch.as_tensor(latent, dtype=torch.float64).to(self.device)
        usable, height = self._usable(s).unbind(-1)
        inside = (usable > 1 - 1e-9) & (height < SUPPORT_CAP_KT)
        for k, axis in enumerate(self.landscape.axes):
            inside &= (s[:, k] >= float(axis[0])) & (s[:, k] <= float(axis[-1]))
        return (inside & torch.isfinite(s).all(-1)).cpu().numpy()

    def _check_support(self, s: torch.Tensor, step: int) -> None:
        inside = self.inside(s)
        if not inside.all():
            walker = int(np.flatnonzero(~inside)[0])
            raise LatfError(
                f"walker {walker} left the region where the free energy is supported at step {step} "
                f"(s = {s[walker].tolist()}): lower the timestep, or start the walkers inside the data"
            )

    @staticmethod
    def _momentum_curvature(fields: tuple[torch.Tensor, ...], p: torch.Tensor) -> torch.Tensor:
        """Return pᵀ(∂_k G)p (w, d), twice ∂H/∂s's kinetic part, with ``fields`` (:meth:`_at`) at the walkers' s."""
        return _combine(fields[2], (p[:, :, None] * p[:, None, :]).flatten(1))

    def _ou(self, metric: torch.Tensor, p: torch.Tensor, duration: float, generator: torch.Generator) -> torch.Tensor:
        """Exact OU relaxation of p at fixed s (metric G there) towards N(0, k_BT G⁻¹) over ``duration``."""
        decay = math.exp(-self.friction * duration)
        kicked = _cholesky_solve_transposed(metric, _normal(p, generator))  # G = L Lᵀ: L⁻ᵀ ξ has covariance G⁻¹
        return decay * p + math.sqrt((1 - decay**2) * self.landscape.kt) * kicked

    def _underdamped(
        self, s: torch.Tensor, p: torch.Tensor, fields: tuple[torch.Tensor, ...], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """OU(h/2), the generalized leapfrog, OU(h/2); ``fields`` are at s, and the new ones are returned."""
        h = self.timestep
        p = self._ou(fields[1], p, 0.5 * h, generator)
        potential_kicked = torch.add(p, fields[0], alpha=-0.5 * h)  # ½ h ∂H/∂s = ½ h (∇V + ½ pᵀ∂G p)
        half = p
        for _ in range(FIXED_POINT_ITERATIONS):  # implicit half-kick, at fixed s
            half = torch.add(potential_kicked, self._momentum_curvature(fields, half), alpha=-0.25 * h)
        velocity = _combine(fields[1], half)
        moved = s + h * velocity
        drifted = torch.add(s, velocity, alpha=0.5 * h)
        for _ in range(FIXED_POINT_ITERATIONS):  # implicit drift: ½[G(s) + G(s′)] p
            moved = torch.add(drifted, _combine(self._metric(moved), half), alpha=0.5 * h)
        fields = self._at(moved)
        kicked = torch.add(half, fields[0], alpha=-0.5 * h)  # the explicit half-kick at s′: −½h ∂H/∂s
        kicked = torch.add(kicked, self._momentum_curvature(fields, half), alpha=-0.25 * h)
        p = self._ou(fields[1], kicked, 0.5 * h, generator)
        return moved, p, fields

    def _brownian(self, s: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        gradient, metric, divergence = self._at(s)
        drift = (self.landscape.kt * divergence - _combine(metric, gradient)) / self.friction
        scale = math.sqrt(2 * self.landscape.kt * self.timestep / self.friction)
        return s + self.timestep * drift + scale * _cholesky_times(metric, _normal(s, generator))

    def run(
        self,
        start: np.ndarray,
        steps: int,
        seed: int,
        report_interval: int = 1,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Integrate all walkers from ``start`` (w, d) for ``steps``; return s every ``report_interval`` steps.

        Returns
        -------
        numpy.ndarray
            (steps // report_interval, w, d). Momenta start from their equilibrium at ``start``.
            ``progress(steps_done)`` is called at each report; the walkers' support is checked
            there too (a walker that left it raises, naming the step of that report).
        """
        start = np.asarray(start, dtype=np.float64)
        if start.ndim != 2 or start.shape[1] != self.dim or len(start) == 0:
            raise LatfError(f"start must have shape (walkers, {self.dim}), got {start.shape}")
        if steps < 1 or report_interval < 1:
            raise LatfError("steps and report_interval must be positive")
        generator = torch.Generator().manual_seed(int(seed))
        s = torch.from_numpy(start).to(self.device)
        self._check_support(s, 0)
        fields = self._at(s)
        p = self._ou(fields[1], torch.zeros_like(s), math.inf, generator)  # G at s, in either table
        frames = []
        for step in range(1, steps + 1):
            if self.overdamped:
                s = self._brownian(s, generator)
            else:
                s, p, fields = self._underdamped(s, p, fields, generator)
            if step % report_interval == 0:
                self._check_support(s, step)
                frames.append(s.cpu().numpy())
                if progress is not None:
                    progress(step)
        return np.stack(frames)


def _grid_gradient(values: np.ndarray, spacing: list[float]) -> np.ndarray:
    """Central differences of grid ``values`` (n_1[, n_2], …) along the grid axes, stacked at axis d."""
    d = len(spacing)
    parts = np.gradient(values, *spacing, axis=tuple(range(d)))
    return np.stack(parts if d > 1 else [parts], axis=d)


def _fields(landscape: LatentLandscape) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Return the grid channels (…, width), where all are known, and F's height.

    The channels: ``free_energy_gradient`` ∇F (d), ``potential_gradient`` ∇V (d) with
    V = F − ½ k_BT log det G (the underdamped dynamics' potential, the module's docstring),
    ``metric`` G (d·d, row-major), ``metric_gradient`` ∂_k G_ij (d·d·d: i, j, then k) and
    ``divergence`` (∇·G)_i = Σ_j ∂_j G_ij (d).

    F is capped at ``WALL_KT`` k_BT above its minimum before differencing; its height is
    (F − min F)/k_BT, capped so, and 0 where F is unknown. Unknown cells are NaN before
    differencing, so a cell whose stencil reaches one is not usable either: walkers must
    stay where every channel is known.
    """
    d = len(landscape.axes)
    shape = landscape.free_energy.shape
    spacing = [float(a[1] - a[0]) for a in landscape.axes]
    supported = landscape.supported
    height = np.where(supported, landscape.free_energy - landscape.free_energy[supported].min(), 0.0)
    height = np.minimum(height / landscape.kt, WALL_KT)
    metric = np.where(supported[..., None, None], landscape.metric, np.nan)
    log_det = np.where(supported, np.linalg.slogdet(np.where(np.isnan(metric), np.eye(d), metric))[1], np.nan)
    free_energy_gradient = _grid_gradient(np.where(supported, landscape.kt * height, np.nan), spacing)
    metric_gradient = _grid_gradient(metric, spacing)  # (…, k, i, j)
    channels = {
        "free_energy_gradient": free_energy_gradient,
        "potential_gradient": free_energy_gradient - 0.5 * landscape.kt * _grid_gradient(log_det, spacing),
        "metric": metric.reshape(*shape, d * d),
        "metric_gradient": np.moveaxis(metric_gradient, d, -1).reshape(*shape, d**3),
        "divergence": np.einsum("...jij->...i", metric_gradient),
    }
    usable = np.logical_and.reduce([np.isfinite(values).all(-1) for values in channels.values()])
    return {name: np.nan_to_num(values, nan=0.0) for name, values in channels.items()}, usable, height
