"""The ``latf`` command line.

Every subcommand takes ``--config FILE.toml``: its keys are the subcommand's long
options with ``_`` for ``-`` (``frame_interval = 3``); options given on the command
line override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tomllib
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latf_openmm.errors import LatfError
from latf_openmm.files import check_output
from latf_openmm.specs import BiasSpec, MDOptions, read_spec

TRAIN_THREADS = 1  # latf train's torch threads; README, `latf train`, "Threads": 1 against 2 on 2 cores, measured

if TYPE_CHECKING:
    from latf_openmm.bias import CVBias
    from latf_openmm.features import Featurizer
    from latf_openmm.models import LatentModel
    from latf_openmm.simulation import Run
    from latf_openmm.specs import Spec
    from latf_openmm.systems import MolecularSystem


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare string
    return key.strip(), parsed


def _add_spec_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, spec_type: type) -> None:
    """Add one option per field of a spec dataclass (its help text; lists for tuple fields).

    An option not given stays None, so the spec's own default applies (:func:`_spec_from_args`).
    """
    hints = typing.get_type_hints(spec_type)
    for f in dataclasses.fields(spec_type):
        kind = next(k for k in (typing.get_args(hints[f.name]) or (hints[f.name],)) if k is not type(None))
        many = typing.get_origin(kind) is tuple
        element = typing.get_args(kind)[0] if many else kind
        default = "" if f.default is None else f" (default {f.default})"
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=element,
            nargs="+" if many else None,
            help=f"{f.metadata['help']}{default}".replace("%", "%%"),
        )


def _spec_from_args(spec_type: type[Spec], args: argparse.Namespace, source: str) -> Spec:
    """Return the spec of the options given (:func:`_add_spec_options`), validated."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(spec_type) if getattr(args, f.name) is not None}
    return read_spec(spec_type, given, source)


def _add_system_options(p: argparse.ArgumentParser, system_help: str) -> None:
    p.add_argument("--system", help=system_help)
    p.add_argument(
        "--system-arg",
        dest="system_args",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="builder option, e.g. start=extended for chignolin (repeatable)",
    )


def _load_system(args: argparse.Namespace) -> MolecularSystem:
    from latf_openmm.systems import load_system

    return load_system(args.system, **dict(args.system_args))


def _load_model_on_system(args: argparse.Namespace) -> tuple[LatentModel, MolecularSystem, Featurizer]:
    """Load the trained model, the system and its featurizer; raise if the features differ from the model's."""
    from latf_openmm.features import build_featurizer
    from latf_openmm.models import load_model

    model = load_model(args.model)
    molsys = _load_system(args)
    featurizer = build_featurizer(molsys.features, molsys.topology)
    if featurizer.names != model.feature_names:
        raise LatfError(f"{args.system}'s features differ from those {args.model} was trained on")
    return model, molsys, featurizer


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="unbiased Langevin MD at one or more temperatures (independent runs or replica exchange)",
        description="Unbiased Langevin MD (LangevinMiddleIntegrator) of a system at one or more "
        "temperatures, each an independent run with its own seed. A killed run resumes from its "
        "last checkpoint when the same command is run again.",
    )
    _add_system_options(p, "shipped system name (see 'latf systems') or a recipe .toml path")
    p.add_argument(
        "--temperatures",
        nargs="+",
        type=float,
        metavar="T",
        help="temperatures: K, or k_BT/ε for reduced-unit systems (default: the recipe's)",
    )
    p.add_argument("--steps", type=int, help="integration steps per temperature (a multiple of the frame interval)")
    p.add_argument("--out", help="output folder; each temperature gets a subfolder T<temperature>")
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        help="base random seed (≥ 1); run i gets its own seed derived from it (default 1)",
    )
    _add_replica_options(p)
    _add_md_options(p)
    p.set_defaults(handler=_simulate, required=("system", "steps", "out"), outputs={"out": "folder"},
                   positive=("steps", "seed", "exchange_interval"))  # fmt: skip


def _add_replica_options(p: argparse.ArgumentParser) -> None:
    """Options of temperature replica exchange, shared by ``simulate`` and ``bias``."""
    p.add_argument(
        "--replica-exchange",
        action="store_true",
        help="temperature replica exchange across --temperatures (openmmtools); writes the same "
        "per-temperature folders plus exchange.json (acceptance rates)",
    )
    p.add_argument(
        "--exchange-interval",
        type=int,
        default=1,
        help="frames between exchange attempts; exchange less often than a training lag (default 1)",
    )


