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

import functools
import inspect
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mdtraj
import numpy as np
import openmm
import openmm.app as app

from latf_openmm.errors import LatfError
from latf_openmm.specs import read_spec
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


@dataclass(frozen=True)
class Recipe:
    """A system recipe's keys, typed and with their defaults (see the module docstring)."""

    builder: str = ""  # one of BUILDERS
    args: dict[str, Any] = field(default_factory=dict)  # the builder's arguments
    description: str = ""  # one line for listings
    reduced_units: bool = False  # temperatures are k_B T / ε
    temperatures: tuple[float, ...] = (300.0,)  # default temperatures (K, or k_B T / ε)
    timestep: float = 0.002  # ps
    friction: float = 1.0  # 1/ps
    frame_interval: int = 500  # steps between saved frames
    minimize: bool = True  # minimize the energy before a fresh run
    features: tuple[dict[str, Any], ...] = ()  # the featurizer (latf_openmm.features)
    platform: str | None = None  # preferred OpenMM platform

    def __post_init__(self) -> None:
        """Reject an unknown builder and out-of-range integrator settings."""
        if self.builder not in BUILDERS:
            raise LatfError(f"builder must be one of {sorted(BUILDERS)}, got {self.builder!r}")
        if not (self.timestep > 0 and self.friction >= 0 and self.frame_interval >= 1):
            raise LatfError("timestep > 0, friction >= 0 and frame_interval >= 1 required")


@dataclass(frozen=True)
class NamedRegions:
    """Regions of configuration space that a system names (wells, basins), for labelled populations.

    ``of_frames`` gives each frame of an mdtraj trajectory its region's index in ``names``;
    ``exact``, where known, the regions' exact populations at a user-facing temperature;
    ``melting``, the region (a folded state) whose population against temperature is a melting
    curve, fitted by a two-state model in the loop's summary.
    """

    names: tuple[str, ...]
    of_frames: Callable[[mdtraj.Trajectory], np.ndarray]
    exact: Callable[[float], np.ndarray] | None = None
    melting: str | None = None


def _ala2_basin(frames: mdtraj.Trajectory) -> np.ndarray:
    """Return 1 for C7ax/αL (0 < φ < 130°), 0 for C7eq/C5 and the rest of φ < 0."""
    phi = mdtraj.compute_phi(frames)[1][:, 0]
    return ((phi > 0) & (phi < np.radians(130))).astype(int)


# Chignolin's folded state by its fraction of native contacts Q (Best, Hummer & Eaton, PNAS 110, 17874
# (2013)) over Cα atoms: the pairs of residues more than 3 apart within 0.65 nm in the hairpin the builder
# makes (its 5 cross-strand pairs), each counted by 1 / (1 + exp(β (r − λ r₀))). Folded: Q ≥ 0.6. The
# builder's hairpin is a model, not the NMR structure, so heavy-atom contacts are not all native in the
# force field: in 40 ps at 300 K from it, heavy-atom Q fell to 0.4–0.5, Cα Q stayed at 0.79–1.0; from
# the extended chain, Cα Q stayed ≤ 0.4 at 300 K.
NATIVE_CONTACT_ATOMS = "name CA"
NATIVE_CONTACT_CUTOFF, NATIVE_CONTACT_BETA, NATIVE_CONTACT_LAMBDA = 0.65, 50.0, 1.8  # nm, 1/nm, 1
CHIGNOLIN_FOLDED_Q = 0.6


