"""Reports: free-energy surfaces and plots of finished runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latf_openmm.errors import LatfError
from latf_openmm.files import save_figure, write_npz
from latf_openmm.generation import FES_CAP_KT, two_state_folded_fraction
from latf_openmm.simulation.run import Run, find_runs
from latf_openmm.units import KB_KJ_PER_MOL_K


@dataclass(frozen=True)
class FreeEnergySurface:
    """F(s1, s2) = −k_B T ln p on a histogram grid, minimum set to zero; NaN where empty."""

    free_energy: np.ndarray  # (n_bins, n_bins), kJ/mol (ε for reduced units)
    x_edges: np.ndarray
    y_edges: np.ndarray
    temperature_K: float


def free_energy_surface(
    samples: np.ndarray,
    temperature_K: float,
    bins: int = 60,
    weights: np.ndarray | None = None,
    ranges: Sequence[Sequence[float]] | None = None,
) -> FreeEnergySurface:
    """Free-energy surface of 2-D samples at temperature ``temperature_K``.

    Parameters
    ----------
    samples
        (n, 2) array of CV values.
    temperature_K
        Temperature, K; F is in kJ/mol.
    bins
        Bins per dimension.
    weights
        Optional non-negative per-sample weights (e.g. reweighting factors).
    ranges
        ``[[xmin, xmax], [ymin, ymax]]``; default: the samples' extent.
    """
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or samples.shape[1] != 2 or len(samples) == 0:
        raise LatfError(f"free-energy surface needs samples of shape (n, 2), got {samples.shape}")
    if not np.isfinite(samples).all():
        raise LatfError("free-energy surface: samples contain NaN or inf")
    if weights is not None and (np.shape(weights) != (len(samples),) or np.any(np.asarray(weights) < 0)):
        raise LatfError("free-energy surface: weights must be non-negative, one per sample")
    hist, x_edges, y_edges = np.histogram2d(
        samples[:, 0], samples[:, 1], bins=bins, range=ranges, weights=weights, density=True
    )
    kt = KB_KJ_PER_MOL_K * temperature_K
    with np.errstate(divide="ignore"):
        free = -kt * np.log(hist)
    free[~np.isfinite(free)] = np.nan
    free -= np.nanmin(free)
    return FreeEnergySurface(free, x_edges, y_edges, float(temperature_K))


def plot_run_free_energies(
    paths: Sequence[str | Path], out_png: str | Path, features: Sequence[str | int] = (0, 1), bins: int = 60
) -> list[FreeEnergySurface]:
    """Plot the free-energy surface of two features for each finished run, one panel per run.

    Also writes the surfaces to ``out_png`` with suffix ``.npz``. Returns the surfaces.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(features) != 2:
        raise LatfError(f"choose exactly two features to plot, got {list(features)}")
    runs = find_runs(paths)
    loaded = []
    for run in map(Run.open, runs):
        series = run.load_timeseries()
        names = [str(n) for n in series["feature_names"]]
        columns = [_feature_column(f, names, run.directory) for f in features]
        loaded.append((run.settings, series["features"][:, columns], [names[c] for c in columns]))
    stacked = np.concatenate([samples for _, samples, _ in loaded])
    ranges = [[stacked[:, k].min(), stacked[:, k].max()] for k in range(2)]
    surfaces = [free_energy_surface(s, settings["temperature_K"], bins, ranges=ranges) for settings, s, _ in loaded]
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs) + 1.0, 3.6), squeeze=False, layout="constrained")
    for ax, surface, (settings, _, labels) in zip(axes[0], surfaces, loaded, strict=True):
        shown = np.minimum(surface.free_energy / (KB_KJ_PER_MOL_K * surface.temperature_K), FES_CAP_KT)
        mesh = ax.pcolormesh(surface.x_edges, surface.y_edges, shown.T, cmap="viridis", shading="flat", vmin=0,
                             vmax=FES_CAP_KT)  # fmt: skip
        title = f"{settings['system']}  T = {settings['temperature']:g} {settings['temperature_unit']}"
        ax.set(xlabel=labels[0], ylabel=labels[1], title=title)
    fig.colorbar(mesh, ax=axes[0].tolist(), label=f"F − F_min (k_BT; capped at {FES_CAP_KT:g})")
    save_figure(fig, out_png, layout=False)
    write_npz(
        Path(out_png).with_suffix(".npz"),
        free_energy=np.stack([s.free_energy for s in surfaces]),
        x_edges=surfaces[0].x_edges,
        y_edges=surfaces[0].y_edges,
        temperature_K=np.array([s.temperature_K for s in surfaces]),
        runs=np.array([str(r) for r in runs]),
    )
    return surfaces


