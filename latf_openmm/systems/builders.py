"""Builders: functions that make an OpenMM system, topology and starting positions.

Toy systems use reduced units mapped onto OpenMM's (σ = 1 nm, ε = 1 kJ/mol,
m = 1 amu, so τ = 1 ps; see :mod:`latf_openmm.units`). Their particles move in the
xy plane; a stiff harmonic term k_z z² / 2 (its own force group, ``CONFINEMENT_GROUP``)
keeps them there, and for the three-hole potential it is exactly decoupled from x, y.
"""

from __future__ import annotations

import importlib.util
import io
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from latf_openmm.errors import LatfError

#: Force group of the out-of-plane confinement of planar toy systems.
CONFINEMENT_GROUP = 1

THREE_HOLE_EXPRESSION = (
    "3*exp(-x^2-(y-1/3)^2) - 3*exp(-x^2-(y-5/3)^2) - 5*exp(-(x-1)^2-y^2)"
    " - 5*exp(-(x+1)^2-y^2) + 0.2*x^4 + 0.2*(y-1/3)^4"
)


class Built(NamedTuple):
    """What a builder returns."""

    system: openmm.System
    topology: app.Topology
    positions: np.ndarray  # nm, (n_atoms, 3)


def threehole_energy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Three-hole potential V(x, y) in reduced units (ε)."""
    return (
        3 * np.exp(-(x**2) - (y - 1 / 3) ** 2)
        - 3 * np.exp(-(x**2) - (y - 5 / 3) ** 2)
        - 5 * np.exp(-((x - 1) ** 2) - y**2)
        - 5 * np.exp(-((x + 1) ** 2) - y**2)
        + 0.2 * x**4
        + 0.2 * (y - 1 / 3) ** 4
    )


#: Names of the three-hole wells, in the order of :func:`threehole_well`'s indices.
THREE_HOLE_WELLS = ("left", "top", "right")


def threehole_well(xy: np.ndarray) -> np.ndarray:
    """Well index of points (n, 2): 0 left (x < 0, y ≤ 1), 1 top (y > 1), 2 right (x ≥ 0, y ≤ 1)."""
    xy = np.asarray(xy)
    return np.select([xy[:, 1] > 1, xy[:, 0] < 0], [1, 0], 2)


def threehole_populations(kt: float, n_grid: int = 1401) -> np.ndarray:
    """Exact left / top / right well populations at k_BT = ``kt`` (ε), by quadrature on a grid.

    0.462 / 0.077 / 0.462 at k_BT = 0.75; 0.439 / 0.121 / 0.440 at k_BT = 1.
    """
    axis = np.linspace(-3.5, 3.5, n_grid)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    weight = np.exp(-threehole_energy(x, y) / kt).ravel()
    wells = threehole_well(np.stack([x.ravel(), y.ravel()], axis=1))
    return np.bincount(wells, weights=weight, minlength=3) / weight.sum()


def _planar_topology(n_particles: int, residue: str, element_symbol: str) -> app.Topology:
    topology = app.Topology()
    chain = topology.addChain()
    element = app.Element.getBySymbol(element_symbol)
    for i in range(n_particles):
        res = topology.addResidue(residue, chain)
        topology.addAtom(f"P{i}", element, res)
    return topology


def _planar_confinement(n_particles: int, k_z: float) -> openmm.CustomExternalForce:
    force = openmm.CustomExternalForce("0.5*k_z*z^2")
    force.addGlobalParameter("k_z", k_z)
    for i in range(n_particles):
        force.addParticle(i, [])
    force.setForceGroup(CONFINEMENT_GROUP)
    return force


def threehole(start: tuple[float, float] = (-1.0, 0.0), k_z: float = 1000.0) -> Built:
    """One particle (m = 1) on the three-hole potential in the xy plane.

    Parameters
    ----------
    start
        Starting (x, y), reduced length (nm).
    k_z
        Out-of-plane confinement constant, ε/σ².
    """
    if len(start) != 2:
        raise LatfError(f"threehole start must be (x, y), got {start!r}")
    system = openmm.System()
    system.addParticle(1.0)
    potential = openmm.CustomExternalForce(THREE_HOLE_EXPRESSION)
    potential.addParticle(0, [])
    system.addForce(potential)
    system.addForce(_planar_confinement(1, k_z))
    positions = np.array([[start[0], start[1], 0.0]])
    return Built(system, _planar_topology(1, "THP", "Ar"), positions)


def lj7(k_z: float = 1000.0, wall_radius: float = 2.0, wall_k: float = 100.0) -> Built:
    """Seven Lennard-Jones particles (ε = σ = m = 1) in the xy plane.

    The starting structure is the hexagon ground state (one particle in the centre,
    six at 2^(1/6) σ). A flat-bottom wall at ``wall_radius`` from the cluster's
    centre of mass (in the plane) stops evaporation at high temperature; it is zero
    for bound clusters.
    """
    n = 7
    system = openmm.System()
    nonbonded = openmm.NonbondedForce()
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    for _ in range(n):
        system.addParticle(1.0)
        nonbonded.addParticle(0.0, 1.0, 1.0)
    system.addForce(nonbonded)
    system.addForce(_planar_confinement(n, k_z))
    wall = openmm.CustomCentroidBondForce(
        2, "0.5*wall_k*step(d-wall_radius)*(d-wall_radius)^2; d=sqrt((x1-x2)^2+(y1-y2)^2)"
    )
    wall.addGlobalParameter("wall_k", wall_k)
    wall.addGlobalParameter("wall_radius", wall_radius)
    everyone = wall.addGroup(list(range(n)))
    for i in range(n):
        wall.addBond([wall.addGroup([i]), everyone], [])
    system.addForce(wall)
    r0 = 2 ** (1 / 6)
    angles = np.arange(6) * np.pi / 3
    positions = np.zeros((n, 3))
    positions[1:, 0] = r0 * np.cos(angles)
    positions[1:, 1] = r0 * np.sin(angles)
    return Built(system, _planar_topology(n, "LJ", "Ar"), positions)


def _package_data(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LatfError(f"package {package!r} is not installed; run the README's set-up command")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise LatfError(f"{package} does not ship {'/'.join(parts)}; check the installed version")
    return path


_SOLVENTS = {
    "vacuum": [],
    "obc2": ["implicit/obc2.xml"],
    "tip3p": ["amber14/tip3p.xml"],
}
MAX_HYDROGEN_MASS = 5.0  # amu: more would leave the heavy atom it is bonded to too light
WATER_PADDING = 1.0  # nm of TIP3P water around the solute in an explicit-solvent box
PME_CUTOFF = 0.9  # nm, the real-space cutoff of PME


def _solvated(topology: app.Topology, positions: np.ndarray, solvent: str, hydrogen_mass: float | None = None) -> Built:
    """Return the Amber ff14SB system of a solute in ``solvent``: vacuum, OBC2, or a TIP3P box with PME.

    For ``"tip3p"`` the solute gets a box of water ``WATER_PADDING`` around it (OpenMM's
    Modeller, neutralized with Na⁺/Cl⁻), PME with a ``PME_CUTOFF`` real-space cutoff;
    the returned topology and positions then include the water. ``hydrogen_mass`` (amu)
    repartitions mass onto the hydrogens (:func:`_forcefield_system`).
    """
    if solvent not in _SOLVENTS:
        raise LatfError(f"solvent must be one of {sorted(_SOLVENTS)}, got {solvent!r}")
    files = ["amber14-all.xml", *_SOLVENTS[solvent]]
    if solvent != "tip3p":
        return Built(_forcefield_system(topology, files, hydrogen_mass=hydrogen_mass), topology, positions)
    modeller = app.Modeller(topology, positions * u.nanometer)
    modeller.addSolvent(app.ForceField(*files), model="tip3p", padding=WATER_PADDING * u.nanometer)
    system = _forcefield_system(modeller.topology, files, nonbonded_method="PME", nonbonded_cutoff=PME_CUTOFF,
                                hydrogen_mass=hydrogen_mass)  # fmt: skip
    return Built(system, modeller.topology, _nm(modeller.positions))


def _forcefield_system(
    topology: app.Topology,
    forcefield_files: list[str],
    nonbonded_method: str = "NoCutoff",
    nonbonded_cutoff: float = 1.0,
    constraints: str | None = "HBonds",
    hydrogen_mass: float | None = None,
) -> openmm.System:
    """Return the force field's system of ``topology``.

    ``hydrogen_mass`` (amu) is hydrogen mass repartitioning: each hydrogen gets that mass,
    taken from the heavy atom it is bonded to (with HBonds constraints, 4 fs steps at ≈ 3 amu).
    """
    if hydrogen_mass is not None and not 1.0 <= hydrogen_mass <= MAX_HYDROGEN_MASS:
        raise LatfError(f"hydrogen_mass must be between 1 and {MAX_HYDROGEN_MASS:g} amu, got {hydrogen_mass}")
    try:
        forcefield = app.ForceField(*forcefield_files)
    except (ValueError, OSError) as exc:
        raise LatfError(f"cannot load force field {forcefield_files}: {exc}") from exc
    try:
        return forcefield.createSystem(
            topology,
            nonbondedMethod=_app_constant(nonbonded_method, "nonbonded method"),
            nonbondedCutoff=nonbonded_cutoff * u.nanometer,
            constraints=_constraints(constraints),
            hydrogenMass=None if hydrogen_mass is None else hydrogen_mass * u.amu,
        )
    except ValueError as exc:
        first_line = str(exc).splitlines()[0]
        raise LatfError(f"force field {forcefield_files} cannot parametrize the structure: {first_line}") from exc


def _app_constant(name: str, what: str) -> object:
    """Return the ``openmm.app`` constant called ``name``, such as ``PME`` or ``HBonds``."""
    if not isinstance(name, str) or not hasattr(app, name):
        raise LatfError(f"unknown {what} {name!r}")
    return getattr(app, name)


def _constraints(name: str | None) -> object:
    """Return the ``openmm.app`` constraints constant called ``name``; None (or ``"none"``) for none."""
    return None if name in (None, "none") else _app_constant(name, "constraints")


def alanine_dipeptide(solvent: str = "obc2", hydrogen_mass: float | None = None) -> Built:
    """Alanine dipeptide (ACE-ALA-NME), Amber ff14SB, in vacuum, OBC2 or a TIP3P box (PME).

    The structure is the one openmmtools ships; ``hydrogen_mass`` (amu): hydrogen mass repartitioning.
    """
    pdb = app.PDBFile(str(_package_data("openmmtools", "data", "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb")))
    return _solvated(pdb.topology, _nm(pdb.positions), solvent, hydrogen_mass)


CHIGNOLIN_SEQUENCE = "GYDPETGTWG"
# Backbone (phi, psi) in degrees for the folded β-hairpin: strands G1-D3 and T8-G10,
# with the D3-P4-E5-T6-G7 turn closed by the Y2/W9 and D3/T8 cross-strand pairs.
_CHIGNOLIN_HAIRPIN = [
    (-140.0, 150.0),
    (-130.0, 140.0),
    (-120.0, 110.0),
    (-60.0, -30.0),
    (-90.0, 0.0),
    (-100.0, 10.0),
    (80.0, 20.0),
    (-120.0, 140.0),
    (-130.0, 140.0),
    (-140.0, 150.0),
]
_CHIGNOLIN_CROSS_STRAND = [(1, 8), (2, 7), (0, 9)]  # residue index pairs brought together


def chignolin(start: str = "folded", solvent: str = "obc2", hydrogen_mass: float | None = None) -> Built:
    """Chignolin (GYDPETGTWG), Amber ff14SB with OBC2, built from its sequence.

    Parameters
    ----------
    start
        ``"folded"``: β-hairpin backbone angles, then a minimization with temporary
        cross-strand Cα restraints that closes the hairpin; ``"extended"``: all-trans
        backbone (φ = ψ = 180°), minimized.
    solvent
        ``"obc2"``, ``"vacuum"`` or ``"tip3p"`` (a water box with PME, solvated after the
        minimization in vacuum that shapes the hairpin).
    hydrogen_mass
        Hydrogen mass repartitioning (amu), e.g. 3.0 for 4 fs steps; None keeps the masses.
    """
    if start not in ("folded", "extended"):
        raise LatfError(f"chignolin start must be 'folded' or 'extended', got {start!r}")
    if solvent not in _SOLVENTS:
        raise LatfError(f"solvent must be one of {sorted(_SOLVENTS)}, got {solvent!r}")
    angles = _CHIGNOLIN_HAIRPIN if start == "folded" else [(180.0, 180.0)] * len(CHIGNOLIN_SEQUENCE)
    topology, positions = _build_peptide(CHIGNOLIN_SEQUENCE, angles)
    shaped = _solvated(topology, positions, "vacuum" if solvent == "tip3p" else solvent)
    pairs = _CHIGNOLIN_CROSS_STRAND if start == "folded" else []
    positions = _relax(shaped.system, topology, positions, pairs)
    return _solvated(topology, positions, solvent, hydrogen_mass)


def _build_peptide(sequence: str, angles: list[tuple[float, float]]) -> tuple[app.Topology, np.ndarray]:
    """Heavy atoms from PeptideBuilder, then hydrogens and termini from PDBFixer."""
    import PeptideBuilder
    from Bio.PDB import PDBIO
    from pdbfixer import PDBFixer
    from PeptideBuilder import Geometry

    residues = []
    for i, aa in enumerate(sequence):
        geo = Geometry.geometry(aa)
        geo.phi, geo.psi_im1 = angles[i][0], angles[i - 1][1] if i else 180.0
        residues.append(geo)
    structure = PeptideBuilder.initialize_res(residues[0])
    for geo in residues[1:]:
        PeptideBuilder.add_residue(structure, geo)
    PeptideBuilder.add_terminal_OXT(structure)
    buffer = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(buffer)
    # The same molecule on every machine: PDBFixer relaxes added atoms with a Langevin
    # integrator (seeded here) and OpenMM's Modeller starts hydrogens at positions from
    # Python's `random` (seeded, then the caller's state restored), both on Reference.
    fixer = PDBFixer(pdbfile=io.StringIO(buffer.getvalue()), platform=openmm.Platform.getPlatformByName("Reference"))
    fixer.findMissingResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms(seed=1)
    state = random.getstate()
    random.seed(1)
    try:
        fixer.addMissingHydrogens(7.0)
    finally:
        random.setstate(state)
    return fixer.topology, _nm(fixer.positions)


def _relax(
    system: openmm.System, topology: app.Topology, positions: np.ndarray, ca_pairs: list[tuple[int, int]]
) -> np.ndarray:
    """Minimize, first with temporary Cα–Cα restraints (0.5 nm) between ``ca_pairs``."""
    ca = {atom.residue.index: atom.index for atom in topology.atoms() if atom.name == "CA"}
    system = openmm.XmlSerializer.clone(system)
    if ca_pairs:
        restraint = openmm.CustomBondForce("0.5*k_pull*(r-0.5)^2")
        restraint.addGlobalParameter("k_pull", 2000.0)
        for i, j in ca_pairs:
            restraint.addBond(ca[i], ca[j], [])
        system.addForce(restraint)
    cpu = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), cpu, {"Threads": "1"})  # same result anywhere
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
    if ca_pairs:
        context.setParameter("k_pull", 0.0)
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
    return _nm(context.getState(getPositions=True).getPositions())


def _resolve(path: str | Path, base_dir: Path) -> Path:
    path = Path(path)
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise LatfError(f"file not found: {path}")
    return path


def from_pdb(
    pdb: str,
    forcefield: list[str] | str,
    nonbonded_method: str = "NoCutoff",
    nonbonded_cutoff: float = 1.0,
    constraints: str | None = "HBonds",
    base_dir: Path = Path("."),
) -> Built:
    """Build a system from a user's structure (PDB or PDBx/mmCIF) and OpenMM force-field XML files.

    Parameters
    ----------
    pdb
        Structure file, with all atoms the force field needs (hydrogens included).
    forcefield
        Force-field XML names (e.g. ``["amber14-all.xml", "implicit/obc2.xml"]``) or paths;
        one may be given as a string.
    nonbonded_method
        An OpenMM nonbonded method name (``NoCutoff``, ``CutoffNonPeriodic``, ``PME``, ...).
    nonbonded_cutoff
        Cutoff, nm (ignored for ``NoCutoff``).
    constraints
        ``"HBonds"``, ``"AllBonds"``, ``"HAngles"``, or ``"none"`` (or None) for no constraints.
    """
    path = _resolve(pdb, base_dir)
    reader = app.PDBxFile if path.suffix.lower() in (".cif", ".pdbx") else app.PDBFile
    try:
        structure = reader(str(path))
    except Exception as exc:  # the readers raise assorted types on malformed input
        raise LatfError(f"cannot read structure {path}: {exc}") from exc
    names = [forcefield] if isinstance(forcefield, str) else list(forcefield)
    files = [str(base_dir / f) if (base_dir / f).is_file() else f for f in names]
    system = _forcefield_system(structure.topology, files, nonbonded_method, nonbonded_cutoff, constraints)
    return Built(system, structure.topology, _nm(structure.positions))


def from_amber(
    prmtop: str,
    inpcrd: str,
    implicit_solvent: str | None = None,
    nonbonded_method: str = "NoCutoff",
    nonbonded_cutoff: float = 1.0,
    constraints: str | None = "HBonds",
    base_dir: Path = Path("."),
) -> Built:
    """Build a system from a user's AMBER ``prmtop`` + ``inpcrd`` (``implicit_solvent`` e.g. ``"OBC2"``)."""
    try:
        top = app.AmberPrmtopFile(str(_resolve(prmtop, base_dir)))
        crd = app.AmberInpcrdFile(str(_resolve(inpcrd, base_dir)))
    except LatfError:
        raise
    except Exception as exc:
        raise LatfError(f"cannot read AMBER files {prmtop}, {inpcrd}: {exc}") from exc
    system = top.createSystem(
        nonbondedMethod=_app_constant(nonbonded_method, "nonbonded method"),
        nonbondedCutoff=nonbonded_cutoff * u.nanometer,
        constraints=_constraints(constraints),
        implicitSolvent=_app_constant(implicit_solvent, "implicit solvent") if implicit_solvent else None,
    )
    if crd.boxVectors is not None:
        top.topology.setPeriodicBoxVectors(crd.boxVectors)
    return Built(system, top.topology, _nm(crd.positions))


