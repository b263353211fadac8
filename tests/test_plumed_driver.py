"""The exported plumed.dat and model.ptc in the real PLUMED (``plumed driver``, and inside
OpenMM through openmm-plumed's ``PlumedForce``): the shipped models' CVs against their
TorchScript CVs, every bias the package writes accepted and evaluated as the package means
it, and an OPES run along the learned CV reweighted to exact populations.

PLUMED is found as ``scripts/install_plumed.sh`` installs it (``$LATF_PLUMED_HOME`` or the
cache folder for this torch), else on ``PATH``; without it these tests skip, saying so.
"""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODELS, shipped_system

from latf_openmm import build_featurizer
from latf_openmm.bias import LearnedCV, build_bias
from latf_openmm.export.plumed import plumed_input
from latf_openmm.models import load_model
from latf_openmm.simulation import read_colvar
from latf_openmm.specs import BiasSpec
from latf_openmm.systems import MolecularSystem
from latf_openmm.units import KB_KJ_PER_MOL_K


def _plumed() -> str | None:
    torch_folder = os.path.dirname(torch.__file__)
    key = hashlib.sha256(torch_folder.encode()).hexdigest()[:12]
    home = os.environ.get("LATF_PLUMED_HOME") or Path.home() / ".cache" / "latf_openmm" / f"plumed-2.10.1-{key}"
    built = Path(home) / "bin" / "plumed"
    return str(built) if built.is_file() else shutil.which("plumed")


PLUMED = _plumed()
pytestmark = pytest.mark.skipif(PLUMED is None, reason="no PLUMED: run scripts/install_plumed.sh (CI does)")


def _drive(folder: Path, text: str, positions: np.ndarray, box_nm: float = 0.0) -> dict[str, np.ndarray]:
    """Run ``plumed driver`` with ``text`` as plumed.dat on ``positions`` (frames, atoms, 3; nm)."""
    (folder / "plumed.dat").write_text(text)
    with open(folder / "traj.xyz", "w") as out:
        for frame in positions:
            out.write(f"{len(frame)}\n{box_nm:.8f} {box_nm:.8f} {box_nm:.8f}\n")
            out.writelines(f"X {x:.10f} {y:.10f} {z:.10f}\n" for x, y, z in frame)
    library = str(Path(PLUMED).parents[1] / "lib")  # PLUMED's binary has no rpath to its kernel
    environment = os.environ | {"LD_LIBRARY_PATH": os.pathsep.join([library, os.environ.get("LD_LIBRARY_PATH", "")])}
    result = subprocess.run([PLUMED, "driver", "--plumed", "plumed.dat", "--ixyz", "traj.xyz", "--timestep", "1"],
                            cwd=folder, capture_output=True, text=True, env=environment)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return read_colvar(folder / "COLVAR")


def _shipped(name: str, tmp_path: Path, frames: int = 20) -> tuple[Path, np.ndarray]:
    """A shipped model's plumed folder copied to tmp_path, and noisy frames (nm) of its system."""
    folder = tmp_path / name
    shutil.copytree(MODELS / name / "plumed", folder)
    return folder, _noisy_frames(shipped_system(name), frames, seed=5)


def _noisy_frames(molsys: MolecularSystem, frames: int, seed: int) -> np.ndarray:
    """Frames (nm) of the system's structure with 0.01 nm of Gaussian noise on every coordinate."""
    rng = np.random.default_rng(seed)
    return molsys.positions[None] + rng.normal(scale=0.01, size=(frames, *molsys.positions.shape))


@pytest.mark.parametrize("name", ["ala2", "lj7", "threehole"])  # dihedrals and distances; coordination; positions
def test_plumed_computes_the_shipped_cv_as_torchscript_does(name, tmp_path):
    folder, positions = _shipped(name, tmp_path)
    text = (folder / "plumed.dat").read_text().replace("STRIDE=500", "STRIDE=1")
    colvar = _drive(folder, text, positions)
    cv = torch.jit.load(str(MODELS / name / "cv.pt"))
    expected = np.stack([cv(torch.as_tensor(frame)).detach().numpy() for frame in positions])
    got = np.stack([colvar[f"cv.node-{k}"] for k in range(expected.shape[1])], axis=1)
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * scale)  # float32 features and network


def test_plumed_and_torchscript_agree_on_a_molecule_split_across_the_box(tmp_path):
    folder, positions = _shipped("ala2", tmp_path)
    box = 2.5  # nm, a cube: above twice the molecule's largest distance, as the minimum image needs
    split = np.mod(positions - positions[0].mean(axis=0), box)  # centred on a corner: atoms wrapped apart
    assert np.ptp(split[0], axis=0).min() > box / 2
    text = (folder / "plumed.dat").read_text().replace("STRIDE=500", "STRIDE=1")
    colvar = _drive(folder, text, split, box_nm=box)
    cv = torch.jit.load(str(MODELS / "ala2" / "cv.pt"))
    cell = torch.eye(3, dtype=torch.float64) * box
    expected = np.stack([cv(torch.as_tensor(frame), cell).detach().numpy() for frame in split])
    whole = np.stack([cv(torch.as_tensor(frame)).detach().numpy() for frame in positions])
    np.testing.assert_allclose(expected, whole, rtol=0, atol=1e-9 * np.abs(whole).max())  # the minimum image
    got = np.stack([colvar["cv.node-0"], colvar["cv.node-1"]], axis=1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["metad", "opes", "restraint"])
