"""Generation benchmarks: three-hole at one temperature, LJ7 at temperatures it never saw.

Usage: python bench/generation.py threehole DATA.npz [DATA.npz ...] [--seeds 0 1 2 3 4] [--models flow grid dspib]
       python bench/generation.py lj7 DATA.npz [DATA.npz ...] [--lags 1 2] [--seeds 0 1 2] [--models flow dspib]
       (both: [--threads 1] [--save DIR]: each trained model to DIR/<case>.pt; LJ7: [--anchored])

Models: ``flow`` (LaTF, the published prior), ``grid`` (LaTF with the latent free energy),
``dspib`` (D-SPIB: the same SPIB settings, the diffusion prior; no flow settings apply).

Every case is encoded MD against as many generated samples: KL (100 × 100 histogram), JS
(50 × 50 for three-hole, as the issue measures it; 100 × 100 for LJ7), the largest
state-population error, the 1-D free-energy-profile RMSE (k_BT, worse of the two CVs) and
the training and sampling times. The generation check is off, so that a failing model still shows its
figures. Prints one JSON line per case and temperature, then a Markdown table.

- **threehole**: DATA.npz from bench/threehole_data.py (10 × 20 000 frames, one k_BT),
  trained with the paper's settings of bench/train_threehole.py and compared at that k_BT.
  One temperature: there is no MBAR baseline. Given several data sets at one k_BT, each
  model is also compared with the next one's MD, which it never saw (``js_unseen``; beside
  it ``md_js_unseen``, the training MD against that MD: the scale of the MD's own noise).
- **lj7**: DATA.npz from bench/lj7_baoab_data.py (an integrator independent of the package:
  10 trajectories × 10 000 frames per temperature, a frame every 0.5 τ). LaTF is trained on
  the 0.2 and 0.5 trajectories only, with the settings of bench/lj7_temperatures.py (7
  coordination numbers, 100 k-means labels on central moments, linear encoder, β 1e-3,
  lr 2e-3 × 0.98; flow: 20 layers, τ = 2), and compared with MD at every temperature. The
  MBAR baseline is the same states' populations predicted at each temperature from the two
  training temperatures' frames and potential energies alone (pymbar), with the Kish
  effective sample size behind it. Given several data sets, each model is also compared with
  the next one's MD at every temperature (``js_unseen``, ``md_js_unseen`` as for three-hole).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from lj7_temperatures import SETTINGS as LJ7_SETTINGS  # bench/ is the script's folder
from train_threehole import SETTINGS as THREEHOLE_SETTINGS
from train_threehole import data_kt, load_data

from latf_openmm.generation import (
    free_energy_profile_rmse,
    js_divergence_2d,
    kl_divergence_2d,
    reweighted_populations,
)
from latf_openmm.models import TrainingConfig, TrainingData, estimator
from latf_openmm.reweighting import EquilibriumEstimate, multistate_estimate
from latf_openmm.units import reduced_to_kelvin

LJ7_TRAIN = (0.2, 0.5)


MODELS = {"flow": {"model": "latf", "prior": "flow"}, "grid": {"model": "latf", "prior": "grid"},
          "dspib": {"model": "dspib"}}  # fmt: skip


def compare(
    model, encoded: np.ndarray, temperature: float, seed: int, js_bins: int, unseen: np.ndarray | None = None
) -> dict:
    """Encoded MD against as many generated samples at ``temperature``.

    With ``unseen`` (encoded MD the model never saw), the same samples against it too
    (``js_unseen``), and the training MD against it (``md_js_unseen``). Beside the largest
    population error of those samples, the model's own (``model_population_error``, from
    ``POPULATION_SAMPLES`` samples: 5·10⁻⁴ of sampling noise at most), which is what compares
    with MBAR's.
    """
    start = time.perf_counter()
    generated = model.sample(temperature, len(encoded), seed=seed + 1)
    sample_s = round(time.perf_counter() - start, 1)
    md = model.latent_populations(encoded)
    against_unseen = {} if unseen is None else {
        "js_unseen": round(js_divergence_2d(unseen, generated, bins=js_bins), 4),
        "md_js_unseen": round(js_divergence_2d(unseen, encoded, bins=js_bins), 4),
    }  # fmt: skip
    return against_unseen | {
        "sample_s": sample_s,
        "temperature": temperature,
        "n_states": model.n_states,
        "kl": round(kl_divergence_2d(encoded, generated), 4),
        "js": round(js_divergence_2d(encoded, generated, bins=js_bins), 4),
        "population_error": round(float(np.abs(model.latent_populations(generated) - md).max()), 4),
        "model_population_error": round(
            float(np.abs(model.state_populations(temperature, POPULATION_SAMPLES, seed + 2) - md).max()), 4
        ),
        "fe_rmse": round(max(free_energy_profile_rmse(encoded[:, i], generated[:, i]) for i in range(2)), 3),
    }


POPULATION_SAMPLES = 1_000_000
SAVE_DIR: Path | None = None  # --save
INDEPENDENT: dict[Path, Path] = {}  # each data set's unseen partner: the next one given (three-hole: at its k_BT)
ANCHORED = False  # --anchored


def train(data: TrainingData, settings: dict, seed: int, prior: str, case: str):
    """The model ``prior`` (a key of MODELS) fitted to ``data``, generation check off; the model and its seconds."""
    start = time.perf_counter()
    config = TrainingConfig(**{**settings, **MODELS[prior], "seed": seed, "generation_tolerance": None})
    model = estimator(config).fit(data)
    seconds = round(time.perf_counter() - start, 1)
    if SAVE_DIR is not None:
        model.save(SAVE_DIR / f"{case}_lag{settings['lag']}_seed{seed}_{prior}.pt")
    return model, seconds


def threehole_case(path: Path, seed: int, prior: str, lag: int) -> list[dict]:
    traj, data, kt = load_data(path)
    model, train_s = train(data, {**THREEHOLE_SETTINGS, "lag": lag}, seed, prior, f"threehole_{path.stem}")
    unseen = model.transform(load_data(INDEPENDENT[path])[0].reshape(-1, 2)) if path in INDEPENDENT else None
    row = compare(model, model.transform(traj.reshape(-1, 2)), kt, seed, js_bins=50, unseen=unseen)
    case = {"system": "threehole", "data": path.stem, "lag": lag, "seed": seed, "prior": prior}
    return [case | row | {"mbar_population_error": None, "mbar_ess": None, "train_s": train_s}]


def lj7_temperatures(raw) -> list[float]:
    """The k_BT of each temperature of an opened bench/lj7_baoab_data.py file, rounded for comparison."""
    return [round(float(t), 6) for t in raw["temperatures"]]


def lj7_case(path: Path, seed: int, prior: str, lag: int) -> list[dict]:
    with np.load(path) as raw:
        features, energies, temperatures = raw["features"], raw["potential_energy"], lj7_temperatures(raw)
    train_at = [temperatures.index(t) for t in LJ7_TRAIN]
    trajectories = [traj for k in train_at for traj in features[k]]
    data = TrainingData(trajectories, temperatures=np.repeat(LJ7_TRAIN, features.shape[1]))
    model, train_s = train(data, {**LJ7_SETTINGS, "lag": lag}, seed, prior, f"lj7_{path.stem}")
    names = [f"T{t:g}/{j}" for t in LJ7_TRAIN for j in range(features.shape[1])]
    mbar = multistate_estimate(  # the physics baseline: the training temperatures' frames and energies
        [energies[k][j] for k in train_at for j in range(features.shape[1])],
        [reduced_to_kelvin(t) for t in np.repeat(LJ7_TRAIN, features.shape[1])],
        [None] * len(names),
        np.zeros((0, len(names) * features.shape[2])),
    )
    estimate = EquilibriumEstimate(tuple(names), mbar, reduced_to_kelvin(1.0), LJ7_TRAIN)
    frames_latent = model.transform(np.concatenate(trajectories))
    models = {prior: model}
    if ANCHORED:  # the loop's way: the prior refitted to the estimate wherever it has the overlap
        anchors = estimate.anchors(temperatures)
        anchored = estimate.training_data(data, names, anchors)
        settings = {**LJ7_SETTINGS, **MODELS[prior], "lag": lag, "seed": seed, "generation_tolerance": None}
        config = TrainingConfig(**settings)
        start = time.perf_counter()
        models[f"{prior}+mbar"] = estimator(config).refit_prior(model, anchored)
        print(json.dumps({"anchors": [round(t, 4) for t in anchors], "refit_s": round(time.perf_counter() - start, 1)}))
    unseen_features = None
    if path in INDEPENDENT:
        with np.load(INDEPENDENT[path]) as raw:
            if lj7_temperatures(raw) != temperatures:
                raise SystemExit(f"{INDEPENDENT[path]}: not the temperatures of {path}")
            unseen_features = raw["features"]
    rows, n_features = [], features.shape[-1]
    for k, t in enumerate(temperatures):  # the encoded MD and MBAR's baseline once per temperature
        encoded = model.transform(features[k].reshape(-1, n_features))
        unseen = None if unseen_features is None else model.transform(unseen_features[k].reshape(-1, n_features))
        baseline, ess = reweighted_populations(model, frames_latent, estimate.frame_weights(t))
        baseline_error = round(float(np.abs(baseline - model.latent_populations(encoded)).max()), 4)
        for name, fitted in models.items():
            row = compare(fitted, encoded, t, seed, js_bins=100, unseen=unseen)
            case = {"system": "lj7", "data": path.stem, "lag": lag, "seed": seed, "prior": name}
            baseline_row = {"mbar_population_error": baseline_error, "mbar_ess": round(ess), "train_s": train_s}
            rows.append(case | row | baseline_row)
    return rows


def table(rows: list[dict]) -> str:
    """One Markdown row per case (system, data, lag, seed, prior); JS per temperature, the worst errors."""
    lines = [
        "| system | data | lag | seed | model | states | train s | sample s | temperatures | KL | JS | "
        "largest population error: samples / model's | MBAR's | F-profile RMSE (k_BT) | "
        "JS against unseen MD (MD's) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((r["system"], r["data"], r["lag"], r["seed"], r["prior"]) for r in rows):
        case = [r for r in rows if (r["system"], r["data"], r["lag"], r["seed"], r["prior"]) == key]
        mbar = [r["mbar_population_error"] for r in case if r["mbar_population_error"] is not None]
        lines.append(
            "| " + " | ".join(map(str, key)) + f" | {case[0]['n_states']} | {case[0]['train_s']} | "
            + f"{max(r['sample_s'] for r in case)} | "
            + " / ".join(f"{r['temperature']:g}" for r in case) + " | "
            + " / ".join(f"{r['kl']:.3f}" for r in case) + " | "
            + " / ".join(f"{r['js']:.4f}" for r in case)
            + f" | {max(r['population_error'] for r in case):.3f}"
            + f" / {max(r['model_population_error'] for r in case):.3f}"
            + (f" | {max(mbar):.3f}" if mbar else " | —")
            + f" | {max(r['fe_rmse'] for r in case):.2f} | "
            + (" / ".join(f"{r['js_unseen']:.4f} ({r['md_js_unseen']:.4f})" for r in case) if "js_unseen" in case[0]
               else "—") + " |"
        )  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=["threehole", "lj7"])
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--lags", type=int, nargs="+", default=[1, 2], help="LJ7 only (three-hole: the paper's 30)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0–4 (three-hole), 0–2 (LJ7)")
    parser.add_argument("--models", dest="priors", nargs="+", choices=list(MODELS), default=["flow", "dspib"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", type=Path, default=None, help="a folder for the trained models")
    anchored_help = "LJ7: also each model with its prior refitted to the MBAR estimate at its anchors"
    parser.add_argument("--anchored", action="store_true", help=anchored_help)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global SAVE_DIR, ANCHORED
    SAVE_DIR, ANCHORED = args.save, args.anchored
    if SAVE_DIR is not None:
        SAVE_DIR.mkdir(parents=True, exist_ok=True)
    partners: dict[float | None, list[Path]] = {}  # three-hole: by k_BT; LJ7: all alike (one temperature set)
    for path in args.data:
        kt = None
        if args.system == "threehole":
            with np.load(path) as raw:
                kt = data_kt(raw)
        partners.setdefault(kt, []).append(path)
    INDEPENDENT.update({p: group[(k + 1) % len(group)] for group in partners.values() if len(group) > 1
                        for k, p in enumerate(group)})  # fmt: skip
    case, lags = (threehole_case, [THREEHOLE_SETTINGS["lag"]]) if args.system == "threehole" else (lj7_case, args.lags)
    seeds = args.seeds or (list(range(5)) if args.system == "threehole" else [0, 1, 2])
    rows = []
    for path in args.data:
        for lag in lags:
            for seed in seeds:
                for prior in args.priors:
                    for row in case(path, seed, prior, lag):
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
