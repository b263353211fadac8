"""A latent free energy F(s; T) = H(s) − T·S(s) on a grid, fitted to all training temperatures.

    p(s | T) = exp(S(s) − H(s)/T′ + C(s)·(ln T′ + 1/T′ − 1)) / Z(T),   T′ = T / T_ref,

with the entropy S, the enthalpy H (in units of k_B T_ref) and the heat capacity C (in
units of k_B), all at T_ref, tabulated on a regular grid over the latent box, constant in
each node's cell. This is the Gibbs–Helmholtz free energy of each cell with a constant heat
capacity: H(T) = H + C·(T − T_ref) and S(T) = S + C·ln T′ give −G/k_BT = S − H/T′ +
C·(ln T′ + 1/T′ − 1). With C = 0 it is the van 't Hoff form, ln p linear in 1/T, which two
temperatures fix; C is fitted only from three or more (it is zero otherwise). A cell whose
hidden degrees of freedom stiffen or soften with s (vibrations, a solvent shell) has a
C(s): then ln p is convex in 1/T, and the van 't Hoff line through two temperatures is
wrong between them. It is the "latent free energy of the form H − TS" beside the
published LaTF flow (issue 13): a RealNVP onto the tilted Gaussian is the special case
H = T_ref|z(s)|²/2, C = 0, whose level sets must all be closed curves around one minimum.

Why our own estimator. The fit is penalized maximum likelihood, and it is convex: the
log-density is linear in the tables, the data enter only through their weighted counts
in the cells (so a step costs O(grid), not O(frames)), and log Z, exact for a density
constant in each cell, is a log-sum-exp of linear functions. So it has one optimum,
independent of the training seed, approached by L-BFGS in float64 in seconds on a pyramid
of grids (16 nodes per axis up to the final grid, each level started from the one below;
a fixed number of iterations per level, so not exactly reached); a state holding 2 % of
the data is generated with 2 % up to smoothing.
(A log-density interpolated between nodes is smoother, but its integral is then not the
node sum: on a rough fit that mismatch moved 2 % of the mass between three-hole states.)
The roughness penalty λ ∫ |∇²S|² + |∇²H|² + |∇²C|² over the unit box is chosen on held-out
contiguous blocks of the trajectories, each candidate solved on the pyramid up to half the
nodes; the final tables are then solved on the whole pyramid. Given the model's states (a
map from latent points to state labels), each fit ends by adding to each state's S, H and C
the constants that give it its weighted share of the data at each training temperature (from
more than three, what those constants cannot join is added per temperature and interpolated
in 1/T between them: ``level_offsets``), whatever λ did to the mass near its edges (without
them, a λ chosen honestly on held-out frames moved ala2's 1.6 % C7ax state to 2.1 %).
No library we know fits this multi-temperature model. The support is the grid's box:
outside it the density is zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import logsumexp

from latf_openmm.errors import LatfError
from latf_openmm.models.priors import (
    GenerativePrior,
    checked_count,
    checked_fit_data,
    checked_latent,
    checked_temperature,
    generator_for,
)

NODES_PER_AXIS = {1: 1024, 2: 256, 3: 40}
SMOOTHING_LADDER = tuple(10.0**k for k in range(-11, 0))  # roughest first, each rung a pyramid solve of its own
FINAL_ITERATIONS = 300  # per level of the pyramid
PYRAMID_BASE = 16  # nodes per axis of its coarsest grid
LADDER_ITERATIONS = 100  # per level of each rung's pyramid: enough to rank the λ
COUNT_FLOOR = 1e-2  # weight added to every node before its log is taken (start only)
BOX_MARGIN = 0.1  # of the data's span, on each side
CELL_PROBES = {1: 64, 2: 16, 3: 8}  # points per axis of a cell that straddles states, by latent dimension
MATCH_ROUNDS, MATCH_TOLERANCE = 8, 1e-6  # of the states' shares (:meth:`_Fitter._matched`), in ln(share)
StateMap = Callable[[np.ndarray], np.ndarray]  # latent points (m, d) → their state labels (m,), 0 … K − 1


def _cells(latent: np.ndarray, lower: np.ndarray, spacing: np.ndarray, nodes: int) -> np.ndarray:
    """Flat index of the nearest grid node of each point (n, d), in grid coordinates."""
    index = np.clip(np.rint((latent - lower) / spacing), 0, nodes - 1).astype(np.int64)
    return np.ravel_multi_index(tuple(index.T), (nodes,) * latent.shape[1])


def _roughness(table: np.ndarray) -> tuple[float, np.ndarray]:
    """Σ over axes of the squared second differences of a d-dimensional table, and its gradient."""
    value, gradient = 0.0, np.zeros_like(table)
    for axis in range(table.ndim):
        n = table.shape[axis]

        def part(start: int, length: int = n - 2, axis: int = axis) -> tuple[slice, ...]:
            return tuple(slice(start, start + length) if k == axis else slice(None) for k in range(table.ndim))

        diff = table[part(0)] - 2 * table[part(1)] + table[part(2)]
        value += float(np.sum(diff * diff))
        gradient[part(0)] += 2 * diff
        gradient[part(1)] -= 4 * diff
        gradient[part(2)] += 2 * diff
    return value, gradient


def temperature_basis(reference_temperature: float, temperatures: np.ndarray, n_tables: int) -> np.ndarray:
    """Return the coefficients (n_temperatures, n_tables) of the tables S, H, C in ln p at each temperature.

    They are 1, −1/T′ and ln T′ + 1/T′ − 1 (T′ = T / T_ref), the first ``n_tables`` of them.
    """
    reduced = np.asarray(temperatures, dtype=np.float64) / reference_temperature
    columns = [np.ones_like(reduced), -1.0 / reduced, np.log(reduced) + 1.0 / reduced - 1.0]
    return np.stack(columns[:n_tables], 1)


@dataclass
class LatentFreeEnergyModel(GenerativePrior):
    """Fitted tables at the grid nodes: ``entropy`` S, ``enthalpy`` H (k_B T_ref), ``heat_capacity`` C (k_B).

    Attributes
    ----------
    centre, axes
        The grid's frame: grid coordinates are u = (s − centre) @ axes, ``axes`` (d, d) the
        orthonormal principal directions of the weighted data, so that a latent that lies
        along a diagonal (as a linear encoder's often does) is still resolved.
    lower, upper
        Corners of the box in grid coordinates (d,).
    entropy, enthalpy, heat_capacity
        Tables of shape (nodes,) * d, at T_ref; ``enthalpy`` is all zero when fitted at one
        temperature, ``heat_capacity`` when fitted at fewer than three.
    reference_temperature
        T_ref, in the data's unit.
    temperatures
        The distinct training temperatures.
    smoothing
        The roughness weight λ chosen on held-out blocks.
    level_offsets
        (n_temperatures, *grid) what ln p adds at each training temperature so that each
        state has exactly its share there when S − H/T′ + C·(…) cannot give it at more than
        three; interpolated linearly in 1/T between them, the nearest one's beyond. All zero
        from up to three temperatures.
    """

    centre: np.ndarray
    axes: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    entropy: np.ndarray
    enthalpy: np.ndarray
    heat_capacity: np.ndarray
    reference_temperature: float
    temperatures: list[float]
    smoothing: float
    level_offsets: np.ndarray
    kind: ClassVar[str] = "grid"

    @property
    def dim(self) -> int:
        """Latent dimension d."""
        return len(self.lower)

    @property
    def nodes(self) -> int:
        """Grid nodes per axis."""
        return self.entropy.shape[0]

    def _check_temperature(self, temperature: float) -> float:
        temperature = checked_temperature(temperature)
        if len(self.temperatures) == 1 and not math.isclose(temperature, self.temperatures[0], rel_tol=1e-9):
            raise LatfError(
                f"this latent free energy was fitted at one temperature ({self.temperatures[0]:g}) and "
                f"cannot say how it changes with T, so it cannot generate at {temperature:g}; train on "
                "two or more temperatures, or use prior = 'flow'"
            )
        return temperature

    def _log_density_table(self, temperature: float) -> np.ndarray:
        """Return the normalized log p in each node's cell (flat)."""
        basis = temperature_basis(self.reference_temperature, np.array([self._check_temperature(temperature)]), 3)[0]
        tables = np.stack([self.entropy, self.enthalpy, self.heat_capacity]).reshape(3, -1)
        table = basis @ tables + self._offsets_at(temperature)
        log_volumes = _node_log_volumes(self.dim, self.nodes, self._spacing())
        return table - logsumexp(table + log_volumes)

    def _offsets_at(self, temperature: float) -> np.ndarray:
        """Return the level offsets at ``temperature`` (flat): linear in 1/T between levels, the nearest beyond."""
        inverse = 1.0 / np.asarray(self.temperatures)[::-1]  # ascending
        hats = np.eye(len(inverse))[::-1]  # hat k is 1 at level k
        weights = np.array([np.interp(1.0 / temperature, inverse, hat) for hat in hats])
        return weights @ self.level_offsets.reshape(len(inverse), -1)

    def _spacing(self) -> np.ndarray:
        return (self.upper - self.lower) / (self.nodes - 1)

    def log_prob(self, latent: np.ndarray, temperature: float) -> np.ndarray:
        """Return log p(s | T) of latent points (n, d); −inf outside the box."""
        latent = (checked_latent(latent, self.dim) - self.centre) @ self.axes
        values = self._log_density_table(temperature)[_cells(latent, self.lower, self._spacing(), self.nodes)]
        inside = ((latent >= self.lower) & (latent <= self.upper)).all(1)
        return np.where(inside, values, -np.inf)

    def sample(self, temperature: float, n: int, seed: int | None = None) -> np.ndarray:
        """Draw ``n`` exact samples (float64, (n, d)) of p(s | T).

        Each is a node's cell with probability p·volume, then a point uniformly in that cell
        (cells at the box's faces are halves).
        """
        generator, n = generator_for(seed), checked_count(n)
        spacing = self._spacing()
        log_mass = self._log_density_table(temperature) + _node_log_volumes(self.dim, self.nodes, spacing)
        mass = torch.from_numpy(np.exp(log_mass - log_mass.max()))
        cells = torch.multinomial(mass, n, replacement=True, generator=generator).numpy() if n else np.zeros(0, int)
        centres = self.lower + np.stack(np.unravel_index(cells, (self.nodes,) * self.dim), 1) * spacing
        low = np.maximum(centres - spacing / 2, self.lower)
        high = np.minimum(centres + spacing / 2, self.upper)
        offset = torch.rand(n, self.dim, dtype=torch.float64, generator=generator).numpy()
        return (low + offset * (high - low)) @ self.axes.T + self.centre

    def fit(
        self,
        latent: np.ndarray,
        weights: np.ndarray,
        temperatures: np.ndarray,
        held_out: np.ndarray | None = None,
        states: StateMap | None = None,
    ) -> LatentFreeEnergyModel:
        """Return the latent free energy fitted anew (:class:`LatentFreeEnergy`, the same nodes and T_ref)."""
        estimator = LatentFreeEnergy(nodes=self.nodes, reference_temperature=self.reference_temperature)
        return estimator.fit(latent, temperatures, weights, held_out, states)

    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers, for ``torch.save(weights_only=True)``."""
        return {
            "centre": torch.from_numpy(self.centre),
            "axes": torch.from_numpy(self.axes),
            "lower": torch.from_numpy(self.lower),
            "upper": torch.from_numpy(self.upper),
            "entropy": torch.from_numpy(self.entropy),
            "enthalpy": torch.from_numpy(self.enthalpy),
            "heat_capacity": torch.from_numpy(self.heat_capacity),
            "reference_temperature": self.reference_temperature,
            "temperatures": list(self.temperatures),
            "smoothing": self.smoothing,
            "level_offsets": torch.from_numpy(self.level_offsets),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LatentFreeEnergyModel:
        """Rebuild the model that :meth:`state` describes (older files: C = 0, no level offsets)."""
        arrays = {
            k: state[k].numpy().astype(np.float64) for k in ("centre", "axes", "lower", "upper", "entropy", "enthalpy")
        }
        arrays["heat_capacity"] = (
            state["heat_capacity"].numpy().astype(np.float64)
            if "heat_capacity" in state
            else np.zeros_like(arrays["entropy"])
        )
        temperatures = [float(t) for t in state["temperatures"]]
        arrays["level_offsets"] = (
            state["level_offsets"].numpy().astype(np.float64)
            if "level_offsets" in state
            else np.zeros((len(temperatures), *arrays["entropy"].shape))
        )
        return cls(
            **arrays,
            reference_temperature=float(state["reference_temperature"]),
            temperatures=temperatures,
            smoothing=float(state["smoothing"]),
        )


def _node_log_volumes(dim: int, nodes: int, spacing: np.ndarray) -> np.ndarray:
    """Return the log of the volume of each node's cell inside the box (flat): halves at the faces."""
    one_axis = np.ones(nodes)
    one_axis[[0, -1]] = 0.5
    volume = one_axis
    for _ in range(dim - 1):
        volume = np.outer(volume, one_axis).ravel()
    return np.log(volume) + np.log(spacing).sum()


class LatentFreeEnergy:
    """Estimator of :class:`LatentFreeEnergyModel` (deeptime style: ``fit`` → model).

    Parameters
    ----------
    nodes
        Grid nodes per latent axis (default: 1024, 256, 40 for d = 1, 2, 3).
    smoothing
        Roughness weight λ; default: chosen from 1e-11 … 1e-1 on held-out blocks.
    reference_temperature
        T_ref (default: the lowest training temperature).
    """

    def __init__(
        self, nodes: int | None = None, smoothing: float | None = None, reference_temperature: float | None = None
    ) -> None:
        if nodes is not None and nodes < 3:
            raise LatfError(f"the latent free energy needs ≥ 3 grid nodes per axis, got {nodes}")
        if smoothing is not None and not smoothing > 0:
            raise LatfError(f"smoothing must be > 0, got {smoothing}")
        self.nodes, self.smoothing, self.reference_temperature = nodes, smoothing, reference_temperature

    def fit(
        self,
        latent: np.ndarray,
        temperatures: np.ndarray,
        weights: np.ndarray | None = None,
        held_out: np.ndarray | None = None,
        states: StateMap | None = None,
    ) -> LatentFreeEnergyModel:
        """Fit to latent points (n, d) drawn at ``temperatures`` (n,) with equilibrium ``weights`` (n,).

        ``held_out`` (n,) marks the points whose likelihood chooses λ (contiguous blocks of
        the trajectories, so that correlated neighbours do not reward overfitting); the final
        tables are then refitted to all points. ``states`` maps latent points to the states the
        density must get right: each then carries its weighted share of the points at each
        training temperature, whatever the smoothing.
        """
        latent = np.asarray(latent, dtype=np.float64)
        n = len(latent)
        if latent.ndim != 2 or not 1 <= latent.shape[1] <= 3:
            raise LatfError(f"the latent free energy needs latent points (n, d) with d ≤ 3, got {latent.shape}")
        weights = np.ones(n) if weights is None else weights
        latent, weights, temperatures = checked_fit_data(
            latent, weights, temperatures, latent.shape[1], "latent free energy"
        )
        dim = latent.shape[1]
        nodes = self.nodes or NODES_PER_AXIS[dim]
        used = weights > 0
        centre = np.average(latent[used], axis=0, weights=weights[used])
        covariance = np.atleast_2d(np.cov(latent[used] - centre, rowvar=False, aweights=weights[used]))
        axes = np.linalg.eigh(covariance)[1][:, ::-1].copy()
        original, latent = latent, (latent - centre) @ axes
        low, high = latent[used].min(0), latent[used].max(0)
        span = np.maximum(high - low, 1e-6)
        lower, upper = low - BOX_MARGIN * span, high + BOX_MARGIN * span
        levels = np.unique(temperatures[used])
        t_ref = float(self.reference_temperature or levels.min())
        # coarse to fine (cascadic): each solve runs on a pyramid of grids, from PYRAMID_BASE
        # nodes per axis up, each level started from the one below. L-BFGS resolves the smooth
        # parts of the tables slowly on a fine grid (where the data are sparse only the roughness
        # penalty holds them) and fast on a coarse one: on LJ7 from 0.2 and 0.5 at 256 nodes,
        # started from 128 only, the tables after 300 iterations were 0.26 (weighted RMS of ln p
        # at 0.35) from the converged ones and 0.034 off MD at 0.3; from the pyramid, 0.07 and
        # 0.007. λ is chosen on the pyramid below the final grid, solved the same way.
        pyramid = _pyramid(nodes)
        partition = _StatePartition(states, original, (lower, upper, axes, centre), pyramid)
        fitters = [
            _Fitter(latent, temperatures, weights, levels, t_ref, lower, upper, level_nodes, partition)
            for level_nodes in pyramid
        ]
        if self.smoothing is not None:
            smoothing = self.smoothing
        else:
            held_out = np.zeros(n, bool) if held_out is None else np.asarray(held_out, bool)
            if held_out.shape != (n,) or not (held_out & used).any() or (used & ~held_out).sum() < 2:
                raise LatfError("latent free energy: choosing the smoothing needs held-out and training points")
            emptied = np.setdiff1d(levels, temperatures[used & ~held_out])
            if emptied.size:  # the fit on the rest could not say how ln p changes with T there
                raise LatfError(
                    f"latent free energy: every point at T = {', '.join(f'{t:g}' for t in emptied)} is held out; "
                    "hold out blocks of each temperature's trajectories"
                )
            smoothing = _choose_smoothing(fitters[:-1] or fitters, held_out)
        entropy, enthalpy, heat_capacity = _solve_pyramid(fitters, smoothing, np.ones(n, bool), FINAL_ITERATIONS)
        return LatentFreeEnergyModel(
            centre=centre,
            axes=axes,
            lower=lower,
            upper=upper,
            entropy=entropy,
            enthalpy=enthalpy,
            heat_capacity=heat_capacity,
            reference_temperature=t_ref,
            temperatures=levels.tolist(),
            smoothing=smoothing,
            level_offsets=fitters[-1].level_offsets.reshape(len(levels), *entropy.shape),
        )


def _pyramid(nodes: int) -> tuple[int, ...]:
    """Return the grids of the cascadic solve, coarsest first: ``nodes`` halved while ≥ PYRAMID_BASE."""
    sizes = [nodes]
    while sizes[-1] // 2 >= PYRAMID_BASE:
        sizes.append(sizes[-1] // 2)
    return tuple(sizes[::-1])


def _node_points(lower: np.ndarray, upper: np.ndarray, nodes: int) -> np.ndarray:
    """Return the nodes of a regular grid over the box (nodes^d, d), in grid coordinates, in flat order."""
    dim = len(lower)
    return lower + np.stack(np.unravel_index(np.arange(nodes**dim), (nodes,) * dim), 1) * (upper - lower) / (nodes - 1)


class _StatePartition:
    """Each point's state and each grid cell's fractions in every state, from a :data:`StateMap`.

    A cell takes its node's state, except where a neighbouring node along an axis has
    another: such a cell may straddle a boundary, and its fractions come from
    ``CELL_PROBES[d]``^d points spread evenly over it (with 3 per axis, boundaries in the
    outer sixths of the cells went unseen and left LJ7's states 0.006 off their shares).
    Without a map there is one state (its constants only shift each temperature's ln p,
    which the normalization removes: the fit is then the plain penalized likelihood).
    """

    def __init__(
        self,
        states: StateMap | None,
        latent: np.ndarray,
        frame: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        grids: tuple[int, ...],
    ) -> None:
        lower, upper, axes, centre = frame
        dim = len(lower)
        if states is None:
            self.point_state = np.zeros(len(latent), np.int64)
            self.fractions = {nodes: np.ones((nodes**dim, 1)) for nodes in grids}
            return
        self.point_state = _labels(states, latent)
        probed = {}  # per grid: node labels, the cells that may straddle, the labels of their probes
        for nodes in grids:
            points = _node_points(lower, upper, nodes)
            labels = _labels(states, points @ axes.T + centre)
            cells = np.flatnonzero(_straddling(labels.reshape((nodes,) * dim)))
            inside = _probes(points[cells], (upper - lower) / (nodes - 1))
            probed[nodes] = labels, cells, _labels(states, inside @ axes.T + centre)
        n_states = 1 + int(
            max(self.point_state.max(), *(max(n.max(), p.max(initial=0)) for n, _, p in probed.values()))
        )
        self.fractions = {}
        for nodes, (labels, cells, inside) in probed.items():
            probes = CELL_PROBES[dim] ** dim
            counts = np.bincount(np.repeat(np.arange(len(cells)), probes) * n_states + inside,
                                 minlength=len(cells) * n_states)  # fmt: skip
            fractions = np.eye(n_states)[labels]
            fractions[cells] = counts.reshape(len(cells), n_states) / probes
            self.fractions[nodes] = fractions


def _straddling(table: np.ndarray) -> np.ndarray:
    """Return the nodes of a label table with a neighbour along some axis that has another label."""
    straddles = np.zeros(table.shape, bool)
    for axis in range(table.ndim):
        step = np.diff(table, axis=axis) != 0
        edge = np.zeros_like(step.take([0], axis))
        straddles |= np.concatenate([step, edge], axis) | np.concatenate([edge, step], axis)
    return straddles


def _labels(states: StateMap, points: np.ndarray) -> np.ndarray:
    if not len(points):
        return np.zeros(0, np.int64)
    labels = np.asarray(states(points))
    if labels.shape != (len(points),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise LatfError(f"latent free energy: states must give one label ≥ 0 per latent point, got {labels.shape}")
    return labels.astype(np.int64)


def _probes(centres: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Return ``CELL_PROBES[d]``^d points spread evenly over the cell of each node in ``centres``, cell after cell."""
    dim = centres.shape[1]
    steps = (np.arange(CELL_PROBES[dim]) + 0.5) / CELL_PROBES[dim] - 0.5
    offsets = np.stack(np.meshgrid(*[steps] * dim, indexing="ij"), -1).reshape(-1, dim) * spacing
    return (centres[:, None] + offsets[None]).reshape(-1, dim)


class _Fitter:
    """Weighted counts per temperature in each node's cell, and the convex penalized likelihood.

    The objective and its gradient are written out in numpy (on these O(10⁴)-node tables
    an order of magnitude faster than autograd's small kernels) and minimized by torch's
    L-BFGS; each solution ends with the states' shares matched (:meth:`_matched`).
    """

    def __init__(
        self,
        latent: np.ndarray,
        temperatures: np.ndarray,
        weights: np.ndarray,
        levels: np.ndarray,
        t_ref: float,
        lower: np.ndarray,
        upper: np.ndarray,
        nodes: int,
        partition: _StatePartition,
    ) -> None:
        self.dim, self.nodes = latent.shape[1], nodes
        self.point_state, self.cell_fractions = partition.point_state, partition.fractions[nodes]
        self.node_state = self.cell_fractions.argmax(1)  # the state whose constants a node's cell takes
        self.shape = (nodes,) * self.dim
        self.spacing = spacing = (upper - lower) / (nodes - 1)
        self.lower, self.node_points = lower, _node_points(lower, upper, nodes)
        self.cells = _cells(latent, lower, spacing, nodes)
        self.level_of_point = np.searchsorted(levels, temperatures)
        self.weights = weights
        self.n_tables = min(len(levels), 3)  # S; H from two temperatures; C from three
        self.basis = temperature_basis(t_ref, levels, self.n_tables)  # (n_levels, n_tables)
        self.log_volumes = _node_log_volumes(self.dim, nodes, spacing)
        # the penalty is ∫ |∇²f|² over the unit box: second differences / h², times h^d
        self.penalty_scale = (1.0 / (nodes - 1)) ** (self.dim - 4)
        self.state: np.ndarray | None = None
        self.level_offsets = np.zeros((len(levels), nodes**self.dim))

    def counts(self, mask: np.ndarray) -> np.ndarray:
        """(n_levels, n_nodes) weighted counts of the masked points in each node's cell."""
        n_levels, n_nodes = len(self.basis), self.nodes**self.dim
        flat = self.level_of_point[mask] * n_nodes + self.cells[mask]
        return np.bincount(flat, self.weights[mask], minlength=n_levels * n_nodes).reshape(n_levels, -1)

    def _negative_log_likelihood(self, state: np.ndarray, counts: np.ndarray) -> tuple[float, np.ndarray]:
        """NLL of the counts under tables ``state`` (n_tables, n_nodes), and its gradient."""
        log_density = self.basis @ state
        shifted = log_density + self.log_volumes[None]
        top = shifted.max(1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(shifted - top).sum(1))
        totals = counts.sum(1)
        value = float(-(counts * log_density).sum() + (totals * log_z).sum())
        d_log_density = totals[:, None] * np.exp(shifted - log_z[:, None]) - counts
        return value, self.basis.T @ d_log_density

    def _log_count_start(self, counts: np.ndarray) -> np.ndarray:
        """Return tables (n_tables, n_nodes) in the unpenalized optimum's neighbourhood.

        Per node, they are the weighted least-squares fit of S − H/T′ (+ C·(ln T′ + 1/T′ − 1))
        to the log of each temperature's counts per volume (a ridge keeps H and C at 0 where
        too few temperatures have data). Starting there, L-BFGS need not carry mass between
        distant wells, which from a flat start it does not finish in its iterations.
        """
        totals = counts.sum(1, keepdims=True)
        log_density = np.log((counts + COUNT_FLOOR) / totals) - self.log_volumes[None]
        weight = counts + COUNT_FLOOR  # (n_levels, n_nodes)
        normal = np.einsum("ln,li,lj->nij", weight, self.basis, self.basis)
        ridge = np.ones(self.n_tables)
        ridge[0] = 0.0
        normal += 1e-3 * weight.sum(0)[:, None, None] * np.diag(ridge)[None]
        right = np.einsum("ln,li,ln->ni", weight, self.basis, log_density)
        return np.linalg.solve(normal, right[..., None])[..., 0].T

    def _matched(self, state: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Return the tables with each state's constants added that give it its share of the masked points.

        Per state k, the constants o_k (one per table) solve basis · o_k = ln(data share /
        model share) at each temperature, weighted by the data share: exact for as many
        temperatures as tables. What they leave at more temperatures goes into
        ``level_offsets`` (per temperature, the state's remaining ln(data share / model
        share)), so each state has exactly its share at every temperature. Each cell takes its
        main state's constants, so a few rounds settle the cells that straddle two states. A
        state without points at some temperature is left as fitted.
        """
        n_levels, n_states = len(self.basis), self.cell_fractions.shape[1]
        flat = self.level_of_point[mask] * n_states + self.point_state[mask]
        data = np.bincount(flat, self.weights[mask], minlength=n_levels * n_states).reshape(n_levels, n_states)
        data /= data.sum(1, keepdims=True)
        self.level_offsets = np.zeros((n_levels, self.nodes**self.dim))
        for _ in range(MATCH_ROUNDS):
            log_mass = self.basis @ state + self.level_offsets + self.log_volumes[None]
            model = np.exp(log_mass - logsumexp(log_mass, axis=1, keepdims=True)) @ self.cell_fractions
            seen = (data > 0).all(0) & (model > 0).all(0)
            gap, weight = np.log(data[:, seen] / model[:, seen]), data[:, seen]
            if not seen.any() or np.abs(gap).max() < MATCH_TOLERANCE:
                break
            normal = np.einsum("lk,li,lj->kij", weight, self.basis, self.basis)
            right = np.einsum("lk,li,lk->ki", weight, self.basis, gap)
            offsets = np.zeros((self.n_tables, n_states))
            offsets[:, seen] = np.linalg.solve(normal, right[..., None])[..., 0].T
            residual = np.zeros((n_levels, n_states))
            residual[:, seen] = gap - self.basis @ offsets[:, seen]
            state = state + offsets[:, self.node_state]
            self.level_offsets = self.level_offsets + residual[:, self.node_state]
        return state

    def solve(self, smoothing: float, mask: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the tables S, H, C minimizing NLL/N + λ·Σ roughness on the masked points, shares matched.

        The fit is warm-started and takes at most ``iterations`` L-BFGS steps; the tables it
        does not fit (H at one temperature, C at fewer than three) are zero.
        """
        counts = self.counts(mask)
        total = float(counts.sum())
        shape = (self.n_tables, self.nodes**self.dim)
        start = self._log_count_start(counts) if self.state is None else self.state
        weight = smoothing * self.penalty_scale
        # L-BFGS works in coordinates y = R·tables, where R is from the QR factorization of the
        # temperature basis weighted by each temperature's share of the counts: the columns
        # 1, −1/T′, C's term are nearly collinear over a narrow range of T, and in y they are
        # orthonormal (on LJ7 from 0.2 and 0.5 the fit in the tables' own coordinates had not
        # converged in 300 iterations: 0.015 off at 0.6, where the converged fit is 0.010 off)
        shares = np.sqrt(counts.sum(1) / total)[:, None]
        to_tables = np.linalg.inv(np.linalg.qr(shares * self.basis, mode="r"))

        def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
            state = to_tables @ flat.reshape(shape)
            value, gradient = self._negative_log_likelihood(state, counts)
            value, gradient = value / total, gradient / total
            for k in range(self.n_tables):
                rough, rough_gradient = _roughness(state[k].reshape(self.shape))
                value += weight * rough
                gradient[k] += weight * rough_gradient.ravel()
            return value, (to_tables.T @ gradient).ravel()

        # torch's L-BFGS on the numpy objective: scipy's L-BFGS-B spends ≈ 28 ms of its own per
        # iteration on 65 536 variables (measured), 25 times this objective's cost
        tables = torch.from_numpy(np.linalg.solve(to_tables, start).ravel()).requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [tables],
            lr=1,
            max_iter=iterations,
            tolerance_grad=1e-7,
            tolerance_change=1e-11,
            history_size=10,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            value, gradient = objective(tables.detach().numpy())
            tables.grad = torch.from_numpy(gradient)
            return torch.tensor(value, dtype=torch.float64)

        optimizer.step(closure)
        solution = tables.detach().numpy()
        if not np.isfinite(solution).all():
            raise LatfError("the latent free-energy fit diverged; give more data or a larger smoothing")
        self.state = self._matched(to_tables @ solution.reshape(shape), mask)
        padded = np.zeros((3, shape[1]))
        padded[: self.n_tables] = self.state
        return tuple(table.reshape(self.shape) for table in padded)


def _solve_pyramid(
    fitters: list[_Fitter], smoothing: float, mask: np.ndarray, iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve each level of the pyramid (coarsest first), each started from the one below; the top's tables."""
    below = None
    for fitter in fitters:
        fitter.state = None
        if below is not None:
            fitter.state = below.state[:, _cells(fitter.node_points, fitter.lower, below.spacing, below.nodes)]
        tables = fitter.solve(smoothing, mask, iterations)
        below = fitter
    return tables


def _choose_smoothing(fitters: list[_Fitter], held_out: np.ndarray) -> float:
    """λ of the ladder (rough to smooth) whose pyramid solve on the rest has the best held-out likelihood."""
    top = fitters[-1]
    held = top.counts(held_out)
    best = (math.inf, SMOOTHING_LADDER[0])
    for smoothing in SMOOTHING_LADDER:
        _solve_pyramid(fitters, smoothing, ~held_out, LADDER_ITERATIONS)
        score = top._negative_log_likelihood(top.state, held)[0] / float(held.sum())
        if score < best[0]:
            best = (score, smoothing)
        elif score > best[0] + 1e-3:
            break  # past the optimum it only gets worse
    return best[1]
