"""The ``plumed`` engine (``latf bias --engine plumed``, ``[bias] engine = "plumed"``): biases that PLUMED
runs through openmm-plumed's ``PlumedForce``, reweighted to exact populations, resumed after a kill,
in the loop's walker task and on the command line. Skipped, saying so, without openmm-plumed.
"""

import dataclasses
import gc
import subprocess
import sys

import numpy as np
import pytest
from conftest import MODELS, Killed, dying_at, shipped_system

from latf_openmm import LatfError, build_featurizer
from latf_openmm.bias import LearnedCV, build_bias
from latf_openmm.export.plumed import plumed_input
from latf_openmm.loop import LoopConfig
from latf_openmm.loop.tasks import fixed_bias, production_task, walker_task
from latf_openmm.models import load_model
from latf_openmm.reweighting import effective_sample_size, run_weights
from latf_openmm.simulation import Run, read_colvar, simulate
from latf_openmm.specs import BiasSpec, MDOptions
from latf_openmm.systems.builders import threehole_populations, threehole_well

pytest.importorskip("openmmplumed", reason="no openmm-plumed: run scripts/install_plumed.sh (CI does)")


@pytest.mark.parametrize("method", ["opes", "metad"])
def test_the_plumed_engine_reweights_to_exact_populations(method, tmp_path):
    """OPES_METAD, and separately METAD, in PLUMED's PlumedForce (``engine = "plumed"``) on the three-hole particle.

    The run folder's COLVAR carries PLUMED's bias and c(t), ``run_weights`` reweights it, and
    its ``bias_state.npz`` (PLUMED's depositions in the package's format) gives PLUMED's bias.
    """
    molsys = shipped_system("threehole")
    model = load_model(MODELS / "threehole" / "model.pt")
    featurizer = build_featurizer(molsys.features, molsys.topology)
    temperature = molsys.to_kelvin(0.75)
    options = {"opes": dict(barrier=6.0), "metad": dict(height=1.0, bias_factor=6.0)}[method]
    spec = BiasSpec(method=method, engine="plumed", components=(0, 1), pace=100, **options)
    if method == "opes":  # the workflow's [bias]: the loop's final plumed.dat, as shipped
        text = plumed_input(featurizer, "model.ptc", 2, temperature, spec, model.info["latent_range"])
        assert text == (MODELS / "threehole" / "plumed" / "plumed.dat").read_text()
    bias = build_bias(spec, LearnedCV(model, featurizer), temperature, periodic=False)
    md = MDOptions(frame_interval=30, platform="Reference")
    steps = {"opes": 300_000, "metad": 450_000}[method]  # METAD's estimate is the noisier (seeds below)
    run = simulate(molsys, temperature, steps, tmp_path / "run", seed=3, md=md, progress=False, bias=bias)
    series = run.load_timeseries()
    plumed = read_colvar(run.directory / "plumed" / "COLVAR")  # PLUMED's own, every 100 steps
    common = np.isin(plumed["time"], series["time"])
    assert common.sum() == steps // 300
    np.testing.assert_array_equal(series["colvar"][9::10, -1], plumed["bias.rct"][common])  # c(t) is PLUMED's
    mirror = build_bias(dataclasses.replace(spec, engine="openmm"), LearnedCV(model, featurizer), temperature, False)
    mirror.load(run.directory / "bias_state.npz")
    last = series["colvar"][-1]  # CV, PLUMED's bias after the last deposition, c(t)
    assert mirror.interpolate(mirror.bias_grid(), last[:2])[0] == pytest.approx(last[2], abs=0.1)
    assert mirror.reweighting_constant() == pytest.approx(last[3], abs=0.1)
    weights = run_weights(run.directory)  # without the transient (PLUMED's OPES starts at −ΔE)
    # measured, seed 3: Kish ESS OPES 3807 of 10 000 frames (22 with the first 363), METAD 3094 of 15 000 (2937)
    assert effective_sample_size(weights) > 0.1 * len(weights)
    keep = series["time"] > 0.2 * series["time"][-1]  # the bias's first fifth: not yet quasi-static
    weights = weights[keep]
    wells = threehole_well(series["features"][keep])  # the features are the particle's x, y
    populations = np.bincount(wells, weights=weights, minlength=3) / weights.sum()
    # measured, largest error over the three states, seeds 3 / 4 / 5 / 6: OPES 0.018 / 0.013 / 0.028 /
    # 0.024; METAD 0.029 / 0.018 / 0.013 / 0.008 (at 300 000 steps: 0.014 / 0.011 / 0.008 / 0.043).
    np.testing.assert_allclose(populations, threehole_populations(0.75), atol=0.04)


