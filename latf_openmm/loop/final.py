"""The final model and its exports, and the summary (generated populations beside MBAR's, validation MD, costs)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from latf_openmm.errors import LatfError
from latf_openmm.export import export_cv, read_metadata
from latf_openmm.export.plumed import write_plumed
from latf_openmm.features import build_featurizer
from latf_openmm.files import write_json
from latf_openmm.generation import (
    block_fraction,
    free_energy_profile_rmse,
    generate,
    kl_divergence_2d,
    reweighted_populations,
    two_state_fit,
)
from latf_openmm.loop.config import FINAL, ROUND_SUMMARY_KEYS, SUMMARY, LoopConfig, stored_path
from latf_openmm.loop.estimate import converged, latent_by_run, reweighted
from latf_openmm.loop.rounds import relative_record, sha256_of
from latf_openmm.loop.tasks import load_workflow_system
from latf_openmm.models import load_model
from latf_openmm.reports import plot_loop, plot_melting
from latf_openmm.reweighting import (
    EquilibriumEstimate,
)
from latf_openmm.simulation import Run
from latf_openmm.units import KB_KJ_PER_MOL_K

if TYPE_CHECKING:
    from latf_openmm.models import LatentModel
    from latf_openmm.systems import MolecularSystem, NamedRegions

log = logging.getLogger(__name__)


def final_cpu_seconds(folder: Path, last: dict[str, Any]) -> float | None:
    """Return the CPU seconds of the final flow fit in ``folder`` if it is complete, else None.

    It is complete if its ``metadata.json``, written last, names the last round, that round's
    model and the final model file by hash.
    """
    try:
        metadata = json.loads((folder / "metadata.json").read_text())
        if (
            metadata["round"] == last["round"]
            and metadata["round_model_sha256"] == sha256_of(Path(last["model"]))
            and metadata["sha256"]["model.pt"] == sha256_of(folder / "model.pt")
        ):
            return float(metadata["final_cpu_seconds"])
    except (OSError, ValueError, KeyError):  # none yet, half-written, or from before the final flow fit
        pass
    return None


def _write_final(config: LoopConfig, molsys: MolecularSystem, model: LatentModel, folder: Path, last: dict[str, Any],
                 summary: dict[str, Any], final_cpu: float) -> None:  # fmt: skip
    """Write the exports of the final ``model`` (of the workflow's ``molsys``) next to it in ``folder``.

    The final model is ``folder/model.pt`` (:func:`final_task`; ``latf bias``, ``latf
    generate``); its exports are ``cv.pt`` (positions → CV, TorchScript),
    ``cv_s<k>.pt`` (component k as a scalar: an OpenMM TorchForce, e.g. inside a
    CustomCVForce), ``plumed/`` (``model.ptc`` and a ``plumed.dat`` with the workflow's bias)
    and ``metadata.json`` (provenance, the states' populations, file hashes, the final fit's
    CPU time, and the CV of the system's starting structure, which a copy of the files must
    reproduce).
    """
    featurizer = build_featurizer(molsys.features, molsys.topology)
    exports = {"cv.pt": None} | {f"cv_s{k}.pt": k for k in range(model.latent_dim)}
    for name, component in exports.items():
        export_cv(model, featurizer, folder / name, component=component, feature_description=molsys.features)
    temperature = molsys.to_kelvin(config.walker_temperature or config.md_temperatures[0])
    write_plumed(model, featurizer, folder / "plumed", temperature, config.bias)
    box = molsys.topology.getPeriodicBoxVectors()
    box = None if box is None else torch.tensor(box.value_in_unit(box.unit), dtype=torch.float64)
    cv = torch.jit.load(str(folder / "cv.pt"))(torch.as_tensor(molsys.positions, dtype=torch.float64), box)
    files = ("model.pt", *exports, "plumed/model.ptc", "plumed/plumed.dat")
    metadata = {
        "format": "latf_openmm.loop_final",
        "system": config.system,
        "system_args": config.system_args,
        "round": last["round"],
        "round_model_sha256": sha256_of(Path(last["model"])),  # the same CV; the flow refitted to all data
        "final_cpu_seconds": final_cpu,
        "converged": summary["converged"],
        "temperature_unit": summary["temperature_unit"],
        "reweighted_state_populations": last["populations"],
        "generated_state_populations": {t: v["state_populations"] for t, v in summary["targets"].items()},
        "starting_structure_cv": cv.tolist(),
        "sha256": {name: sha256_of(folder / name) for name in files},
        "cv": read_metadata(folder / "cv.pt"),
        "workflow": dataclasses.asdict(config),
    }
    write_json(folder / "metadata.json", metadata)


def _profile_rmse(encoded: np.ndarray, samples: np.ndarray, run: str) -> float | None:
    """Return the free-energy-profile RMSE along one component, or None (logged) where MD and model share no bin."""
    try:
        return free_energy_profile_rmse(encoded, samples)
    except LatfError as error:  # the model generates elsewhere than the MD went: a result, not a reason to stop
        log.warning("validation %s: %s; its profile RMSE is None", run, error)
        return None


def _compare_with_md(model: LatentModel, samples: np.ndarray, run: str) -> dict[str, Any]:
    """Compare generated with encoded MD at one temperature: KL (2-D), free-energy-profile RMSE per component."""
    encoded = model.transform(Run.open(run).load_timeseries()["features"].astype(np.float64))
    comparison: dict[str, Any] = {
        "md_run": run,
        "profile_rmse_kT": [_profile_rmse(encoded[:, k], samples[:, k], run) for k in range(model.latent_dim)],
        "md_state_populations": model.latent_populations(encoded).tolist(),
    }
    if model.latent_dim == 2:
        comparison["kl"] = kl_divergence_2d(encoded, samples)
    return comparison


def named_regions(
    regions: NamedRegions, model: LatentModel, latent: np.ndarray, weights: np.ndarray, frame_regions: np.ndarray,
    temperature: float, generated_states: np.ndarray, reference: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Return the system's named regions at one temperature: MBAR's, generated, reference and exact populations.

    ``latent``, ``weights`` and ``frame_regions`` are the estimate's frames, their weights at
    ``temperature`` (user unit) and their regions. A learned state belongs to the region that
    holds most of its weight (``state_share``: that fraction). The model's populations of the
    regions are its generated state populations ``generated_states``, each state split among
    the regions as MBAR's weights at this temperature split it (evenly, for a state without
    weight here). ``reference``, the regions of the frames of an unbiased reference run at
    this temperature, gives each region's fraction and its block error.
    """
    n = len(regions.names)
    populations = np.bincount(frame_regions, weights=weights, minlength=n) / weights.sum()
    by_state = np.zeros((model.n_states, n))
    np.add.at(by_state, (model.latent_state(latent), frame_regions), weights)
    totals = by_state.sum(axis=1, keepdims=True)
    composition = np.where(totals > 0, by_state / np.maximum(totals, 1e-300), 1.0 / n)
    record = {
        "names": list(regions.names),
        "mbar_populations": populations.tolist(),
        "generated_populations": (np.asarray(generated_states) @ composition).tolist(),
        "exact_populations": None if regions.exact is None else regions.exact(temperature).tolist(),
        "state_region": [regions.names[k] for k in by_state.argmax(axis=1)],
        "state_share": (by_state.max(axis=1) / np.maximum(totals[:, 0], 1e-300)).tolist(),
    }
    if reference is not None:
        fractions = np.array([block_fraction(reference == i) for i in range(n)])
        record["reference_populations"], record["reference_block_error"] = fractions.T.tolist()
    return record


def melting_curves(region: str, targets: dict[str, Any], unit: str | None) -> dict[str, Any]:
    """Return ``region``'s population against the target temperatures and a two-state fit of each curve.

    The curves are the generated one, MBAR's from the runs and, where every target has one,
    the reference runs' (with block errors); each fit gives T_m and ΔH/k_B (and ΔH in kJ/mol
    for temperatures in K), or None where the curve shows no melting.
    """
    labels = sorted(targets, key=float)
    temperatures = np.array([float(t) for t in labels])
    index = targets[labels[0]]["regions"]["names"].index(region)
    curves = {}
    for source in ("generated", "mbar", "reference"):
        values = [targets[t]["regions"].get(f"{source}_populations") for t in labels]
        if all(v is not None for v in values):
            curves[source] = [v[index] for v in values]
    errors = None
    if "reference" in curves:
        errors = [targets[t]["regions"]["reference_block_error"][index] for t in labels]
    fits = {}
    for source, curve in curves.items():
        fit = two_state_fit(temperatures, np.array(curve), errors if source == "reference" else None)
        if fit is not None and unit == "K":
            fit["enthalpy_kJ_per_mol"] = fit["enthalpy"] * KB_KJ_PER_MOL_K
        fits[source] = fit
    return {"region": region, "temperatures": temperatures.tolist(), **curves, "reference_block_error": errors,
            "two_state_fits": fits}  # fmt: skip


def population_table(summary: dict[str, Any]) -> str:
    """Return the summary's populations as a table: per target temperature, each state and each named region.

    A state's generated population stands beside MBAR's from the runs and the region that
    holds most of its weight; a region's MBAR population beside its exact one where known.
    """
    unit = summary["temperature_unit"] or ""
    simulated = set(summary["rounds"][-1]["populations"]) if summary["rounds"] else set()
    lines = [f"rounds: {len(summary['rounds'])}, converged: {summary['converged']}, "
             f"CPU hours: {summary['cpu_seconds'] / 3600:.3f}"]  # fmt: skip
    for label, target in summary["targets"].items():
        kind = "simulated" if label in simulated else "not simulated: MBAR reweights the simulated temperatures"
        lines += [f"\nT = {label} {unit} ({kind}; MBAR effective sample size {target['mbar_effective_sample_size']:g})",
                  f"  {'state':<7}{'generated':>10}{'MBAR':>8}   region (share of the state's weight)"]  # fmt: skip
        regions = target.get("regions")
        for k, (generated, mbar) in enumerate(zip(target["state_populations"], target["mbar_state_populations"],
                                                  strict=True)):  # fmt: skip
            where = f"{regions['state_region'][k]} ({regions['state_share'][k]:.2f})" if regions else ""
            lines.append(f"  {k:<7}{generated:>10.3f}{mbar:>8.3f}   {where}")
        if regions:
            exact, reference = regions["exact_populations"], regions.get("reference_populations")
            lines.append(f"  {'region':<9}{'generated':>10}{'MBAR':>8}" + (f"{'reference ± block error':>25}" if
                         reference else "") + (f"{'exact':>8}" if exact else ""))  # fmt: skip
            for i, name in enumerate(regions["names"]):
                line = f"  {name:<9}{regions['generated_populations'][i]:>10.3f}{regions['mbar_populations'][i]:>8.3f}"
                if reference:
                    line += f"{reference[i]:>16.3f} ± {regions['reference_block_error'][i]:.3f}"
                lines.append(line + (f"{exact[i]:>8.3f}" if exact else ""))
    melting = summary.get("melting")
    for source, fit in (melting or {}).get("two_state_fits", {}).items():
        found = f"T_m = {fit['melting_temperature']:.1f} {unit}" if fit else "no melting in the targets' range"
        lines.append(f"{melting['region']} (two-state fit, {source}): {found}")
    return "\n".join(lines)


def summarize(
    config: LoopConfig, out: Path, history: list[dict[str, Any]], model_path: Path, estimate: EquilibriumEstimate,
    final_cpu: float, validation: dict[float, str], seconds: float, cpu_seconds: float, validation_cpu: float,
) -> dict[str, Any]:  # fmt: skip
    """Write the loop's summary (``summary.json``, ``summary.png``) and the final model's exports; return the summary.

    The summary holds per target temperature the final model's generated populations and
    profiles beside MBAR's prediction from all runs whose bias is known at every frame (the
    last round's ``estimate``, at the target); validation MD where asked; the rounds; the costs
    (``cpu_seconds`` in all, ``validation_cpu_seconds`` of it for the validation MD).
    """
    model = load_model(model_path)
    baseline = reweighted(estimate, latent_by_run(model_path, estimate.runs), config.targets)
    molsys = load_workflow_system(config)  # built once: the regions here, the exports in _write_final
    regions = molsys.regions
    if regions is not None:  # the region of every frame of the estimate's and the validation runs, from positions
        frame_regions = np.concatenate([regions.of_frames(Run.open(run).load_trajectory()) for run in estimate.runs])
        reference = {t: regions.of_frames(Run.open(run).load_trajectory()) for t, run in validation.items()}
    targets: dict[str, Any] = {}
    for k, temperature in enumerate(config.targets):
        samples = model.sample(temperature, config.samples, seed=config.seed + k)
        profiles = []
        for component in range(model.latent_dim):
            counts, edges = np.histogram(samples[:, component], bins=50)
            with np.errstate(divide="ignore"):
                free = -np.log(counts / counts.max())
            profiles.append(
                {
                    "s": (0.5 * (edges[1:] + edges[:-1])).tolist(),
                    "free_energy_kT": np.where(counts, free, None).tolist(),
                }
            )
        mbar_populations, mbar_size = reweighted_populations(model, *baseline[f"{temperature:g}"])
        generated_states = model.latent_populations(samples)
        targets[f"{temperature:g}"] = {
            "state_populations": generated_states.tolist(),
            "mbar_state_populations": mbar_populations.tolist(),
            "mbar_effective_sample_size": round(mbar_size, 1),
            "free_energy_profiles": profiles,
        }
        if regions is not None:
            targets[f"{temperature:g}"]["regions"] = named_regions(
                regions,
                model,
                *baseline[f"{temperature:g}"],
                frame_regions,
                temperature,
                generated_states,
                reference.get(temperature),
            )
        if temperature in validation:
            targets[f"{temperature:g}"]["md_comparison"] = _compare_with_md(model, samples, validation[temperature])
    summary = {
        "temperature_unit": model.info.get("temperature_unit"),
        "targets": targets,
        "rounds": [{k: r.get(k) for k in ROUND_SUMMARY_KEYS} for r in (relative_record(r, out) for r in history)],
        "final_model": stored_path(model_path, out),  # relative to the run folder, as every path it keeps
        "converged": bool(history) and converged(config, history[-1]),
        "tolerance": config.tolerance,
        "fes_tolerance": config.fes_tolerance,
        "wall_seconds_last_session": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "validation_cpu_seconds": round(validation_cpu, 1),
    }
    if regions is not None and regions.melting is not None:
        summary["melting"] = melting_curves(regions.melting, targets, summary["temperature_unit"])
        plot_melting(summary["melting"], summary["temperature_unit"], out / "melting.png")
    write_json(out / SUMMARY, summary)
    plot_loop(summary, history, out / "summary.png")
    _write_final(config, molsys, model, out / FINAL, history[-1], summary, final_cpu)
    if model.latent_dim == 2:
        generate(model, config.targets, min(config.samples, 50_000), out / "generated.npz", plot=out / "fes.png")
    return summary
