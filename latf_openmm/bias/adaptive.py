"""Well-tempered metadynamics and OPES along 1–2 components of the learned CV.

Both keep their bias on a grid that OpenMM interpolates (a tabulated function in the
bias's ``CustomCVForce``), refreshed with ``updateParametersInContext`` after each
deposition. The design is that of ``openmm.app.Metadynamics`` and ``openmm-opes``;
written here because those drive the simulation themselves, while these run inside
:func:`latf_openmm.simulation.simulate`'s checkpointed loop, which saves the bias
state atomically with every checkpoint (so a killed run resumes to the same bias, bit
for bit), writes COLVAR rows with the reweighting constant c(t), stops with an error
when the CV leaves the grid, and identifies walkers by a stable index across restarts.
The OPES variant is tested against metadynamics and exact populations on the same system.

The user chooses the region to explore, ``lower`` … ``upper`` per biased component.
Flat-bottom walls (``wall_constant``) hold the CV there, and the grid extends 4σ
beyond it; a CV that leaves the grid stops the run with an error rather than feeling
a wrong bias. Energies in kJ/mol, temperatures in K, CV components are dimensionless.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
from scipy.interpolate import RegularGridInterpolator
from scipy.special import logsumexp

from latf_openmm.bias.base import CVBias
from latf_openmm.bias.cv import LearnedCV
from latf_openmm.bias.harmonic import wall_energies, wall_energy
from latf_openmm.errors import LatfError
from latf_openmm.files import write_npz
from latf_openmm.specs import SHARE_EVERY_DEPOSITIONS, BiasSpec, bias_grid, bias_region
from latf_openmm.units import KB_KJ_PER_MOL_K

KERNEL_KEYS = ("centres", "weights")  # what OPES's pair sums need of each walker's kernels
KERNELS = "plumed-2.10"  # the kernel shapes, as PLUMED 2.10's (Metadynamics' hills, OPES's kernels)
HILL_CUTOFF = 6.25  # r²/2 beyond which a metadynamics hill is zero, PLUMED's DP2CUTOFF
KERNEL_BLOCK = 256  # kernels per block in the OPES normalization's pair sums (memory ∝ block × kernels)


@dataclass(frozen=True)
class FrozenGrid:
    """A fixed grid bias as numbers alone.

    It gives the bias (kJ/mol) at CV values, without the system, the model or OpenMM.
    :meth:`GridBias.frozen_grid` makes one; the loop saves each round's, so its estimate
    evaluates every earlier round's bias at every frame from the CV alone.

    ``settings`` are the bias's :meth:`GridBias.settings` (frozen), which the runs made under
    it record in their manifests.
    """

    axes: tuple[np.ndarray, ...]
    grid: np.ndarray
    components: tuple[int, ...]
    lower: np.ndarray
    upper: np.ndarray
    wall_constant: float
    cv_dim: int
    settings: dict[str, Any]

    def energy_at(self, cv: np.ndarray) -> np.ndarray:
        """Return the bias (kJ/mol) at CV values (n, cv_dim).

        This is the grid by cubic interpolation (OpenMM's splines differ by far less than
        k_BT), plus the walls. Beyond the grid its edge value applies; the walls dominate there.
        """
        biased = np.asarray(cv, dtype=float).reshape(-1, self.cv_dim)[:, list(self.components)]
        inside = np.clip(biased, [a[0] for a in self.axes], [a[-1] for a in self.axes])
        energy = RegularGridInterpolator(self.axes, self.grid, method="cubic")(inside)
        return energy + wall_energies(biased, self.lower, self.upper, self.wall_constant)

    def save(self, path: str | Path) -> None:
        """Write the grid to an ``.npz``, atomically."""
        axes = {f"axis_{k}": axis for k, axis in enumerate(self.axes)}
        write_npz(path, grid=self.grid, lower=self.lower, upper=self.upper, wall_constant=np.array(self.wall_constant),
                  cv_dim=np.array(self.cv_dim), components=np.array(self.components),
                  settings=np.array(json.dumps(self.settings)), **axes)  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> FrozenGrid:
        """Read a grid written by :meth:`save`."""
        try:
            with np.load(path) as data:
                axes = tuple(data[f"axis_{k}"] for k in range(len(data["components"])))
                return cls(axes, data["grid"], tuple(int(c) for c in data["components"]), data["lower"],
                           data["upper"], float(data["wall_constant"]), int(data["cv_dim"]),
                           json.loads(str(data["settings"])))  # fmt: skip
        except (OSError, KeyError, ValueError) as exc:
            raise LatfError(f"cannot read the frozen bias grid {path}: {exc}") from exc


class GridBias(CVBias):
    """An adaptive bias on a grid over 1–2 CV components (base of :class:`Metadynamics` and :class:`OPES`).

    Parameters
    ----------
    cv
        The learned CV.
    temperature
        Simulation temperature, K.
    components
        Indices of the biased CV components (1 or 2).
    lower, upper
        Region to explore per biased component; walls hold the CV inside it. Default:
        the range of the model's training data on that component, widened on each side
        by ``margin`` times that range.
    sigma
        Gaussian kernel width per biased component (CV units); default (upper − lower)/25.
    pace
        Steps between depositions.
    bias_factor
        γ > 1.
    bins
        Grid points per component (default: 4 per σ over the grid).
    wall_constant
        Wall force constant, kJ/mol per CV unit².
    margin
        See ``lower, upper`` (default 0.1); larger values let walkers explore beyond the data.
    walkers_dir, walker
        Share the bias with other walkers through this folder; ``walker`` is this
        walker's index (stable across restarts).
    share_interval
        Steps between exchanges of depositions with the other walkers (a multiple of
        ``pace``; default 10 × pace), as ``openmm.app.Metadynamics``'s ``saveFrequency``.
        Every checkpoint and the end of a run exchange them too.
    periodic
        Whether the system is periodic.
    """

    def __init__(
        self,
        cv: LearnedCV,
        temperature: float,
        components: Sequence[int],
        pace: int,
        bias_factor: float,
        lower: Sequence[float] | None = None,
        upper: Sequence[float] | None = None,
        sigma: Sequence[float] | None = None,
        bins: Sequence[int] | None = None,
        wall_constant: float = BiasSpec.wall_constant,
        margin: float = BiasSpec.margin,
        walkers_dir: str | Path | None = None,
        walker: int = 0,
        share_interval: int | None = None,
        periodic: bool = False,
    ) -> None:
        components, lower, upper, sigma = bias_region(
            cv.dim, components, lower, upper, sigma, margin, cv.model.info.get("latent_range"), bins
        )
        n = len(components)
        if not (temperature > 0 and bias_factor > 1 and int(pace) >= 1 and wall_constant >= 0):
            raise LatfError("need temperature > 0, bias factor > 1, pace ≥ 1 and wall constant ≥ 0")
        self.kt = KB_KJ_PER_MOL_K * float(temperature)
        self.components, self.bias_factor, self.interval = components, float(bias_factor), int(pace)
        self.lower, self.upper, self.sigma = lower, upper, sigma
        self.grid_lower, self.grid_upper, self.bins = bias_grid(lower, upper, sigma, bins)
        self.axes = [
            np.linspace(lo, hi, b) for lo, hi, b in zip(self.grid_lower, self.grid_upper, self.bins, strict=True)
        ]
        self.walkers_dir = None if walkers_dir is None else Path(walkers_dir)
        self.walker = int(walker)
        self.share_interval = SHARE_EVERY_DEPOSITIONS * self.interval if share_interval is None else int(share_interval)
        if self.share_interval < self.interval or self.share_interval % self.interval:
            raise LatfError(f"share_interval ({self.share_interval}) must be a multiple of pace ({self.interval})")
        names = ", ".join(f"s{c}" for c in components)
        walls = [
            wall_energy(c, repr(float(lo)), repr(float(hi)), repr(float(wall_constant)))
            for c, lo, hi in zip(components, lower, upper, strict=True)
        ]
        force = cv.energy_force(" + ".join([f"latf_bias({names})", *walls]), periodic)
        table_type = openmm.Continuous1DFunction if n == 1 else openmm.Continuous2DFunction
        self._table = table_type(*self._table_arguments(np.zeros(self.bins)))
        force.addTabulatedFunction("latf_bias", self._table)
        super().__init__(cv, force)
        self._settings = {
            "components": components,
            "lower": lower.tolist(),
            "upper": upper.tolist(),
            "sigma": sigma.tolist(),
            "pace": self.interval,
            "bias_factor": self.bias_factor,
            "bins": self.bins,
            "wall_constant": float(wall_constant),
            "temperature_K": float(temperature),
            "shared": walkers_dir is not None,  # not the folder: a run folder may move
            "walker": self.walker,
            "share_interval": self.share_interval,
            "kernels": KERNELS,  # a run or saved state with other kernels is not resumed or loaded with these
        }
        self._others: dict[str, dict[str, np.ndarray]] = {}  # by file name, as last read
        self._others_total: dict[str, np.ndarray] = {}  # their grids summed, their deposition lists joined

    # -- the grid -------------------------------------------------------------------
    def _table_arguments(self, grid: np.ndarray) -> list:
        """Arguments of the tabulated function's constructor and of ``setFunctionParameters``."""
        limits = [v for lo, hi in zip(self.grid_lower, self.grid_upper, strict=True) for v in (lo, hi)]
        if len(self.bins) == 1:
            return [grid.ravel(), *limits]
        return [*self.bins, grid.ravel(order="F"), *limits]  # x varies fastest

    def _write_table(self) -> None:
        """Put the current bias grid into the force's tabulated function."""
        self._table.setFunctionParameters(*self._table_arguments(self.bias_grid()))

    def _push(self, context: openmm.Context) -> None:
        """Write the current bias grid into the force and bring ``context`` up to date."""
        self._write_table()
        self.force.updateParametersInContext(context)

    def kernel(self, centre: np.ndarray) -> np.ndarray:
        """Return a unit-height kernel (:meth:`kernel_shape`) of width σ at ``centre``, on the grid."""
        parts = [((axis - c) / s) ** 2 for axis, c, s in zip(self.axes, centre, self.sigma, strict=True)]
        return self.kernel_shape(parts[0] if len(parts) == 1 else np.add.outer(parts[0], parts[1]))

    def kernel_shape(self, squared_distance: np.ndarray) -> np.ndarray:
        """Return a unit-height kernel at squared distances r² from its centre (σ units)."""
        raise NotImplementedError

    def interpolate(self, grid: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Interpolate a grid array linearly at points (m, n_biased)."""
        return RegularGridInterpolator(self.axes, grid)(np.atleast_2d(points))

    def frozen_grid(self) -> FrozenGrid:
        """Return the bias, held fixed, as numbers alone (:class:`FrozenGrid`)."""
        if not self.frozen:
            raise LatfError("only a frozen bias (freeze(), or load() then freeze()) has a fixed grid")
        return FrozenGrid(tuple(self.axes), self.bias_grid(), tuple(self.components), self.lower, self.upper,
                          self._settings["wall_constant"], self.cv.dim, self.settings())  # fmt: skip

    def cv_values(self, context: openmm.Context, step: int) -> np.ndarray:
        """Return the CV now; raise if a biased component left the grid."""
        values = super().cv_values(context, step)
        biased = values[self.components]
        outside = (biased < self.grid_lower) | (biased > self.grid_upper)
        if outside.any():
            k = int(np.argmax(outside))
            raise LatfError(
                f"CV component s{self.components[k]} = {biased[k]:.4g} left the bias grid "
                f"[{self.grid_lower[k]:.4g}, {self.grid_upper[k]:.4g}] at step {step}; "
                "widen lower/upper or raise the wall constant"
            )
        return values

    # -- what subclasses define -------------------------------------------------------
    def bias_grid(self) -> np.ndarray:
        """Return the bias (kJ/mol) on the grid, from this walker's and the others' depositions."""
        raise NotImplementedError

    def reweighting_constant(self) -> float:
        """Return c(t), kJ/mol: frames weigh exp((V − c(t))/kT)."""
        raise NotImplementedError

    def _deposit(self, centre: np.ndarray) -> None:
        """Add a kernel at ``centre`` (the biased components), sized by the bias there (:meth:`add_deposition`)."""
        raise NotImplementedError

    def add_deposition(self, centre: np.ndarray, size: float) -> None:
        """Add a deposition made elsewhere (by PLUMED) to this walker's: a hill's height or a kernel's weight."""
        raise NotImplementedError

    # -- CVBias interface ---------------------------------------------------------------
    @property
    def fields(self) -> list[str]:
        """COLVAR columns after ``time``: the CV, the bias and the reweighting constant."""
        return [*super().fields, f"{self.kind}.rct"]

    def observe(self, context: openmm.Context, step: int) -> np.ndarray:
        """Return the COLVAR row (without time): the CV, the bias and c(t)."""
        return np.append(super().observe(context, step), self.reweighting_constant())

    def state(self) -> dict[str, np.ndarray]:
        """Return this walker's depositions (saved with each checkpoint, when the other walkers get them too)."""
        self._publish()
        return dict(self._own)

    def _acting_state(self) -> list[np.ndarray]:
        """Return the bias grid, which alone fixes how a frozen grid bias acts."""
        return [self.bias_grid()]  # the other walkers' depositions included

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Restore this walker's depositions from a :meth:`state` of the same kind and grid."""
        self._check(state)
        self._own = {key: np.array(state[key]) for key in self._own}

    def _check(self, state: dict[str, np.ndarray]) -> None:
        """Raise unless ``state`` comes from a bias of this kind, grid and CV."""
        missing = set(self._own) - set(state)
        if missing:
            raise LatfError(f"the saved {self.kind} state lacks {sorted(missing)}; was it written by another bias?")
        if np.shape(state[self._grid_key]) != tuple(self.bins) or any(
            np.shape(state[key])[1:] != value.shape[1:] for key, value in self._own.items()
        ):
            raise LatfError(f"the saved {self.kind} state was made with another grid or CV; use the same settings")

    def attach(self, context: openmm.Context) -> None:
        """Bring the force in ``context`` up to date, reading the other walkers' depositions first."""
        if not self.frozen:
            self._share()
        self._push(context)

    def freeze(self) -> None:
        """Share the depositions one last time and hold the bias fixed at its current grid."""
        self._share()
        self._write_table()
        super().freeze()

    def update(self, context: openmm.Context, step: int) -> None:
        """Deposit at the current CV (unless frozen), share at the interval and update ``context``."""
        if self.frozen:
            return
        self._deposit(self.cv_values(context, step)[self.components])
        if len(self._own[self._list_key]) % (self.share_interval // self.interval) == 0:
            self._share()
        self._push(context)

    def load(self, path: str | Path) -> None:
        """Continue from a saved bias.

        ``path`` is the bias a finished run saved (its ``bias_state.npz``), or the folder the
        walkers shared, whose depositions (their ``walker_*.npz``) are all merged.
        """
        path = Path(path)
        files = sorted(path.glob("walker_*.npz")) if path.is_dir() else [path]
        if not files:
            raise LatfError(f"no saved walker biases (walker_*.npz) in {path}")
        states = []
        for file in files:
            try:
                with np.load(file) as data:
                    states.append({key: data[key] for key in data.files})
            except OSError as exc:
                raise LatfError(f"cannot read the saved bias {file}: {exc}") from exc
        for state in states:
            self._check(state)
        merged = {key: np.concatenate([state[key] for state in states]) for key in self._own if key != self._grid_key}
        merged[self._grid_key] = np.sum([state[self._grid_key] for state in states], axis=0)
        self.restore(merged)

    def settings(self) -> dict[str, Any]:
        """Return the base settings plus the grid, kernel, pace, walls and walkers."""
        return {**super().settings(), **self._settings}

    # -- walkers --------------------------------------------------------------------
    def _publish(self) -> None:
        """Write this walker's depositions for the other walkers (an atomic file, no locks)."""
        if self.walkers_dir is not None:
            self.walkers_dir.mkdir(parents=True, exist_ok=True)
            write_npz(self.walkers_dir / f"walker_{self.walker}.npz", **self._own)

    def _share(self) -> None:
        """Publish this walker's depositions and read the others' (the caller then updates the force)."""
        if self.walkers_dir is None:
            return
        self._publish()
        previous = self._others
        self._others = {}
        for path in sorted(self.walkers_dir.glob("walker_*.npz")):
            if path.name != f"walker_{self.walker}.npz":
                with np.load(path) as data:
                    self._others[path.name] = {key: data[key] for key in data.files}
        self._others_total = {
            key: np.sum([other[key] for other in self._others.values()], axis=0)
            if key == self._grid_key
            else np.concatenate([other[key] for other in self._others.values()])
            for key in self._own
            if self._others
        }
        self._others_read(previous)

    def _others_read(self, previous: dict[str, dict[str, np.ndarray]]) -> None:
        """Bring running totals up to date after the others' depositions were read (``previous``: as read before)."""

    def _all(self, key: str) -> list[np.ndarray]:
        """Return the ``key`` deposition arrays of this walker and of the others together."""
        return [self._own[key], *([self._others_total[key]] if self._others_total else [])]


class Metadynamics(GridBias):
    """Well-tempered metadynamics: hills of height h·exp(−V(s)/(k_B ΔT)), ΔT = (γ − 1) T.

    Hills are PLUMED's stretched Gaussians (:meth:`kernel_shape`), so that the package and
    PLUMED's ``METAD`` give the same bias from the same hills.

    ``height`` is the initial hill height (kJ/mol); the other parameters are those of
    :class:`GridBias`. c(t) = k_B T ln[∫ e^{γV/(k_B ΔT)} ds / ∫ e^{V/(k_B ΔT)} ds]
    (Tiwary and Parrinello, 2015).
    """

    kind = "metad"
    _grid_key, _list_key = "bias", "hills"

    def __init__(self, cv: LearnedCV, temperature: float, height: float, **grid: object) -> None:
        super().__init__(cv, temperature, **grid)
        if not height > 0:
            raise LatfError(f"hill height must be positive, got {height}")
        self.height = float(height)
        self._settings["height"] = self.height
        self._own = {"bias": np.zeros(self.bins), "hills": np.zeros((0, len(self.bins) + 1))}

    def kernel_shape(self, squared_distance: np.ndarray) -> np.ndarray:
        """Return PLUMED's stretched Gaussian at r² (σ units): (e^{−r²/2} − e^{−c})/(1 − e^{−c}) for r²/2 < c, else 0.

        c = 6.25 (PLUMED's ``DP2CUTOFF``): the hill is 1 at its centre and goes smoothly to 0 at r = 3.54.
        """
        floor = np.exp(-HILL_CUTOFF)
        inside = 0.5 * squared_distance < HILL_CUTOFF
        return np.where(inside, (np.exp(-0.5 * squared_distance) - floor) / (1 - floor), 0.0)

    def bias_grid(self) -> np.ndarray:
        """Return the sum of all walkers' hills on the grid, kJ/mol."""
        return np.sum(self._all("bias"), axis=0)

    def reweighting_constant(self) -> float:
        """Return c(t) = k_B T ln[∫ e^{γV/(k_B ΔT)} ds / ∫ e^{V/(k_B ΔT)} ds], kJ/mol."""
        scaled = self.bias_grid() / (self.kt * (self.bias_factor - 1))
        return float(self.kt * (logsumexp(self.bias_factor * scaled) - logsumexp(scaled)))

    def _deposit(self, centre: np.ndarray) -> None:
        """Add a hill at ``centre``, its height tempered by the bias already there."""
        current = self.interpolate(self.bias_grid(), centre)[0]
        self.add_deposition(centre, self.height * np.exp(-current / (self.kt * (self.bias_factor - 1))))

    def add_deposition(self, centre: np.ndarray, size: float) -> None:
        """Add a hill of height ``size`` (kJ/mol) at ``centre``."""
        self._own["bias"] = self._own["bias"] + size * self.kernel(centre)
        self._own["hills"] = np.vstack([self._own["hills"], [*centre, size]])


class OPES(GridBias):
    """OPES (Invernizzi and Parrinello, 2020) with fixed kernel widths, as PLUMED's ``OPES_METAD``.

    V(s) = (1 − 1/γ) k_B T ln(P(s)/Z + ε), with P the kernel density estimate of the
    reweighted CV distribution (kernels weighted by e^{V/k_B T} at deposition), Z its
    mean over the kernel centres, ε = e^{−βΔE/(1 − 1/γ)}; ``barrier`` is ΔE (kJ/mol)
    and ``bias_factor`` defaults to βΔE; c(t) = k_B T ln(Σ w / N). With PLUMED 2.10's
    kernels (``FIXED_SIGMA``, no compression: truncated Gaussians, e^{−r²/2} − e^{−r_c²/2}
    for r < r_c in units of σ, r_c² = 2βΔE/(1 − 1/γ), where a kernel's value is ε), so that
    the two give the same bias from the same kernels (``tests/test_plumed_driver.py``).

    One difference by design: before its first kernel PLUMED's bias is −ΔE, so that kernel
    weighs e^{−βΔE}, and its ``rct`` counts a first weight w₀ = e^{−βΔE} that no kernel
    carries. Frames then weighed by e^{β(V − c(t))} from the start give the first kernels'
    frames weights up to e^{βΔE} above the rest (a loop walker's Kish effective sample size
    fell from > 500 to 9 of 5000 frames). Here the bias is 0 before the first kernel, which
    weighs 1, and c(t) has no w₀.

    P lives on the grid as a running sum of kernels; Z is a running sum of exact kernel
    values over pairs of centres, Σ_ij w_j K(c_i − c_j), brought up to date with each new
    kernel (this walker's at deposition, the others' when they are read), as PLUMED's
    ``OPES_METAD`` does, rather than re-evaluated at every centre each time.
    """

    kind = "opes"
    _grid_key, _list_key = "density", "weights"

    def __init__(
        self, cv: LearnedCV, temperature: float, barrier: float, bias_factor: float | None = None, **grid: object
    ) -> None:
        kt = KB_KJ_PER_MOL_K * float(temperature)
        if not barrier > 0:
            raise LatfError(f"the barrier must be positive, got {barrier}")
        super().__init__(cv, temperature, bias_factor=bias_factor or barrier / kt, **grid)
        self.barrier = float(barrier)
        self._settings["barrier"] = self.barrier
        self.epsilon = np.exp(-self.barrier / (self.kt * (1 - 1 / self.bias_factor)))
        self.cutoff_squared = -2 * np.log(self.epsilon)  # PLUMED's default KERNEL_CUTOFF, squared
        self._own = {"density": np.zeros(self.bins), "weights": np.zeros(0), "centres": np.zeros((0, len(self.bins)))}
        self._own_pairs = 0.0  # Σ_ij w_j K(c_i − c_j) over this walker's kernels (checkpointed)
        self._cross_pairs = 0.0  # the same over pairs with at least one of the others' kernels

    def kernel_shape(self, squared_distance: np.ndarray) -> np.ndarray:
        """Return PLUMED's truncated Gaussian, e^{−r²/2} − ε within the cutoff and 0 beyond, at r² (σ units)."""
        return np.where(squared_distance < self.cutoff_squared, np.exp(-0.5 * squared_distance) - self.epsilon, 0.0)

    def bias_grid(self) -> np.ndarray:
        """Return V(s) on the grid from all walkers' kernels (zero before the first), kJ/mol."""
        weights = np.concatenate(self._all("weights"))
        if not len(weights):
            return np.zeros(self.bins)
        density = np.sum(self._all("density"), axis=0) / weights.sum()
        normalization = (self._own_pairs + self._cross_pairs) / (len(weights) * weights.sum())
        return (1 - 1 / self.bias_factor) * self.kt * np.log(density / normalization + self.epsilon)

    def reweighting_constant(self) -> float:
        """Return c(t) = k_B T ln(Σ w / N), kJ/mol (zero before the first kernel)."""
        weights = np.concatenate(self._all("weights"))
        return float(self.kt * np.log(weights.mean())) if len(weights) else 0.0

    def _deposit(self, centre: np.ndarray) -> None:
        """Add a kernel at ``centre``, weighted by e^{V/k_B T} there."""
        self.add_deposition(centre, np.exp(self.interpolate(self.bias_grid(), centre)[0] / self.kt))

    def add_deposition(self, centre: np.ndarray, size: float) -> None:
        """Add a kernel of weight ``size`` at ``centre``."""
        weight = float(size)
        new_centre, new_weight = centre[None, :], np.array([weight])
        self._own_pairs += self._pair_sum(self._own["centres"], self._own["weights"], new_centre, new_weight)
        if self._others_total:
            with_itself = weight * float(self.kernel_shape(np.array(0.0)))  # a pair of this walker's own
            others = self._others_total
            self._cross_pairs += self._pair_sum(others["centres"], others["weights"], new_centre, new_weight)
            self._cross_pairs -= with_itself
        self._own["density"] = self._own["density"] + weight * self.kernel(centre)
        self._own["weights"] = np.append(self._own["weights"], weight)
        self._own["centres"] = np.vstack([self._own["centres"], new_centre])

    def _pair_sum(
        self, centres: np.ndarray, weights: np.ndarray, new_centres: np.ndarray, new_weights: np.ndarray
    ) -> float:
        """Return what new kernels add to Σ_ij w_j K(c_i − c_j): the pairs with at least one of them.

        The new kernels join in blocks of :data:`KERNEL_BLOCK`, each block paired with
        the kernels before it and with itself.
        """
        total = 0.0
        for start in range(0, len(new_weights), KERNEL_BLOCK):
            block_centres = new_centres[start : start + KERNEL_BLOCK]
            block_weights = new_weights[start : start + KERNEL_BLOCK]
            centres = np.concatenate([centres, block_centres])
            weights = np.concatenate([weights, block_weights])
            exponent = np.zeros((len(centres), len(block_centres)))
            for axis in range(centres.shape[1]):  # one component at a time: memory ∝ kernels × block
                exponent += ((centres[:, axis, None] - block_centres[None, :, axis]) / self.sigma[axis]) ** 2
            kernels = self.kernel_shape(exponent)
            old = len(weights) - len(block_weights)
            # pairs (any i, j new) + pairs (i new, j old): the (new, new) pairs only once
            total += float(kernels.sum(0) @ block_weights + kernels[:old].sum(1) @ weights[:old])
        return total

    def state(self) -> dict[str, np.ndarray]:
        """Return this walker's kernels and their running pair sum (saved with each checkpoint)."""
        return {**super().state(), "pair_sum": np.array(self._own_pairs)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state` (or merged depositions, whose pair sum is recomputed)."""
        super().restore(state)
        self._own_pairs = (
            float(state["pair_sum"])
            if "pair_sum" in state
            else self._pair_sum(np.zeros((0, len(self.bins))), np.zeros(0), self._own["centres"], self._own["weights"])
        )
        self._cross_pairs, self._others, self._others_total = 0.0, {}, {}

    def _others_read(self, previous: dict[str, dict[str, np.ndarray]]) -> None:
        """Add the pairs with the others' new kernels; start over if a walker's earlier ones changed (it restarted)."""
        appended = all(
            name in self._others
            and all(np.array_equal(self._others[name][key][: len(old[key])], old[key]) for key in KERNEL_KEYS)
            for name, old in previous.items()
        )
        if not appended or not self._others:
            previous, self._cross_pairs = {}, 0.0
        if not self._others:
            return
        seen = {name: len(previous[name]["weights"]) if name in previous else 0 for name in self._others}
        known, new = [self._own], [{key: other[key][seen[name] :] for key in KERNEL_KEYS}
                                   for name, other in self._others.items()]  # fmt: skip
        known += [previous[name] for name in previous]
        self._cross_pairs += self._pair_sum(
            *(np.concatenate([part[key] for part in known]) for key in KERNEL_KEYS),
            *(np.concatenate([part[key] for part in new]) for key in KERNEL_KEYS),
        )


__all__ = ["OPES", "FrozenGrid", "GridBias", "Metadynamics"]