@pytest.mark.parametrize("method", ["metad", "opes"])
def test_a_killed_plumed_engine_run_resumes_to_the_uninterrupted_one(method, tmp_path):
    """PLUMED restarts (``RESTART``) from the depositions saved with the checkpoint, none lost or repeated.

    Killed at step 12 300 (its deposition not made), after the checkpoint at frame 122 (step 12 200).
    """
    molsys = shipped_system("threehole")
    cv = LearnedCV(load_model(MODELS / "threehole" / "model.pt"), build_featurizer(molsys.features, molsys.topology))
    temperature = molsys.to_kelvin(0.75)
    spec = BiasSpec(method=method, engine="plumed", components=(0, 1), pace=100, barrier=6.0, height=0.5)
    md = MDOptions(frame_interval=100, platform="Reference")
    options = dict(seed=5, md=md, progress=False, checkpoint_seconds=0)
    straight = simulate(
        molsys, temperature, 20_000, tmp_path / "straight", bias=build_bias(spec, cv, temperature, False), **options
    )

    dying = dying_at(build_bias(spec, cv, temperature, False), 12_300)
    with pytest.raises(Killed):
        simulate(molsys, temperature, 20_000, tmp_path / "resumed", bias=dying, **options)
    gc.collect()  # the killed run's Context, and its PLUMED, go
    resumed = simulate(
        molsys, temperature, 20_000, tmp_path / "resumed", bias=build_bias(spec, cv, temperature, False), **options
    )
    name = {"metad": "HILLS", "opes": "KERNELS"}[method]
    depositions = [read_colvar(run.directory / "plumed" / name) for run in (straight, resumed)]
    np.testing.assert_array_equal(depositions[1]["time"], np.arange(1, 201))  # every 100 steps from step 100, once
    a, b = straight.load_timeseries(), resumed.load_timeseries()
    np.testing.assert_array_equal(a["colvar"][:122], b["colvar"][:122])  # the frames before the kill, kept
    # PLUMED rebuilds its bias from the file (sums in another order: 1e-15 kJ/mol), so the resumed
    # run is the uninterrupted one until chaos amplifies that, as a rerun on another machine would be
    # (measured: OPES within 2e-15 throughout; METAD within 1e-9 up to frame 159, 0.044 apart at the end).
    np.testing.assert_allclose(a["colvar"][:133], b["colvar"][:133], rtol=0, atol=1e-9)
    for run in (straight, resumed):
        assert len(np.load(run.directory / "bias_state.npz")["hills" if method == "metad" else "weights"]) == 200