def from_xml(system_xml: str, pdb: str, base_dir: Path = Path(".")) -> Built:
    """Build a system from a serialized OpenMM ``System`` (XML) with a PDB for topology and positions."""
    structure = app.PDBFile(str(_resolve(pdb, base_dir)))
    try:
        system = openmm.XmlSerializer.deserialize(_resolve(system_xml, base_dir).read_text())
    except Exception as exc:
        raise LatfError(f"cannot deserialize OpenMM system {system_xml}: {exc}") from exc
    if system.getNumParticles() != structure.topology.getNumAtoms():
        raise LatfError(
            f"{system_xml} has {system.getNumParticles()} particles but {pdb} has "
            f"{structure.topology.getNumAtoms()} atoms"
        )
    return Built(system, structure.topology, _nm(structure.positions))


def _nm(positions: u.Quantity) -> np.ndarray:
    """Return ``positions`` in nm as a float array."""
    return np.asarray(positions.value_in_unit(u.nanometer), dtype=float)


__all__ = [
    "CHIGNOLIN_SEQUENCE",
    "CONFINEMENT_GROUP",
    "THREE_HOLE_EXPRESSION",
    "THREE_HOLE_WELLS",
    "Built",
    "alanine_dipeptide",
    "chignolin",
    "from_amber",
    "from_pdb",
    "from_xml",
    "lj7",
    "threehole",
    "threehole_energy",
    "threehole_populations",
    "threehole_well",
]
