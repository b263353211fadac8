"""Biases along a learned CV as OpenMM forces: both backends, restraints, metadynamics, OPES, COLVAR, errors."""

import copy

import numpy as np
import openmm
import openmm.unit as u
import pytest
from conftest import Killed, dying_at, linear_cv

from latf_openmm import LatfError, build_featurizer
from latf_openmm.bias import OPES, HarmonicBias, LearnedCV, Metadynamics, set_window
from latf_openmm.models import LatentModel
from latf_openmm.simulation import Run, md, read_colvar, simulate
from latf_openmm.specs import BiasSpec, MDOptions, read_spec
from latf_openmm.systems import load_system
from latf_openmm.systems.builders import threehole_populations, threehole_well

KJ = u.kilojoule_per_mole
KT = 0.75


def _context(force, platform):
    system = openmm.System()
    for _ in range(22):
        system.addParticle(12.0)
    system.addForce(force)
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))


@pytest.fixture(scope="module", params=["torch", "native"])
def biased_context(request, cv_setup, small_cv_setup):
    """A context whose only force is a window on the 2-D CV (float64 encoders, for finite differences)."""
    featurizer, model, frames = cv_setup if request.param == "torch" else small_cv_setup
    model_64 = LatentModel(copy.deepcopy(model.network).double(), model.info)
    cv = LearnedCV(model_64, featurizer, backend=request.param)
    assert cv.backend == request.param
    bias = HarmonicBias(cv, centre=[0.1, -0.2], force_constant=80.0, upper=[None, 0.0], wall_constant=500.0)
    context = _context(bias.force, "CPU" if request.param == "torch" else "Reference")
    return context, cv.values(frames), frames


def _energy(context, positions):
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)


def expected_energy(cv, centre, k, upper1, wall_k):
    over = max(0.0, cv[1] - upper1)
    return 0.5 * k * np.sum((cv - centre) ** 2) + 0.5 * wall_k * over**2


def test_energy_windows_and_walls(biased_context):
    context, cvs, frames = biased_context
    set_window(context, [0.1, -0.2], 80.0)
    for cv, frame in zip(cvs[:20], frames[:20], strict=True):
        assert _energy(context, frame) == pytest.approx(expected_energy(cv, [0.1, -0.2], 80.0, 0.0, 500.0), rel=1e-6)
    set_window(context, [-0.3, 0.4], 20.0)  # another window, same context
    for cv, frame in zip(cvs[:20], frames[:20], strict=True):
        assert _energy(context, frame) == pytest.approx(expected_energy(cv, [-0.3, 0.4], 20.0, 0.0, 500.0), rel=1e-6)
    assert any(cv[1] > 0 for cv in cvs[:20]) and any(cv[1] < 0 for cv in cvs[:20])  # the wall is exercised


