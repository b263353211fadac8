"""Reweighting biased and multi-temperature three-hole data back to exact populations."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import linear_cv

from latf_openmm import LatfError
from latf_openmm.bias import OPES, HarmonicBias, Metadynamics
from latf_openmm.loop import equilibrium_estimate
from latf_openmm.reweighting import (
    effective_sample_size,
    multistate_estimate,
    restraint_energy,
    run_weights,
    statistical_inefficiency,
    temperature_estimate,
    umbrella_weights,
    without_transient,
)
from latf_openmm.simulation import Run, read_colvar, replica_exchange, simulate
from latf_openmm.specs import MDOptions
from latf_openmm.systems import load_system
from latf_openmm.systems.builders import threehole_populations, threehole_well
from latf_openmm.units import KB_KJ_PER_MOL_K

KT = 0.75
PHI_TEST_STEPS = 50_000  # 100 ps
REPLICA_ITERATIONS = 2000
PHI_TEST_RMSE_KJ = 1.0


@pytest.fixture(scope="module")
def threehole():
    """The three-hole system and a 1-D CV s0 = x."""
    return linear_cv("threehole", [[1.0, 0.0]])


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
        run = simulate(
            molsys,
            temperature,
            210_000,
            tmp_path / f"w{i}",
            seed=10 + i,
            md=MDOptions(frame_interval=30),
            bias=bias,
            progress=False,
        )
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
    return simulate(
        molsys,
        molsys.to_kelvin(kt),
        steps,
        tmp_path / f"T{kt}",
        seed=seed,
        md=MDOptions(frame_interval=30),
        progress=False,
    ).directory


def test_temperature_mbar_reweights_to_trained_and_unseen_temperatures(threehole, tmp_path):
    molsys, _ = threehole
    paths = [_unbiased(molsys, tmp_path, kt, steps=1_200_000, seed=s) for kt, s in ((0.75, 1), (1.0, 2))]
    estimate = temperature_estimate(paths)
    for target in (0.75, 0.85):
        weights = estimate.mbar.weights(molsys.to_kelvin(target))
        np.testing.assert_allclose(_populations(paths, weights), threehole_populations(target), atol=0.03)
    assert np.all(run_weights(paths[0]) == 1.0)
    with pytest.raises(LatfError, match="positive"):
        estimate.weights(-1.0)


def test_effective_sample_size():
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)
    assert effective_sample_size(np.r_[1.0, np.zeros(9)]) == pytest.approx(1)


def test_an_adaptive_runs_transient_weighs_nothing_and_a_stationary_run_keeps_every_frame():
    """The first 200 frames weigh up to e^8 more than the rest, as an adaptive bias's can before it is quasi-static."""
    stationary = np.random.default_rng(0).lognormal(0.0, 1.0, 5000)
    heavy = stationary.copy()
    heavy[:200] *= np.exp(np.linspace(8.0, 0.0, 200))
    kept = without_transient(heavy)
    assert 100 < np.argmax(kept > 0) < 250 and kept.mean() == pytest.approx(1.0)  # measured: from frame 171
    assert effective_sample_size(kept) > 0.9 * effective_sample_size(stationary) > 20 * effective_sample_size(heavy)
    np.testing.assert_allclose(without_transient(stationary), stationary / stationary.mean())  # nothing dropped
    late = np.ones(1000)
    late[900] = 200.0
    assert without_transient(late).min() > 0  # one heavy frame late in the run is no transient
    np.testing.assert_allclose(without_transient(np.array([1.0, 1.0, 0.0])), [1.5, 1.5, 0.0])  # no 0/0
    with pytest.raises(LatfError, match="finite, non-negative"):
        without_transient(np.array([1.0, np.nan]))


