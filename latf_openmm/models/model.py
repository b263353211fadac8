"""Trained models: the latent CV and metastable states (SPIB), and a generative prior at any temperature.

One class for every model: what differs between SPIB, LaTF and D-SPIB is the prior on the
latent (:mod:`latf_openmm.models.priors`), a part of the model.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latf_openmm.devices import torch_device
from latf_openmm.errors import LatfError
from latf_openmm.features import Featurizer, resolved_featurizer
from latf_openmm.files import atomic_path
from latf_openmm.models.diffusion import DiffusionPrior
from latf_openmm.models.free_energy import LatentFreeEnergyModel
from latf_openmm.models.network import LatentNetwork
from latf_openmm.models.priors import FlowPrior, GenerativePrior, VampPrior
from latf_openmm.units import KB_KJ_PER_MOL_K

FORMAT = "latf_openmm.latent_model"
FORMAT_VERSION = 2  # 2: the prior saved as a part ("prior"); 1: LaTF's flow inside the network, or "grid_prior"
PRIOR_TYPES: dict[str, type[GenerativePrior]] = {
    p.kind: p for p in (VampPrior, FlowPrior, LatentFreeEnergyModel, DiffusionPrior)
}
MODEL_OF_PRIOR = {"vamp": "spib", "flow": "latf", "grid": "latf", "diffusion": "dspib"}


class LatentModel:
    """A trained model: features → latent CV and metastable state, and its prior p(s | T) on the latent.

    Parameters
    ----------
    network
        The trained encoder and decoder (moved to CPU, evaluation mode).
    info
        Everything else saved with it: ``architecture``, ``config``, ``feature_names``,
        ``data_digest``, ``state_populations``, ``history``, temperature information.
    prior
        The generative prior: SPIB's VampPrior (the default: the network's own), LaTF's flow or
        latent free energy, or D-SPIB's diffusion model. Temperatures are in the training data's
        unit (``info["temperature_unit"]``).
    """

    def __init__(self, network: LatentNetwork, info: dict[str, Any], prior: GenerativePrior | None = None) -> None:
        self.network = network.cpu().eval()
        self.info = info
        prior = network.vamp_prior(info.get("temperatures")) if prior is None else prior
        self.prior = prior.cpu().eval() if isinstance(prior, torch.nn.Module) else prior
        if prior.dim != network.latent_dim:
            raise LatfError(f"the prior is {prior.dim}-dimensional, the latent {network.latent_dim}-dimensional")

    @property
    def kind(self) -> str:
        """The model: 'spib', 'latf' or 'dspib' (from its prior)."""
        return MODEL_OF_PRIOR[self.prior.kind]

    @property
    def latent_dim(self) -> int:
        """Dimension of the latent CV."""
        return self.network.latent_dim

    @property
    def n_states(self) -> int:
        """Number of metastable states."""
        return self.network.n_states

    @property
    def reference_temperature(self) -> float:
        """T_ref: the temperature at which T′ = T / T_ref = 1."""
        return float(self.prior.reference_temperature)

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
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "info": self.info,
            "n_states": self.n_states,
            "state_dict": self.network.state_dict(),
            "prior": {"kind": self.prior.kind, "state": self.prior.state()},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def to(self, device: str | None = "auto") -> LatentModel:
        """Move the generative prior's networks (LaTF's flow, D-SPIB's diffusion model) to ``device``; return self.

        Sampling and densities then run there (``auto``: CUDA where torch finds it); the noise is
        still drawn on the CPU, so a seed gives the same samples on either. Priors that are
        tables (SPIB's VampPrior, the grid prior) and the encoder stay on the CPU.
        """
        if isinstance(self.prior, torch.nn.Module):
            self.prior.to(torch_device(device))
        return self

    def sample(self, temperature: float, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` latent samples (float32) of the prior's equilibrium distribution at ``temperature``."""
        return self.prior.sample(temperature, n, seed).astype(np.float32)

    def log_prob(self, latent: np.ndarray, temperature: float) -> np.ndarray:
        """Return log p(s | T) of latent points (n, d), float64."""
        return self.prior.log_prob(latent, temperature)

    def free_energy(self, grid: np.ndarray, temperature: float) -> np.ndarray:
        """F(s; T) = −k_B T log p(s | T) at latent points ``grid`` (n, d).

        In kJ/mol when temperatures are in K; otherwise in the temperature's unit
        (ε for reduced units, k_B = 1).
        """
        return -self.boltzmann_constant * float(temperature) * self.log_prob(grid, temperature)

    @property
    def boltzmann_constant(self) -> float:
        """k_B in the model's units: kJ/(mol K) for temperatures in K, 1 for reduced units (k_BT in ε)."""
        return KB_KJ_PER_MOL_K if self.info.get("temperature_unit") == "K" else 1.0

    def state_populations(self, temperature: float, n: int = 200_000, seed: int = 0) -> np.ndarray:
        """Estimate the populations of the metastable states at ``temperature``, from ``n`` generated samples."""
        return self.latent_populations(self.sample(temperature, n, seed))


def load_model(path: str | Path) -> LatentModel:
    """Load a model saved by :meth:`LatentModel.save` (this format or the previous one)."""
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
    weights = dict(payload["state_dict"])
    flow_weights = {k.removeprefix("flow."): weights.pop(k) for k in list(weights) if k.startswith("flow.")}  # format 1
    architecture = {k: v for k, v in info["architecture"].items() if k not in ("flow_layers", "flow_hidden")}
    network = LatentNetwork(n_states=payload["n_states"], **architecture)
    network.load_state_dict(weights)
    if payload["version"] == 1:
        prior = _format_1_prior(payload, network, flow_weights)
    else:
        prior = PRIOR_TYPES[payload["prior"]["kind"]].from_state(payload["prior"]["state"])
    return LatentModel(network, info, prior)


def _format_1_prior(
    payload: dict[str, Any], network: LatentNetwork, flow_weights: dict[str, torch.Tensor]
) -> GenerativePrior:
    """Return the prior of a format-1 file: SPIB's VampPrior, the grid prior, or the flow taken out of the network."""
    info = payload["info"]
    if payload["kind"] != "latf":
        return network.vamp_prior(info.get("temperatures"))
    if payload.get("grid_prior") is not None:
        return LatentFreeEnergyModel.from_state(payload["grid_prior"])
    architecture = info["architecture"]
    flow = FlowPrior(architecture["latent_dim"], architecture["flow_layers"], architecture["flow_hidden"],
                     info["config"]["tau"], info["reference_temperature"])  # fmt: skip
    flow.flow.load_state_dict(flow_weights)
    return flow.eval()
