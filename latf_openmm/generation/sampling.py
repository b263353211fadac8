"""Generate latent samples, free-energy surfaces and state populations at chosen temperatures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from latf_openmm.errors import LatfError
from latf_openmm.files import save_figure, write_npz
from latf_openmm.models import LaTFModel
from latf_openmm.reweighting import effective_sample_size


def reweighted_populations(model: LaTFModel, latent: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the state populations of frames under equilibrium ``weights``, and their ESS.

    ``latent`` (n, d) are simulated frames' latent CV, ``weights`` their equilibrium weights
    (e.g. MBAR's at a target temperature); the Kish effective sample size says how many
    independent frames the populations rest on.
    """
    return model.latent_populations(latent, weights), effective_sample_size(weights)


def generate(
    model: LaTFModel,
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
    ``free_energy`` (n_T, bins[, bins]; see :meth:`LaTFModel.free_energy` for units).
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
        _plot(result, plot)
    return result


def _plot(result: dict[str, np.ndarray], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = result["temperatures"]
    fig, axes = plt.subplots(1, len(temps), figsize=(4.2 * len(temps), 3.6), squeeze=False)
    x, y = result["grid"]
    for ax, t, free in zip(axes[0], temps, result["free_energy"], strict=True):
        shown = free - free.min()
        cap = np.percentile(shown, 60)
        mesh = ax.pcolormesh(x, y, np.minimum(shown, cap).T, cmap="viridis", shading="nearest")
        fig.colorbar(mesh, ax=ax, label="F − F_min")
        ax.set(xlabel="s1", ylabel="s2", title=f"T = {t:g} {result['temperature_unit']}")
    save_figure(fig, path)
