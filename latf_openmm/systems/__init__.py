"""Systems: an OpenMM ``System`` with its topology, starting positions and defaults.

A system is described by a recipe, a TOML file in the repository's ``systems/``
folder (or any path). A recipe names a builder, the builder's arguments, the
default temperatures and integrator settings, and the default featurizer::

    builder = "threehole"
    reduced_units = true          # temperatures are k_B T / ε (see latf_openmm.units)
    temperatures = [0.75]
    timestep = 0.01               # ps
    friction = 1.0                # 1/ps
    frame_interval = 3            # steps between saved frames
    [[features]]
    kind = "positions"
    atoms = "index 0"
    components = "xy"

Relative file paths in a recipe are resolved against the recipe's folder.
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.app as app

from latf_openmm.errors import LatfError
from latf_openmm.units import temperature_to_kelvin

from . import builders

BUILDERS: dict[str, Callable[..., builders.Built]] = {
    "threehole": builders.threehole,
    "lj7": builders.lj7,
    "alanine_dipeptide": builders.alanine_dipeptide,
    "chignolin": builders.chignolin,
    "pdb": builders.from_pdb,
    "amber": builders.from_amber,
    "xml": builders.from_xml,
}

_RECIPE_KEYS = {
    "builder",
    "description",
    "reduced_units",
    "temperatures",
    "timestep",
    "friction",
    "frame_interval",
    "minimize",
    "features",
    "args",
    "platform",
}


@dataclass
class MolecularSystem:
    """Everything needed to simulate one system.

    Attributes
    ----------
    name
        Recipe name (or file stem).
    system, topology
        The OpenMM system and topology.
    positions
        Starting positions, nm, shape (n_atoms, 3).
    temperatures
        Default temperatures, K.
    timestep, friction
        Integrator defaults, ps and 1/ps.
    frame_interval
        Default number of steps between saved frames.
    minimize
        Whether to minimize the energy before a fresh run.
    platform
        Preferred OpenMM platform, or None for the fastest available (CUDA, else CPU).
        Systems of a few particles run far faster on ``Reference``, whose per-step
        overhead is smallest.
    features
        Featurizer description (see :mod:`latf_openmm.features`).
    reduced_units
        True for toy systems in reduced units; user-facing temperatures are then k_B T / ε.
    description
        One line for listings.
    """

    name: str
    system: openmm.System
    topology: app.Topology
    positions: np.ndarray
    temperatures: tuple[float, ...]
    timestep: float
    friction: float
    frame_interval: int
    minimize: bool
    features: list[dict[str, Any]]
    platform: str | None = None
    reduced_units: bool = False
    description: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_kelvin(self, temperature: float) -> float:
        """Convert a user-facing temperature (K, or k_B T / ε for reduced units) to K."""
        temperature = float(temperature)
        if not np.isfinite(temperature) or temperature <= 0:
            raise LatfError(f"temperature must be a positive number, got {temperature}")
        return temperature_to_kelvin(temperature, self.temperature_unit)

    @property
    def temperature_unit(self) -> str:
        """Unit of user-facing temperatures: ``"K"`` or ``"kT/eps"``."""
        return "kT/eps" if self.reduced_units else "K"


def recipe_dirs() -> list[Path]:
    """Folders searched for named recipes: the installed copy, then the source checkout."""
    package = Path(__file__).resolve().parent.parent
    return [d for d in (package / "_recipes", package.parent / "systems") if d.is_dir()]


def available_systems() -> dict[str, str]:
    """Names and one-line descriptions of the shipped recipes."""
    found: dict[str, str] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, _read_recipe(path).get("description", ""))
    return found


def find_recipe(name_or_path: str | Path) -> Path:
    """Resolve a recipe name (``"threehole"``) or path (``"my/system.toml"``) to a file."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise LatfError(f"recipe file not found: {path}")
        return path
    for folder in recipe_dirs():
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = ", ".join(available_systems()) or "none"
    raise LatfError(f"unknown system {name_or_path!r}; known systems: {known}, or a recipe .toml path")


def load_system(name_or_path: str | Path, **builder_args: object) -> MolecularSystem:
    """Build a system from a shipped recipe name or a recipe file.

    Parameters
    ----------
    name_or_path
        A name listed by :func:`available_systems` or a path to a recipe ``.toml``.
    **builder_args
        Override the recipe's builder arguments (e.g. ``start="extended"`` for chignolin).

    Returns
    -------
    MolecularSystem
    """
    path = find_recipe(name_or_path)
    recipe = _read_recipe(path)
    return system_from_recipe(recipe, name=path.stem, base_dir=path.parent, **builder_args)


def system_from_recipe(
    recipe: Mapping[str, Any], name: str, base_dir: Path = Path("."), **builder_args: object
) -> MolecularSystem:
    """Build a system from a recipe mapping (the parsed TOML)."""
    unknown = set(recipe) - _RECIPE_KEYS
    if unknown:
        raise LatfError(f"recipe {name!r}: unknown keys {sorted(unknown)}; allowed: {sorted(_RECIPE_KEYS)}")
    builder_name = recipe.get("builder")
    if builder_name not in BUILDERS:
        raise LatfError(f"recipe {name!r}: builder must be one of {sorted(BUILDERS)}, got {builder_name!r}")
    builder = BUILDERS[builder_name]
    args = {**recipe.get("args", {}), **builder_args}
    accepted = set(inspect.signature(builder).parameters) - {"base_dir"}
    unknown = set(args) - accepted
    if unknown:
        raise LatfError(
            f"system {name!r}: unknown option(s) {sorted(unknown)} for builder {builder_name!r}; "
            f"accepted: {sorted(accepted)}"
        )
    if "base_dir" in inspect.signature(builder).parameters:
        args["base_dir"] = base_dir
    built = builder(**args)
    mol = MolecularSystem(
        name=name,
        system=built.system,
        topology=built.topology,
        positions=np.asarray(built.positions, dtype=float),
        temperatures=(),
        timestep=float(recipe.get("timestep", 0.002)),
        friction=float(recipe.get("friction", 1.0)),
        frame_interval=int(recipe.get("frame_interval", 500)),
        minimize=bool(recipe.get("minimize", True)),
        features=[dict(block) for block in recipe.get("features", [])],
        platform=recipe.get("platform"),
        reduced_units=bool(recipe.get("reduced_units", False)),
        description=str(recipe.get("description", "")),
        recipe=dict(recipe),
    )
    mol.temperatures = tuple(mol.to_kelvin(t) for t in recipe.get("temperatures", [300.0]))
    if mol.timestep <= 0 or mol.friction < 0 or mol.frame_interval < 1:
        raise LatfError(f"recipe {name!r}: timestep > 0, friction >= 0 and frame_interval >= 1 required")
    return mol


def _read_recipe(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LatfError(f"cannot read recipe {path}: {exc}") from exc


__all__ = ["BUILDERS", "MolecularSystem", "available_systems", "find_recipe", "load_system", "system_from_recipe"]
