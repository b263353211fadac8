"""Generate latent samples, free-energy surfaces and state populations at chosen temperatures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from latf_openmm.errors import LatfError
from latf_openmm.files import save_figure, write_npz
from latf_openmm.models import LatentModel
from latf_openmm.reweighting import effective_sample_size
from latf_openmm.units import KB_KJ_PER_MOL_K

FES_CAP_KT = 10.0  # free-energy plots show F − F_min up to this many k_BT


def reweighted_populations(model: LatentModel, latent: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the state populations of frames under equilibrium ``weights``, and their ESS.

    ``latent`` (n, d) are simulated frames' latent CV, ``weights`` their equilibrium weights
    (e.g. MBAR's at a target temperature); the Kish effective sample size says how many
    independent frames the populations rest on.
    """
    return model.latent_populations(latent, weights), effective_sample_size(weights)


def generate(
    model: LatentModel,
    temperatures: Sequence[float],
    n: int,
    out: str | Path,
    bins: int = 80,
    seed: int = 0,
    plot: str | Path | None = None,
    reweighted: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Generate samples, state populations and (d ≤ 2) free energies of ``model`` at each temperature.

    Writes an ``.npz`` with ``temperatures``, ``samples`` (n_T, n, d), ``state_populations``
    (n_T, n_states) and, for d ≤ 2, ``grid`` (one axis per latent dimension) and
    ``free_energy`` (n_T, bins[, bins]; see :meth:`LatentModel.free_energy` for units).
    With ``reweighted`` (per temperature, simulated frames' latent CV and their MBAR weights
    there), also the physics baseline beside the generated figures:
    ``mbar_state_populations`` (n_T, n_states) and ``mbar_effective_sample_size`` (n_T,).
    Returns the same arrays.
    """
    if not len(temperatures):
        raise LatfError("give at least one temperature")
    if n < 1 or bins < 2:
        raise LatfError(f"need n ≥ 1 samples and bins ≥ 2, got n={n}, bins={bins}")
    if reweighted is not None and len(reweighted) != len(temperatures):
        raise LatfError(f"the MBAR baseline needs one (latent, weights) pair per temperature, got {len(reweighted)}")
    samples = np.stack([model.sample(t, n, seed + i) for i, t in enumerate(temperatures)])
    populations = np.stack([model.latent_populations(s) for s in samples])
    result: dict[str, np.ndarray] = {
        "temperatures": np.asarray(temperatures, dtype=float),
        "samples": samples,
        "state_populations": populations,
        "temperature_unit": np.array(model.info.get("temperature_unit", "")),
    }
    if reweighted is not None:
        baseline = [reweighted_populations(model, latent, weights) for latent, weights in reweighted]
        result["mbar_state_populations"] = np.stack([p for p, _ in baseline])
        result["mbar_effective_sample_size"] = np.array([ess for _, ess in baseline])
    if model.latent_dim <= 2:
        flat = samples.reshape(-1, model.latent_dim)
        low, high = np.percentile(flat, 0.1, axis=0), np.percentile(flat, 99.9, axis=0)
        pad = 0.1 * (high - low)
        axes = [np.linspace(lo, hi, bins) for lo, hi in zip(low - pad, high + pad, strict=True)]
        mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, model.latent_dim)
        result["grid"] = np.stack(axes)
        result["free_energy"] = np.stack(
            [model.free_energy(mesh, t).reshape((bins,) * model.latent_dim) for t in temperatures]
        )
    write_npz(out, **result)
    if plot is not None:
        if model.latent_dim != 2:
            raise LatfError("free-energy plots need a 2-D latent space")
        _plot(result, plot, sorted(set(model.info.get("temperatures") or ())))
    return result


def _plot(result: dict[str, np.ndarray], path: str | Path, trained: Sequence[float] = ()) -> None:
    """Plot F(s0, s1) − F_min in k_BT at each temperature, on one scale, marking temperatures not trained on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps, unit = result["temperatures"], str(result["temperature_unit"])
    kb = 1.0 if unit == "kT/eps" else KB_KJ_PER_MOL_K  # model.free_energy is in ε, or kJ/mol
    fig, axes = plt.subplots(1, len(temps), figsize=(3.6 * len(temps) + 1.0, 3.6), squeeze=False, layout="constrained")
    x, y = result["grid"]
    for ax, t, free in zip(axes[0], temps, result["free_energy"], strict=True):
        shown = np.minimum((free - free.min()) / (kb * t), FES_CAP_KT)
        mesh = ax.pcolormesh(x, y, shown.T, cmap="viridis", shading="nearest", vmin=0, vmax=FES_CAP_KT)
        untrained = len(trained) and not any(np.isclose(t, trained_t) for trained_t in trained)
        ax.set(xlabel="s0", ylabel="s1")
        ax.set_title(f"T = {t:g} {unit}" + (" (not trained on)" if untrained else ""),
                     color="firebrick" if untrained else "black", fontsize=10)  # fmt: skip
    fig.colorbar(mesh, ax=axes[0].tolist(), label=f"F − F_min (k_BT; capped at {FES_CAP_KT:g})")
    save_figure(fig, path, layout=False)
