"""The GPU path, on a GPU: the learned CV and its forces on OpenMM's CUDA platform against Reference, a
training step on CUDA against the CPU, a short biased run on CUDA. Elsewhere the module skips with one line."""

import copy
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch

from latf_openmm.bias import HarmonicBias, LearnedCV, build_bias
from latf_openmm.export import export_cv
from latf_openmm.models import LatentModel, TrainingConfig, TrainingData, estimator, load_model
from latf_openmm.simulation import available_platforms, simulate
from latf_openmm.specs import BiasSpec, MDOptions

HERE = "CUDA" in available_platforms() and torch.cuda.is_available()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HERE, reason="no GPU here: needs OpenMM's CUDA platform and torch.cuda (bench/gpu.sh)"),
]
KJ = u.kilojoule_per_mole


def _energy_forces(force, frames, platform, properties=None):
    system = openmm.System()
    for _ in range(frames.shape[1]):
        system.addParticle(12.0)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform),
                             properties or {})  # fmt: skip
    found = []
    for frame in frames:
        context.setPositions(frame)
        state = context.getState(getEnergy=True, getForces=True)
        found.append((state.getPotentialEnergy().value_in_unit(KJ),
                      state.getForces(asNumpy=True).value_in_unit(KJ / u.nanometer)))  # fmt: skip
    return np.array([e for e, _ in found]), np.array([f for _, f in found])


@pytest.mark.parametrize(("backend", "graphs"), [("torch", True), ("torch", False), ("native", False)])
def test_cv_and_forces_on_cuda_equal_reference(backend, graphs, cv_setup, small_cv_setup):
    featurizer, model, frames = cv_setup if backend == "torch" else small_cv_setup
    model = LatentModel(copy.deepcopy(model.network).float(), model.info)  # float32 weights, as trained
    cv = LearnedCV(model, featurizer, backend=backend, cuda_graphs=graphs)
    window = dict(centre=[0.1, -0.2], force_constant=80.0)
    reference = _energy_forces(HarmonicBias(cv, **window).force, frames[:10], "Reference")
    on_cuda = _energy_forces(HarmonicBias(cv, **window).force, frames[:10], "CUDA", {"Precision": "mixed"})
    np.testing.assert_allclose(on_cuda[0], reference[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(on_cuda[1], reference[1], rtol=1e-4, atol=1e-4 * np.abs(reference[1]).max())


def test_the_exported_cv_takes_float32_positions_on_the_gpu(cv_setup, tmp_path):
    featurizer, model, frames = cv_setup
    module = torch.jit.load(str(export_cv(model, featurizer, tmp_path / "cv.pt")), map_location="cuda")
    with torch.no_grad():
        on_gpu = module(torch.as_tensor(frames[0], dtype=torch.float32, device="cuda"), None)
    np.testing.assert_allclose(on_gpu.cpu().numpy(), LearnedCV(model, featurizer).values(frames[0]), atol=1e-4)


def test_a_training_step_on_cuda_equals_the_cpu():
    rng = np.random.default_rng(0)
    centres = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]])
    features = centres[np.repeat(rng.integers(0, 3, 100), 40)] + rng.normal(scale=0.3, size=(4000, 2))
    data = TrainingData([features])
    settings = dict(model="spib", lag=1, n_initial_states=6, max_epochs=1, refinements=0, seed=3)
    cpu = estimator(TrainingConfig(**settings, device="cpu")).fit(data)
    gpu = estimator(TrainingConfig(**settings, device="cuda")).fit(data)
    assert gpu.info["history"][0]["val_loss"] == pytest.approx(cpu.info["history"][0]["val_loss"], rel=1e-4)
    np.testing.assert_allclose(gpu.transform(features), cpu.transform(features), atol=1e-4)


def test_a_short_biased_run_on_cuda_records_the_cv_of_its_frames(small_cv_setup, ala2_vacuum, tmp_path):
    featurizer, model, _ = small_cv_setup
    cv = LearnedCV(model, featurizer)
    spec = BiasSpec(method="metad", components=[0, 1], height=1.0, pace=50, lower=[-5.0, -5.0], upper=[5.0, 5.0])
    bias = build_bias(spec, cv, 300.0, False)
    run = simulate(ala2_vacuum, 300.0, 1000, tmp_path / "run", seed=1, bias=bias,
                   md=MDOptions(platform="CUDA", frame_interval=100), progress=False)  # fmt: skip
    series = run.load_timeseries()
    recorded = series["colvar"][:, [list(series["colvar_fields"]).index(name) for name in ("s0", "s1")]]
    frames = run.load_trajectory().xyz.astype(np.float64)
    assert len(frames) == 10 and np.isfinite(series["potential_energy"]).all()
    np.testing.assert_allclose(recorded, cv.values(frames), atol=1e-3)  # the DCD keeps positions in float32
    assert run.settings["platform"] == "CUDA"


def test_a_flow_prior_samples_the_same_on_the_gpu_for_a_seed():
    shipped = Path(__file__).parents[1] / "models" / "lj7" / "model.pt"
    on_cpu = load_model(shipped).sample(0.3, 5000, seed=1)
    moved = load_model(shipped).to("cuda")
    assert next(moved.prior.parameters()).device.type == "cuda"
    np.testing.assert_allclose(moved.sample(0.3, 5000, seed=1), on_cpu, atol=1e-4)
