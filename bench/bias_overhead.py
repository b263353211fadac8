"""Speed of 2-D well-tempered metadynamics along a learned CV, as a ratio to plain MD in one run.

Usage: python bench/bias_overhead.py [--system ala2_obc2|ala2_tip3p|chignolin] [--platform CPU|CUDA|OpenCL]
       [--rounds 7] [--steps 2000] [--threads 1] [--methods native,torch,...]

Alanine dipeptide, OBC2 (default) or in a TIP3P box with PME (``--system ala2_tip3p``:
712 atoms, the realistic case, where a step costs ≈ 12× more), or chignolin (OBC2, 138
atoms; its ``native`` CV is over its 36 Cα distances, 5 hidden units), on the CPU platform (default) or a GPU
(``--platform CUDA``, mixed precision), 2 fs steps, hills every 500 steps. Every
method runs in its own Context; the contexts take turns (``--steps`` each per round)
and the median rate over rounds is compared with plain MD measured in the same rounds,
so load on the shared machine affects all alike. Methods:

``native``       latf Metadynamics, CV components as OpenMM expressions (φ/ψ sin/cos → 16 ReLU → 2-D)
``native_dist``  the same with 45 heavy-atom distances + φ/ψ → linear encoder
``app_native``   openmm.app.Metadynamics over the same expression forces as ``native``
``torch``        latf Metadynamics over one TorchForce per component,
                 45 distances + φ/ψ → MLP 64-64 → 2-D (the issue's baseline network); on CUDA
                 the TorchForce captures a CUDA graph (``useCUDAGraphs``)
``torch_nographs`` the same without CUDA graphs (the same as ``torch`` off CUDA)
``plumed_metad`` the same network and bias as ``torch`` in PLUMED (the exported ``plumed.dat``:
                 DISTANCE/TORSION actions → PYTORCH_MODEL → METAD on its grid) through
                 openmm-plumed's ``PlumedForce``
``plumed_opes``  the same with OPES_METAD (barrier 30 kJ/mol)
``plain_again``  a second Context of plain MD: its ratio is the noise floor between two Contexts of the
                 same system (memory layout, cache), which bounds what a ratio near 1 can resolve

The PLUMED routes need ``make plumed`` (openmm-plumed in the venv); without it they are
skipped, saying so. Prints one JSON line per method (``plain_steps_per_s``,
``biased_steps_per_s``, ``plain_ns_per_day``, ``biased_ns_per_day``, ``ratio``,
``bias_us_per_step``: the bias's added time per step,
``method``, ``setup_s``: Context creation, incl. OpenMM's expression compilation), then
the default method's line again last. For the package's own biases the line also has their cost
measured inside their own Context, free of the difference between two Contexts (see
``plain_again``): ``bias_eval_us_per_step`` (forces with the bias's group minus without it) and
``hill_update_us_per_step`` (each hill's deposition and table update, over the pace;
``hill_update_ms`` per hill).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import torch

import latf_openmm  # noqa: F401  (torch before openmm)
from latf_openmm import build_featurizer
from latf_openmm.bias import LearnedCV, Metadynamics
from latf_openmm.export.expressions import MAX_EXPRESSION_SIZE
from latf_openmm.export.plumed import plumed_input, write_plumed_model
from latf_openmm.models import LatentModel
from latf_openmm.models.network import LatentNetwork
from latf_openmm.simulation import select_platform
from latf_openmm.specs import BiasSpec
from latf_openmm.systems import load_system

try:
    import openmmplumed
except ImportError:  # built by `make plumed`
    openmmplumed = None

DEFAULT = "native"
PACE = 500
TEMPERATURE = 300.0
STEP_PS = 0.002


def _model(molsys, features, layers, hidden):
    featurizer = build_featurizer(features, molsys.topology)
    torch.manual_seed(0)
    network = LatentNetwork(featurizer.n_features, 2, 2, encoder_layers=layers, encoder_hidden=hidden)
    frames = molsys.positions[None] + np.random.default_rng(0).normal(scale=0.02, size=(200, *molsys.positions.shape))
    values = featurizer.transform(frames)
    network.feature_mean.copy_(torch.from_numpy(values.mean(0)))
    network.feature_scale.copy_(torch.from_numpy(values.std(0) + 1e-3))
    return LatentModel(network, {"feature_names": featurizer.names, "data_digest": "bench"}), featurizer


def _metadynamics(cv):
    return Metadynamics(
        cv, TEMPERATURE, height=1.0, bias_factor=6.0, components=[0, 1], lower=[-5, -5], upper=[5, 5],
        sigma=[0.2, 0.2], pace=PACE,
    )  # fmt: skip


def _plumed_force(method, molsys, all_heavy_distances):
    """A PlumedForce running the exported plumed.dat and model.ptc of the ``torch`` route's network.

    Each in a folder of its own, made the working folder: PLUMED reads model.ptc and opens
    COLVAR and HILLS/KERNELS there when the Context is created.
    """
    os.chdir(tempfile.mkdtemp(prefix=f"bias_overhead_{method}_"))
    model, featurizer = _model(molsys, all_heavy_distances, 2, 64)
    write_plumed_model(model, "model.ptc")
    options = dict(components=(0, 1), lower=(-5.0, -5.0), upper=(5.0, 5.0), sigma=(0.2, 0.2), pace=PACE)
    kind = {"plumed_metad": dict(method="metad", height=1.0, bias_factor=6.0), "plumed_opes": dict(method="opes")}
    spec = BiasSpec(**options, **kind[method])
    return openmmplumed.PlumedForce(plumed_input(featurizer, "model.ptc", 2, TEMPERATURE, spec, stride=PACE))


def build(method, molsys, platform_name, threads):
    dihedrals = [molsys.features[0]]
    all_heavy_distances = [*dihedrals, {"kind": "distances", "atoms": "not water and not element H"}]  # 45
    updates = None
    system = molsys.system
    # the widest hidden layer (up to 16) that keeps the encoder within OpenMM's expression limit
    width = min(16, MAX_EXPRESSION_SIZE // build_featurizer(dihedrals, molsys.topology).n_features)
    bias = _latf_bias(method, molsys, dihedrals, all_heavy_distances, width)
    if bias is not None:
        system = bias.add_to(system)
        updates = bias.update
    elif method == "app_native":
        cv = LearnedCV(*_model(molsys, dihedrals, 1, width), backend="native")
        system = openmm.XmlSerializer.clone(system)
        variables = [app.BiasVariable(cv.energy_force(f"s{k}"), -5.0, 5.0, 0.2, False, 201) for k in range(2)]
        meta = app.Metadynamics(system, variables, TEMPERATURE * u.kelvin, 6.0, 1.0 * u.kilojoule_per_mole, PACE)
    elif method.startswith("plumed"):
        system = openmm.XmlSerializer.clone(system)
        system.addForce(_plumed_force(method, molsys, all_heavy_distances))
    platform, properties = select_platform(platform_name, threads=threads if platform_name == "CPU" else None)
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE * u.kelvin, 1 / u.picosecond, STEP_PS * u.picoseconds)
    start = time.perf_counter()
    simulation = app.Simulation(molsys.topology, system, integrator, platform, properties)
    context = simulation.context
    context.setPositions(molsys.positions * u.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(TEMPERATURE * u.kelvin, 1)
    if updates is not None:
        bias.attach(context)
    setup = time.perf_counter() - start

    update_seconds: list[float] = []

    def advance(steps):
        if method == "app_native":
            meta.step(simulation, steps)
            return
        for _ in range(steps // PACE):
            integrator.step(PACE)
            simulation.currentStep += PACE
            if updates is not None:
                began = time.perf_counter()
                updates(context, simulation.currentStep)
                update_seconds.append(time.perf_counter() - began)

    return advance, setup, context, lambda: {} if bias is None else _same_context_cost(context, bias, update_seconds)


def _latf_bias(method, molsys, dihedrals, all_heavy_distances, width):
    """The package's metadynamics along the CV that ``method`` names; None for the other methods."""
    if method == "native":
        return _metadynamics(LearnedCV(*_model(molsys, dihedrals, 1, width), backend="native"))
    if method == "native_dist":
        return _metadynamics(LearnedCV(*_model(molsys, all_heavy_distances, 0, 16), backend="native"))
    if method in ("torch", "torch_nographs"):
        cv = LearnedCV(*_model(molsys, all_heavy_distances, 2, 64), backend="torch", cuda_graphs=method == "torch")
        return _metadynamics(cv)
    return None


