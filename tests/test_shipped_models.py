"""The models in models/: the final CVs of the shipped workflows still load with the pinned stack
and compute what they computed when the workflow wrote them (TorchScript, OpenMM TorchForce, PLUMED)."""

from pathlib import Path

import pytest
from conftest import check_final, check_plumed_bias

from latf_openmm import build_featurizer
from latf_openmm.export.plumed import plumed_input
from latf_openmm.loop import LoopConfig
from latf_openmm.models import load_model
from latf_openmm.systems import load_system

MODELS = Path(__file__).parents[1] / "models"
WORKFLOWS = Path(__file__).parents[1] / "workflows"
SHIPPED = ["ala2", "ala2_tempering", "lj7", "threehole"]  # one per workflow in workflows/ that has been run to the end


def test_every_shipped_model_is_here():
    assert sorted(p.name for p in MODELS.iterdir() if p.is_dir()) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_computes_its_recorded_cv(name):
    metadata = check_final(MODELS / name)
    workflow = WORKFLOWS / f"{name}.toml"
    assert workflow.is_file() and metadata["system"] == metadata["workflow"]["system"]
    populations = metadata["reweighted_state_populations"]
    assert all(abs(sum(p) - 1) < 1e-9 for p in populations.values())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_plumed_input_carries_its_workflow_bias(name):
    config = LoopConfig.from_toml(WORKFLOWS / f"{name}.toml")
    model = load_model(MODELS / name / "model.pt")
    check_plumed_bias((MODELS / name / "plumed" / "plumed.dat").read_text(), config.bias, model.info["latent_range"])


def test_every_loop_workflow_without_a_shipped_model_gets_its_bias_in_plumed_input():
    # the loop's final plumed.dat for these, written by the same call along the shipped model of
    # the same system (chignolin's own is checked after its smoke run, in test_chignolin.py)
    others = sorted({p.stem for p in WORKFLOWS.glob("*.toml")} - {*SHIPPED, "chignolin", "threehole_md"})
    assert others == ["threehole_plumed"]
    for name in others:
        config = LoopConfig.from_toml(WORKFLOWS / f"{name}.toml")
        model = load_model(MODELS / config.system / "model.pt")
        molsys = load_system(config.system)
        temperature = molsys.to_kelvin(config.walker_temperature or config.md_temperatures[0])
        featurizer = build_featurizer(molsys.features, molsys.topology)
        latent_range = model.info["latent_range"]
        text = plumed_input(featurizer, "model.ptc", model.latent_dim, temperature, config.bias, latent_range)
        check_plumed_bias(text, config.bias, latent_range)