def test_forces_are_minus_the_energy_gradient(biased_context):
    context, _, frames = biased_context
    set_window(context, [0.1, -0.2], 80.0)
    x0 = frames[3]
    context.setPositions(x0)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(KJ / u.nanometer)
    h = 1e-6
    for atom in (4, 6, 8, 14, 16):
        for dim in range(3):
            plus, minus = x0.copy(), x0.copy()
            plus[atom, dim] += h
            minus[atom, dim] -= h
            numeric = -(_energy(context, plus) - _energy(context, minus)) / (2 * h)
            assert forces[atom, dim] == pytest.approx(numeric, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("platform", ["CPU", "Reference"])
def test_native_cv_equals_the_torchscript_cv(small_cv_setup, platform):
    featurizer, model, frames = small_cv_setup
    cv = LearnedCV(model, featurizer, backend="native")
    context = _context(cv.energy_force("s0"), platform)
    second = _context(cv.energy_force("s1"), platform)
    expected = cv.values(frames)
    for frame, value in zip(frames, expected, strict=True):
        np.testing.assert_allclose([_energy(context, frame), _energy(second, frame)], value, atol=1e-5)


def test_bad_bias_input(cv_setup, ala2_vacuum):
    featurizer, model, _ = cv_setup
    cv = LearnedCV(model, featurizer, backend="torch")
    with pytest.raises(LatfError, match="one value per CV component"):
        HarmonicBias(cv, centre=[0.0], force_constant=1.0)
    with pytest.raises(LatfError, match="finite"):
        HarmonicBias(cv, centre=[0.0, np.nan], force_constant=1.0)
    with pytest.raises(LatfError, match="≥ 0"):
        HarmonicBias(cv, centre=[0.0, 0.0], force_constant=-1.0)
    # a restraint's walls: one per component of the whole CV (3 here), as its centre; the 1–2 rule is the adaptive ones'
    BiasSpec(method="restraint", centre=(0.0, 0.0, 0.0), lower=(-1.0,) * 3, upper=(1.0,) * 3)
    with pytest.raises(LatfError, match=r"walls need one value per centre value \(2\), got lower \[-1.0\]"):
        BiasSpec(method="restraint", centre=(0.0, 0.0), lower=(-1.0,), upper=(1.0, 1.0))
    with pytest.raises(LatfError, match="1 or 2"):
        BiasSpec(method="metad", lower=(-1.0,) * 3, upper=(1.0,) * 3)
    with pytest.raises(LatfError, match="one value per biased component"):
        BiasSpec(sigma=())  # was a ValueError from min() of nothing
    with pytest.raises(LatfError, match=r"one value per biased component \(1\), got bins \[50, 50\]"):
        BiasSpec(bins=(50, 50)).resolved(1, [[0.0], [1.0]], 300.0)  # was a NumPy ValueError in the grid
    with pytest.raises(LatfError, match=r"got lower \[-0.1, nan\].*walls from the model's training range"):
        BiasSpec().resolved(2, [[0.0, np.nan], [1.0, 1.0]], 300.0)
    with pytest.raises(LatfError, match="a restraint takes no sigma or bins"):
        BiasSpec(method="restraint", centre=(0.0,), sigma=(0.1,))
    with pytest.raises(LatfError, match="too large for OpenMM expressions"):
        LearnedCV(model, featurizer, backend="native")
    with pytest.raises(LatfError, match="unknown CV backend"):
        LearnedCV(model, featurizer, backend="jax")
    other = build_featurizer([{"kind": "dihedrals", "angles": ["phi", "psi"]}], ala2_vacuum.topology)
    with pytest.raises(LatfError, match="featurizer makes 4 features but the model expects 19"):
        LearnedCV(model, other)
    with pytest.raises(LatfError, match="built for 22 atoms but the system has 1"):
        HarmonicBias(cv, centre=[0.0, 0.0], force_constant=1.0).add_to(load_system("threehole").system)
    grid = dict(components=[0], lower=[-1.0], upper=[1.0], sigma=[0.1], pace=10)
    with pytest.raises(LatfError, match="1 or 2 distinct CV components"):
        Metadynamics(cv, 300.0, height=1.0, bias_factor=5, **{**grid, "components": [0, 2]})
    with pytest.raises(LatfError, match="lower < upper"):
        Metadynamics(cv, 300.0, height=1.0, bias_factor=5, **{**grid, "upper": [-2.0]})
    with pytest.raises(LatfError, match="bias factor > 1"):
        Metadynamics(cv, 300.0, height=1.0, bias_factor=1.0, **grid)


# -- adaptive biases on the three-hole potential, along s0 = x (an identity "encoder") ----------


@pytest.fixture(scope="module")
def threehole_cv():
    return linear_cv("threehole", np.eye(2))


def _adaptive(kind, cv, temperature, **options):
    grid = dict(components=[0], lower=[-2.0], upper=[2.0], sigma=[0.15], pace=100, **options)
    if kind == "metad":
        return Metadynamics(cv, temperature, height=0.3, bias_factor=5.0, **grid)
    return OPES(cv, temperature, barrier=5.0, **grid)


@pytest.mark.parametrize("kind", ["metad", "opes"])
def test_reweighted_adaptive_bias_recovers_exact_populations(kind, threehole_cv, tmp_path):
    molsys, cv = threehole_cv
    temperature = molsys.to_kelvin(KT)
    bias = _adaptive(kind, cv, temperature)
    run = simulate(
        molsys, temperature, 1_500_000, tmp_path, seed=3, md=MDOptions(frame_interval=100), bias=bias, progress=False
    )
    series = run.load_timeseries()
    colvar = read_colvar(tmp_path / "colvar.dat")
    assert list(colvar) == ["time", "s0", "s1", f"{kind}.bias", f"{kind}.rct"]
    np.testing.assert_allclose(colvar["time"], series["time"])
    np.testing.assert_allclose(colvar["s0"], series["features"][:, 0], atol=1e-5)  # CV = x, frame by frame
    keep = slice(len(series["time"]) // 5, None)  # drop the first 20 % (bias still growing)
    weights = np.exp((colvar[f"{kind}.bias"] - colvar[f"{kind}.rct"])[keep] / KT)
    wells = threehole_well(series["features"][keep])
    unweighted = np.bincount(wells, minlength=3) / len(wells)
    reweighted = np.bincount(wells, weights=weights, minlength=3) / weights.sum()
    assert abs(unweighted[1] - threehole_populations(KT)[1]) > 0.04  # the bias changes the sampling
    np.testing.assert_allclose(reweighted, threehole_populations(KT), atol=0.04)
    # the Run reads the same columns by name; a biased run whose COLVAR lost its bias column is refused
    np.testing.assert_allclose(run.bias_energy(), colvar[f"{kind}.bias"], rtol=1e-9, atol=1e-9)  # COLVAR: 10 digits
    np.testing.assert_allclose(run.reweighting_constant(), colvar[f"{kind}.rct"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(run.cv(), np.c_[colvar["s0"], colvar["s1"]], rtol=1e-9, atol=1e-9)
    renamed = {**series, "colvar_fields": np.array(["s0", "s1", "other", f"{kind}.rct"])}
    np.savez(tmp_path / run.manifest["files"]["timeseries"], **renamed)
    with pytest.raises(LatfError, match="no bias column"):
        Run.open(tmp_path).bias_energy()


@pytest.mark.parametrize("kind", ["metad", "opes"])
def test_killed_biased_run_resumes_to_the_uninterrupted_bias(kind, threehole_cv, tmp_path):
    molsys, cv = threehole_cv
    temperature = molsys.to_kelvin(KT)
    options = dict(seed=5, md=MDOptions(frame_interval=100, platform="Reference"), progress=False, checkpoint_seconds=0)
    straight = simulate(
        molsys, temperature, 20_000, tmp_path / "straight", bias=_adaptive(kind, cv, temperature), **options
    )

    dying = dying_at(_adaptive(kind, cv, temperature), 12_300)
    with pytest.raises(Killed):
        simulate(molsys, temperature, 20_000, tmp_path / "resumed", bias=dying, **options)
    assert not (tmp_path / "resumed" / "colvar.dat").exists()
    resumed = simulate(
        molsys, temperature, 20_000, tmp_path / "resumed", bias=_adaptive(kind, cv, temperature), **options
    )
    a, b = straight.load_timeseries(), resumed.load_timeseries()
    np.testing.assert_array_equal(a["colvar"], b["colvar"])  # same CV, bias and c(t), frame by frame
    np.testing.assert_array_equal(a["features"], b["features"])
    for key, value in np.load(straight.directory / "bias_state.npz").items():
        np.testing.assert_array_equal(np.load(resumed.directory / "bias_state.npz")[key], value)


@pytest.mark.parametrize("kind", ["metad", "opes"])
def test_walkers_share_one_bias_and_a_run_continues_a_saved_bias(kind, threehole_cv, tmp_path):
    molsys, cv = threehole_cv
    temperature = molsys.to_kelvin(KT)
    options = dict(md=MDOptions(frame_interval=100), progress=False)
    walkers = [_adaptive(kind, cv, temperature, walkers_dir=tmp_path / "shared", walker=i) for i in range(2)]
    simulate(molsys, temperature, 20_000, tmp_path / "w0", seed=1, bias=walkers[0], **options)
    simulate(molsys, temperature, 20_000, tmp_path / "w1", seed=2, bias=walkers[1], **options)
    own = [dict(np.load(tmp_path / f"w{i}" / "bias_state.npz")) for i in range(2)]
    deposits = {"metad": "hills", "opes": "centres"}[kind]
    assert len(own[0][deposits]) == len(own[1][deposits]) == 200
    alone = _adaptive(kind, cv, temperature)
    alone.restore(own[1])
    assert np.abs(walkers[1].bias_grid() - alone.bias_grid()).max() > 0.1  # walker 1 sees walker 0's deposits
    if kind == "metad":  # hills add up
        np.testing.assert_allclose(walkers[1].bias_grid(), own[0]["bias"] + own[1]["bias"])

    if kind == "opes":  # the running normalization is the exact one over both walkers' kernels
        centres = np.concatenate([o["centres"] for o in own])[:, 0]
        weights = np.concatenate([o["weights"] for o in own])
        np.testing.assert_allclose(
            walkers[1].bias_grid(), _opes_expected(walkers[1], (centres, weights)), rtol=1e-10, atol=1e-10
        )

    later = _adaptive(kind, cv, temperature)
    later.load(tmp_path / "w0" / "bias_state.npz")
    for key, value in own[0].items():  # the depositions exactly; OPES's pair sum, summed anew, to rounding
        np.testing.assert_allclose(later.state()[key], value, rtol=0 if key != "pair_sum" else 1e-12)
    with pytest.raises(LatfError, match="another grid"):
        _adaptive(kind, cv, temperature, bins=[50]).load(tmp_path / "w0" / "bias_state.npz")
    with pytest.raises(LatfError, match="cannot read the saved bias"):
        later.load(tmp_path / "missing.npz")
    together = _adaptive(kind, cv, temperature)  # all walkers' deposits merged, e.g. for replicas
    together.load(tmp_path / "shared")
    np.testing.assert_allclose(together.bias_grid(), walkers[1].bias_grid(), rtol=1e-12, atol=1e-12)
    assert len(together.state()[deposits]) == 400
    with pytest.raises(LatfError, match="no saved walker biases"):
        together.load(tmp_path / "w0")


def test_walkers_share_at_their_interval(threehole_cv, tmp_path):
    molsys, cv = threehole_cv
    temperature = molsys.to_kelvin(KT)
    walker = _adaptive("opes", cv, temperature, walkers_dir=tmp_path / "shared", share_interval=5_000)
    shared_at, share = [], walker._share
    walker._share = lambda: (shared_at.append(len(walker._own["weights"])), share())
    simulate(molsys, temperature, 20_000, tmp_path / "w", seed=1, bias=walker, md=MDOptions(frame_interval=100),
             progress=False)  # fmt: skip
    assert set(shared_at) == {0, 50, 100, 150, 200}  # at the start, every 50 depositions and at the end
    assert len(np.load(tmp_path / "shared" / "walker_0.npz")["weights"]) == 200
    with pytest.raises(LatfError, match="multiple of pace"):
        _adaptive("opes", cv, temperature, share_interval=150)
    with pytest.raises(LatfError, match="share_interval must be a multiple of pace"):
        read_spec(BiasSpec, {"pace": 100, "share_interval": 150}, "workflow [bias]")


def _opes_expected(bias, kernels):
    """OPES's bias on its grid from all kernels (centres, weights), by brute force."""
    centres, weights = kernels
    squared = ((centres[:, None] - centres[None]) / 0.15) ** 2  # PLUMED's kernels: cut where they reach ε
    pairs = np.where(squared < -2 * np.log(bias.epsilon), np.exp(-0.5 * squared) - bias.epsilon, 0) @ weights
    density = sum(w * bias.kernel([c]) for c, w in zip(centres, weights, strict=True)) / weights.sum()
    return (1 - 1 / bias.bias_factor) * bias.kt * np.log(density / (pairs.mean() / weights.sum()) + bias.epsilon)


def test_opes_normalization_follows_a_walker_that_restarted(threehole_cv, tmp_path):
    molsys, cv = threehole_cv
    temperature = molsys.to_kelvin(KT)
    walkers = [_adaptive("opes", cv, temperature, walkers_dir=tmp_path, walker=i) for i in range(2)]
    rng = np.random.default_rng(0)
    mine, theirs, restarted = (rng.uniform(-1.5, 1.5, n) for n in (30, 1, 25))

    def deposits(bias, centres):  # kernels as a run makes them; the first weighs exp(0) = 1
        for centre in centres:
            bias._deposit(np.array([centre]))
        return bias

    deposits(walkers[0], mine)._share()
    deposits(walkers[1], theirs)._share()
    walkers[0]._share()  # reads walker 1's first kernel (weight exp(0) = 1)
    walkers[1] = deposits(_adaptive("opes", cv, temperature, walkers_dir=tmp_path, walker=1), restarted)
    walkers[1]._share()  # walker 1 began again: same first weight, other centres
    walkers[0]._share()
    kernels = [np.concatenate([w._own[key] for w in walkers]) for key in ("centres", "weights")]
    kernels[0] = kernels[0][:, 0]
    np.testing.assert_allclose(walkers[0].bias_grid(), _opes_expected(walkers[0], kernels), rtol=1e-10, atol=1e-10)


def test_a_run_that_blows_up_between_frames_says_so(threehole_cv, tmp_path, monkeypatch):
    molsys, cv = threehole_cv
    grid = dict(components=[0], lower=[-2.0], upper=[2.0], sigma=[0.15])
    bias = Metadynamics(cv, molsys.to_kelvin(KT), height=0.3, bias_factor=5.0, pace=5, **grid)
    with pytest.raises(LatfError, match=r"blew up by step [0-9]*[05] \(t = .*reduce the timestep \(now 0.2 ps\)"):
        simulate(
            molsys,
            molsys.to_kelvin(KT),
            20_000,
            tmp_path / "a",
            seed=1,
            bias=bias,
            md=MDOptions(frame_interval=1000, timestep=0.2),
            progress=False,
        )

    def refuse_nan(*args):  # what the CPU platform raises when a step meets NaN coordinates
        raise openmm.OpenMMException("Particle coordinate is NaN.  For more information, see ...")

    monkeypatch.setattr(md, "_advance", refuse_nan)
    with pytest.raises(LatfError, match=r"blew up by step 30 \(t = 0.3 ps\).*reduce the timestep \(now 0.01 ps\)"):
        simulate(
            molsys, molsys.to_kelvin(KT), 300, tmp_path / "b", seed=1, md=MDOptions(frame_interval=30), progress=False
        )


def test_a_nan_cv_stops_the_run(threehole_cv, tmp_path, monkeypatch):
    molsys, cv = threehole_cv
    bias = HarmonicBias(cv, centre=[0.0, 0.0], force_constant=1.0)
    monkeypatch.setattr(cv, "values", lambda positions, box=None: np.array([np.nan, 0.0]))
    with pytest.raises(LatfError, match="CV is not finite at step 30"):
        simulate(
            molsys,
            molsys.to_kelvin(KT),
            300,
            tmp_path,
            seed=1,
            md=MDOptions(frame_interval=30),
            bias=bias,
            progress=False,
        )


def test_a_cv_leaving_the_grid_stops_the_run(threehole_cv, tmp_path):
    molsys, cv = threehole_cv
    temperature = molsys.to_kelvin(KT)
    narrow = Metadynamics(
        cv, temperature, height=0.3, bias_factor=5.0, components=[0], lower=[-0.2], upper=[0.2], sigma=[0.05],
        pace=10, wall_constant=0.0,
    )  # fmt: skip
    with pytest.raises(LatfError, match="left the bias grid"):
        simulate(
            molsys, temperature, 3000, tmp_path, seed=1, md=MDOptions(frame_interval=10), bias=narrow, progress=False
        )