def _same_context_cost(context, bias, update_seconds):
    """The bias's cost per step measured in its own Context: its force evaluation and its hill updates.

    The evaluation is the median difference between computing the forces of every group and of
    every group but the bias's, interleaved; the updates are timed as they ran, per step.
    """
    others = set(range(32)) - {bias.group}
    differences = []
    for _ in range(200):
        began = time.perf_counter()
        context.getState(getForces=True, groups=others)
        middle = time.perf_counter()
        context.getState(getForces=True)
        differences.append((time.perf_counter() - middle) - (middle - began))
    evaluation, update = float(np.median(differences)), float(np.median(update_seconds)) / PACE
    return {"bias_eval_us_per_step": round(1e6 * evaluation, 1), "hill_update_us_per_step": round(1e6 * update, 1),
            "hill_update_ms": round(1e3 * update * PACE, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=["ala2_obc2", "ala2_tip3p", "chignolin"], default="ala2_obc2")
    parser.add_argument("--platform", default="CPU", help="OpenMM platform: CPU (default), CUDA or OpenCL")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2000, help="steps per method per round (multiple of 500)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--methods", default="plain_again,native,native_dist,app_native,torch,torch_nographs,plumed_metad,plumed_opes"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    molsys = load_system(args.system)
    methods = ["plain", *args.methods.split(",")]
    if openmmplumed is None and any(m.startswith("plumed") for m in methods):
        print("no openmm-plumed (run `make plumed`): the PLUMED routes are skipped", file=sys.stderr)
        methods = [m for m in methods if not m.startswith("plumed")]
    runs = {m: build(m, molsys, args.platform, args.threads) for m in methods}
    rates: dict[str, list[float]] = {m: [] for m in methods}
    for advance, *_ in runs.values():
        advance(PACE)  # warm-up
    for _ in range(args.rounds):
        for method, (advance, _, context, _) in runs.items():
            start = time.perf_counter()
            advance(args.steps)
            context.getState(getEnergy=True)
            rates[method].append(args.steps / (time.perf_counter() - start))
    plain = float(np.median(rates["plain"]))
    lines = {}
    for method in methods[1:]:
        biased = float(np.median(rates[method]))
        lines[method] = {
            "plain_steps_per_s": round(plain, 1),
            "biased_steps_per_s": round(biased, 1),
            "plain_ns_per_day": round(plain * STEP_PS * 86400e-3, 1),
            "biased_ns_per_day": round(biased * STEP_PS * 86400e-3, 1),
            "ratio": round(biased / plain, 3),
            "bias_us_per_step": round(1e6 * (1 / biased - 1 / plain), 1),
            **runs[method][3](),
            "method": method,
            "setup_s": round(runs[method][1], 2),
            "threads": args.threads,
            "system": args.system,
            "platform": args.platform,
        }
        print(json.dumps(lines[method]), flush=True)
    if DEFAULT in lines:
        print(json.dumps(lines[DEFAULT]))


if __name__ == "__main__":
    main()
