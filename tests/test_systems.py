"""Systems: energies and forces against the formulas they implement."""

import itertools
import random

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from latf_openmm import LatfError, build_featurizer, load_system
from latf_openmm.systems import available_systems
from latf_openmm.systems.builders import CONFINEMENT_GROUP, THREE_HOLE_EXPRESSION, threehole_energy
from latf_openmm.units import kelvin_to_reduced, reduced_to_kelvin

KJ = u.kilojoule_per_mole


def _energy_forces(molsys, positions, groups=-1):
    context = openmm.Context(
        molsys.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    return (state.getPotentialEnergy().value_in_unit(KJ), state.getForces(asNumpy=True).value_in_unit(KJ / u.nanometer))


def test_reduced_units_mapping():
    assert reduced_to_kelvin(0.75) == pytest.approx(90.204, abs=1e-3)
    assert kelvin_to_reduced(reduced_to_kelvin(0.3)) == pytest.approx(0.3)


def test_shipped_systems_listed():
    assert {"threehole", "lj7", "ala2_vacuum", "ala2_obc2", "chignolin"} <= set(available_systems())


def test_threehole_energy_and_forces_match_formula(rng):
    molsys = load_system("threehole")
    physical = ~(1 << CONFINEMENT_GROUP) & 0xFFFFFFFF
    for x, y in rng.uniform(-2, 2, size=(20, 2)):
        energy, forces = _energy_forces(molsys, [[x, y, 0.0]], groups=physical)
        assert energy == pytest.approx(threehole_energy(x, y), abs=1e-10)
        h = 1e-6
        fx = -(threehole_energy(x + h, y) - threehole_energy(x - h, y)) / (2 * h)
        fy = -(threehole_energy(x, y + h) - threehole_energy(x, y - h)) / (2 * h)
        np.testing.assert_allclose(forces[0], [fx, fy, 0.0], atol=1e-6)
    # the out-of-plane confinement is decoupled: it only pulls z back to 0
    energy, forces = _energy_forces(molsys, [[0.3, 0.2, 0.1]])
    assert energy == pytest.approx(threehole_energy(0.3, 0.2) + 0.5 * 1000 * 0.1**2)
    assert forces[0, 2] == pytest.approx(-100.0)
    assert "5*exp(-(x+1)^2-y^2)" in THREE_HOLE_EXPRESSION


def test_lj7_energy_is_direct_pair_sum(rng):
    molsys = load_system("lj7")
    for _ in range(10):
        positions = molsys.positions + np.c_[rng.normal(scale=0.08, size=(7, 2)), np.zeros(7)]
        r = np.array([np.linalg.norm(positions[i] - positions[j]) for i, j in itertools.combinations(range(7), 2)])
        expected = np.sum(4 * (r**-12 - r**-6))
        energy, _ = _energy_forces(molsys, positions)
        assert energy == pytest.approx(expected, rel=1e-10)
    ground, _ = _energy_forces(molsys, molsys.positions)
    assert ground < -12.0  # hexagon: 12 nearest-neighbour bonds at the pair minimum, plus the rest


def test_lj7_wall_holds_an_escaping_particle():
    molsys = load_system("lj7")
    positions = molsys.positions.copy()
    positions[1, :2] = [4.0, 0.0]
    _, forces = _energy_forces(molsys, positions)
    assert forces[1, 0] < -50  # pulled back towards the cluster


def _energy_after_md(molsys, steps: int) -> float:
    """Potential energy (kJ/mol) after minimizing and ``steps`` of Langevin MD at 300 K (2 fs, CPU)."""
    integrator = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picoseconds)
    context = openmm.Context(molsys.system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(molsys.positions)
    openmm.LocalEnergyMinimizer.minimize(context)
    integrator.step(steps)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)


@pytest.mark.parametrize("name", ["ala2_vacuum", "ala2_obc2"])
def test_alanine_dipeptide_is_finite_and_runs(name):
    molsys = load_system(name)
    assert molsys.system.getNumParticles() == 22
    assert any(
        isinstance(f, openmm.GBSAOBCForce) or isinstance(f, openmm.CustomGBForce) for f in molsys.system.getForces()
    ) == (name == "ala2_obc2")
    energy = _energy_after_md(molsys, 500)
    assert np.isfinite(energy) and -400 < energy < 100


