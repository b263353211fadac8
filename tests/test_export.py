"""Exported CVs: TorchScript round trips in Python, a torch-only process, and OpenMM."""

import copy
import json
import subprocess
import sys

import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch
from openmmtorch import TorchForce

from latf_openmm import LatfError, build_featurizer
from latf_openmm.export import export_cv, read_metadata
from latf_openmm.models import SPIBModel


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
def test_cv_inside_openmm_equals_python_and_forces_match_finite_differences(cv_setup, tmp_path, platform):
    featurizer, model, frames = cv_setup
    k, centre = 50.0, [0.2, -0.1]
    bias = openmm.CustomCVForce("0.5*k*((s0-c0)^2 + (s1-c1)^2)")
    for name, value in (("k", k), ("c0", centre[0]), ("c1", centre[1])):
        bias.addGlobalParameter(name, value)
    for component in (0, 1):
        path = export_cv(model, featurizer, tmp_path / f"cv{component}.pt", component=component)
        bias.addCollectiveVariable(f"s{component}", TorchForce(str(path)))
    system = openmm.System()
    for _ in range(22):
        system.addParticle(12.0)
    system.addForce(bias)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    expected = model.transform(featurizer.transform(frames))
    for frame, cv in zip(frames, expected, strict=True):
        context.setPositions(frame)
        np.testing.assert_allclose(bias.getCollectiveVariableValues(context), cv, atol=1e-5)

    def energy(x):
        context.setPositions(x)
        return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)

    # finite differences need a float64 encoder (float32 rounding would dominate a small step)
    bias_64 = openmm.CustomCVForce(bias.getEnergyFunction())
    for index in range(bias.getNumGlobalParameters()):
        bias_64.addGlobalParameter(bias.getGlobalParameterName(index), bias.getGlobalParameterDefaultValue(index))
    model_64 = SPIBModel(copy.deepcopy(model.network).double(), model.info)
    for component in (0, 1):
        path = export_cv(model_64, featurizer, tmp_path / f"cv64_{component}.pt", component=component)
        bias_64.addCollectiveVariable(f"s{component}", TorchForce(str(path)))
    system.removeForce(0)
    system.addForce(bias_64)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    x0 = frames[0]
    context.setPositions(x0)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    h = 1e-6
    for atom in (0, 4, 8, 14):
        for dim in range(3):
            plus, minus = x0.copy(), x0.copy()
            plus[atom, dim] += h
            minus[atom, dim] -= h
            assert forces[atom, dim] == pytest.approx(-(energy(plus) - energy(minus)) / (2 * h), rel=1e-4, abs=1e-4)


def test_export_rejects_a_mismatched_featurizer(cv_setup, ala2_vacuum, tmp_path):
    _, model, _ = cv_setup
    other = build_featurizer([{"kind": "dihedrals", "angles": ["phi", "psi"]}], ala2_vacuum.topology)
    with pytest.raises(LatfError, match="featurizer makes 4 features but the model expects 49"):
        export_cv(model, other, tmp_path / "cv.pt")
    featurizer, model, _ = cv_setup
    with pytest.raises(LatfError, match="component 2 out of range"):
        export_cv(model, featurizer, tmp_path / "cv.pt", component=2)
    assert not (tmp_path / "cv.pt").exists()
