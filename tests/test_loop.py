"""`latf loop` end to end on the three-hole potential: Dask walkers on a local cluster, kill and resume,
reweighted populations against exact quadrature."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import check_final

from latf_openmm import LatfError
from latf_openmm.loop import LoopConfig
from latf_openmm.loop.estimate import latent_of_run, load_estimate
from latf_openmm.loop.rounds import few_frames_warnings, read_record
from latf_openmm.systems.builders import threehole_populations, threehole_well

LATF = [sys.executable, "-m", "latf_openmm.cli"]
WORKFLOW = """
system = "threehole"
seed = 2
rounds = 2
tolerance = 1e-9
md_temperatures = [0.75]
md_steps = 900_000
walkers = 2
walker_steps = 150_000
production_steps = 150_000
targets = [0.75, 1.0]
samples = 20_000
validation_steps = 60_000
[md]
frame_interval = 30
platform = "Reference"
[bias]
method = "opes"
components = [0, 1]
barrier = 6.0
pace = 100
[train]
lag = 3
beta = 1e-3
n_initial_states = 25
refinements = 6
encoder_layers = 1
learning_rate = 3e-3
max_epochs = 30
joint_max_epochs = 15
polish_steps = 2000
prior = "grid"  # as the main job: the flow's final fit (2000 polishing steps) once came out 0.030 off the estimate
"""


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_loop_resumes_and_reweights_to_exact_populations(tmp_path):
    workflow = tmp_path / "tiny.toml"
    workflow.write_text(WORKFLOW)
    out = tmp_path / "run"
    command = [*LATF, "loop", str(workflow), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    model = out / "round_001" / "model.pt"
    deadline = time.time() + 900  # round 0 and training; generous for a loaded machine
    while not (out / "round_001" / "walkers").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # the walkers (Dask worker processes) are running
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert model.is_file() and not (out / "round_001" / "round.json").exists(), "killed at the wrong moment"
    round_zero, trained = (out / "round_000" / "round.json").stat().st_mtime_ns, _sha(model)

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (out / "round_000" / "round.json").stat().st_mtime_ns == round_zero  # complete rounds untouched
    assert _sha(model) == trained  # the trained model was kept, not retrained
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert set(summary["targets"]) == {"0.75", "1"}
    for target in summary["targets"].values():  # generated vs unbiased MD at each target temperature
        comparison = target["md_comparison"]
        assert len(comparison["profile_rmse_kT"]) == 2 and all(np.isfinite(comparison["profile_rmse_kT"]))
        assert comparison["kl"] >= 0 and abs(sum(comparison["md_state_populations"]) - 1) < 1e-9
    assert (out / "summary.png").stat().st_size > 10_000 and (out / "fes.png").is_file()
    assert all(r["fes_change_kT"] > 0 and 0 < r["population_change"] < 1 for r in summary["rounds"])
    assert not summary["converged"]  # tolerance 1e-9
    shipped = check_final(out / "final")  # the final model and CV for OpenMM and PLUMED, as models/ ships them
    round_zero_cpu = json.loads((out / "round_000" / "round.json").read_text())["cpu_seconds"]
    assert summary["cpu_seconds"] == pytest.approx(
        round_zero_cpu + sum(r["cpu_seconds"] for r in summary["rounds"]) + shipped["final_cpu_seconds"]
        + summary["validation_cpu_seconds"], abs=0.3
    )  # fmt: skip
    assert all(r["cpu_seconds"] > 0.3 * r["walker_seconds"] for r in summary["rounds"])  # busy walkers counted
    for ess in summary["rounds"][-1]["effective_sample_size"].values():
        assert 500 < ess <= 5000  # each walker and production run: 5000 frames, weighted
    for ess in summary["rounds"][-1]["estimate_effective_sample_size"].values():
        assert 5000 < ess <= 50_000  # the estimate: round 0 (30 000 frames) and 4 fixed-bias runs (20 000)
    assert summary["final_model"] == "final/model.pt"  # paths relative to the run folder
    assert shipped["sha256"]["model.pt"] == _sha(out / summary["final_model"])
    assert shipped["reweighted_state_populations"] == summary["rounds"][-1]["populations"]
    from latf_openmm.loop.final import final_cpu_seconds

    last = read_record(out / "round_002")
    assert final_cpu_seconds(out / "final", last) == shipped["final_cpu_seconds"] > 0  # a rerun keeps it

    # Reweighted populations of the learned states, each state counted in the well most of its
    # frames (round 0 and walkers) are in, vs quadrature; every well must have a state.
    from latf_openmm.models import load_model

    final, last_round = load_model(out / summary["final_model"]), load_model(last["model"])
    # The final model is the last round's CV and states with its prior fitted to all data: it
    # generates the populations the loop's estimate gives (the flow: within 0.009 in earlier runs,
    # 0.030 once; the grid keeps each state's share of the estimate at the simulated temperature).
    sample = np.load(next((out / "round_000" / "md").iterdir()) / "timeseries.npz")["features"][::50].astype(float)
    np.testing.assert_array_equal(final.transform(sample), last_round.transform(sample))
    assert final.featurizer is not None and final.featurizer.resolved() == last_round.featurizer.resolved()
    generated = summary["targets"]["0.75"]["state_populations"]
    np.testing.assert_allclose(generated, last["populations"]["0.75"], atol=0.03)
    # Beside it, MBAR's prediction from the same runs: the loop's estimate at the simulated
    # temperature; at the unsimulated 1.0 it is checked against quadrature below.
    baseline = {
        t: (v["mbar_state_populations"], v["mbar_effective_sample_size"]) for t, v in summary["targets"].items()
    }
    np.testing.assert_allclose(baseline["0.75"][0], last["populations"]["0.75"], atol=1e-9)
    assert all(0 < size <= 50_000 for _, size in baseline.values())
    md = next((out / "round_000" / "md").iterdir())  # `latf generate` beside MBAR from round 0's one run at 0.75
    command = [*LATF, "generate", str(out / summary["final_model"]), "--temperatures", "0.75", "1.0", "--n", "2000",
               "--out", str(tmp_path / "g.npz"), "--data", str(md)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    encoded = final.transform(np.load(md / "timeseries.npz")["features"].astype(float))
    np.testing.assert_allclose(report["mbar_state_populations"][0], final.latent_populations(encoded), atol=1e-9)
    assert report["mbar_effective_sample_size"][1] < report["mbar_effective_sample_size"][0] == pytest.approx(30_000)
    runs = [next((out / "round_000" / "md").iterdir()), *out.glob("round_*/walkers/walker_*"),
            *out.glob("round_*/production/walker_*")]  # fmt: skip
    features = np.concatenate([np.load(run / "timeseries.npz")["features"] for run in runs])
    states, wells = final.predict_state(features), threehole_well(features)
    majority = [np.bincount(wells[states == k], minlength=3).argmax() for k in range(final.n_states)]
    assert set(majority) == {0, 1, 2}, majority
    populations = np.zeros(3)
    np.add.at(populations, majority, summary["rounds"][-1]["populations"]["0.75"])
    np.testing.assert_allclose(populations, threehole_populations(0.75), atol=0.03)
    # MBAR's step from the simulated 0.75 to the unsimulated 1.0 against quadrature's (+0.045 in
    # the top well; nothing moved would be 0.045 off). The step, not the populations at 1.0:
    # the walkers share their bias by files, so the data and the estimate's error at 0.75
    # vary from run to run (the top well at 1.0 came out 0.048 low once), and at 1.0 MBAR
    # carries that error on.
    predicted = np.zeros(3)
    np.add.at(predicted, majority, baseline["1"][0])
    exact_step = threehole_populations(1.0) - threehole_populations(0.75)
    np.testing.assert_allclose(predicted - populations, exact_step, atol=0.025)

    # A rerun with other settings is refused in one line naming them, and nothing is rewritten;
    # the rounds may change. The folder keeps its paths relative to itself: moved, and run from
    # elsewhere, it resumes (all done) and reports.
    edited = tmp_path / "edited.toml"
    edited.write_text(WORKFLOW.replace("walkers = 2", "walkers = 3").replace("seed = 2", "seed = 4"))
    kept = {name: _sha(out / name) for name in ("config.json", "summary.json", "final/metadata.json")}
    result = subprocess.run([*LATF, "loop", str(edited), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "seed: 2 → 4; walkers: 2 → 3" in result.stderr and "choose a new output directory" in result.stderr
    edited.write_text(WORKFLOW.replace("pace = 100", "pace = 200"))
    result = subprocess.run([*LATF, "loop", str(edited), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 2 and "(bias.pace: 100 → 200)" in result.stderr, result.stderr
    assert {name: _sha(out / name) for name in kept} == kept
    moved, elsewhere = tmp_path / "moved", tmp_path / "elsewhere"
    out.rename(moved)
    elsewhere.mkdir()
    result = subprocess.run([*LATF, "loop", str(workflow), "--out", "../moved"], cwd=elsewhere, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    resumed = json.loads((moved / "summary.json").read_text())
    assert resumed["rounds"] == summary["rounds"] and resumed["final_model"] == "final/model.pt"
    metadata = json.loads((moved / "final" / "metadata.json").read_text())
    assert metadata["final_cpu_seconds"] == shipped["final_cpu_seconds"]  # the final fit was kept
    workflow.write_text(WORKFLOW.replace("rounds = 2", "rounds = 3"))  # more rounds: the loop goes on
    result = subprocess.run([*LATF, "loop", str(workflow), "--out", "../moved"], cwd=elsewhere, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r["round"] for r in json.loads((moved / "summary.json").read_text())["rounds"]] == [1, 2, 3]
    assert json.loads((moved / "config.json").read_text())["rounds"] == 3
    assert json.loads((moved / "final" / "metadata.json").read_text())["round"] == 3


def test_final_flow_fit_is_kept_only_when_complete_for_the_last_round(tmp_path):
    from latf_openmm.loop.final import final_cpu_seconds

    round_model = tmp_path / "round_002.pt"
    round_model.write_bytes(b"round model")
    last = {"round": 2, "model": str(round_model)}
    assert final_cpu_seconds(tmp_path, last) is None  # not run yet
    (tmp_path / "model.pt").write_bytes(b"model")
    hashes = {"round_model_sha256": _sha(round_model), "sha256": {"model.pt": _sha(tmp_path / "model.pt")}}
    metadata = {"round": 2, **hashes, "final_cpu_seconds": 5.0}
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    assert final_cpu_seconds(tmp_path, last) == 5.0
    assert final_cpu_seconds(tmp_path, last | {"round": 3}) is None  # a later round ran since
    older = {k: v for k, v in metadata.items() if k != "final_cpu_seconds"}
    (tmp_path / "metadata.json").write_text(json.dumps(older))
    assert final_cpu_seconds(tmp_path, last) is None  # written before the final fit existed
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    round_model.write_bytes(b"retrained")
    assert final_cpu_seconds(tmp_path, last) is None  # the round's model was trained again
    round_model.write_bytes(b"round model")
    (tmp_path / "model.pt").write_bytes(b"other")
    assert final_cpu_seconds(tmp_path, last) is None  # the final model is not the one recorded


REPLICA_WORKFLOW = """
system = "threehole"
seed = 5
rounds = 1
md_temperatures = [0.75, 1.2]
md_steps = 600_000
replicas_along_cv = true
replica_temperatures = [0.75, 0.95, 1.2]
replica_steps = 900_000     # 3000 exchanges: over seeds 4–6 the populations were within 0.025, 0.010, 0.010
exchange_interval = 1
walkers = 1
walker_steps = 150_000
samples = 5_000
[md]
frame_interval = 300
platform = "Reference"
[bias]
method = "metad"
components = [0]
height = 0.5
bias_factor = 8.0
pace = 100
[train]
lag = 1
n_initial_states = 9
refinements = 2
encoder_layers = 1
learning_rate = 3e-3
max_epochs = 10
prior = "grid"              # three temperatures; an unpolished flow fails the generation check
"""


def test_replicas_along_the_cv_carry_the_walkers_bias_and_reweight_to_exact_populations(tmp_path):
    workflow = tmp_path / "replicas.toml"
    workflow.write_text(REPLICA_WORKFLOW)
    result = subprocess.run([*LATF, "loop", str(workflow), "--out", str(tmp_path / "run")], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = read_record(tmp_path / "run" / "round_001")
    replicas = [Path(run) for run in record["replicas"]]
    assert len(replicas) == 3 and set(record["effective_sample_size"]) == {*record["walkers"], *record["replicas"]}
    shared = np.load(tmp_path / "run" / "round_001" / "shared" / "walker_0.npz")
    for run in replicas:
        settings = json.loads((run / "manifest.json").read_text())["settings"]["bias"]
        assert settings["kind"] == "metad" and settings["frozen"]
        bias = np.load(run / "timeseries.npz")["colvar"][:, -2]
        assert np.ptp(bias) > 0.5 * shared["bias"].max()  # the walker's hills, on every replica
    # The loop's estimate: one MBAR over round 0 (unbiased, two temperatures) and the replicas
    # (the walker's bias evaluated at every frame from round_001/'s saved grid); the walker stays out.
    # The round saved it; computed again from the runs, it is the same.
    from latf_openmm.loop import equilibrium_estimate

    zero = read_record(tmp_path / "run" / "round_000")["runs"]
    runs = [*zero, *record["walkers"], *record["replicas"]]
    estimate = equilibrium_estimate(runs, [tmp_path / "run" / "round_001"])
    saved = load_estimate(tmp_path / "run" / "round_001" / "estimate.npz")
    members = [runs[k] for k in (0, 1, 3, 4, 5)]
    assert list(estimate.runs) == members == list(saved.runs)
    for kt in (0.75, 0.95):
        for run, w in estimate.weights(kt).items():
            np.testing.assert_allclose(w, saved.weights(kt)[run], rtol=1e-9)
        wells = np.concatenate([threehole_well(np.load(Path(run) / "timeseries.npz")["features"]) for run in members])
        w = estimate.frame_weights(kt)
        populations = np.bincount(wells, weights=w, minlength=3) / w.sum()
        np.testing.assert_allclose(populations, threehole_populations(kt), atol=0.03)
    # Each round's CV of each run is kept from one round to the next while both files are
    # unchanged, read-only; a model file written again (same bytes, a new file) is read again.
    model_file = tmp_path / "run" / "round_001" / "model.pt"
    first = latent_of_run(model_file, members[0])
    assert latent_of_run(model_file, members[0]) is first and not first.flags.writeable
    copy = model_file.with_suffix(".new")
    copy.write_bytes(model_file.read_bytes())
    os.replace(copy, model_file)
    again = latent_of_run(model_file, members[0])
    assert again is not first
    np.testing.assert_array_equal(again, first)


WORKFLOWS = Path(__file__).parents[1] / "workflows"
LOOP_WORKFLOWS = [
    "ala2.toml", "ala2_tempering.toml", "chignolin.toml", "lj7.toml", "threehole.toml", "threehole_plumed.toml",
]  # fmt: skip


@pytest.mark.parametrize("workflow", LOOP_WORKFLOWS)
def test_shipped_workflows_are_valid(workflow):
    from latf_openmm.systems import available_systems

    if "plumed" in workflow:
        pytest.importorskip("openmmplumed", reason="no openmm-plumed: run scripts/install_plumed.sh (CI does)")
    assert {p.name for p in WORKFLOWS.glob("*.toml")} == {*LOOP_WORKFLOWS, "threehole_md.toml"}  # a simulate config
    config = LoopConfig.from_toml(WORKFLOWS / workflow)
    assert config.system in available_systems()
    assert not config.replicas_along_cv or len(config.replica_temperatures or config.md_temperatures) >= 2


def test_bad_workflow(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('system = "threehole"\nwalkerz = 3\n')
    result = subprocess.run([*LATF, "loop", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown key(s) ['walkerz']" in result.stderr
    bad.write_text('system = "threehole"\n[bias]\nmethod = "abf"\n')
    with pytest.raises(LatfError, match="bias method"):
        LoopConfig.from_toml(bad)
    for table, message in (
        ("barier = 6.0", "unknown key(s) ['barier']; allowed: "),
        ('pace = "often"', "pace must be int"),
    ):
        bad.write_text(f'system = "threehole"\nproduction_steps = 10\n[bias]\n{table}\n')
        result = subprocess.run([*LATF, "loop", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr  # one line, before any MD
        assert f"{bad} [bias]" in result.stderr and message in result.stderr and not (tmp_path / "o").exists()
    for text, message in (  # the whole workflow is checked before round 0 (these failed after it)
        ("walker_steps = 300_001", "walker_steps = 300001: steps must be a multiple of the frame interval (3 steps"),
        ("md_steps = 1_500_001", "md_steps = 1500001"),
        ('md_steps = "lots"', "md_steps must be int, got 'lots'"),
        ("[md]\nframe_interval = 0", "frame_interval must be ≥ 1"),
    ):
        bad.write_text(f'system = "threehole"\nproduction_steps = 300\n{text}\n')
        result = subprocess.run([*LATF, "loop", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr and not (tmp_path / "o").exists(), result.stderr
    (tmp_path / "a_file").write_text("a file")
    result = subprocess.run([*LATF, "loop", str(WORKFLOWS / "threehole.toml"), "--out", str(tmp_path / "a_file")],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and "is a file; give a folder" in result.stderr, result.stderr
    bad.write_text('system = "threehole"\nmd_temperatures = [0.75]\nreplicas_along_cv = true\n')
    result = subprocess.run([*LATF, "loop", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2 and "at least two replica_temperatures" in result.stderr
    bad.write_text('system = "threehole"\nproduction_steps = 300\nvalidation_steps = 300\n'
                   'validation_replica_exchange = true\nmd_temperatures = [0.75]\n')  # fmt: skip
    result = subprocess.run([*LATF, "loop", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2 and "validation_replica_exchange needs at least two targets" in result.stderr
    bad.write_text('system = "threehole"\nproduction_steps = 300\nvalidation_replica_exchange = true\n')
    with pytest.raises(LatfError, match="validation_replica_exchange needs validation_steps"):
        LoopConfig.from_toml(bad)
    for table, message in (  # these failed inside a walker, after round 0 and training
        ("components = [0, 1, 2]", "components must be 1 or 2 distinct CV components"),
        ("components = [1, 1]", "components must be 1 or 2 distinct CV components"),
        ("components = [0]\nlower = [0.0, 0.0]\nupper = [1.0, 1.0]", "one value per biased component (1)"),
        ("sigma = [0.1, 0.1, 0.1]", "one value per biased component"),
        ("lower = [1.0]\nupper = [-1.0]", "finite lower < upper"),
        ("components = [2]", "CV components out of 0 … 1, got [2] (the CV is 2-dimensional: [train] latent_dim)"),
        ("lower = [0.0, 0.0]\nupper = [1.0, 1.0]\n[train]\nlatent_dim = 1", "per biased component (1), got lower"),
    ):
        bad.write_text(f'system = "threehole"\nproduction_steps = 300\n[bias]\n{table}\n')
        with pytest.raises(LatfError, match=re.escape(message)):
            LoopConfig.from_toml(bad)
    bad.write_text('system = "threehole"\n[train]\nlagg = 3\n')
    with pytest.raises(LatfError, match="lagg"):
        LoopConfig.from_toml(bad)
    bad.write_text('system = "threehole"\n')
    with pytest.raises(LatfError, match="needs runs under a fixed bias; set production_steps"):
        LoopConfig.from_toml(bad)


def test_a_round_made_by_an_earlier_version_is_refused_not_resumed(tmp_path):
    from latf_openmm.loop.rounds import completed_round

    folder = tmp_path / "round_001"
    folder.mkdir()
    (folder / "round.json").write_text(json.dumps({"round": 1}))
    with pytest.raises(LatfError, match=r"earlier version of the loop.*new output folder"):
        completed_round(folder)
    for name in ("estimate.npz", "frozen_bias.npz"):
        (folder / name).write_bytes(b"")
    assert completed_round(folder) == {"round": 1}
    bad = tmp_path / "old.toml"
    bad.write_text('system = "threehole"\nframe_interval = 30\n')
    with pytest.raises(LatfError, match=r"frame_interval: MD options go in the \[md\] table"):
        LoopConfig.from_toml(bad)


TASK_FAILURE = """
from latf_openmm.errors import LatfError
from latf_openmm.loop import LoopConfig
from latf_openmm.loop.rounds import dask_client