def _replica_exchange(
    args: argparse.Namespace, molsys: MolecularSystem, temperatures: list[float], bias: CVBias | None = None
) -> int:
    """Run ``latf simulate/bias --replica-exchange`` and report it."""
    from latf_openmm.simulation import replica_exchange

    md = _md_options(args)["md"]
    frame_interval = md.frame_interval or molsys.frame_interval
    if args.steps % frame_interval:
        raise LatfError(f"steps ({args.steps}) must be a multiple of the frame interval ({frame_interval})")
    exchange = replica_exchange(
        molsys, temperatures, args.steps // frame_interval, args.out, md=md, seed=args.seed,
        exchange_interval=args.exchange_interval, bias=bias,
    )  # fmt: skip
    for result in exchange.runs:
        _report_run(result)
    print("neighbour acceptance: " + ", ".join(f"{a:.2f}" for a in exchange.neighbour_acceptance))
    return 0


def _add_md_options(p: argparse.ArgumentParser) -> None:
    """Add the options of the MD engine shared by ``simulate`` and ``bias``.

    They are :class:`MDOptions`, and the run's checkpoints and progress bar.
    """
    _add_spec_options(p.add_argument_group("MD options"), MDOptions)
    p.add_argument(
        "--checkpoint-seconds", type=float, default=60.0, help="wall-clock seconds between checkpoints (default 60)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def _md_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return ``simulate``'s keyword arguments from the command line: ``md``, checkpoints, progress bar."""
    md = _spec_from_args(MDOptions, args, f"latf {args.command}")
    return {"md": md, "checkpoint_seconds": args.checkpoint_seconds, "progress": args.progress}


def _simulate(args: argparse.Namespace) -> int:
    from latf_openmm.simulation import simulate_temperatures

    molsys = _load_system(args)
    temperatures = [molsys.to_kelvin(t) for t in args.temperatures] if args.temperatures else list(molsys.temperatures)
    if args.replica_exchange:
        return _replica_exchange(args, molsys, temperatures)
    results = simulate_temperatures(
        molsys,
        temperatures,
        args.steps,
        args.out,
        seed=args.seed,
        **_md_options(args),
    )
    for result in results:
        _report_run(result)
    return 0


def _report_run(result: Run) -> None:
    settings, rate = result.settings, result.ns_per_day
    speed = f", {rate:.4g} ns/day" if rate and result.ran_now else " (already complete)"
    print(
        f"{result.directory}: {result.n_frames} frames at "
        f"{settings['temperature']:g} {settings['temperature_unit']}{speed}"
    )


def _add_bias(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bias",
        help="biased MD along a trained model's CV: restraint/umbrella, well-tempered metadynamics, OPES",
        description="Run MD biased along the learned CV of a trained model: a harmonic restraint (umbrella "
        "window), well-tempered metadynamics or OPES on 1-2 CV components. Writes what 'latf simulate' writes, "
        "plus colvar.dat (PLUMED COLVAR: time, CV, bias, c(t)) and bias_state.npz. A killed run resumes when "
        "the same command is run again; walkers sharing --walkers-dir build one bias together.",
    )
    p.add_argument("model", nargs="?", help="model file written by 'latf train'")
    _add_system_options(p, "system name or recipe whose featurizer the model was trained on")
    p.add_argument(
        "--temperature", type=float, help="K, or k_BT/ε for reduced-unit systems (default: the recipe's first)"
    )
    p.add_argument("--steps", type=int, help="integration steps (a multiple of the frame interval)")
    p.add_argument("--out", help="output run folder")
    p.add_argument("--seed", type=int, default=1, help="random seed (≥ 1, default 1)")
    p.add_argument(
        "--backend", choices=["auto", "native", "torch"], default="auto", help="CV inside OpenMM (default auto)"
    )
    _add_spec_options(p, BiasSpec)
    p.add_argument("--walkers-dir", help="metad/opes: folder through which walkers share the bias")
    p.add_argument("--walker", type=int, default=0, help="this walker's index (default 0)")
    p.add_argument("--walkers", type=int, help="with --walkers-dir: how many share it (--engine plumed needs it)")
    p.add_argument("--restart-bias", help="metad/opes: continue the bias saved by an earlier run (bias_state.npz)")
    p.add_argument(
        "--temperatures",
        nargs="+",
        type=float,
        metavar="T",
        help="with --replica-exchange: the ladder (the bias is the same on every replica and held fixed: "
        "a restraint, or metad/opes loaded with --restart-bias)",
    )
    _add_replica_options(p)
    _add_md_options(p)
    p.set_defaults(handler=_bias, required=("model", "system", "steps", "out"), outputs={"out": "folder"},
                   positive=("steps", "seed", "exchange_interval", "walkers"))  # fmt: skip


def _bias(args: argparse.Namespace) -> int:
    from latf_openmm.bias import LearnedCV, build_bias
    from latf_openmm.simulation import simulate

    spec = _spec_from_args(BiasSpec, args, "latf bias")
    model, molsys, featurizer = _load_model_on_system(args)
    temperature = molsys.to_kelvin(args.temperature) if args.temperature else molsys.temperatures[0]
    cv = LearnedCV(model, featurizer, backend=args.backend)
    periodic = molsys.system.usesPeriodicBoundaryConditions()
    if args.walkers is not None and not (args.walkers_dir and 0 <= args.walker < args.walkers):
        raise LatfError(f"--walkers {args.walkers} share one bias through --walkers-dir, with --walker in [0, N)")
    if spec.engine == "plumed" and args.walkers_dir and args.walkers is None:
        raise LatfError("--engine plumed needs the number of walkers sharing --walkers-dir: give --walkers")
    bias = build_bias(spec, cv, temperature, periodic, walkers_dir=args.walkers_dir, walker=args.walker,
                      walkers=args.walkers or 1)  # fmt: skip
    if args.restart_bias:
        if spec.method == "restraint":
            raise LatfError("--restart-bias continues a metad/opes bias; a restraint has nothing to continue")
        bias.load(args.restart_bias)
    if args.replica_exchange:
        if spec.method != "restraint" and not args.restart_bias:
            raise LatfError("--replica-exchange holds the bias fixed: give --restart-bias (a saved metad/opes bias)")
        if not args.temperatures:
            raise LatfError("--replica-exchange needs --temperatures (the ladder)")
        print(f"fixed {spec.method} bias along the {cv.dim}-D CV on every replica ({cv.backend} backend)", flush=True)
        return _replica_exchange(args, molsys, [molsys.to_kelvin(t) for t in args.temperatures], bias)
    engine = "in PLUMED" if spec.engine == "plumed" else f"({cv.backend} backend)"
    print(f"{spec.method} along the {cv.dim}-D CV {engine}", flush=True)
    result = simulate(molsys, temperature, args.steps, args.out, seed=args.seed, bias=bias, **_md_options(args))
    _report_run(result)
    return 0


def _add_fes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fes",
        help="plot free-energy surfaces of finished runs",
        description="Plot F = -k_B T ln p over two saved features for each finished run (one panel per "
        "run) to a PNG, and write the surfaces to an .npz beside it.",
    )
    p.add_argument("runs", nargs="*", help="run folders, or folders of runs (as written by 'latf simulate')")
    p.add_argument("--out", help="output PNG (default: <first run folder>/fes.png)")
    p.add_argument(
        "--features",
        nargs=2,
        default=["0", "1"],
        metavar=("X", "Y"),
        help="two features, by name or column index (default: 0 1)",
    )
    p.add_argument("--bins", type=int, default=60, help="histogram bins per dimension (default 60)")
    p.set_defaults(handler=_fes, required=("runs",), outputs={"out": "figure"}, positive=("bins",))