def test_mbar_counts_each_run_by_its_uncorrelated_samples():
    rng = np.random.default_rng(7)
    n, phi = 100_000, 0.9  # AR(1): statistical inefficiency g = (1 + φ)/(1 − φ) = 19
    noise = rng.normal(size=n)
    correlated = np.empty(n)
    correlated[0] = noise[0]
    for i in range(1, n):
        correlated[i] = phi * correlated[i - 1] + noise[i]
    g = statistical_inefficiency(np.column_stack([correlated, rng.normal(size=n)]))
    assert g == pytest.approx(19, rel=0.15)
    assert statistical_inefficiency(np.ones((10, 1))) == 1.0
    energies = [rng.normal(size=n), rng.normal(size=n)]  # two unbiased runs at one temperature
    plain, by_samples = (multistate_estimate(energies, [300.0] * 2, [None] * 2, np.zeros((0, 2 * n)), gs).weights(300.0)
                         for gs in (None, [g, 1.0]))  # fmt: skip
    assert plain[0].sum() == pytest.approx(plain[1].sum(), rel=0.02)
    assert by_samples[1].sum() / by_samples[0].sum() == pytest.approx(g, rel=0.05)  # n/g against n samples
    np.testing.assert_allclose(by_samples[0] / by_samples[0].sum(), plain[0] / plain[0].sum(), rtol=0.05)
    with pytest.raises(LatfError, match="statistical inefficiency"):
        multistate_estimate(energies, [300.0] * 2, [None] * 2, np.zeros((0, 2 * n)), [0.5, 1.0])


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
    weights = temperature_estimate(paths).mbar.weights(load_system("threehole").to_kelvin(0.75))
    np.testing.assert_allclose(_populations(paths, weights), threehole_populations(0.75), atol=0.04)


def test_replicas_with_one_fixed_learned_cv_bias_reweight_to_exact_populations(tmp_path):
    molsys, cv = linear_cv("threehole", np.eye(2))
    temperature = molsys.to_kelvin(KT)
    options = dict(barrier=5.0, components=[0], lower=[-2.0], upper=[2.0], sigma=[0.15], pace=100)
    first = OPES(cv, temperature, **options)
    built = simulate(
        molsys,
        temperature,
        300_000,
        tmp_path / "build",
        seed=2,
        md=MDOptions(frame_interval=100),
        bias=first,
        progress=False,
    )
    with pytest.raises(LatfError, match="already drives a simulation"):
        first.add_to(molsys.system)
    bias = OPES(cv, temperature, **options)  # the built bias, fixed on every replica
    bias.load(built.directory / "bias_state.npz")
    unbuilt = OPES(cv, temperature, **options)
    unbuilt.freeze()
    bias.freeze()  # replicas under different fixed biases never look alike (MBAR groups runs by settings)
    assert unbuilt.settings() != bias.settings() and unbuilt.settings()["cv_sha256"] == cv.digest
    ladder = [molsys.to_kelvin(kt) for kt in (KT, 0.95, 1.2)]
    result = replica_exchange(
        molsys, ladder, REPLICA_ITERATIONS, tmp_path / "re", md=MDOptions(frame_interval=300), seed=4, bias=bias
    )
    paths = [run.directory for run in result.runs]
    cold = np.load(paths[0] / "timeseries.npz")
    colvar = read_colvar(paths[0] / "colvar.dat")
    np.testing.assert_allclose(colvar["s0"], cold["features"][:, 0], atol=1e-5)  # CV = x, frame by frame
    sampled = np.bincount(threehole_well(cold["features"]), minlength=3) / len(cold["features"])
    assert abs(sampled[1] - threehole_populations(KT)[1]) > 0.04  # the bias changes the sampling
    populations = _populations(paths, temperature_estimate(paths).mbar.weights(temperature))  # seeds 4, 5: within 0.01
    np.testing.assert_allclose(populations, threehole_populations(KT), atol=0.04)

    # One MBAR over the replicas (fixed bias, three temperatures) and an unbiased run at 0.75,
    # with the bias evaluated at every frame from the CV alone, as the loop does.
    unbiased = _unbiased(molsys, tmp_path, KT, steps=150_000)
    mixed = [*paths, unbiased]
    features = np.concatenate([np.load(p / "timeseries.npz")["features"] for p in mixed])
    fixed = bias.frozen_grid().energy_at(bias.cv.model.transform(features.astype(np.float64)))
    n_cold = len(cold["features"])
    np.testing.assert_allclose(fixed[:n_cold], cold["colvar"][:, -2], atol=0.01)  # numpy = OpenMM's, kJ/mol
    mixed_runs = [Run.open(p) for p in mixed]
    energies, own = [r.unbiased_energy() for r in mixed_runs], [r.bias_energy() for r in mixed_runs]
    assert own[-1] is None and np.allclose(energies[0] + own[0], cold["potential_energy"])
    np.testing.assert_array_equal(own[0], cold["colvar"][:, -2])  # the bias column, read by name
    kelvin = [*ladder, temperature]
    replicas_only = multistate_estimate(energies[:3], ladder, [0] * 3, fixed[None, : -len(energies[-1])])
    expected_weights = temperature_estimate(paths).mbar.weights(ladder[1])
    for weights, expected in zip(replicas_only.weights(ladder[1]), expected_weights, strict=True):
        np.testing.assert_allclose(weights, expected, rtol=1e-3)  # the bias from OpenMM or from the CV
    mixed_estimate = multistate_estimate(energies, kelvin, [0, 0, 0, None], fixed[None])
    for kt in (KT, 0.95):
        weights = mixed_estimate.weights(molsys.to_kelvin(kt))
        np.testing.assert_allclose(_populations(mixed, weights), threehole_populations(kt), atol=0.04)
    with pytest.raises(LatfError, match="positive"):
        mixed_estimate.weights(0.0)
    with pytest.raises(LatfError, match="none of the loop's rounds holds"):  # fixed biases: the loop's rounds only
        equilibrium_estimate([str(p) for p in mixed])


