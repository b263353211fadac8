"""Multi-temperature MD: physics, outputs, checkpoint/restart and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mdtraj
import numpy as np
import pytest

from latf_openmm import LatfError, load_system, simulate, simulate_temperatures
from latf_openmm.simulation import seed_for
from latf_openmm.specs import MDOptions
from latf_openmm.systems.builders import threehole_populations as threehole_quadrature
from latf_openmm.systems.builders import threehole_well

LATF = [sys.executable, "-m", "latf_openmm.cli"]


def wells(features: np.ndarray) -> np.ndarray:
    return np.bincount(threehole_well(features), minlength=3) / len(features)


def test_quadrature_reference_values():
    np.testing.assert_allclose(threehole_quadrature(0.75), [0.462, 0.077, 0.462], atol=1e-3)
    np.testing.assert_allclose(threehole_quadrature(1.0), [0.439, 0.121, 0.440], atol=2e-3)


@pytest.mark.slow
def test_threehole_populations_match_quadrature(tmp_path):
    molsys = load_system("threehole")
    result = simulate(molsys, molsys.to_kelvin(0.75), 3_000_000, tmp_path / "run", seed=11, progress=False)
    populations = wells(result.load_timeseries()["features"])
    np.testing.assert_allclose(populations, threehole_quadrature(0.75), atol=0.03)
    temperature = result.load_timeseries()["temperature"].mean()
    assert temperature == pytest.approx(molsys.to_kelvin(0.75), rel=0.02)  # equipartition


def test_outputs_are_readable_and_consistent(tmp_path):
    molsys = load_system("lj7")
    temps = [molsys.to_kelvin(0.2), molsys.to_kelvin(0.5)]
    results = simulate_temperatures(
        molsys, temps, 4000, tmp_path, seed=3, progress=False, md=MDOptions(trajectory_format="xtc")
    )
    assert [r.directory.name for r in results] == ["T0.2", "T0.5"]
    seeds = [r.manifest["settings"]["seed"] for r in results]
    assert seeds == [seed_for(3, 0), seed_for(3, 1)] and seeds[0] != seeds[1]
    for result in results:
        series = result.load_timeseries()
        traj = mdtraj.load(str(result.directory / "trajectory.xtc"), top=str(result.directory / "topology.pdb"))
        assert traj.n_frames == len(series["time"]) == 200
        np.testing.assert_allclose(series["time"], np.arange(1, 201) * 20 * 0.005, rtol=1e-12)
        np.testing.assert_allclose(traj.time, series["time"], atol=1e-3)
        r = np.linalg.norm(traj.xyz[:, :, None] - traj.xyz[:, None], axis=-1) / 1.5
        cn = np.where(np.eye(7, dtype=bool), 0, (1 - r**8) / (1 - r**16)).sum(-1)
        np.testing.assert_allclose(series["features"], cn, atol=2e-3)  # xtc stores 1e-3 nm
        assert np.isfinite(series["potential_energy"]).all()
        # the Run's accessors: read once, read-only, the unbiased energy is the potential energy
        assert result.n_frames == 200 and result.bias_energy() is None and result.ns_per_day > 0
        assert result.temperature_K == pytest.approx(temps[results.index(result)])
        assert not series["features"].flags.writeable and result.load_timeseries()["features"] is series["features"]
        np.testing.assert_array_equal(result.unbiased_energy(), series["potential_energy"])
        with pytest.raises(LatfError, match="unbiased run"):
            result.cv()
        manifest = json.loads((result.directory / "manifest.json").read_text())
        assert manifest["complete"] and manifest["versions"]["openmm"] == "8.5.2"
        assert not (result.directory / "partial").exists()
    # the two temperatures differ: the hotter cluster has the higher mean energy
    energies = [r.load_timeseries()["potential_energy"][50:].mean() for r in results]
    assert energies[1] > energies[0]


def test_finished_run_is_reused_and_settings_guarded(tmp_path):
    molsys = load_system("threehole")
    first = simulate(molsys, 100.0, 300, tmp_path, seed=1, progress=False)
    again = simulate(molsys, 100.0, 300, tmp_path, seed=1, progress=False)
    assert again.manifest == first.manifest
    with pytest.raises(LatfError, match="other settings"):
        simulate(molsys, 100.0, 300, tmp_path, seed=2, progress=False)


def _cli(*args, **kwargs):
    return subprocess.run([*LATF, *map(str, args)], capture_output=True, text=True, **kwargs)


def test_killed_run_resumes_to_the_uninterrupted_frames(tmp_path):
    args = [
        "simulate",
        "--system",
        "threehole",
        "--temperatures",
        "0.75",
        "--steps",
        900_000,
        "--seed",
        5,
        "--platform",
        "Reference",
        "--checkpoint-seconds",
        0.05,
        "--no-progress",
    ]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*LATF, *map(str, args), "--out", killed], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    partial = killed / "T0.75" / "partial"
    deadline = time.time() + 120
    while len(list(partial.glob("segment_*.npz"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(partial.glob("segment_*.npz"))) >= 3, "the run finished before it could be killed"
    assert not (killed / "T0.75" / "manifest.json").exists()  # nothing looks complete
    assert not list((killed / "T0.75").glob("trajectory.*"))

    resumed = _cli(*args, "--out", killed)
    assert resumed.returncode == 0, resumed.stderr
    straight = _cli(*args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    straight_run = tmp_path / "straight" / "T0.75"
    with np.load(killed / "T0.75" / "timeseries.npz") as a, np.load(straight_run / "timeseries.npz") as b:
        assert len(a["features"]) == 300_000
        np.testing.assert_array_equal(a["features"], b["features"])
        np.testing.assert_array_equal(a["potential_energy"], b["potential_energy"])
    left = mdtraj.load(str(killed / "T0.75" / "trajectory.dcd"), top=str(killed / "T0.75" / "topology.pdb"))
    right = mdtraj.load(str(straight_run / "trajectory.dcd"), top=str(straight_run / "topology.pdb"))
    np.testing.assert_array_equal(left.xyz, right.xyz)


def test_blow_up_is_reported_and_earlier_output_kept(tmp_path):
    result = _cli(
        "simulate",
        "--system",
        "lj7",
        "--temperatures",
        "0.5",
        "--steps",
        20000,
        "--timestep",
        0.2,
        "--frame-interval",
        1,
        "--checkpoint-seconds",
        0,
        "--no-progress",
        "--out",
        tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "blew up" in lines[0] and "reduce the timestep" in lines[0]
    assert not (tmp_path / "T0.5" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--system", "argon_gas"], "unknown system"),
        (["--system", "threehole", "--temperatures", "0"], "temperature must be a positive"),
        (["--system", "threehole", "--temperatures", "-5"], "temperature must be a positive"),
        (["--system", "missing/recipe.toml"], "recipe file not found"),
        (["--system", "threehole", "--platform", "CUDA"], "not available"),
        (["--system", "threehole", "--steps", "301"], "multiple of the frame interval"),
        (["--system", "threehole", "--seed", "0"], "--seed must be ≥ 1, got 0"),  # as for latf bias
        (["--system", "threehole", "--frame-interval", "0"], "frame_interval must be ≥ 1"),
        (["--system", "threehole", "--replica-exchange", "--temperatures", "0.75"], "got 0.75 kT/eps"),
        (
            ["--system", "threehole", "--replica-exchange", "--exchange-interval", "0"],
            "--exchange-interval must be ≥ 1",
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, message):
    full = ["simulate", "--steps", "300", "--out", tmp_path / "out", "--no-progress", *args]
    result = _cli(*full)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() or not list(Path(tmp_path / "out").rglob("manifest.json"))


def test_config_file_and_fes_plot(tmp_path):
    config = tmp_path / "md.toml"
    config.write_text(
        f'system = "threehole"\ntemperatures = [0.75, 1.0]\nsteps = 30000\nout = "{tmp_path / "md"}"\n'
        "seed = 4\nprogress = false\n"
    )
    result = _cli("simulate", "--config", config, "--steps", 3000)  # command line overrides the file
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "md/T1/manifest.json").read_text())["settings"]["n_steps"] == 3000
    result = _cli("fes", tmp_path / "md", "--out", tmp_path / "fes.png", "--features", "x0", "y0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fes.png").stat().st_size > 10_000
    with np.load(tmp_path / "fes.npz") as surfaces:
        assert surfaces["free_energy"].shape == (2, 60, 60)
        assert np.nanmin(surfaces["free_energy"]) == 0.0
    bad = tmp_path / "bad.toml"
    bad.write_text("sytem = 'threehole'\n")
    result = _cli("simulate", "--config", bad)
    assert result.returncode == 2 and "unknown option" in result.stderr


def test_bad_recipes_and_output_paths_fail_in_one_line_before_any_work(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    recipe = tmp_path / "recipe.toml"
    for text, message in (
        ('builder = "threehole"\ntimestep = "fast"\n', "recipe 'recipe' timestep must be float, got 'fast'"),
        ('builder = "threehole"\ntemperatures = [0.75, "hot"]\n', "temperatures must be float"),
        ('builder = "threehole"\nframes = 3\n', "unknown key(s) ['frames']"),
    ):
        recipe.write_text(text)
        result = _cli("simulate", "--system", recipe, "--steps", "300", "--out", tmp_path / "o", "--no-progress")
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    model = Path(__file__).parents[1] / "models" / "threehole" / "model.pt"
    for args, message in (
        (["simulate", "--system", "threehole", "--steps", "300", "--out", a_file], "a_file is a file; give a folder"),
        (["bias", model, "--system", "threehole", "--steps", "300", "--out", a_file], "is a file; give a folder"),
        (["train", tmp_path, "--out", a_file / "model.pt"], "a_file is a file, not a folder"),
        (["train", tmp_path, "--out", tmp_path], "is a folder; give a file name"),
        (["generate", model, "--temperatures", "0.75", "--out", a_file / "g.npz"], "is a file, not a folder"),
        (["export", model, "--system", "threehole", "--out", tmp_path / "cv.pt", "--plumed", a_file], "is a file"),
        (["fes", tmp_path, "--out", tmp_path / "fes"], "give a figure file name ending in .png"),
        (["bias", model.parent / "cv.pt", "--system", "threehole", "--steps", "300", "--out", tmp_path / "b"],
         "is an exported CV (TorchScript, positions → CV), not a model"),
    ):  # fmt: skip
        result = _cli(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "recipe.toml"]  # nothing written
