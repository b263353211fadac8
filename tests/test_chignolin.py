"""Chignolin's melting workflow: hydrogen mass repartitioning, the folded state by native contacts, the
regions' populations from a model, block errors, the two-state fit, and the whole workflow as a smoke run."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import mdtraj
import numpy as np
import openmm
import pytest
from conftest import check_plumed_bias

from latf_openmm import LatfError
from latf_openmm.generation import block_fraction, two_state_fit, two_state_folded_fraction
from latf_openmm.loop import LoopConfig, run_loop
from latf_openmm.loop.final import melting_curves, named_regions
from latf_openmm.models import load_model
from latf_openmm.systems import REGIONS, load_system, native_contact_fraction
from latf_openmm.systems.builders import alanine_dipeptide

WORKFLOW = Path(__file__).parents[1] / "workflows" / "chignolin.toml"


def _frames(molsys):
    return mdtraj.Trajectory(molsys.positions[None], mdtraj.Topology.from_openmm(molsys.topology))


def test_hydrogen_mass_repartitioning_moves_mass_onto_hydrogens_and_keeps_the_total():
    plain, heavy = alanine_dipeptide(), alanine_dipeptide(hydrogen_mass=3.0)
    masses = [np.array([s.getParticleMass(i).value_in_unit(openmm.unit.dalton) for i in range(s.getNumParticles())])
              for s in (plain.system, heavy.system)]  # fmt: skip
    hydrogen = np.array([atom.element.symbol == "H" for atom in plain.topology.atoms()])
    np.testing.assert_allclose(masses[1][hydrogen], 3.0)
    assert masses[1].sum() == pytest.approx(masses[0].sum(), rel=1e-12)
    assert (masses[1][~hydrogen] < masses[0][~hydrogen] + 1e-9).all() and not np.allclose(masses[0], masses[1])
    with pytest.raises(LatfError, match="hydrogen_mass must be between 1 and 5 amu"):
        alanine_dipeptide(hydrogen_mass=8.0)


def test_native_contacts_call_the_built_hairpin_folded_and_the_extended_chain_unfolded(ala2_vacuum):
    folded, extended = load_system("chignolin"), load_system("chignolin", start="extended")
    q_folded, q_extended = native_contact_fraction(_frames(folded)), native_contact_fraction(_frames(extended))
    assert q_folded[0] == pytest.approx(1.0, abs=1e-3) and q_extended[0] < 0.05
    assert REGIONS["chignolin"].of_frames(_frames(folded)).tolist() == [1]
    assert REGIONS["chignolin"].of_frames(_frames(extended)).tolist() == [0]
    with pytest.raises(LatfError, match="not the chignolin builder's peptide"):
        native_contact_fraction(_frames(ala2_vacuum))


def test_the_models_region_populations_split_each_state_as_the_weights_do():
    regions = REGIONS["chignolin"]
    latent = np.array([[0.0], [0.1], [1.0], [1.1], [1.2]])
    model = SimpleNamespace(n_states=2, latent_state=lambda s: (s[:, 0] > 0.5).astype(int))
    frame_regions = np.array([1, 1, 0, 0, 1])  # state 0 all folded; state 1 two thirds unfolded by count
    weights = np.array([1.0, 1.0, 1.0, 1.0, 2.0])  # ... half by weight
    record = named_regions(regions, model, latent, weights, frame_regions, 300.0, np.array([0.2, 0.8]),
                           reference=np.repeat([0, 1], [30, 70]))  # fmt: skip
    np.testing.assert_allclose(record["generated_populations"], [0.8 * 0.5, 0.2 + 0.8 * 0.5])
    np.testing.assert_allclose(record["mbar_populations"], [2 / 6, 4 / 6])
    np.testing.assert_allclose(record["reference_populations"], [0.3, 0.7])
    assert record["reference_block_error"][1] > 0.1  # five blocks, all folded or all unfolded: a large error


def test_block_error_of_independent_frames_is_the_binomial_error():
    rng = np.random.default_rng(0)
    errors = [block_fraction(rng.random(2000) < 0.3)[1] for _ in range(400)]
    assert np.mean(errors) == pytest.approx(np.sqrt(0.3 * 0.7 / 2000), rel=0.1)
    with pytest.raises(LatfError, match="block error"):
        block_fraction(np.ones(3))


def test_two_state_fit_recovers_the_melting_temperature_from_noisy_fractions():
    rng = np.random.default_rng(1)
    temperatures = np.arange(300.0, 420.0, 20.0)
    exact = two_state_folded_fraction(temperatures, 345.0, 6000.0)
    counted = rng.binomial(2000, exact) / 2000
    fit = two_state_fit(temperatures, counted, np.sqrt(exact * (1 - exact) / 2000))
    assert fit["melting_temperature"] == pytest.approx(345.0, abs=2.0)
    assert fit["enthalpy"] == pytest.approx(6000.0, rel=0.1)
    assert two_state_fit(temperatures, np.full(6, 0.999)) is None  # no melting in range
    assert two_state_fit(temperatures, 1 - exact) is None  # a fraction that rises with T does not melt


def test_melting_curves_fit_each_source_and_carry_the_reference_errors():
    temperatures = [300.0, 320.0, 340.0, 360.0, 380.0]
    folded = two_state_folded_fraction(np.array(temperatures), 335.0, 5000.0)
    regions = {f"{t:g}": {"names": ["unfolded", "folded"], "generated_populations": [1 - f, f],
                          "mbar_populations": [1 - f, f], "reference_populations": [1 - f, f],
                          "reference_block_error": [0.02, 0.02]}
               for t, f in zip(temperatures, folded, strict=True)}  # fmt: skip
    melting = melting_curves("folded", {t: {"regions": r} for t, r in regions.items()}, "K")
    assert melting["temperatures"] == temperatures and melting["reference_block_error"] == [0.02] * 5
    for source in ("generated", "mbar", "reference"):
        np.testing.assert_allclose(melting[source], folded)
        fit = melting["two_state_fits"][source]
        assert fit["melting_temperature"] == pytest.approx(335.0, abs=0.1)
        assert fit["enthalpy_kJ_per_mol"] == pytest.approx(5000.0 * 0.0083145, rel=1e-3)
    del regions["340"]["reference_populations"]  # a target without a reference: no reference curve
    melting = melting_curves("folded", {t: {"regions": r} for t, r in regions.items()}, "K")
    assert "reference" not in melting and set(melting["two_state_fits"]) == {"generated", "mbar"}


@pytest.mark.slow
def test_chignolin_workflow_runs_every_stage_in_a_few_picoseconds(tmp_path):
    """The shipped workflow with a few picoseconds per stage on the CPU: every stage runs and writes its files."""
    config = LoopConfig.from_toml(WORKFLOW)
    assert config.validation_replica_exchange and len(config.md_temperatures) == 2
    assert config.md.timestep == 0.004 and config.system_args == {"hydrogen_mass": 3.0}
    smoke = dataclasses.replace(
        config, rounds=1, md_steps=1250, walker_steps=500, production_steps=500, validation_steps=500,
        exchange_interval=25, md=dataclasses.replace(config.md, frame_interval=25, platform="CPU", threads=1),
        train={**config.train, "refinements": 0},  # 5 ps do not hold two metastable states: keep the initial ones
    )  # fmt: skip
    summary = run_loop(smoke, tmp_path / "run")
    out = tmp_path / "run"
    for name in ("summary.json", "summary.png", "melting.png", "final/model.pt", "final/cv.pt",
                 "final/plumed/plumed.dat", "round_001/model.pt", "round_001/estimate.npz"):  # fmt: skip
        assert (out / name).is_file(), name
    final = load_model(out / "final" / "model.pt")  # the workflow's [bias] in the final plumed.dat
    check_plumed_bias((out / "final" / "plumed" / "plumed.dat").read_text(), smoke.bias, final.info["latent_range"])
    assert sorted(p.name for p in (out / "round_000" / "md").iterdir()) == ["T300K", "T400K"]
    assert sorted(p.name for p in (out / "validation").glob("T*")) == [f"T{t:g}K" for t in config.targets]
    melting = json.loads((out / "summary.json").read_text())["melting"]
    assert melting == json.loads(json.dumps(summary["melting"]))
    assert melting["region"] == "folded" and melting["temperatures"] == config.targets
    for source in ("generated", "mbar", "reference"):
        assert len(melting[source]) == len(config.targets) and all(0 <= f <= 1 + 1e-9 for f in melting[source])
    assert set(melting["two_state_fits"]) == {"generated", "mbar", "reference"}
    assert len(melting["reference_block_error"]) == len(config.targets)