def test_every_bias_the_package_writes_runs_in_plumed(method, tmp_path):
    model = load_model(MODELS / "ala2" / "model.pt")
    molsys = shipped_system("ala2")
    featurizer = build_featurizer(molsys.features, molsys.topology)
    shutil.copy(MODELS / "ala2" / "plumed" / "model.ptc", tmp_path)
    options = {"restraint": dict(centre=(0.0, 1.0), force_constant=3.0), "metad": dict(pace=2, height=1.5)}.get(
        method, dict(pace=2, barrier=30.0)
    )
    spec = BiasSpec(method=method, **options)
    text = plumed_input(featurizer, "model.ptc", 2, 300.0, spec, model.info["latent_range"], stride=1)
    colvar = _drive(tmp_path, text, _noisy_frames(molsys, 10, seed=6))
    s = np.stack([colvar["cv.node-0"], colvar["cv.node-1"]], axis=1)
    if method == "restraint":  # PLUMED's RESTRAINT is ½ κ (s − c)², as the package's
        np.testing.assert_allclose(colvar["bias.bias"], 1.5 * ((s - [0.0, 1.0]) ** 2).sum(axis=1), rtol=1e-5)
        return
    before = -spec.barrier if method == "opes" else 0.0  # OPES: (1 − 1/γ) k_B T ln ε = −ΔE before any kernel
    np.testing.assert_array_equal(colvar["bias.bias"][:3], before)  # the first kernel or hill: at step 2
    assert np.isfinite(colvar["bias.bias"]).all() and colvar["bias.bias"][-1] > before + 0.1  # they act


@pytest.mark.parametrize("method", ["metad", "opes"])
def test_the_package_bias_is_plumeds_from_the_same_depositions(method, tmp_path):
    """Same CV, settings and frames: the package's Metadynamics / OPES against PLUMED's METAD / OPES_METAD.

    300 frames spread over the three-hole plane, a deposition every 2 of them (PLUMED's, from
    frame 2 on, at the CV, as the package deposits); the package is given PLUMED's frames and
    deposits at the same steps, and both report their bias at every frame before that frame's
    deposition, so that the bias surface is compared wherever there are data as it grows.
    """
    model = load_model(MODELS / "threehole" / "model.pt")
    molsys = shipped_system("threehole")
    featurizer = build_featurizer(molsys.features, molsys.topology)
    shutil.copy(MODELS / "threehole" / "plumed" / "model.ptc", tmp_path)
    temperature = molsys.to_kelvin(0.75)
    spec = BiasSpec(method=method, pace=2, **({"height": 1.0} if method == "metad" else {"barrier": 6.0}))
    text = plumed_input(featurizer, "model.ptc", 2, temperature, spec, model.info["latent_range"], stride=1)
    positions = np.zeros((300, 1, 3))
    positions[:, 0, :2] = np.random.default_rng(7).uniform([-1.5, -1.0], [1.5, 2.0], (300, 2))
    colvar = _drive(tmp_path, text, positions)
    s = np.stack([colvar["cv.node-0"], colvar["cv.node-1"]], axis=1)
    package = build_bias(spec, LearnedCV(model, featurizer), temperature, periodic=False)
    deposits = read_colvar(tmp_path / ("HILLS" if method == "metad" else "KERNELS"))
    kt = KB_KJ_PER_MOL_K * temperature
    bias, constant = np.zeros(len(s)), np.zeros(len(s))
    for step, centre in enumerate(s):  # PLUMED prints the bias before a step's deposition, c(t) after it
        bias[step] = package.interpolate(package.bias_grid(), centre)[0]
        if step and step % 2 == 0 and method == "metad":
            package._deposit(centre)
        elif step and step % 2 == 0:  # PLUMED's kernel weights: its first is e^{−βΔE}, the package's 1 (by design)
            package.add_deposition(centre, np.exp(deposits["logweight"][step // 2 - 1]))
        constant[step] = package.reweighting_constant()
        if method == "opes":  # PLUMED's rct also counts a first weight e^{−βΔE} that no kernel carries
            n = len(package.state()["weights"])
            constant[step] = kt * np.log((np.exp(-6.0 / kt) + n * np.exp(constant[step] / kt)) / (n + 1))
    np.testing.assert_array_equal(deposits["time"], np.arange(2, 300, 2))
    np.testing.assert_allclose(np.stack([deposits["cv.node-0"], deposits["cv.node-1"]], axis=1), s[2::2], atol=1e-6)
    if method == "metad":  # HILLS stores h·γ/(γ − 1), the package h
        heights = package.state()["hills"][:, -1] * package.bias_factor / (package.bias_factor - 1)
        np.testing.assert_allclose(deposits["height"], heights, rtol=0.05 / kt)
    else:  # OPES: each kernel weighs e^{V/k_BT} (V compared below, from the same kernels), the first e^{−βΔE}
        assert deposits["logweight"][0] == pytest.approx(-6.0 / kt)
    # measured: bias within 0.031 (metad) and 0.047 (opes, given PLUMED's kernel weights) kJ/mol, the
    # package's linear reading of its grid; c(t) within 0.004 and 2e-6. Without PLUMED's kernel shapes:
    # metad 0.059 and 0.029 (full Gaussians for its stretched ones), opes 0.37 (untruncated kernels).
    kernels = slice(3 if method == "opes" else 0, None)  # before its first kernel PLUMED's OPES is −ΔE, the package's 0
    assert np.abs(bias - colvar["bias.bias"])[kernels].max() < 0.1  # kJ/mol
    assert np.abs(constant - colvar["bias.rct"]).max() < 0.015