def _fes(args: argparse.Namespace) -> int:
    from latf_openmm.reports import plot_run_free_energies

    out = Path(args.out) if args.out else Path(args.runs[0]) / "fes.png"
    if args.bins < 2:
        raise LatfError(f"--bins must be at least 2, got {args.bins}")
    plot_run_free_energies(args.runs, out, features=args.features, bins=args.bins)
    print(f"wrote {out} and {out.with_suffix('.npz')}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from latf_openmm.models import TrainingConfig

    p = sub.add_parser(
        "train",
        help="train a SPIB, LaTF or D-SPIB model on trajectories of features",
        description="Train SPIB (encoder → latent CV, decoder → future state, iterative label refinement), "
        "LaTF (SPIB, then a generative prior on the latent: --prior flow, joint training with a RealNVP flow "
        "onto a temperature-steered tilted Gaussian, or --prior grid, a latent free energy H(s) − T·S(s) fitted "
        "to all training temperatures) or D-SPIB (SPIB, then joint training with a temperature-conditioned "
        "diffusion model); LaTF and D-SPIB must then generate every training temperature's state populations "
        "within --generation-tolerance. "
        "DATA are 'latf simulate' run folders (or folders of runs) or .npz files with 'features' "
        "(n_traj, n_frames, n_features) or per-trajectory arrays, and optional 'labels', 'weights', 'temperatures'.",
    )
    p.add_argument("data", nargs="*", help="run folders or .npz files")
    p.add_argument("--out", help="output model file (.pt)")
    p.add_argument(
        "--threads",
        type=int,
        help=f"torch CPU threads (default {TRAIN_THREADS}: these networks are small, and more threads than free "
        "cores slow training several-fold when other jobs share the machine)",
    )
    p.add_argument(
        "--mbar-anchors",
        nargs="*",
        type=float,
        metavar="T",
        help="after training, fit the prior again to MBAR's equilibrium weights from DATA (unbiased runs, or "
        "replicas under one fixed bias, with their potential energies) at the runs' temperatures and at a "
        "ladder between them and any T given here, where MBAR has the overlap (LaTF, D-SPIB)",
    )
    _add_spec_options(p, TrainingConfig)
    p.set_defaults(handler=_train, required=("data", "out"), outputs={"out": "file"}, positive=("threads",))


def _train(args: argparse.Namespace) -> int:
    import torch

    from latf_openmm.models import TrainingConfig, estimator
    from latf_openmm.reweighting import load_training_data, temperature_estimate
    from latf_openmm.simulation import find_runs

    torch.set_num_threads(args.threads or TRAIN_THREADS)
    _log_progress("train")
    config = _spec_from_args(TrainingConfig, args, "latf train")
    trainer = estimator(config)
    anchored = args.mbar_anchors is not None
    if anchored and config.model == "spib":
        raise LatfError("--mbar-anchors fits a temperature-dependent prior: use --model latf or dspib")
    if anchored and any(Path(path).suffix == ".npz" for path in args.data):
        raise LatfError("--mbar-anchors needs run folders with potential energies, not .npz files")
    data = load_training_data(args.data)
    estimate = temperature_estimate(find_runs(args.data)) if anchored else None  # refused early if it cannot be
    model = trainer.fit(data)
    if estimate is not None:
        anchors = estimate.anchors(args.mbar_anchors)
        model = trainer.refit_prior(model, estimate.training_data(data, estimate.runs, anchors))
        print(f"prior fitted to MBAR at {', '.join(f'{t:g}' for t in anchors)}")
    model.save(args.out)
    info = model.info
    populations = ", ".join(f"{p:.3f}" for p in info["state_populations"])
    print(
        f"wrote {args.out}: {model.n_states} states (populations {populations}), "
        f"{sum(r['stage'] in ('spib', 'joint') for r in info['history'])} epochs in {info['train_seconds']:.1f} s"
    )
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate latent samples, free energies and state populations at any temperature (LaTF, D-SPIB)",
        description="From a trained LaTF or D-SPIB model (a SPIB model at its training temperature only), draw "
        "latent samples at each temperature, and write them with "
        "the state populations and (for 2-D latents) the free-energy surface F(s; T) on a grid to an .npz; "
        "optionally plot the surfaces.",
    )
    p.add_argument("model", nargs="?", help="model file written by 'latf train'")
    p.add_argument(
        "--temperatures",
        nargs="+",
        type=float,
        metavar="T",
        help="temperatures, in the training data's unit (see the model's temperature_unit)",
    )
    p.add_argument("--n", type=int, default=100_000, help="samples per temperature (default 100000)")
    p.add_argument("--out", help="output .npz")
    p.add_argument("--plot", help="also plot the free-energy surfaces to this PNG")
    p.add_argument("--bins", type=int, default=80, help="grid points per latent dimension (default 80)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="where the prior samples: auto (CUDA if torch finds it), cpu, cuda")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="RUN",
        help="unbiased runs (or replicas under one fixed bias) at several temperatures, with their potential "
        "energies: beside each generated figure, the populations that MBAR predicts from them and its "
        "effective sample size, the physics baseline",
    )
    p.set_defaults(handler=_generate, required=("model", "temperatures", "out"),
                   outputs={"out": "file", "plot": "figure"}, positive=("n", "bins"))  # fmt: skip


