"""Typed specs, validated when a workflow, recipe or command line is read.

A shared leaf: every layer may import it, it imports only the other leaves.

- :class:`MDOptions`: how MD runs (frame interval, timestep, friction, platform,
  precision, threads, trajectory format); ``latf simulate``/``bias``, a workflow's top
  level, the biased run and replica exchange all take it.
- :class:`BiasSpec`: a bias along the learned CV (a workflow's ``[bias]`` table, ``latf
  bias``'s options), with its defaults; the biased run, the loop, replica exchange and the
  PLUMED writer all take it.
- :func:`read_spec`: a spec from a mapping (a TOML table), with one-line errors that name
  the source, the key and what is allowed.
- :func:`option`: a spec field with its help text (the CLI shows the same text).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from latf_openmm.errors import LatfError
from latf_openmm.units import KB_KJ_PER_MOL_K

Spec = TypeVar("Spec")
Default = TypeVar("Default")
PLATFORM_NAMES = ("CUDA", "OpenCL", "CPU", "Reference")
PRECISIONS = ("single", "mixed", "double")
TRAJECTORY_FORMATS = ("dcd", "xtc")
BIAS_METHODS = ("metad", "opes", "restraint")
BIAS_ENGINES = ("openmm", "plumed")
ADAPTIVE_METHODS = ("metad", "opes")
METAD_BIAS_FACTOR = 10.0
SHARE_EVERY_DEPOSITIONS = 10  # metad/opes walkers' default share_interval, in units of pace


def option(default: Default, help: str) -> Default:
    """Return a spec field with a default and the help text that ``--help`` and the docs show."""
    return dataclasses.field(default=default, metadata={"help": help})


def _coerce(value: object, kind: object, where: str) -> object:
    """Return ``value`` as the annotated type ``kind``.

    Types are int, float, str, bool, tuples and lists of them, mappings, None-able ones and
    nested specs (a table read with :func:`read_spec`).
    """
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise LatfError(f"{where} must not be empty")
    for option_type in (o for o in options if o is not type(None)):
        origin = typing.get_origin(option_type)
        if origin in (tuple, list):
            element = typing.get_args(option_type)[0]
            items = value if isinstance(value, list | tuple) else [value]
            return origin(_coerce(item, element, where) for item in items)
        if origin is dict and isinstance(value, Mapping):
            return dict(value)
        if dataclasses.is_dataclass(option_type) and isinstance(value, option_type | Mapping):
            return value if isinstance(value, option_type) else read_spec(option_type, value, where)
        if option_type is bool and isinstance(value, bool):
            return value
        if option_type is int and isinstance(value, int | np.integer) and not isinstance(value, bool):
            return int(value)
        if option_type is float and isinstance(value, int | float | np.number) and not isinstance(value, bool):
            return float(value)
        if option_type is str and isinstance(value, str):
            return value
    names = " or ".join(_type_name(o) for o in options)
    raise LatfError(f"{where} must be {names}, got {value!r}")


def _type_name(kind: object) -> str:
    """Return how an error names an annotated type: ``int``, ``a list of float``, ``a table``."""
    origin = typing.get_origin(kind)
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(kind)[0])}"
    if origin is dict or dataclasses.is_dataclass(kind):
        return "a table"
    return getattr(kind, "__name__", str(kind))


def read_spec(spec_type: type[Spec], table: Mapping[str, Any], source: str) -> Spec:
    """Read a ``spec_type`` from ``table``.

    An unknown key, a wrong type or a bad value is a one-line :class:`LatfError` naming
    ``source`` (e.g. ``"workflow.toml [bias]"``); a nested spec's table is ``source [key]``.
    """
    if not isinstance(table, Mapping):
        raise LatfError(f"{source} must be a table of options, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(spec_type)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise LatfError(f"{source}: unknown key(s) {unknown}; allowed: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(spec_type)
    values = {
        name: _coerce(value, hints[name], f"{source} [{name}]" if dataclasses.is_dataclass(hints[name])
                      else f"{source} {name}")
        for name, value in table.items()
    }  # fmt: skip
    try:
        return spec_type(**values)
    except LatfError as error:
        raise LatfError(f"{source}: {error}") from None


@dataclass(frozen=True)
class MDOptions:
    """How MD runs; None takes the system recipe's value (or OpenMM's choice)."""

    frame_interval: int | None = option(None, "steps between saved frames (default: the recipe's)")
    timestep: float | None = option(None, "integration time step, ps (default: the recipe's)")
    friction: float | None = option(None, "Langevin friction, 1/ps (default: the recipe's)")
    platform: str | None = option(
        None, f"OpenMM platform, one of {', '.join(PLATFORM_NAMES)} (default: the recipe's, else CUDA, else CPU)"
    )
    precision: str | None = option(None, f"CUDA/OpenCL precision, one of {', '.join(PRECISIONS)} (default mixed)")
    threads: int | None = option(None, "CPU platform threads (default: OpenMM's choice)")
    trajectory_format: str = option("dcd", f"trajectory file format, one of {', '.join(TRAJECTORY_FORMATS)}")

    def __post_init__(self) -> None:
        """Reject an unknown platform, precision or trajectory format and out-of-range numbers."""
        choices = {"platform": PLATFORM_NAMES, "precision": PRECISIONS, "trajectory_format": TRAJECTORY_FORMATS}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise LatfError(f"MD option {name} must be one of {', '.join(allowed)}, got {value!r}")
        checks = [
            (
                self.frame_interval is None or self.frame_interval >= 1,
                f"frame_interval must be ≥ 1: {self.frame_interval}",
            ),
            (self.timestep is None or self.timestep > 0, f"timestep must be positive, got {self.timestep}"),
            (self.friction is None or self.friction >= 0, f"friction must be ≥ 0, got {self.friction}"),
            (self.threads is None or self.threads >= 1, f"threads must be ≥ 1, got {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise LatfError(f"MD option {message}")


def bias_grid(
    lower: Sequence[float], upper: Sequence[float], sigma: Sequence[float], bins: Sequence[int] | int | None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Return the bias grid's ends and points per biased component.

    The grid runs 4 σ beyond the walls (``lower``/``upper``) on each side, so that kernels
    deposited at a wall are whole; ``bins`` defaults to 4 points per σ. The package's
    metadynamics and OPES and the ``plumed.dat`` they are exported as use this one grid.
    """
    lower, upper, sigma = (np.asarray(v, dtype=float).reshape(-1) for v in (lower, upper, sigma))
    grid_lower, grid_upper = lower - 4 * sigma, upper + 4 * sigma
    if bins is None:
        bins = np.ceil(4 * (grid_upper - grid_lower) / sigma).astype(int) + 1
    points = [int(b) for b in np.broadcast_to(bins, grid_lower.shape)]
    if min(points) < 4:
        raise LatfError("the bias grid needs at least 4 points per component")
    return grid_lower, grid_upper, points