def test_metad_walkers_share_their_hills_through_plumeds_files_and_a_killed_one_keeps_its_own(tmp_path):
    """Two METAD walkers on the plumed engine (PLUMED's ``WALKERS_N/ID/DIR``) build one bias.

    Walker 0's hills (from a run made first) are in its ``HILLS.0`` in the shared folder, a third
    of them when walker 1 starts, the rest appended while walker 1 runs: PLUMED reads them at
    its start and every ``share_interval`` steps. Walker 1 is killed at step 2400, after its
    checkpoint at step 2200 and its hill at 2300, and resumed: it keeps that hill (the other
    walkers may have read it) and appends to its file. The fixed bias merged from the walkers'
    ``walker_*.npz`` is then PLUMED's bias.
    """
    molsys = shipped_system("threehole")
    cv = LearnedCV(load_model(MODELS / "threehole" / "model.pt"), build_featurizer(molsys.features, molsys.topology))
    temperature = molsys.to_kelvin(0.75)
    spec = BiasSpec(method="metad", engine="plumed", components=(0, 1), pace=100, height=1.0, share_interval=100)
    options = dict(md=MDOptions(frame_interval=200, platform="Reference"), progress=False, checkpoint_seconds=0)
    source, shared = tmp_path / "walker_0_alone", tmp_path / "shared"

    def walker(index: int, folder):
        return build_bias(spec, cv, temperature, False, walkers_dir=folder, walker=index, walkers=2)

    simulate(molsys, temperature, 3_000, tmp_path / "w0", seed=4, bias=walker(0, source), **options)
    lines = (source / "HILLS.0").read_text().splitlines(keepends=True)
    header = [line for line in lines if line.startswith("#")]
    hills = [line for line in lines if not line.startswith("#")]
    assert len(hills) == 30
    shared.mkdir()
    (shared / "HILLS.0").write_text("".join(header + hills[:10]))
    (shared / "walker_0.npz").write_bytes((source / "walker_0.npz").read_bytes())  # walker 0's mirror, at the end
    appending = walker(1, shared)
    update = appending.update

    def appended_at_1500(context, step):
        if step == 1_500:
            with open(shared / "HILLS.0", "a") as handle:
                handle.write("".join(hills[10:]))
        update(context, step)

    appending.update = appended_at_1500
    with pytest.raises(Killed):
        simulate(molsys, temperature, 3_000, tmp_path / "w1", seed=5, bias=dying_at(appending, 2_400), **options)
    gc.collect()
    resumed = simulate(molsys, temperature, 3_000, tmp_path / "w1", seed=5, bias=walker(1, shared), **options)
    own = read_colvar(shared / "HILLS.1")["time"]
    np.testing.assert_array_equal(np.unique(own), np.arange(1, 31))  # every 100 steps, once…
    assert len(own) == 31 and np.sum(own == 23) == 2  # …but the killed run's hill at step 2300, kept
    assert len(np.load(resumed.directory / "bias_state.npz")["hills"]) == 31  # the mirror holds the file
    merged = build_bias(dataclasses.replace(spec, engine="openmm"), cv, temperature, False)
    merged.load(shared)
    last = resumed.load_timeseries()["colvar"][-1]  # CV, PLUMED's bias, c(t)
    # measured: bias 2.586 against PLUMED's 2.594, c(t) 1.42761 against 1.42762; without the
    # hills appended to HILLS.0 while walker 1 ran, 2.142 and 0.723
    assert merged.interpolate(merged.bias_grid(), last[:2])[0] == pytest.approx(last[2], abs=0.1)
    assert merged.reweighting_constant() == pytest.approx(last[3], abs=0.1)
    unread = build_bias(dataclasses.replace(spec, engine="openmm"), cv, temperature, False)
    unread.load(shared / "walker_1.npz")
    for *centre, height in np.load(shared / "walker_0.npz")["hills"][:10]:
        unread.add_deposition(np.array(centre), height)
    assert abs(unread.reweighting_constant() - last[3]) > 0.3
    restarted = walker(1, shared)  # from a checkpoint whose hills the shared file no longer holds
    with np.load(resumed.directory / "bias_state.npz") as saved:
        restarted.restore({key: saved[key] for key in saved.files})
    hills_1 = (shared / "HILLS.1").read_bytes()
    (shared / "HILLS.1").write_bytes(hills_1[: len(hills_1) // 2])
    with pytest.raises(LatfError, match="no longer holds the hills this walker's checkpoint saved"):
        restarted.add_to(molsys.system, tmp_path / "w1_again")


def test_the_loops_walker_runs_in_plumed_and_its_bias_is_fixed_on_the_openmm_engine(tmp_path):
    """``[bias] engine = "plumed"``: the walker runs in PLUMED; the fixed bias after it is its bias, on openmm."""
    bias = {"method": "opes", "engine": "plumed", "components": [0, 1], "barrier": 6.0, "pace": 100}
    workflow = dict(system="threehole", md_temperatures=[0.75], md_steps=30, walkers=1, walker_steps=60_000,
                    production_steps=3_000, targets=[0.75], md={"frame_interval": 30, "platform": "Reference"},
                    bias=bias)  # fmt: skip
    config = LoopConfig(**workflow)
    model = str(MODELS / "threehole" / "model.pt")
    shared, walkers = tmp_path / "round_001" / "shared", tmp_path / "round_001" / "walkers"
    walker = Run.open(walker_task(config, 1, model, str(shared), 0, str(walkers / "walker_0")))
    assert walker.bias["engine"] == "plumed" and (walker.directory / "plumed" / "KERNELS").is_file()
    _, fixed, _ = fixed_bias(config, model, shared)
    assert fixed.settings()["backend"] and "engine" not in fixed.settings()  # the openmm engine's own bias
    last = walker.load_timeseries()["colvar"][-1]  # CV, PLUMED's bias after the last kernel, c(t)
    assert fixed.interpolate(fixed.bias_grid(), last[:2])[0] == pytest.approx(last[2], abs=0.1)
    production = Run.open(production_task(config, 1, model, str(shared), 0, str(walker.directory),
                                          str(tmp_path / "round_001" / "production" / "walker_0")))  # fmt: skip
    assert production.bias["frozen"] and len(run_weights(production.directory)) == 100
    with pytest.raises(LatfError, match="shares opes walkers only over MPI"):
        LoopConfig(**{**workflow, "walkers": 2}).validate()
    LoopConfig(**{**workflow, "walkers": 2, "bias": {**bias, "method": "metad"}}).validate()


def test_latf_bias_runs_the_plumed_engine_and_refuses_what_it_cannot(tmp_path):
    command = [sys.executable, "-m", "latf_openmm.cli", "bias", str(MODELS / "threehole" / "model.pt"), "--system",
               "threehole", "--engine", "plumed", "--method", "metad", "--pace", "100", "--steps", "3000",
               "--frame-interval", "30", "--platform", "Reference", "--no-progress"]  # fmt: skip
    result = subprocess.run([*command, "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metad along the 2-D CV in PLUMED" in result.stdout and "PLUMED:" not in result.stdout
    log = (tmp_path / "run" / "plumed" / "log").read_text()  # PLUMED's log, from its start to its timings
    assert "PLUMED: PLUMED is starting" in log and log.splitlines()[-8].split()[1:3] == ["Cycles", "Total"]
    colvar = read_colvar(tmp_path / "run" / "colvar.dat")
    assert list(colvar) == ["time", "s0", "s1", "metad.bias", "metad.rct"] and len(colvar["time"]) == 100
    assert len(read_colvar(tmp_path / "run" / "plumed" / "HILLS")["time"]) == 30  # PLUMED's own hills, kept
    saved = str(tmp_path / "run" / "bias_state.npz")
    refused = [(["--walkers-dir", str(tmp_path / "w")], "give --walkers"),
               (["--walkers", "2", "--walker", "1"], "share one bias through --walkers-dir"),
               (["--walkers-dir", str(tmp_path / "w"), "--walkers", "2", "--method", "opes"], "only over MPI"),
               (["--restart-bias", saved], "cannot continue")]  # fmt: skip
    for extra, message in refused:
        result = subprocess.run([*command, "--out", str(tmp_path / "x"), *extra], capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_an_opes_run_killed_before_its_first_kernel_resumes(tmp_path):
    """Its checkpoint saved an empty KERNELS file, from which OPES_METAD refuses to restart: it starts afresh."""
    molsys = shipped_system("threehole")
    cv = LearnedCV(load_model(MODELS / "threehole" / "model.pt"), build_featurizer(molsys.features, molsys.topology))
    temperature = molsys.to_kelvin(0.75)
    spec = BiasSpec(method="opes", engine="plumed", components=(0, 1), pace=100, barrier=6.0)
    options = dict(seed=5, md=MDOptions(frame_interval=50, platform="Reference"), progress=False, checkpoint_seconds=0)
    with pytest.raises(Killed):  # after the checkpoint at step 50, before the first kernel at step 100
        simulate(molsys, temperature, 1_000, tmp_path, bias=dying_at(build_bias(spec, cv, temperature, False), 100),
                 **options)  # fmt: skip
    gc.collect()
    simulate(molsys, temperature, 1_000, tmp_path, bias=build_bias(spec, cv, temperature, False), **options)
    np.testing.assert_array_equal(read_colvar(tmp_path / "plumed" / "KERNELS")["time"], np.arange(1, 11))