def test_replica_exchange_seed_repeats_the_run_in_a_worker_thread_and_exchanges_at_the_interval(tmp_path):
    molsys = load_system("threehole")
    temperatures = [molsys.to_kelvin(kt) for kt in (0.75, 1.2)]

    def series(seed, name):
        result = replica_exchange(
            molsys, temperatures, 60, tmp_path / name, md=MDOptions(frame_interval=30), seed=seed, exchange_interval=5
        )
        return np.load(result.runs[0].directory / "timeseries.npz")

    first = series(3, "a")
    with ThreadPoolExecutor(1) as pool:  # off the main thread, as a Dask task runs it
        repeat = pool.submit(series, 3, "b").result()
    np.testing.assert_array_equal(repeat["features"], first["features"])
    assert not np.allclose(series(5, "c")["features"], first["features"])
    swaps = np.flatnonzero(np.diff(first["replica"])) + 1  # frames whose replica differs from the one before
    assert len(swaps) >= 2 and np.all((swaps + 1) % 5 == 0)  # only after every 5th iteration
    np.testing.assert_array_equal(series(3, "a")["features"], first["features"])  # a finished run is reused
    with pytest.raises(LatfError, match="holds a finished replica-exchange run with other settings"):
        series(4, "a")
    (tmp_path / "a" / "T1.2" / "manifest.json").unlink()  # as if killed before the last temperature's files
    with pytest.raises(LatfError, match="holds an unfinished replica-exchange run with other settings"):
        series(4, "a")


def test_reweighted_ala2_phi_profile_matches_the_long_unbiased_reference(tmp_path):
    """Metadynamics along cos φ, reweighted by exp((V − c(t))/k_BT), against 4 ns of plain
    OpenMM MD (bench/ala2_phi_reference.py) in the bins that run sampled well (−170° to −50°).
    Seeds 3–5 give an RMSE of 0.35–0.55 kJ/mol; the unweighted profile gives 1.8."""
    reference = json.loads((Path(__file__).parent / "data" / "ala2_vacuum_phi_300K.json").read_text())
    dihedrals = [{"kind": "dihedrals", "angles": ["phi", "psi"]}]  # sin φ, sin ψ, cos φ, cos ψ
    molsys, cv = linear_cv("ala2_vacuum", [[0.0, 0.0, 1.0, 0.0]], dihedrals)
    bias = Metadynamics(cv, 300.0, height=1.0, bias_factor=6.0, components=[0], pace=250,
                        lower=[-1.0], upper=[1.0], sigma=[0.1])  # fmt: skip
    run = simulate(
        molsys,
        300.0,
        PHI_TEST_STEPS,
        tmp_path,
        seed=3,
        bias=bias,
        md=MDOptions(frame_interval=50, platform="CPU", threads=1),
        progress=False,
    )
    series = run.load_timeseries()
    names = [str(n) for n in series["feature_names"]]
    sin_phi, cos_phi = (series["features"][:, names.index(f"{f}(phi2)")] for f in ("sin", "cos"))
    counts = np.histogram(np.arctan2(sin_phi, cos_phi), np.radians(np.arange(-180, 181, 10)),
                          weights=run_weights(run.directory))[0]  # fmt: skip
    expected = np.array([np.nan if f is None else f for f in reference["free_energy_kJ"]])
    error = np.array([np.inf if e is None else e for e in reference["standard_error_kJ"]])
    wells = (error < 0.3) & (expected < 8.0) & (counts > 0)
    assert wells.sum() >= 8
    kt = KB_KJ_PER_MOL_K * 300.0
    difference = -kt * np.log(counts[wells]) - expected[wells]
    assert np.sqrt(np.mean((difference - difference.mean()) ** 2)) < PHI_TEST_RMSE_KJ
