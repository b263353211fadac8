"""Reweighting biased and multi-temperature three-hole data back to exact populations."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import threehole_linear_cv

from latf_openmm import LatfError
from latf_openmm.bias import HarmonicBias
from latf_openmm.reweighting import (
    effective_sample_size,
    restraint_energy,
    run_weights,
    temperature_weights,
    umbrella_weights,
)
from latf_openmm.simulation import replica_exchange, simulate
from latf_openmm.systems import load_system
from latf_openmm.systems.builders import threehole_populations, threehole_well

KT = 0.75


@pytest.fixture(scope="module")
def threehole():
    """The three-hole system and a 1-D CV s0 = x."""
    return threehole_linear_cv([[1.0, 0.0]])


def _populations(paths, weights):
    wells = np.concatenate([np.load(p / "timeseries.npz")["features"] for p in paths])
    weights = np.concatenate(weights)
    return np.bincount(threehole_well(wells), weights=weights, minlength=3) / weights.sum()


def test_umbrella_windows_by_mbar_recover_exact_populations(threehole, tmp_path):
    molsys, cv = threehole
    temperature = molsys.to_kelvin(KT)
    paths = []
    centres = [*np.linspace(-1.6, 1.6, 9), -1.4, -1.0, -0.6]  # extra windows on the left: unequal sampling
    for i, centre in enumerate(centres):
        bias = HarmonicBias(cv, centre=[centre], force_constant=8.0)
        run = simulate(molsys, temperature, 210_000, tmp_path / f"w{i}", seed=10 + i, frame_interval=30, bias=bias,
                       progress=False)  # fmt: skip
        paths.append(run.directory)
    series = np.load(paths[0] / "timeseries.npz")
    own = restraint_energy(HarmonicBias(cv, centre=[-1.6], force_constant=8.0).settings(), series["colvar"][:, :1])
    np.testing.assert_allclose(own, series["colvar"][:, 1], rtol=1e-5, atol=1e-6)  # numpy energy = OpenMM's
    weights = umbrella_weights(paths)
    unweighted = _populations(paths, [np.ones(len(w)) for w in weights])
    assert unweighted[0] - threehole_populations(KT)[0] > 0.05  # the windows distort the sampling
    np.testing.assert_allclose(_populations(paths, weights), threehole_populations(KT), atol=0.03)
    assert 0.05 < effective_sample_size(np.concatenate(weights)) / sum(map(len, weights)) < 1
    with pytest.raises(LatfError, match="restraints"):
        umbrella_weights([*paths, _unbiased(molsys, tmp_path, KT)])


def _unbiased(molsys, tmp_path, kt, steps=300_000, seed=3):
    return simulate(molsys, molsys.to_kelvin(kt), steps, tmp_path / f"T{kt}", seed=seed, frame_interval=30,
                    progress=False).directory  # fmt: skip


def test_temperature_mbar_reweights_to_trained_and_unseen_temperatures(threehole, tmp_path):
    molsys, _ = threehole
    paths = [_unbiased(molsys, tmp_path, kt, steps=1_200_000, seed=s) for kt, s in ((0.75, 1), (1.0, 2))]
    for target in (0.75, 0.85):
        weights = temperature_weights(paths, molsys.to_kelvin(target))
        np.testing.assert_allclose(_populations(paths, weights), threehole_populations(target), atol=0.03)
    assert np.all(run_weights(paths[0]) == 1.0)
    with pytest.raises(LatfError, match="positive"):
        temperature_weights(paths, -1.0)


def test_effective_sample_size():
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)
    assert effective_sample_size(np.r_[1.0, np.zeros(9)]) == pytest.approx(1)


def test_replica_exchange_demultiplexes_and_reweights_to_exact_populations(tmp_path):
    # 300 steps (3 time units) between exchanges: over 8 seeds the populations' spread is 0.008
    args = ["simulate", "--system", "threehole", "--temperatures", 0.75, 0.95, 1.2, "--steps", 900_000,
            "--frame-interval", 300, "--replica-exchange", "--seed", 4, "--out", tmp_path]  # fmt: skip
    command = [sys.executable, "-m", "latf_openmm.cli", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    acceptance = [float(a) for a in result.stdout.rsplit(":", 1)[1].split(",")]
    assert len(acceptance) == 2 and all(0.3 < a <= 1 for a in acceptance)
    paths = [tmp_path / label for label in ("T0.75", "T0.95", "T1.2")]
    for path, kt in zip(paths, (0.75, 0.95, 1.2), strict=True):
        series = np.load(path / "timeseries.npz")
        assert series["features"].shape == (3000, 2)
        assert json.loads((path / "manifest.json").read_text())["settings"]["temperature"] == pytest.approx(kt)
    weights = temperature_weights(paths, load_system("threehole").to_kelvin(0.75))
    np.testing.assert_allclose(_populations(paths, weights), threehole_populations(0.75), atol=0.04)


def test_replica_exchange_seed_repeats_the_run_and_exchanges_at_the_interval(tmp_path):
    molsys = load_system("threehole")
    temperatures = [molsys.to_kelvin(kt) for kt in (0.75, 1.2)]

    def series(seed, name):
        result = replica_exchange(molsys, temperatures, 60, tmp_path / name, frame_interval=30, seed=seed,
                                  exchange_interval=5)  # fmt: skip
        return np.load(result.runs[0].directory / "timeseries.npz")

    first = series(3, "a")
    np.testing.assert_array_equal(series(3, "b")["features"], first["features"])
    assert not np.allclose(series(5, "c")["features"], first["features"])
    swaps = np.flatnonzero(np.diff(first["replica"])) + 1  # frames whose replica differs from the one before
    assert len(swaps) >= 2 and np.all((swaps + 1) % 5 == 0)  # only after every 5th iteration