def test_alanine_dipeptide_in_a_tip3p_box_keeps_the_solute_and_its_features():
    """Explicit water with PME: the solute as in ala2_obc2, its features the same, a neutral periodic box that runs."""
    molsys, implicit = load_system("ala2_tip3p"), load_system("ala2_obc2")
    residues = [r.name for r in molsys.topology.residues()]
    assert residues[:3] == ["ACE", "ALA", "NME"] and set(residues[3:]) == {"HOH"} and len(residues) > 200
    nonbonded = next(f for f in molsys.system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert molsys.system.usesPeriodicBoundaryConditions()
    assert nonbonded.getNonbondedMethod() == openmm.NonbondedForce.PME
    np.testing.assert_allclose(molsys.positions[:22], implicit.positions, atol=1e-6)
    featurizer = build_featurizer(molsys.features, molsys.topology)
    assert featurizer.n_features == build_featurizer(implicit.features, implicit.topology).n_features == 19
    np.testing.assert_allclose(
        featurizer.transform(molsys.positions[None]),
        build_featurizer(implicit.features, implicit.topology).transform(implicit.positions[None]),
        atol=1e-9,
    )
    energy = _energy_after_md(molsys, 200)
    assert np.isfinite(energy) and energy < -8000  # ~230 TIP3P waters at ≈ −41 kJ/mol each


@pytest.mark.parametrize("start", ["folded", "extended"])
def test_chignolin_built_from_sequence(start):
    molsys = load_system("chignolin", start=start)
    traj = mdtraj.Trajectory(molsys.positions[None], mdtraj.Topology.from_openmm(molsys.topology))
    assert "".join(r.code for r in traj.topology.residues) == "GYDPETGTWG"
    assert traj.n_atoms == 138  # with hydrogens and charged termini
    ca = traj.topology.select("name CA")
    cross = mdtraj.compute_distances(traj, [[ca[1], ca[8]], [ca[2], ca[7]]])[0]
    if start == "folded":
        assert (cross < 0.65).all()  # Y2-W9 and D3-T8 paired across the hairpin
        random.random()
        caller_state = random.getstate()
        again = load_system("chignolin", start=start).positions
        np.testing.assert_array_equal(again, molsys.positions)  # the same molecule every time
        assert random.getstate() == caller_state
    else:
        assert (cross > 1.5).all()
    integrator = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picoseconds)
    context = openmm.Context(molsys.system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(molsys.positions)
    integrator.step(200)
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    assert np.isfinite(energy)


def test_user_system_from_pdb_amber_and_xml(tmp_path, ala2_vacuum):
    pdb = tmp_path / "ala2.pdb"
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(ala2_vacuum.topology, ala2_vacuum.positions * u.nanometer, handle)
    (tmp_path / "from_pdb.toml").write_text(
        'builder = "pdb"\n[args]\npdb = "ala2.pdb"\nforcefield = ["amber14-all.xml"]\n'
    )
    from_pdb = load_system(tmp_path / "from_pdb.toml")
    e_ref, _ = _energy_forces(ala2_vacuum, ala2_vacuum.positions)
    e_pdb, _ = _energy_forces(from_pdb, from_pdb.positions)
    assert e_pdb == pytest.approx(e_ref, abs=1e-3)

    (tmp_path / "system.xml").write_text(openmm.XmlSerializer.serialize(ala2_vacuum.system))
    (tmp_path / "from_xml.toml").write_text('builder = "xml"\n[args]\nsystem_xml = "system.xml"\npdb = "ala2.pdb"\n')
    e_xml, _ = _energy_forces(load_system(tmp_path / "from_xml.toml"), ala2_vacuum.positions)
    assert e_xml == pytest.approx(e_ref, abs=1e-3)

    from latf_openmm.systems.builders import _package_data

    data = _package_data("openmmtools", "data", "alanine-dipeptide-gbsa")
    (tmp_path / "from_amber.toml").write_text(
        f'builder = "amber"\n[args]\nprmtop = "{data}/alanine-dipeptide.prmtop"\n'
        f'inpcrd = "{data}/alanine-dipeptide.crd"\nimplicit_solvent = "OBC2"\n'
    )
    amber = load_system(tmp_path / "from_amber.toml")
    energy, _ = _energy_forces(amber, amber.positions)
    assert amber.system.getNumParticles() == 22 and np.isfinite(energy)


def test_bad_system_inputs_are_clear(tmp_path, ala2_vacuum):
    with pytest.raises(LatfError, match="unknown system"):
        load_system("no_such_system")
    with pytest.raises(LatfError, match="file not found"):
        load_system(tmp_path / "missing.toml")
    heavy = tmp_path / "heavy.pdb"
    top = mdtraj.Topology.from_openmm(ala2_vacuum.topology)
    keep = top.select("not element H")
    mdtraj.Trajectory(ala2_vacuum.positions[None], top).atom_slice(keep).save_pdb(str(heavy))
    (tmp_path / "heavy.toml").write_text(
        'builder = "pdb"\n[args]\npdb = "heavy.pdb"\nforcefield = ["amber14-all.xml"]\n'
    )
    with pytest.raises(LatfError, match="cannot parametrize"):
        load_system(tmp_path / "heavy.toml")
    with pytest.raises(LatfError, match="unknown option"):
        load_system("chignolin", shape="round")
    with pytest.raises(LatfError, match="start must be"):
        load_system("chignolin", start="molten")
