"""`latf train` and `latf generate` end to end on small synthetic data, and their bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from latf_openmm.models import load_model
from latf_openmm.reweighting import temperature_estimate
from latf_openmm.simulation import find_runs, simulate
from latf_openmm.specs import MDOptions
from latf_openmm.systems import load_system
from latf_openmm.systems.builders import threehole_populations, threehole_well

LATF = [sys.executable, "-m", "latf_openmm.cli"]
QUICK_TRAIN = [
    "--n-initial-states",
    16,
    "--learning-rate",
    5e-3,
    "--max-epochs",
    20,
    "--batch-size",
    256,
    "--threads",
    1,
    "--polish-steps",
    1000,
]


def _cli(*args):
    return subprocess.run([*LATF, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def two_state_data(tmp_path_factory):
    """Two trajectories hopping between two Gaussian blobs (a slow 2-state Markov chain)."""
    rng = np.random.default_rng(3)
    trajectories = []
    for _ in range(2):
        state = np.cumsum(rng.random(4000) < 0.01) % 2  # ~100-frame residence
        trajectories.append(np.c_[2.0 * state - 1.0, np.zeros(4000)] + 0.3 * rng.normal(size=(4000, 2)))
    path = tmp_path_factory.mktemp("data") / "two_state.npz"
    np.savez(path, features=np.stack(trajectories), temperatures=np.array([1.0, 1.5]))
    return path


def test_train_and_generate(two_state_data, tmp_path):
    model = tmp_path / "model.pt"
    result = _cli("train", two_state_data, "--out", model, "--lag", 5, "--joint-max-epochs", 10, *QUICK_TRAIN)
    assert result.returncode == 0, result.stderr
    assert "2 states" in result.stdout
    out = tmp_path / "generated.npz"
    result = _cli(
        "generate", model, "--temperatures", 1.0, 2.0, "--n", 5000, "--out", out, "--plot", tmp_path / "f.png"
    )
    assert result.returncode == 0, result.stderr
    populations = json.loads(result.stdout)["state_populations"]
    assert len(populations) == 2 and all(abs(sum(p) - 1) < 1e-9 for p in populations)
    with np.load(out) as generated:
        assert generated["samples"].shape == (2, 5000, 2)
        assert generated["free_energy"].shape == (2, 80, 80)
        assert np.isfinite(generated["free_energy"]).all()
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_train_dspib_generates_and_spib_refuses_other_temperatures(two_state_data, tmp_path):
    model = tmp_path / "dspib.pt"
    result = _cli("train", two_state_data, "--out", model, "--model", "dspib", "--lag", 5, "--joint-max-epochs", 5,
                  *QUICK_TRAIN)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "generated.npz"
    result = _cli("generate", model, "--temperatures", 1.0, 1.25, "--n", 4000, "--out", out, "--bins", 30)
    assert result.returncode == 0, result.stderr
    with np.load(out) as generated:
        assert generated["samples"].shape == (2, 4000, 2) and np.isfinite(generated["free_energy"]).all()
    spib = tmp_path / "spib.pt"
    assert _cli("train", two_state_data, "--out", spib, "--model", "spib", "--lag", 5, *QUICK_TRAIN).returncode == 0
    result = _cli("generate", spib, "--temperatures", 1.0, "--n", 100, "--out", tmp_path / "g.npz")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no temperature dependence" in result.stderr
    result = _cli("train", two_state_data, "--out", tmp_path / "x.pt", "--model", "flowy")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "model must be one of spib, latf, dspib" in result.stderr


@pytest.fixture(scope="module")
def threehole_runs(tmp_path_factory):
    """Unbiased three-hole runs at k_BT 0.75 and 1.0 (20 000 frames each, with potential energies)."""
    molsys, folder = load_system("threehole"), tmp_path_factory.mktemp("runs")
    for kt, seed in ((0.75, 1), (1.0, 2)):
        simulate(molsys, molsys.to_kelvin(kt), 600_000, folder / f"T{kt}", seed=seed, md=MDOptions(frame_interval=30),
                 progress=False)  # fmt: skip
    return folder


def test_train_fits_the_prior_to_mbar_at_its_anchors(threehole_runs, tmp_path):
    model_path = tmp_path / "m.pt"
    result = _cli("train", threehole_runs, "--out", model_path, "--prior", "grid", "--lag", 5, *QUICK_TRAIN,
                  "--mbar-anchors", 1.3)  # fmt: skip
    assert result.returncode == 0, result.stderr
    anchors = [float(t) for t in result.stdout.split("prior fitted to MBAR at ")[1].splitlines()[0].split(", ")]
    estimate = temperature_estimate(find_runs([threehole_runs]))
    np.testing.assert_allclose(anchors, estimate.anchors([1.3]), rtol=1e-5)
    assert anchors[0] == 0.75 and 1.0 in anchors and 1.0 < anchors[-1] <= 1.3 and len(anchors) >= 6
    model = load_model(model_path)
    checks = model.info["generation_check"]  # the prior generates MBAR's populations at every anchor ...
    np.testing.assert_allclose([c["temperature"] for c in checks], anchors, rtol=1e-5)
    assert max(c["max_error"] for c in checks) < 0.02, checks
    frames = np.concatenate([np.load(run / "timeseries.npz")["features"] for run in find_runs([threehole_runs])])
    states, wells = model.predict_state(frames.astype(float)), threehole_well(frames)
    well_of_state = [np.bincount(wells[states == k], minlength=3).argmax() for k in range(model.n_states)]
    for temperature in (t for t in anchors if t < 1.1):  # ... so, by well, quadrature's between and beyond the runs
        # (measured: 0.009 off at 0.80, 0.017 at 1.07 and 0.025 at 1.3, where the states and the wells part)
        generated = np.bincount(well_of_state, model.state_populations(temperature, 100_000, seed=0), minlength=3)
        np.testing.assert_allclose(generated, threehole_populations(temperature), atol=0.03)
    result = _cli("train", threehole_runs, "--out", tmp_path / "s.pt", "--model", "spib", "--mbar-anchors")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--model latf or dspib" in result.stderr
    np.savez(tmp_path / "d.npz", features=np.zeros((2, 100, 2)), temperatures=np.array([1.0, 1.5]))
    result = _cli("train", tmp_path / "d.npz", "--out", tmp_path / "s.pt", "--mbar-anchors")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "run folders" in result.stderr


def test_train_bad_input(tmp_path):
    bad = tmp_path / "bad.npz"
    features = np.zeros((2, 100, 3))
    features[1, 50, 2] = np.nan
    np.savez(bad, features=features)
    result = _cli("train", bad, "--out", tmp_path / "m.pt")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "NaN" in result.stderr
    result = _cli("train", tmp_path / "missing.npz", "--out", tmp_path / "m.pt")
    assert result.returncode == 2 and "not found" in result.stderr
    np.savez(bad, features=np.zeros((2, 100, 3)), weights=-np.ones((2, 100)))
    result = _cli("train", bad, "--out", tmp_path / "m.pt")
    assert result.returncode == 2 and "non-negative" in result.stderr
    assert not (tmp_path / "m.pt").exists()
    result = _cli("generate", tmp_path / "m.pt", "--temperatures", 1, "--out", tmp_path / "g.npz")
    assert result.returncode == 2 and "not found" in result.stderr


@pytest.mark.parametrize(
    "latent_dim, prior", [(1, "flow"), (3, "flow"), (1, "grid"), (3, "grid"), (1, "dspib"), (4, "dspib")]
)
def test_other_latent_dimensions(two_state_data, latent_dim, prior):
    from latf_openmm.models import TrainingConfig, estimator
    from latf_openmm.reweighting import load_training_data

    data = load_training_data([two_state_data])
    model = estimator(TrainingConfig(
        model="dspib" if prior == "dspib" else "latf",
        prior="flow" if prior == "dspib" else prior,
        latent_dim=latent_dim,
        lag=5,
        n_initial_states=16,
        learning_rate=5e-3,
        max_epochs=12,
        refinements=4,
        joint_max_epochs=5,
        batch_size=256,
        flow_layers=4,
        polish_steps=500,
        # this short flow training generates the states 0.07–0.16 off, so it is only checked for its shapes
        generation_tolerance=0.02 if prior == "grid" else None,
    )).fit(data)  # fmt: skip
    assert model.n_states == 2
    frames = np.concatenate(data.features)
    assert model.transform(frames).shape == (len(frames), latent_dim)
    samples = model.sample(1.0, 1000, seed=0)
    assert samples.shape == (1000, latent_dim) and np.isfinite(model.log_prob(samples, 1.0)).all()
    # the learned states split the two blobs
    states = model.predict_state(frames)
    blob = frames[:, 0] > 0
    assert max(np.mean(states == blob), np.mean(states != blob)) > 0.95


def test_export_cli(two_state_data, tmp_path):
    import torch

    from latf_openmm.models import load_model

    run = tmp_path / "md"
    simulate = ["--system", "threehole", "--temperatures", 1.0, "--steps", 600_000, "--frame-interval", 30]
    result = _cli("simulate", *simulate, "--out", run, "--no-progress")
    assert result.returncode == 0, result.stderr
    model = tmp_path / "model.pt"
    result = _cli(
        "train",
        run,
        "--model",
        "spib",
        "--out",
        model,
        "--lag",
        3,
        "--n-initial-states",
        9,
        "--learning-rate",
        5e-3,
        "--batch-size",
        512,
        "--max-epochs",
        15,
        "--refinements",
        2,
        "--threads",
        1,
    )
    assert result.returncode == 0, result.stderr
    result = _cli("export", model, "--system", "threehole", "--out", tmp_path / "cv.pt", "--plumed", tmp_path / "pl")
    assert result.returncode == 0, result.stderr
    plumed = (tmp_path / "pl" / "plumed.dat").read_text()
    assert (
        "p0_0: POSITION ATOM=1 NOPBC" in plumed and "ARG=p0_0.x,p0_0.y" in plumed and "TEMP=90.204" in plumed
    )  # the recipe's first temperature, 0.75 ε
    assert torch.jit.load(str(tmp_path / "pl" / "model.ptc"))(torch.zeros(1, 2)).shape == (1, 2)
    exported = torch.jit.load(str(tmp_path / "cv.pt"))
    positions = np.array([[-1.0, 0.2, 0.0]])
    expected = load_model(model).transform(positions[:, :2])
    np.testing.assert_allclose(exported(torch.from_numpy(positions)).detach().numpy(), expected[0], atol=1e-5)
    # without --system: the featurizer the model keeps (trained on run folders), the same CV and plumed.dat
    kelvin = load_system("threehole").to_kelvin(0.75)
    result = _cli("export", model, "--out", tmp_path / "kept.pt", "--plumed", tmp_path / "pl2", "--temperature", kelvin)
    assert result.returncode == 0, result.stderr
    kept = torch.jit.load(str(tmp_path / "kept.pt"))
    np.testing.assert_allclose(kept(torch.from_numpy(positions)).detach().numpy(), expected[0], atol=1e-5)
    assert (tmp_path / "pl2" / "plumed.dat").read_text() == plumed
    result = _cli("export", model, "--out", tmp_path / "no_t.pt", "--plumed", tmp_path / "pl3")
    assert result.returncode == 2 and "needs --temperature (K)" in result.stderr and not (tmp_path / "no_t.pt").exists()
    # a model trained on other features is refused
    other = tmp_path / "other.pt"
    result = _cli("train", two_state_data, "--model", "spib", "--out", other, "--lag", 5, *QUICK_TRAIN)
    assert result.returncode == 0, result.stderr
    result = _cli("export", other, "--system", "threehole", "--out", tmp_path / "bad.pt")
    assert result.returncode == 2 and "features differ" in result.stderr
    result = _cli("export", other, "--out", tmp_path / "bad.pt")  # trained on arrays: no featurizer kept
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "(or --system)" in result.stderr
