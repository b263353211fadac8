"""`latf bias` end to end: train a small SPIB on three-hole MD, then OPES / metadynamics / a restraint along it."""

import subprocess
import sys

import numpy as np
import pytest

from latf_openmm import LatfError, build_featurizer
from latf_openmm.bias import LearnedCV
from latf_openmm.models import LatentModel, load_model
from latf_openmm.simulation import read_colvar
from latf_openmm.systems import load_system

LATF = [sys.executable, "-m", "latf_openmm.cli"]


def _cli(*args):
    return subprocess.run([*LATF, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_bias")
    result = _cli("simulate", "--system", "threehole", "--temperatures", 1.0, "--steps", 300_000,
                  "--out", folder / "md", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = folder / "spib.pt"
    result = _cli("train", folder / "md", "--model", "spib", "--out", model, "--lag", 10, "--encoder-layers", 1,
                  "--n-initial-states", 9, "--max-epochs", 30, "--refinements", 2, "--threads", 1)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return model


@pytest.mark.parametrize("method", ["opes", "metad"])
def test_bias_run_writes_colvar_and_resumes(model, tmp_path, method):
    args = ["bias", model, "--system", "threehole", "--method", method, "--temperature", 1.0, "--steps", 30_000,
            "--components", 0, "--pace", 30, "--frame-interval", 30, "--no-progress",
            "--out", tmp_path / method]  # fmt: skip
    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    assert "native backend" in result.stdout
    colvar = read_colvar(tmp_path / method / "colvar.dat")
    assert list(colvar) == ["time", "s0", "s1", f"{method}.bias", f"{method}.rct"]
    assert len(colvar["time"]) == 1000 and np.isfinite(colvar[f"{method}.bias"]).all()
    with np.load(tmp_path / method / "bias_state.npz") as state:
        assert len(state["centres" if method == "opes" else "hills"]) == 1000
    again = _cli(*args)
    assert again.returncode == 0 and "already complete" in again.stdout
    if method == "metad":  # a walker sharing a folder, on the openmm engine: no count needed
        result = _cli(*args[:-1], tmp_path / "walker", "--walkers-dir", tmp_path / "shared", "--walker", 3)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "shared" / "walker_3.npz").is_file()
        result = _cli(*args[:-1], tmp_path / "x", "--walkers-dir", tmp_path / "shared", "--walkers", 2, "--walker", 3)
        assert result.returncode != 0 and "with --walker in [0, N)" in result.stderr


def test_restraint_and_bad_bias_input(model, tmp_path):
    result = _cli("bias", model, "--system", "threehole", "--method", "restraint", "--centre", 0, 0,
                  "--steps", 3000, "--frame-interval", 30, "--no-progress", "--out", tmp_path / "r")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert list(read_colvar(tmp_path / "r" / "colvar.dat")) == ["time", "s0", "s1", "restraint.bias"]
    result = _cli("bias", model, "--system", "threehole", "--method", "restraint", "--centre", 0, 0,
                  "--replica-exchange", "--temperatures", 1.0, 1.3, "--steps", 3000, "--frame-interval", 30,
                  "--out", tmp_path / "re")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "fixed restraint bias" in result.stdout and "neighbour acceptance" in result.stdout
    for folder in ("T1", "T1.3"):
        colvar = read_colvar(tmp_path / "re" / folder / "colvar.dat")
        assert len(colvar["time"]) == 100 and np.isfinite(colvar["restraint.bias"]).all()
    result = _cli("bias", model, "--system", "threehole", "--method", "opes", "--replica-exchange",
                  "--temperatures", 1.0, 1.3, "--steps", 3000, "--out", tmp_path / "o")  # fmt: skip
    assert result.returncode == 2 and "--restart-bias" in result.stderr
    result = _cli(
        "bias", model, "--system", "threehole", "--components", 0, 5, "--steps", 3000, "--out", tmp_path / "m"
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "distinct CV components" in result.stderr
    result = _cli(
        "bias", model, "--system", "lj7", "--lower", 0, 0, "--upper", 1, 1, "--steps", 300, "--out", tmp_path / "m"
    )
    assert result.returncode == 2 and "features differ" in result.stderr
    result = _cli("bias", tmp_path / "none.pt", "--system", "threehole", "--steps", 300, "--out", tmp_path / "m")
    assert result.returncode == 2 and "not found" in result.stderr
    assert not (tmp_path / "m").exists()


def test_the_model_keeps_its_featurizer_and_refuses_another(model):
    spib = load_model(model)  # trained from `latf simulate` run folders, which record their featurizer
    molsys = load_system("threehole")
    featurizer = build_featurizer(molsys.features, molsys.topology)
    assert spib.featurizer.resolved() == featurizer.resolved()
    positions = molsys.positions[None] + np.random.default_rng(3).normal(scale=0.3, size=(5, 1, 3))
    np.testing.assert_allclose(LearnedCV(spib).values(positions), LearnedCV(spib, featurizer).values(positions))
    swapped = build_featurizer([{"kind": "positions", "atoms": [0], "components": "yx"}], molsys.topology)
    with pytest.raises(LatfError, match="not the one the model was trained with"):
        LearnedCV(spib, swapped)  # as many features, other ones
    unkept = LatentModel(spib.network, {**spib.info, "featurizer": None})  # a model saved before models kept it
    with pytest.raises(LatfError, match="does not keep its featurizer"):
        LearnedCV(unkept)
    assert LearnedCV(unkept, swapped).dim == 2  # without a kept featurizer only the count is checked
