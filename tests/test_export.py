"""Exported CVs: TorchScript round trips in Python, a torch-only process, and OpenMM."""

import json
import subprocess
import sys

import numpy as np
import openmm
import pytest
import torch

from latf_openmm import LatfError, build_featurizer
from latf_openmm.bias import HarmonicBias, LearnedCV
from latf_openmm.export import export_cv, read_metadata


def test_export_matches_python_for_float32_and_float64(cv_setup, tmp_path):
    featurizer, model, frames = cv_setup
    path = export_cv(model, featurizer, tmp_path / "cv.pt", feature_description=[{"kind": "test"}])
    exported = torch.jit.load(str(path))
    expected = model.transform(featurizer.transform(frames))
    for dtype in (torch.float64, torch.float32):
        got = np.array([exported(torch.tensor(f, dtype=dtype)).detach().numpy() for f in frames])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    metadata = read_metadata(path)
    assert metadata["cv_dimension"] == 2 and metadata["n_atoms"] == 22 and metadata["data_digest"] == "test-digest"


def test_export_loads_in_a_torch_only_process(cv_setup, tmp_path):
    featurizer, model, frames = cv_setup
    path = export_cv(model, featurizer, tmp_path / "cv.pt")
    np.save(tmp_path / "frames.npy", frames[:5])
    script = (
        "import sys, json, torch, numpy as np\n"
        "extra = {'latf_metadata.json': ''}\n"
        f"m = torch.jit.load({str(path)!r}, _extra_files=extra)\n"
        f"x = np.load({str(tmp_path / 'frames.npy')!r})\n"
        "print(json.dumps([m(torch.from_numpy(f)).tolist() for f in x]))\n"
        "assert 'latf_openmm' not in sys.modules and 'openmm' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    expected = model.transform(featurizer.transform(frames[:5]))
    np.testing.assert_allclose(np.array(json.loads(result.stdout)), expected, atol=1e-5)


@pytest.mark.parametrize("platform", ["CPU", "Reference"])
def test_cv_inside_openmm_equals_python(cv_setup, platform):
    featurizer, model, frames = cv_setup
    bias = HarmonicBias(LearnedCV(model, featurizer, backend="torch"), centre=[0.0, 0.0], force_constant=1.0).force
    system = openmm.System()
    for _ in range(22):
        system.addParticle(12.0)
    system.addForce(bias)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    expected = model.transform(featurizer.transform(frames))
    for frame, cv in zip(frames, expected, strict=True):
        context.setPositions(frame)
        np.testing.assert_allclose(bias.getCollectiveVariableValues(context), cv, atol=1e-5)


def test_export_rejects_a_mismatched_featurizer(cv_setup, ala2_vacuum, tmp_path):
    _, model, _ = cv_setup
    other = build_featurizer([{"kind": "dihedrals", "angles": ["phi", "psi"]}], ala2_vacuum.topology)
    with pytest.raises(LatfError, match="featurizer makes 4 features but the model expects 19"):
        export_cv(model, other, tmp_path / "cv.pt")
    featurizer, model, _ = cv_setup
    with pytest.raises(LatfError, match="component 2 out of range"):
        export_cv(model, featurizer, tmp_path / "cv.pt", component=2)
    assert not (tmp_path / "cv.pt").exists()