def _listed(values: Sequence[float]) -> list[float | int]:
    """Return ``values`` as a plain list of Python numbers (for messages: no NumPy reprs)."""
    return np.asarray(values).tolist()


def _walls_problem(lower: Sequence[float] | None, upper: Sequence[float] | None) -> str | None:
    """Return what is wrong with walls ``lower``/``upper`` of equal length (finite, lower < upper), or None."""
    if lower is None or upper is None or len(lower) != len(upper):
        return None
    ends = np.asarray([lower, upper], dtype=float)
    if np.isfinite(ends).all() and (ends[1] > ends[0]).all():
        return None
    return f"needs finite lower < upper for each component, got lower {_listed(lower)}, upper {_listed(upper)}"


def bias_region_problem(
    components: Sequence[int] | None,
    lower: Sequence[float] | None,
    upper: Sequence[float] | None,
    sigma: Sequence[float] | None = None,
    bins: Sequence[int] | None = None,
    cv_dim: int | None = None,
) -> str | None:
    """Return what is wrong with a bias's components and per-component values, or None.

    The one check of an adaptive bias's region, made when a spec is read (``cv_dim`` None:
    the CV's dimension is not known yet) and again once the model's CV dimension is known:
    1 or 2 distinct components (< ``cv_dim``; without components, the first min(d, 2)), one
    value per biased component in each of ``lower``/``upper``/``sigma``/``bins``, finite
    ``lower < upper`` and ``sigma > 0``.
    """
    span = "≥ 0" if cv_dim is None else f"out of 0 … {cv_dim - 1}"
    if components is not None and not (
        len(components) in (1, 2)
        and len(set(components)) == len(components)
        and all(0 <= c < (cv_dim or np.inf) for c in components)
    ):
        return f"components must be 1 or 2 distinct CV components {span}, got {_listed(components)}"
    per_component = {"lower": lower, "upper": upper, "sigma": sigma, "bins": bins}
    given = {name: _listed(value) for name, value in per_component.items() if value is not None}
    lengths = {len(value) for value in given.values()}
    count = len(components) if components is not None else None if cv_dim is None else min(cv_dim, 2)
    if not (len(lengths) <= 1 and lengths <= ({1, 2} if count is None else {count})):
        values = ", ".join(f"{name} {value}" for name, value in given.items())
        hint = "; or give components" if components is None and cv_dim is not None else ""
        return (
            f"lower, upper, sigma and bins need one value per biased component ({count or '1 or 2'}), "
            f"got {values}{hint}"
        )
    if (problem := _walls_problem(lower, upper)) is not None:
        return problem
    if sigma is not None and not (np.isfinite(sigma).all() and (np.asarray(sigma) > 0).all()):
        return f"sigma must be finite and positive, got {_listed(sigma)}"
    return None