def _generate(args: argparse.Namespace) -> int:
    import json

    from latf_openmm.generation import generate
    from latf_openmm.models import load_model

    model = load_model(args.model).to(args.device)
    reweighted = _mbar_reweighted(model, args.data, args.temperatures) if args.data else None
    result = generate(model, args.temperatures, args.n, args.out, bins=args.bins, seed=args.seed, plot=args.plot,
                      reweighted=reweighted)  # fmt: skip
    report = {"temperatures": args.temperatures, "state_populations": result["state_populations"].tolist()}
    if reweighted is not None:
        report["mbar_state_populations"] = result["mbar_state_populations"].tolist()
        report["mbar_effective_sample_size"] = result["mbar_effective_sample_size"].round(1).tolist()
    print(json.dumps(report))
    return 0


def _mbar_reweighted(
    model: LatentModel, data: list[str], temperatures: list[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per temperature, the latent CV of every frame of the runs in ``data`` and its MBAR weight there."""
    from latf_openmm.reweighting import load_training_data, temperature_estimate
    from latf_openmm.simulation import find_runs

    runs = find_runs(data)
    frames = load_training_data(runs)
    unit = model.info.get("temperature_unit", "")
    if frames.temperature_unit != unit:
        raise LatfError(f"--data runs are in temperature unit {frames.temperature_unit!r}, the model in {unit!r}")
    latent = model.transform(np.concatenate(frames.features).astype(np.float64))
    estimate = temperature_estimate(runs)
    return [(latent, estimate.frame_weights(t)) for t in temperatures]


def _add_langevin(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "langevin",
        help="Langevin dynamics in a trained model's latent space, at any temperature the model knows",
        description="Run walkers in the latent space of a trained LaTF or D-SPIB model: the potential is the "
        "model's free energy F(s; T) with the position-dependent mass term of the metric J M⁻¹ Jᵀ, which is "
        "averaged over the frames of --runs. Writes COLVAR (time, walker, s, state), timeseries.npz and "
        "summary.json to --out. Time step, friction and report interval default to the runs' MD settings.",
    )
    p.add_argument("model", nargs="?", help="model file written by 'latf train' (the runs' featurizer must match it)")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="run folders whose frames give the metric")
    p.add_argument("--temperature", type=float, help="in the model's unit (see its temperature_unit)")
    p.add_argument("--steps", type=int, help="integration steps")
    p.add_argument("--walkers", type=int, default=100, help="walkers, started at frames of --runs (default 100)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--friction", type=float, help="γ in 1/ps (default: the runs' friction)")
    p.add_argument("--timestep", type=float, help="in ps (default: the runs' MD time step)")
    p.add_argument("--report-interval", type=int, help="steps between frames (default: the runs' frame interval)")
    p.add_argument("--overdamped", action="store_true", help="Brownian dynamics with D = k_BT G / γ")
    p.add_argument("--bins", type=int, default=100, help="latent grid points per dimension (default 100)")
    p.add_argument("--device", default="auto", help="auto (CUDA where torch finds it), cpu or cuda (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(handler=_langevin, required=("model", "runs", "temperature", "steps", "out"),
                   outputs={"out": "folder"}, positive=("steps", "walkers", "bins", "report_interval"))  # fmt: skip


def _langevin(args: argparse.Namespace) -> int:
    import json
    import time

    from tqdm.auto import tqdm

    from latf_openmm.features import resolved_featurizer
    from latf_openmm.generation import LatentLangevin, model_landscape, write_latent_run
    from latf_openmm.models import load_model
    from latf_openmm.reweighting import run_weights
    from latf_openmm.simulation import Run, find_runs
    from latf_openmm.systems import system_from_recipe

    for name in ("temperature", "friction", "timestep"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise LatfError(f"langevin: --{name} must be positive, got {value}")
    model = load_model(args.model)
    runs = [Run.open(path) for path in find_runs(args.runs)]
    settings = runs[0].settings
    masses = system_from_recipe(runs[0].recipe, settings["system"]).masses
    positions = np.concatenate([run.load_trajectory().xyz for run in runs]).astype(np.float64)
    weights = np.concatenate([run_weights(run) for run in runs])
    featurizer = resolved_featurizer(runs[0].featurizer)  # the model's own, if it keeps one (checked)
    landscape = model_landscape(model, args.temperature, positions, masses, weights, featurizer, args.bins)
    friction = args.friction if args.friction is not None else settings["friction_per_ps"]
    timestep = args.timestep if args.timestep is not None else settings["timestep_ps"]
    interval = args.report_interval or settings["frame_interval"]
    dynamics = LatentLangevin(landscape, friction, timestep, overdamped=args.overdamped, device=args.device)
    latent = model.transform(featurizer.transform(positions))
    usable = weights * dynamics.inside(latent)  # walkers start at frames where F and G are known
    start = latent[np.random.default_rng(args.seed).choice(len(latent), args.walkers, p=usable / usable.sum())]
    with tqdm(total=args.steps, unit="step", desc="latent Langevin", disable=None) as bar:
        began = time.perf_counter()
        trajectory = dynamics.run(
            start, args.steps, args.seed, interval, progress=lambda done: bar.update(done - bar.n)
        )
        seconds = time.perf_counter() - began
    summary = {
        "model": str(args.model), "temperature": args.temperature, "friction_per_ps": friction,
        "timestep_ps": timestep, "steps": args.steps, "walkers": args.walkers, "overdamped": args.overdamped,
        "seed": args.seed, "metric_spread": landscape.metric_spread,
        "walker_steps_per_second": args.walkers * args.steps / seconds,
    }  # fmt: skip
    write_latent_run(args.out, trajectory, interval * timestep, model, summary)
    print(json.dumps({k: summary[k] for k in ("temperature", "metric_spread", "walker_steps_per_second")}))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model's CV as one TorchScript file (positions → CV)",
        description="Write the trained encoder with the system's featurizer as a TorchScript file that maps "
        "positions (nm) [and the periodic box] to the CV; it loads with torch alone and runs as an OpenMM "
        "TorchForce. --component k writes the scalar component k, for a CustomCVForce.",
    )
    p.add_argument("model", nargs="?", help="model file written by 'latf train'")
    _add_system_options(
        p, "system name or recipe whose featurizer the model was trained on (default: the featurizer the model keeps)"
    )
    p.add_argument("--out", help="output TorchScript file (.pt)")
    p.add_argument("--component", type=int, help="export only this CV component, as a scalar")
    p.add_argument(
        "--plumed",
        metavar="DIR",
        help="also write DIR/model.ptc (PLUMED PYTORCH_MODEL) and DIR/plumed.dat (features, CV, bias)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        help="temperature for plumed.dat in the system's unit (K, or k_BT/ε for reduced units; without --system: K; "
        "default: the system's first)",
    )
    _add_spec_options(p.add_argument_group("the bias in plumed.dat (as 'latf bias' takes it)"), BiasSpec)
    p.set_defaults(handler=_export, required=("model", "out"), outputs={"out": "file", "plumed": "folder"})


def _export(args: argparse.Namespace) -> int:
    from latf_openmm.export import export_cv, paired_featurizer
    from latf_openmm.models import load_model

    if args.system:
        model, molsys, featurizer = _load_model_on_system(args)
        description = molsys.features
        temperature = molsys.to_kelvin(args.temperature) if args.temperature else molsys.temperatures[0]
    else:  # the featurizer the model keeps: no system to build
        model, description, temperature = load_model(args.model), None, args.temperature
        featurizer = paired_featurizer(model)
    if args.plumed and temperature is None:
        raise LatfError("latf export --plumed without --system needs --temperature (K) for plumed.dat")
    bias = _spec_from_args(BiasSpec, args, "latf export") if args.plumed else None
    export_cv(model, featurizer, args.out, component=args.component, feature_description=description)
    if args.plumed:
        from latf_openmm.export.plumed import write_plumed

        model_file, plumed_file = write_plumed(model, featurizer, args.plumed, temperature, bias)
        print(f"wrote {model_file} and {plumed_file}")
    print(
        f"wrote {args.out}: {featurizer.n_atoms} atoms → "
        f"{'CV component ' + str(args.component) if args.component is not None else f'{model.latent_dim}-D CV'}"
    )
    return 0


def _add_loop(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loop",
        help="the iterative loop: MD → train LaTF → biased walkers → reweight → retrain, then generate",
        description="Run a workflow (see workflows/*.toml): unbiased MD, then rounds of LaTF training on all "
        "data so far (biased frames reweighted), OPES or metadynamics walkers along the learned CV (Dask "
        "tasks) that then go on with their bias fixed, an MBAR estimate over the unbiased and fixed-bias "
        "runs, until a round's data changes the reweighted state populations and free-energy profiles by "
        "less than the tolerances; then "
        "populations and free-energy profiles at the target temperatures. Run the same command again to "
        "resume a killed loop, or with more rounds to go on with an unconverged one (only rounds and scheduler may "
        "change); the run folder may be moved or copied first.",
    )
    p.add_argument("workflow", nargs="?", help="workflow .toml")
    p.add_argument("--out", help="run folder")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler (default: a local cluster)")
    p.set_defaults(handler=_loop, required=("workflow", "out"), outputs={"out": "folder"})


def _loop(args: argparse.Namespace) -> int:
    from latf_openmm.loop import LoopConfig, population_table, run_loop

    config = LoopConfig.from_toml(args.workflow)
    if args.scheduler:
        config = dataclasses.replace(config, scheduler=args.scheduler)
    _log_progress("loop")
    summary = run_loop(config, args.out)
    print(population_table(summary))
    print(f"wrote {Path(args.out) / 'summary.json'}, summary.png, fes.png and final/ (model, CV for OpenMM and PLUMED)")
    return 0


def _add_systems(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("systems", help="list the shipped systems", description="List the shipped system recipes.")
    p.set_defaults(handler=_systems, required=())


def _systems(args: argparse.Namespace) -> int:
    from latf_openmm.systems import available_systems

    for name, description in available_systems().items():
        print(f"{name:14s} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the ``latf`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="latf",
        description="Learn CVs and temperature-dependent equilibrium distributions with SPIB/LaTF, "
        "and drive OpenMM simulations with them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    adders = (_add_systems, _add_simulate, _add_fes, _add_train, _add_generate, _add_langevin, _add_export, _add_bias,
              _add_loop)  # fmt: skip
    for add in adders:
        add(sub)
    for subparser in sub.choices.values():
        subparser.add_argument(
            "--config",
            type=Path,
            help="TOML file of options (keys are long option names with _); command-line options override it",
        )
    return parser


def _converted(convert: Callable[[Any], Any], value: object) -> object:
    """Return a config file's value as the option's type converts it; a fractional number is no integer."""
    if convert is int and isinstance(value, float) and not value.is_integer():
        raise ValueError("not an integer")
    return convert(value)


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.config is None:
        return args
    try:
        config = tomllib.loads(args.config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LatfError(f"cannot read config {args.config}: {exc}") from exc
    subparser = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    actions = {a.dest: a for a in subparser._actions}
    known = set(actions) - {"help", "config", "handler", "required", "outputs", "positive"}
    unknown = set(config) - known
    if unknown:
        raise LatfError(f"{args.config}: unknown option(s) {sorted(unknown)}; allowed: {sorted(known)}")
    for key, value in config.items():  # as the command line would convert them
        convert = actions[key].type
        if convert is not None and key != "system_args":
            try:
                config[key] = (
                    [_converted(convert, v) for v in value] if isinstance(value, list) else _converted(convert, value)
                )
            except (TypeError, ValueError) as exc:
                raise LatfError(f"{args.config}: {key} = {value!r}: {exc}") from None
    if "system_args" in config:
        config["system_args"] = list(dict(config["system_args"]).items())
    subparser.set_defaults(**config)
    return parser.parse_args(argv)


def _log_progress(command: str) -> None:
    """Show the package's progress messages (not its dependencies') on stderr, as ``latf COMMAND: …``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"latf {command}: %(message)s"))
    package = logging.getLogger("latf_openmm")
    package.addHandler(handler)
    package.setLevel(logging.INFO)


def _check_arguments(args: argparse.Namespace) -> None:
    """Raise for a count that must be ≥ 1 and for an output path that cannot be written, before any work."""
    for name in getattr(args, "positive", ()):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LatfError(f"{args.command}: --{name.replace('_', '-')} must be ≥ 1, got {value}")
    for name, kind in getattr(args, "outputs", {}).items():
        if getattr(args, name):
            check_output(getattr(args, name), kind)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``latf`` command line; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _apply_config(parser, argv)
        missing = [name for name in args.required if getattr(args, name) in (None, [])]
        if missing:
            flags = ", ".join(name if name == "runs" else f"--{name.replace('_', '-')}" for name in missing)
            raise LatfError(f"{args.command}: missing {flags} (on the command line or in --config)")
        _check_arguments(args)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except LatfError as exc:
        print(f"latf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latf: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
