"""The models in models/: the final CVs of the shipped workflows still load with the pinned stack
and compute what they computed when the workflow wrote them (TorchScript, OpenMM TorchForce, PLUMED)."""

from pathlib import Path

import pytest
from conftest import check_final

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