def bias_region(
    cv_dim: int,
    components: Sequence[int] | None,
    lower: Sequence[float] | None,
    upper: Sequence[float] | None,
    sigma: Sequence[float] | None,
    margin: float,
    latent_range: Sequence[Sequence[float]] | None,
    bins: Sequence[int] | None = None,
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Return the biased components and their region and kernel widths, defaults filled in.

    Components default to the first min(d, 2); ``lower``/``upper`` to the model's training
    range (``latent_range``: per component low and high) widened by ``margin`` times that
    range on each side; ``sigma`` to (upper − lower)/25. Checked by :func:`bias_region_problem`
    (``bins`` only checked: one value per biased component).
    """
    problem = bias_region_problem(components, lower, upper, sigma, bins, cv_dim=cv_dim)
    if problem is not None:
        raise LatfError(f"bias {problem}")
    components = list(range(min(cv_dim, 2))) if components is None else [int(c) for c in components]
    defaults = lower is None or upper is None
    if defaults:
        if latent_range is None:
            raise LatfError("give lower and upper (the CV region to explore) for each biased component")
        low, high = (np.asarray(v, dtype=float)[components] for v in latent_range)
        lower = low - margin * (high - low) if lower is None else lower
        upper = high + margin * (high - low) if upper is None else upper
    lower, upper = (np.asarray(v, dtype=float).reshape(-1) for v in (lower, upper))
    sigma = (upper - lower) / 25 if sigma is None else np.asarray(sigma, dtype=float).reshape(-1)
    problem = bias_region_problem(components, lower, upper, sigma)
    if problem is not None:
        source = " (walls from the model's training range ± margin; give lower and upper)" if defaults else ""
        raise LatfError(f"bias {problem}{source}")
    return components, lower, upper, sigma


@dataclass(frozen=True)
class BiasSpec:
    """A bias along the learned CV.

    A harmonic restraint (umbrella window), well-tempered metadynamics or OPES on 1–2 CV
    components. Energies kJ/mol, CV components dimensionless.

    A workflow's ``[bias]`` table and ``latf bias``'s options are this spec; the PLUMED
    writer gets it after :meth:`resolved` has filled in the defaults that need the model.
    """

    method: str = option("opes", "bias: 'metad' (well-tempered), 'opes' or 'restraint'")
    engine: str = option(
        "openmm", "'openmm' (the package's own forces) or 'plumed' (the exported plumed.dat in openmm-plumed)"
    )
    components: tuple[int, ...] | None = option(None, "biased CV components (metad/opes; default: all, ≤ 2)")
    lower: tuple[float, ...] | None = option(None, "lower wall per component (default: training range − margin)")
    upper: tuple[float, ...] | None = option(None, "upper wall per component (default: training range + margin)")
    margin: float = option(0.1, "default walls this fraction of the training range beyond it")
    sigma: tuple[float, ...] | None = option(None, "kernel width per component (default (upper − lower)/25)")
    bins: tuple[int, ...] | None = option(None, "bias grid points per component (default 4 per σ)")
    pace: int = option(500, "steps between depositions")
    height: float = option(1.0, "metad: initial hill height, kJ/mol")
    bias_factor: float | None = option(None, f"γ > 1 (metad default {METAD_BIAS_FACTOR:g}; opes barrier/k_BT)")
    barrier: float = option(30.0, "opes: expected barrier ΔE, kJ/mol")
    wall_constant: float = option(1000.0, "walls: kJ/mol per CV unit²")
    share_interval: int | None = option(
        None,
        f"metad/opes walkers: steps between exchanges of depositions (a multiple of pace; default "
        f"{SHARE_EVERY_DEPOSITIONS} × pace)",
    )
    centre: tuple[float, ...] | None = option(None, "restraint: window centre per CV component")
    force_constant: float = option(100.0, "restraint: kJ/mol per CV unit²")

    def __post_init__(self) -> None:
        """Reject an unknown method and out-of-range settings."""
        checks = [
            (self.method in BIAS_METHODS, f"method must be one of {', '.join(BIAS_METHODS)}, got {self.method!r}"),
            (self.engine in BIAS_ENGINES, f"engine must be one of {', '.join(BIAS_ENGINES)}, got {self.engine!r}"),
            (self.pace >= 1, f"pace must be ≥ 1, got {self.pace}"),
            (
                self.share_interval is None or (self.share_interval >= 1 and self.share_interval % self.pace == 0),
                f"share_interval must be a multiple of pace ({self.pace}), got {self.share_interval}",
            ),
            (self.height > 0 and self.barrier > 0, "height and barrier must be positive"),
            (self.bias_factor is None or self.bias_factor > 1, f"bias_factor must be > 1, got {self.bias_factor}"),
            (self.margin >= 0 and self.wall_constant >= 0, "margin and wall_constant must be ≥ 0"),
            (self.force_constant > 0, f"force_constant must be positive, got {self.force_constant}"),
            (
                self.bins is None or all(b >= 4 for b in self.bins),
                "the bias grid needs at least 4 points per component",
            ),
            (self.method != "restraint" or self.centre is not None, "a restraint needs centre, one per component"),
            (
                self.method != "restraint" or (self.sigma is None and self.bins is None),
                "a restraint takes no sigma or bins (metad/opes kernels and grids)",
            ),
            *self._region_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise LatfError(f"bias {message}")

    def _region_checks(self) -> list[tuple[bool, str]]:
        """Return the checks of the region that need no model (:func:`bias_region_problem`; a restraint's walls)."""
        if self.method != "restraint":
            problem = bias_region_problem(self.components, self.lower, self.upper, self.sigma, self.bins)
            return [(problem is None, problem or "")]
        given = {name: getattr(self, name) for name in ("lower", "upper") if getattr(self, name) is not None}
        walls = ", ".join(f"{name} {_listed(value)}" for name, value in given.items())
        centre = len(self.centre or ())
        order = _walls_problem(self.lower, self.upper)
        return [
            ({len(value) for value in given.values()} <= {centre},
             f"a restraint's walls need one value per centre value ({centre}), got {walls}"),
            (order is None, order or ""),
        ]  # fmt: skip

    def resolved(self, cv_dim: int, latent_range: Sequence[Sequence[float]] | None, temperature: float) -> BiasSpec:
        """Return the spec with its model-dependent defaults filled in.

        These are the components, walls and σ (:func:`bias_region`) and the bias factor at
        ``temperature`` (K).
        """
        if self.method == "restraint":
            return self
        components, lower, upper, sigma = bias_region(
            cv_dim, self.components, self.lower, self.upper, self.sigma, self.margin, latent_range, self.bins
        )
        bias_factor = self.bias_factor or (
            METAD_BIAS_FACTOR if self.method == "metad" else self.barrier / (KB_KJ_PER_MOL_K * temperature)
        )
        return dataclasses.replace(
            self,
            components=tuple(components),
            lower=tuple(lower.tolist()),
            upper=tuple(upper.tolist()),
            sigma=tuple(sigma.tolist()),
            bins=tuple(bias_grid(lower, upper, sigma, self.bins)[2]),
            bias_factor=float(bias_factor),
        )


__all__ = [
    "BIAS_ENGINES",
    "BIAS_METHODS",
    "PLATFORM_NAMES",
    "PRECISIONS",
    "SHARE_EVERY_DEPOSITIONS",
    "TRAJECTORY_FORMATS",
    "BiasSpec",
    "MDOptions",
    "bias_grid",
    "bias_region",
    "bias_region_problem",
    "option",
    "read_spec",
]
