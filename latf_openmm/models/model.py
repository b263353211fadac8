"""Trained models: latent CVs, states, and (LaTF) generation at any temperature."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latf_openmm.errors import LatfError
from latf_openmm.features import Featurizer, resolved_featurizer
from latf_openmm.files import atomic_path
from latf_openmm.models import prior
from latf_openmm.models.free_energy import LatentFreeEnergyModel
from latf_openmm.models.network import LatentNetwork
from latf_openmm.units import KB_KJ_PER_MOL_K

FORMAT = "latf_openmm.latent_model"
FORMAT_VERSION = 1


class SPIBModel:
    """A trained SPIB model: features → latent CV and metastable state.

    Parameters
    ----------
    network
        The trained network (moved to CPU, evaluation mode).
    info
        Everything else saved with it: ``architecture``, ``config``, ``feature_names``,
        ``data_digest``, ``state_populations``, ``history``, temperature information.
    """

    kind = "spib"
    grid_prior: LatentFreeEnergyModel | None = None

    def __init__(self, network: LatentNetwork, info: dict[str, Any]) -> None:
        self.network = network.cpu().eval()
        self.info = info

    @property
    def latent_dim(self) -> int:
        """Dimension of the latent CV."""
        return self.network.latent_dim

    @property
    def n_states(self) -> int:
        """Number of metastable states."""
        return self.network.n_states

    @property
    def feature_names(self) -> list[str]:
        """Names of the input features."""
        return list(self.info["feature_names"])

    @property
    def featurizer(self) -> Featurizer | None:
        """The featurizer the model was trained with (positions → its features), if the data recorded it.

        Models trained on ``.npz`` arrays, or saved before this was kept, have none: pass the
        featurizer to :class:`~latf_openmm.bias.LearnedCV` and the export then, or retrain
        from the run folders.
        """
        resolved = self.info.get("featurizer")
        return None if resolved is None else resolved_featurizer(resolved)

    def _features(self, features: np.ndarray) -> torch.Tensor:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise LatfError(f"features must have shape (n, {len(self.feature_names)}), got {features.shape}")
        if not np.isfinite(features).all():
            raise LatfError("features contain NaN or inf")
        return torch.from_numpy(features)

    @torch.no_grad()
    def transform(self, features: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Latent CV (encoder mean) of each row of ``features``."""
        return torch.cat([self.network(c) for c in self._features(features).split(batch_size)]).numpy()

    @torch.no_grad()
    def predict_state(self, features: np.ndarray) -> np.ndarray:
        """Most probable metastable state of each row of ``features``."""
        return self.latent_state(self.transform(features))

    @torch.no_grad()
    def latent_state(self, latent: np.ndarray) -> np.ndarray:
        """Most probable state of latent points (n, d)."""
        latent = torch.as_tensor(np.asarray(latent, dtype=np.float32))
        return self.network.state_log_probs(latent).argmax(-1).numpy()

    def latent_populations(self, latent: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fraction of latent points (n, d) in each metastable state, optionally weighted per point."""
        counts = np.bincount(self.latent_state(latent), weights=weights, minlength=self.n_states)
        return counts / max(counts.sum(), 1e-300)

    def save(self, path: str | Path) -> None:
        """Save atomically; :func:`load_model` restores an identical model."""
        payload = {
            "grid_prior": None if self.grid_prior is None else self.grid_prior.state_dict(),
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "info": self.info,
            "n_states": self.n_states,
            "state_dict": self.network.state_dict(),
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)


class LaTFModel(SPIBModel):
    """A trained LaTF model: SPIB plus a generative prior on its latent at any temperature.

    The prior (``info["config"]["prior"]``) is either the published one, a flow onto the
    temperature-steered tilted Gaussian (``network.flow``), or a latent free energy
    H(s) − T·S(s) on a grid (``grid_prior``, :mod:`latf_openmm.models.free_energy`).
    Temperatures are in the training data's unit (``info["temperature_unit"]``);
    ``T′ = T / reference_temperature``.
    """

    kind = "latf"

    def __init__(
        self, network: LatentNetwork, info: dict[str, Any], grid_prior: LatentFreeEnergyModel | None = None
    ) -> None:
        super().__init__(network, info)
        if (grid_prior is None) == (network.flow is None):
            raise LatfError("a LaTF model needs exactly one generative prior: a flow or a latent free energy")
        self.grid_prior = grid_prior

    @property
    def tau(self) -> float:
        """Tilting factor τ of the prior."""
        return float(self.info["config"]["tau"])

    @property
    def reference_temperature(self) -> float:
        """T_ref: the temperature at which T′ = 1."""
        return float(self.info["reference_temperature"])

    def _scaled(self, temperature: float) -> float:
        temperature = float(temperature)
        if not np.isfinite(temperature) or temperature <= 0:
            raise LatfError(f"temperature must be positive, got {temperature}")
        return temperature / self.reference_temperature

    @torch.no_grad()
    def sample(self, temperature: float, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` latent samples of the equilibrium distribution at ``temperature``.

        Exact samples of the prior: the tilted Gaussian at T′ mapped through the inverse
        flow, or the latent free energy's p(s | T) cell by cell.
        """
        if n < 0:
            raise LatfError(f"number of samples must be non-negative, got {n}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if self.grid_prior is not None:
            return self.grid_prior.sample(temperature, n, generator).astype(np.float32)
        z = prior.sample(n, self.latent_dim, self.tau, self._scaled(temperature), generator)
        u, _ = self.network.flow.inverse(z.to(self.network.log_var.dtype))
        return u.numpy()

    @torch.no_grad()
    def log_prob(self, latent: np.ndarray, temperature: float) -> np.ndarray:
        """Return log p(s | T) of latent points (float64).

        It is the flow's by change of variables, or the latent free energy's (−inf outside its box).
        """
        latent = np.asarray(latent, dtype=np.float64)
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise LatfError(f"latent points must have shape (n, {self.latent_dim}), got {latent.shape}")
        if self.grid_prior is not None:
            return self.grid_prior.log_prob(latent, temperature)
        flow = copy.deepcopy(self.network.flow).double()  # float64 density; the model keeps its dtype
        z, log_det = flow(torch.from_numpy(latent))
        return (prior.log_prob(z, self.tau, self._scaled(temperature)) + log_det).numpy()

    def free_energy(self, grid: np.ndarray, temperature: float) -> np.ndarray:
        """F(s; T) = −k_B T log p(s | T) at latent points ``grid`` (n, d).

        In kJ/mol when temperatures are in K; otherwise in the temperature's unit
        (ε for reduced units, k_B = 1).
        """
        k_b = KB_KJ_PER_MOL_K if self.info.get("temperature_unit") == "K" else 1.0
        return -k_b * float(temperature) * self.log_prob(grid, temperature)

    def state_populations(self, temperature: float, n: int = 200_000, seed: int = 0) -> np.ndarray:
        """Estimate the populations of the metastable states at ``temperature``, from ``n`` generated samples."""
        return self.latent_populations(self.sample(temperature, n, seed))


def load_model(path: str | Path) -> SPIBModel:
    """Load a model saved by :meth:`SPIBModel.save`."""
    path = Path(path)
    if not path.is_file():
        raise LatfError(f"model file not found: {path}")
    if zipfile.is_zipfile(path) and any(name.endswith("constants.pkl") for name in zipfile.ZipFile(path).namelist()):
        raise LatfError(
            f"{path} is an exported CV (TorchScript, positions → CV), not a model; "
            "give the model file it was exported from (model.pt)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign files
        raise LatfError(f"cannot read model {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LatfError(f"{path} is not a latf_openmm model")
    if payload["version"] > FORMAT_VERSION:
        raise LatfError(f"{path} was written by a newer latf_openmm (format {payload['version']})")
    info = payload["info"]
    network = LatentNetwork(n_states=payload["n_states"], **info["architecture"])
    network.load_state_dict(payload["state_dict"])
    if payload["kind"] != "latf":
        return SPIBModel(network, info)
    grid_prior = payload.get("grid_prior")
    return LaTFModel(network, info, None if grid_prior is None else LatentFreeEnergyModel.from_state_dict(grid_prior))
