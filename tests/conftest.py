"""Shared fixtures."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import latf_openmm  # noqa: F401  (imports torch before openmm; see latf_openmm/__init__.py)
from latf_openmm.systems import MolecularSystem, load_system

torch.set_num_threads(1)  # pytest runs two workers on two cores: one thread each


@pytest.fixture(scope="session")
def ala2_vacuum():
    return load_system("ala2_vacuum")


@pytest.fixture(scope="session")
def cv_setup(ala2_vacuum):
    """An (untrained) encoder on alanine dipeptide's default features, and 100 frames."""
    from latf_openmm import build_featurizer
    from latf_openmm.models import LatentModel
    from latf_openmm.models.network import LatentNetwork

    featurizer = build_featurizer(ala2_vacuum.features, ala2_vacuum.topology)
    rng = np.random.default_rng(11)
    frames = ala2_vacuum.positions[None] + rng.normal(scale=0.02, size=(100, 22, 3))
    torch.manual_seed(0)
    network = LatentNetwork(featurizer.n_features, 2, 3)
    features = featurizer.transform(frames)
    network.feature_mean.copy_(torch.from_numpy(features.mean(0)))
    network.feature_scale.copy_(torch.from_numpy(features.std(0) + 1e-3))
    model = LatentModel(network, {"feature_names": featurizer.names, "data_digest": "test-digest"})
    return featurizer, model, frames


@pytest.fixture(scope="session")
def small_cv_setup(ala2_vacuum):
    """A small encoder (φ/ψ sin/cos → 8 ReLU → 2-D CV) that the native OpenMM-expression backend takes."""
    from latf_openmm import build_featurizer
    from latf_openmm.models import LatentModel
    from latf_openmm.models.network import LatentNetwork

    featurizer = build_featurizer([{"kind": "dihedrals", "angles": ["phi", "psi"]}], ala2_vacuum.topology)
    frames = ala2_vacuum.positions[None] + np.random.default_rng(12).normal(scale=0.03, size=(100, 22, 3))
    torch.manual_seed(1)
    network = LatentNetwork(featurizer.n_features, 2, 3, encoder_layers=1, encoder_hidden=8).double()
    features = featurizer.transform(frames)
    network.feature_mean.copy_(torch.from_numpy(features.mean(0)))
    network.feature_scale.copy_(torch.from_numpy(features.std(0) + 1e-3))
    return featurizer, LatentModel(network, {"feature_names": featurizer.names, "data_digest": "test-digest"}), frames


def linear_cv(system, weight, features=None):
    """A system and a learned-CV stand-in: a linear "encoder" s = W f of the features
    (the recipe's, or ``features``), W given."""
    from latf_openmm import build_featurizer
    from latf_openmm.bias import LearnedCV
    from latf_openmm.models import LatentModel
    from latf_openmm.models.network import LatentNetwork

    molsys = load_system(system)
    featurizer = build_featurizer(features or molsys.features, molsys.topology)
    weight = torch.as_tensor(weight, dtype=torch.float32)
    network = LatentNetwork(featurizer.n_features, len(weight), 2, encoder_layers=0)
    with torch.no_grad():
        network.encoder.weight.copy_(weight)
        network.encoder.bias.zero_()
    model = LatentModel(network, {"feature_names": featurizer.names, "data_digest": "linear"})
    return molsys, LearnedCV(model, featurizer)


def check_final(folder):
    """A loop's final folder (``RUN_DIR/final`` or its copy in ``models/``): files as hashed, and the
    model, the TorchScript CV, each scalar component as an OpenMM TorchForce inside a
    CustomCVForce, and the PLUMED model all give the recorded CV of the starting structure."""
    import hashlib

    import openmm
    from openmmtorch import TorchForce

    from latf_openmm import build_featurizer
    from latf_openmm.models import load_model

    metadata = json.loads((folder / "metadata.json").read_text())
    for name, digest in metadata["sha256"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    molsys = load_system(metadata["system"], **metadata["system_args"])
    expected = metadata["starting_structure_cv"]
    assert len(expected) == metadata["cv"]["cv_dimension"] and metadata["cv"]["n_atoms"] == len(molsys.positions)
    cv = torch.jit.load(str(folder / "cv.pt"))(torch.as_tensor(molsys.positions))
    np.testing.assert_allclose(cv.detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    for k, value in enumerate(expected):
        force = openmm.CustomCVForce("s")
        force.addCollectiveVariable("s", TorchForce(str(folder / f"cv_s{k}.pt")))
        system = openmm.System()
        for _ in molsys.positions:
            system.addParticle(1.0)
        system.addForce(force)
        platform = openmm.Platform.getPlatformByName("Reference")
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform)
        context.setPositions(molsys.positions)
        assert force.getCollectiveVariableValues(context)[0] == pytest.approx(value, abs=1e-5)
    features = build_featurizer(molsys.features, molsys.topology).transform(molsys.positions[None])
    np.testing.assert_allclose(load_model(folder / "model.pt").transform(features)[0], expected, atol=1e-5)
    plumed = torch.jit.load(str(folder / "plumed" / "model.ptc"))(torch.as_tensor(features, dtype=torch.float32))
    np.testing.assert_allclose(plumed.detach().numpy()[0], expected, rtol=1e-4, atol=1e-4)
    assert "PYTORCH_MODEL FILE=model.ptc" in (folder / "plumed" / "plumed.dat").read_text()
    return metadata


def check_plumed_bias(text, spec, latent_range):
    """A plumed.dat's bias line and walls carry the BiasSpec ``spec`` (defaults: walls at the model's
    ``latent_range`` ± margin)."""
    lines = text.splitlines()
    bias = next(line.split() for line in lines if line.startswith("bias: "))
    keys = dict(token.split("=", 1) for token in bias[2:] if "=" in token)
    assert bias[1] == {"opes": "OPES_METAD", "metad": "METAD"}[spec.method]
    components = list(range(min(len(latent_range[0]), 2))) if spec.components is None else list(spec.components)
    assert keys["ARG"] == ",".join(f"cv.node-{c}" for c in components) and int(keys["PACE"]) == spec.pace
    assert float(keys["BARRIER"] if spec.method == "opes" else keys["HEIGHT"]) == (
        spec.barrier if spec.method == "opes" else spec.height
    )
    if spec.bias_factor is not None:
        assert float(keys["BIASFACTOR"]) == spec.bias_factor
    low, high = (np.asarray(v)[components] for v in latent_range)
    walls = {line.split(":")[0]: line for line in lines if "_WALLS" in line}
    for label, expected in (("lwall", low - spec.margin * (high - low)), ("uwall", high + spec.margin * (high - low))):
        at = walls[label].split("AT=")[1].split()[0]
        np.testing.assert_allclose([float(v) for v in at.split(",")], expected, rtol=1e-5)


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


class Killed(Exception):
    """What a bias made by :func:`dying_at` raises: the run is killed there."""


def dying_at(bias, step):
    """Return ``bias`` made to raise :class:`Killed` when it would update at ``step`` (before depositing)."""
    update = bias.update

    def update_or_die(context, now):
        if now == step:
            raise Killed
        update(context, now)

    bias.update = update_or_die
    return bias


MODELS = Path(__file__).parents[1] / "models"


def shipped_system(name: str) -> MolecularSystem:
    """The system a shipped model (``models/<name>``) was trained on."""
    metadata = json.loads((MODELS / name / "metadata.json").read_text())
    return load_system(metadata["system"], **metadata["system_args"])