@functools.cache
def _chignolin_native_contacts() -> tuple[tuple[tuple[int, str], ...], np.ndarray, np.ndarray]:
    """Return the folded hairpin's atoms (residue index, name), its native contacts (n, 2) and their r₀ (nm)."""
    built = builders.chignolin("folded")
    native = mdtraj.Trajectory(built.positions[None], mdtraj.Topology.from_openmm(built.topology))
    atoms_in_contacts = native.topology.select(NATIVE_CONTACT_ATOMS)
    residue = np.array([native.topology.atom(i).residue.index for i in atoms_in_contacts])
    first, second = np.triu_indices(len(atoms_in_contacts), 1)
    apart = np.abs(residue[first] - residue[second]) > 3
    pairs = np.stack([atoms_in_contacts[first[apart]], atoms_in_contacts[second[apart]]], 1)
    distances = mdtraj.compute_distances(native, pairs)[0]
    close = distances < NATIVE_CONTACT_CUTOFF
    atoms = tuple((atom.residue.index, atom.name) for atom in native.topology.atoms)
    return atoms, pairs[close], distances[close]


def native_contact_fraction(frames: mdtraj.Trajectory) -> np.ndarray:
    """Chignolin's fraction of native contacts Q (n_frames,) of frames whose first atoms are the builder's peptide."""
    atoms, pairs, reference = _chignolin_native_contacts()
    found = [(atom.residue.index, atom.name) for atom in frames.topology.atoms][: len(atoms)]
    if tuple(found) != atoms:
        raise LatfError("native contacts: the frames' first atoms are not the chignolin builder's peptide")
    distances = mdtraj.compute_distances(frames, pairs)
    exponent = np.minimum(NATIVE_CONTACT_BETA * (distances - NATIVE_CONTACT_LAMBDA * reference), 50.0)
    return (1.0 / (1.0 + np.exp(exponent))).mean(1)


def _chignolin_folded(frames: mdtraj.Trajectory) -> np.ndarray:
    """Return 1 for folded chignolin (Q ≥ ``CHIGNOLIN_FOLDED_Q``), else 0."""
    return (native_contact_fraction(frames) >= CHIGNOLIN_FOLDED_Q).astype(int)


#: The named regions of the shipped builders' systems, by builder name.
REGIONS: dict[str, NamedRegions] = {
    "threehole": NamedRegions(
        builders.THREE_HOLE_WELLS, lambda frames: builders.threehole_well(frames.xyz[:, 0, :2]),
        builders.threehole_populations,
    ),
    "alanine_dipeptide": NamedRegions(("C7eq", "C7ax"), _ala2_basin),
    "chignolin": NamedRegions(("unfolded", "folded"), _chignolin_folded, melting="folded"),
}  # fmt: skip


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
    regions
        The regions the system names (:class:`NamedRegions`), or None.
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
    regions: NamedRegions | None = None

    @property
    def masses(self) -> np.ndarray:
        """The particles' masses in amu (n_atoms,), as the OpenMM system has them."""
        return np.array(
            [
                self.system.getParticleMass(i).value_in_unit(openmm.unit.dalton)
                for i in range(self.system.getNumParticles())
            ]
        )

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
    spec = read_spec(Recipe, recipe, f"recipe {name!r}")
    builder = BUILDERS[spec.builder]
    args = {**spec.args, **builder_args}
    accepted = set(inspect.signature(builder).parameters) - {"base_dir"}
    unknown = set(args) - accepted
    if unknown:
        raise LatfError(
            f"system {name!r}: unknown option(s) {sorted(unknown)} for builder {spec.builder!r}; "
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
        timestep=spec.timestep,
        friction=spec.friction,
        frame_interval=spec.frame_interval,
        minimize=spec.minimize,
        features=[dict(block) for block in spec.features],
        platform=spec.platform,
        reduced_units=spec.reduced_units,
        description=spec.description,
        recipe=dict(recipe),
        regions=REGIONS.get(spec.builder),
    )
    mol.temperatures = tuple(mol.to_kelvin(t) for t in spec.temperatures)
    return mol


def _read_recipe(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LatfError(f"cannot read recipe {path}: {exc}") from exc


__all__ = [
    "BUILDERS",
    "REGIONS",
    "MolecularSystem",
    "NamedRegions",
    "Recipe",
    "available_systems",
    "find_recipe",
    "load_system",
    "native_contact_fraction",
    "system_from_recipe",
]
