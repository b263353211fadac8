"""The models in models/: the final CVs of the shipped workflows still load with the pinned stack
and compute what they computed when the workflow wrote them (TorchScript, OpenMM TorchForce, PLUMED)."""

from pathlib import Path

import numpy as np
import pytest
from conftest import check_final

from latf_openmm.loop import LoopConfig
from latf_openmm.models import load_model

MODELS = Path(__file__).parents[1] / "models"
SHIPPED = ["ala2", "ala2_tempering", "lj7", "threehole"]  # one per workflow in workflows/ that has been run to the end


def test_every_shipped_model_is_here():
    assert sorted(p.name for p in MODELS.iterdir() if p.is_dir()) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_computes_its_recorded_cv(name):
    metadata = check_final(MODELS / name)
    workflow = Path(__file__).parents[1] / "workflows" / f"{name}.toml"
    assert workflow.is_file() and metadata["system"] == metadata["workflow"]["system"]
    populations = metadata["reweighted_state_populations"]
    assert all(abs(sum(p) - 1) < 1e-9 for p in populations.values())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_plumed_input_carries_its_workflow_bias(name):
    config = LoopConfig.from_toml(Path(__file__).parents[1] / "workflows" / f"{name}.toml")
    lines = (MODELS / name / "plumed" / "plumed.dat").read_text().splitlines()
    bias = next(line.split() for line in lines if line.startswith("bias: "))
    keys = dict(token.split("=", 1) for token in bias[2:] if "=" in token)
    spec = config.bias
    assert bias[1] == {"opes": "OPES_METAD", "metad": "METAD"}[spec.method]
    assert keys["ARG"] == ",".join(f"cv.node-{c}" for c in spec.components) and int(keys["PACE"]) == spec.pace
    assert float(keys["BARRIER"] if spec.method == "opes" else keys["HEIGHT"]) == (
        spec.barrier if spec.method == "opes" else spec.height
    )
    if spec.bias_factor is not None:
        assert float(keys["BIASFACTOR"]) == spec.bias_factor
    model = load_model(MODELS / name / "model.pt")  # the default walls: the training range ± margin
    low, high = (np.asarray(v)[list(spec.components)] for v in model.info["latent_range"])
    walls = {line.split(":")[0]: line for line in lines if "_WALLS" in line}
    for label, expected in (("lwall", low - spec.margin * (high - low)), ("uwall", high + spec.margin * (high - low))):
        at = walls[label].split("AT=")[1].split()[0]
        np.testing.assert_allclose([float(v) for v in at.split(",")], expected, rtol=1e-5)