def plot_loop(summary: dict, rounds: list[dict], out_png: str | Path) -> None:
    """Plot three panels of a ``latf loop`` run.

    Generated state populations against temperature (each state labelled with the named
    region it lies in, where the system names regions), how much each round's data changed
    populations and free-energy profiles against the workflow's tolerances, and every CV
    component of the last round's walkers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pops, change, walkers) = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    temperatures = sorted(summary["targets"], key=float)
    table = np.array([summary["targets"][t]["state_populations"] for t in temperatures])
    regions = summary["targets"][temperatures[0]].get("regions")
    for state in range(table.shape[1]):
        where = f" ({regions['state_region'][state]})" if regions else ""
        pops.plot([float(t) for t in temperatures], table[:, state], "o-", label=f"state {state}{where}")
    pops.set(xlabel=f"T ({summary['temperature_unit']})", ylabel="population", title="generated populations")
    pops.legend(fontsize=8)
    numbers = [r["round"] for r in rounds]
    lines = change.semilogy(numbers, [r["population_change"] for r in rounds], "o-", label="max |Δ population|")
    change.axhline(summary["tolerance"], color=lines[0].get_color(), ls=":", label="its tolerance")
    lines = change.semilogy(numbers, [r["fes_change_kT"] for r in rounds], "s-", label="RMS ΔF (k_BT)")
    change.axhline(summary["fes_tolerance"], color=lines[0].get_color(), ls=":", label="its tolerance")
    change.set(xlabel="round", ylabel="change from the round's data", title="convergence")
    change.xaxis.get_major_locator().set_params(integer=True)
    change.legend(fontsize=8)
    for k, walker in enumerate(rounds[-1]["walkers"]):
        run = Run.open(walker)
        time, cv = run.load_timeseries()["time"], run.cv()
        if cv.shape[1] >= 2:  # where each walker went in the CV plane
            walkers.plot(cv[:, 0], cv[:, 1], ".", ms=1, alpha=0.3, color=f"C{k}", label=f"walker {k}")
        else:
            walkers.plot(time, cv[:, 0], lw=0.5, color=f"C{k}", label=f"walker {k}")
    two_d = cv.shape[1] >= 2
    walkers.set(xlabel="s0" if two_d else "time (ps)", ylabel="s1" if two_d else "s0",
                title=f"walkers' CV, round {rounds[-1]['round']}")  # fmt: skip
    walkers.legend(fontsize=8, markerscale=8)
    save_figure(fig, out_png, layout=False)


def plot_melting(melting: dict[str, Any], unit: str | None, out_png: str | Path) -> None:
    """Plot a melting curve: a region's population against T, generated, by MBAR and in the reference runs.

    The reference has its block errors; each curve its two-state fit, with T_m in the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    temperatures = np.array(melting["temperatures"])
    dense = np.linspace(temperatures.min(), temperatures.max(), 200)
    styles = {"generated": ("o", "generated (model)"), "mbar": ("s", "MBAR (runs)"), "reference": ("^", "reference")}
    for k, (source, (marker, label)) in enumerate(styles.items()):
        if source not in melting:
            continue
        fit = melting["two_state_fits"].get(source)
        if fit:
            label += f", T_m = {fit['melting_temperature']:.0f} {unit}"
            ax.plot(dense, two_state_folded_fraction(dense, fit["melting_temperature"], fit["enthalpy"]),
                    color=f"C{k}", lw=1)  # fmt: skip
        errors = melting["reference_block_error"] if source == "reference" else None
        ax.errorbar(temperatures, melting[source], yerr=errors, fmt=marker, color=f"C{k}", label=label, capsize=3)
    ax.set(xlabel=f"T ({unit})", ylabel=f"{melting['region']} fraction", ylim=(-0.02, 1.02),
           title=f"{melting['region']} fraction against temperature")  # fmt: skip
    ax.legend(fontsize=8)
    save_figure(fig, out_png, layout=False)


def _feature_column(feature: str | int, names: list[str], run: Path) -> int:
    if isinstance(feature, int) or str(feature).isdigit():
        index = int(feature)
        if not 0 <= index < len(names):
            raise LatfError(f"{run}: feature index {index} out of range (0..{len(names) - 1})")
        return index
    if feature not in names:
        raise LatfError(f"{run}: no feature named {feature!r}; features are {', '.join(names)}")
    return names.index(feature)


__all__ = [
    "FreeEnergySurface",
    "free_energy_surface",
    "plot_loop",
    "plot_melting",
    "plot_run_free_energies",
]