def fail():
    raise LatfError("simulation blew up by step 300")


if __name__ == "__main__":
    client = dask_client(LoopConfig(system="threehole", production_steps=300))
    try:
        client.submit(fail, pure=False).result()
    finally:
        client.close()
"""


def test_a_task_that_fails_on_a_worker_reaches_the_caller_as_its_error_without_a_log_dump(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(TASK_FAILURE)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 1 and "LatfError: simulation blew up by step 300" in result.stderr
    assert "Compute Failed" not in result.stderr and "distributed.worker" not in result.stderr, result.stderr


def test_a_resume_may_move_the_recipe_and_data_but_not_change_them(tmp_path):
    recipe = Path(__file__).parents[1] / "systems" / "threehole.toml"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mine.toml").write_text(recipe.read_text())
        (tmp_path / folder / "w.toml").write_text(
            'system = "mine.toml"\nproduction_steps = 300\ninitial_data = "runs"\n'
        )
    first, moved = (LoopConfig.from_toml(tmp_path / folder / "w.toml") for folder in ("a", "b"))
    assert first.system == str(tmp_path / "a" / "mine.toml") and first.initial_data == [str(tmp_path / "a" / "runs")]
    moved.check_resume(first.stored(), tmp_path)  # the same recipe and data, elsewhere
    (tmp_path / "b" / "mine.toml").write_text(recipe.read_text().replace("frame_interval = 3", "frame_interval = 6"))
    with pytest.raises(LatfError, match="system_recipe_sha256"):
        moved.check_resume(first.stored(), tmp_path)
    trained = LoopConfig.from_toml(tmp_path / "a" / "w.toml")
    trained.train = {"lag": 3}
    with pytest.raises(LatfError, match=r"\(train.lag: None → 3\)"):
        trained.check_resume(first.stored(), tmp_path)
    with pytest.raises(LatfError, match="earlier version of the loop"):
        first.check_resume({k: v for k, v in first.stored().items() if k != "format"}, tmp_path)


def test_a_round_run_worth_few_frames_after_unbiasing_is_reported_in_one_line():
    record = {
        "round": 2,
        "walkers": ["w0"],
        "production": ["p0"],
        "replicas": ["r300", "r330"],
        "effective_sample_size": {"w0": 3.0, "p0": 400.0, "r300": 3.2, "r330": 375.0},
    }
    (warning,) = few_frames_warnings(record)  # the walker's own c(t) weights are not the estimate's
    assert warning.startswith("round 2: r300 is worth 3 frames after unbiasing") and "\n" not in warning
    assert few_frames_warnings({**record, "effective_sample_size": {"r300": 50.0, "r330": 60.0}}) == []
