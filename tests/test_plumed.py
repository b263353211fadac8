"""PLUMED files: the PYTORCH_MODEL file, plumed.dat contents, COLVAR/HILLS reading."""

import mdtraj
import numpy as np
import pytest
import torch

from latf_openmm import LatfError, build_featurizer
from latf_openmm.export.plumed import plumed_input, write_plumed_model
from latf_openmm.models import LatentModel
from latf_openmm.models.network import LatentNetwork
from latf_openmm.simulation import read_colvar
from latf_openmm.specs import BiasSpec


@pytest.fixture(scope="module")
def ala2_model(ala2_vacuum):
    featurizer = build_featurizer(ala2_vacuum.features, ala2_vacuum.topology)
    torch.manual_seed(1)
    network = LatentNetwork(featurizer.n_features, 2, 2)
    network.feature_scale.uniform_(0.5, 2.0)
    return featurizer, LatentModel(network, {"feature_names": featurizer.names})


def test_pytorch_model_file_gives_the_python_cv(ala2_vacuum, ala2_model, tmp_path):
    featurizer, model = ala2_model
    path = write_plumed_model(model, tmp_path / "model.ptc")
    plumed_model = torch.jit.load(str(path))
    rng = np.random.default_rng(2)
    frames = ala2_vacuum.positions[None] + rng.normal(scale=0.02, size=(20, 22, 3))
    features = featurizer.transform(frames).astype(np.float32)
    for row, expected in zip(features, model.transform(features), strict=True):
        out = plumed_model(torch.from_numpy(row[None])).detach()
        assert out.shape == (1, 2) and out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy()[0], expected, atol=1e-5)


def test_plumed_input_computes_the_same_features(ala2_vacuum, ala2_model):
    featurizer, _ = ala2_model
    region = dict(lower=(-1.0, -2.0), upper=(1.0, 2.0))
    text = plumed_input(featurizer, "model.ptc", 2, 300.0, BiasSpec(method="opes", barrier=35, **region))
    lines = text.splitlines()
    top = mdtraj.Topology.from_openmm(ala2_vacuum.topology)
    frame = mdtraj.Trajectory(np.zeros((1, 22, 3)), top)
    phi_atoms = mdtraj.compute_phi(frame)[0][0] + 1  # PLUMED numbers atoms from 1
    assert f"t0_0: TORSION ATOMS={','.join(map(str, phi_atoms))}" in lines
    distances = [line for line in lines if " DISTANCE " in line]
    pairs = featurizer.blocks[1].pairs.numpy() + 1
    assert len(distances) == len(pairs) == 15
    assert distances == [f"d1_{k}: DISTANCE ATOMS={i},{j}" for k, (i, j) in enumerate(pairs)]
    model_line = next(line for line in lines if "PYTORCH_MODEL" in line)
    arguments = model_line.split("ARG=")[1].split(",")
    assert arguments[:4] == ["sin0_0", "sin0_1", "cos0_0", "cos0_1"]  # the featurizer's order
    assert len(arguments) == featurizer.n_features
    opes = next(line for line in lines if "OPES_METAD" in line)  # σ = (upper − lower)/25, γ = barrier/k_BT
    assert opes.startswith("bias: OPES_METAD ARG=cv.node-0,cv.node-1 PACE=500 SIGMA=0.08,0.16 BIASFACTOR=14.0318 ")
    assert "BARRIER=35 TEMP=300 FIXED_SIGMA COMPRESSION_THRESHOLD=0" in opes
    assert "lwall: LOWER_WALLS ARG=cv.node-0,cv.node-1 AT=-1,-2 KAPPA=500,500" in lines  # PLUMED's walls: no ½
    assert lines[-1].startswith("PRINT ARG=cv.node-0,cv.node-1,bias.bias,bias.rct") and "FILE=COLVAR" in lines[-1]
    metad = plumed_input(featurizer, "model.ptc", 2, 300.0, BiasSpec(method="metad", sigma=(0.1, 0.2), **region))
    assert "SIGMA=0.1,0.2" in metad and "BIASFACTOR=10 " in metad and "FILE=HILLS" in metad
    restraint = plumed_input(featurizer, "model.ptc", 2, 300.0, BiasSpec(method="restraint", centre=(0.5, -1.0)))
    assert "bias: RESTRAINT ARG=cv.node-0,cv.node-1 AT=0.5,-1 KAPPA=100,100" in restraint
    with pytest.raises(LatfError, match="method must be one of"):
        plumed_input(featurizer, "model.ptc", 2, 300.0, BiasSpec(method="umbrella"))
    with pytest.raises(LatfError, match="give lower and upper"):  # no model range to default to
        plumed_input(featurizer, "model.ptc", 2, 300.0, BiasSpec())


def test_coordination_and_positions_translate(ala2_vacuum):
    lj7_like = build_featurizer(
        [
            {"kind": "coordination", "atoms": [0, 1, 2], "r0": 0.5, "n": 8, "m": 16},
            {"kind": "positions", "atoms": [3], "components": "xy"},
            {"kind": "contacts", "pairs": [[4, 6]], "r0": 0.3},
        ],
        ala2_vacuum.topology,
    )
    text = plumed_input(lj7_like, "m.ptc", 1, 300.0, BiasSpec(lower=(0.0,), upper=(1.0,)))
    assert "cn0_0: COORDINATION GROUPA=1 GROUPB=2,3 SWITCH={RATIONAL R_0=0.5 NN=8 MM=16}" in text
    assert "p1_3: POSITION ATOM=4 NOPBC" in text
    assert "c2_0: COORDINATION GROUPA=5 GROUPB=7 SWITCH={RATIONAL R_0=0.3 NN=6 MM=12}" in text
    assert "ARG=cn0_0,cn0_1,cn0_2,p1_3.x,p1_3.y,c2_0" in text


def test_read_colvar_and_hills(tmp_path):
    colvar = tmp_path / "COLVAR"
    colvar.write_text(
        "#! FIELDS time cv.node-0 cv.node-1 bias.bias\n#! SET min_cv.node-0 -pi\n"
        "0.0 0.1 0.2 0.0\n1.0 0.3 0.4 1.5\n"
        "#! FIELDS time cv.node-0 cv.node-1 bias.bias\n2.0 0.5 0.6 2.5\n\n"
    )
    data = read_colvar(colvar)
    np.testing.assert_array_equal(data["time"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(data["bias.bias"], [0.0, 1.5, 2.5])
    hills = tmp_path / "HILLS"
    hills.write_text("#! FIELDS time cv sigma_cv height biasf\n#! SET multivariate false\n1 0.5 0.1 1.2 10\n")
    assert read_colvar(hills)["height"].tolist() == [1.2]
    for text, message in [
        ("0.0 1.0\n", "before the"),
        ("#! FIELDS a b\n1 2 3\n", "3 values for 2"),
        ("#! FIELDS a b\n1 2\n#! FIELDS a c\n", "fields change"),
        ("#! FIELDS a\nx\n", "could not"),
    ]:
        colvar.write_text(text)
        with pytest.raises(LatfError, match=message):
            read_colvar(colvar)
    with pytest.raises(LatfError, match="not found"):
        read_colvar(tmp_path / "missing")
