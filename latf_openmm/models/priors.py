"""Generative priors p(s | T) on the SPIB latent: one interface, one implementation per model.

Every prior has ``log_prob(latent, T)``, ``sample(T, n, seed)`` and a weighted ``fit(latent,
weights, temperatures)`` that returns a new prior, plus ``state()`` / ``from_state`` for saving.
Temperatures are in the training data's unit; ``T′ = T / reference_temperature``.

- :class:`VampPrior`: SPIB's mixture of Gaussians at its states' representative points;
  it has no temperature dependence, so it describes its training temperature only.
- :class:`FlowPrior`: LaTF's RealNVP flow onto the temperature-steered tilted Gaussian.
- :class:`~latf_openmm.models.free_energy.LatentFreeEnergyModel`: LaTF's grid prior H − T·S.
- :class:`~latf_openmm.models.diffusion.DiffusionPrior`: D-SPIB's temperature-conditioned diffusion.

The neural priors (flow, diffusion) also have ``loss(latent, T′)``, the per-point term they
add to SPIB's loss in joint training, and share one ``fit``: that loss, minimized alone on fixed
latent points ("polishing").
"""

from __future__ import annotations

import abc
import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from latf_openmm.errors import LatfError
from latf_openmm.models import tilted
from latf_openmm.models.flow import RealNVP

log = logging.getLogger(__name__)


def checked_temperature(temperature: float) -> float:
    """Return ``temperature`` as a float; raise :class:`LatfError` unless it is finite and > 0."""
    temperature = float(temperature)
    if not np.isfinite(temperature) or temperature <= 0:
        raise LatfError(f"temperature must be positive, got {temperature}")
    return temperature


def checked_latent(latent: np.ndarray, dim: int) -> np.ndarray:
    """Return ``latent`` as float64 (n, ``dim``); raise :class:`LatfError` for another shape or NaN."""
    latent = np.asarray(latent, dtype=np.float64)
    if latent.ndim != 2 or latent.shape[1] != dim:
        raise LatfError(f"latent points must have shape (n, {dim}), got {latent.shape}")
    if not np.isfinite(latent).all():
        raise LatfError("latent points must be finite (they contain NaN or inf)")
    return latent


def checked_count(n: int) -> int:
    """Return ``n``; raise :class:`LatfError` if it is negative."""
    if n < 0:
        raise LatfError(f"number of samples must be non-negative, got {n}")
    return int(n)


def generator_for(seed: int | None) -> torch.Generator | None:
    """Return a CPU generator seeded with ``seed``, or None (torch's global stream) for no seed."""
    return None if seed is None else torch.Generator().manual_seed(int(seed))


class GenerativePrior(abc.ABC):
    """The interface of a prior p(s | T) on the latent (see the module's docstring)."""

    kind: ClassVar[str]
    reference_temperature: float

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Latent dimension d."""

    @abc.abstractmethod
    def log_prob(self, latent: np.ndarray, temperature: float) -> np.ndarray:
        """Return log p(s | T) of latent points (n, d), float64."""

    @abc.abstractmethod
    def sample(self, temperature: float, n: int, seed: int | None = None) -> np.ndarray:
        """Return ``n`` samples (n, d) of p(s | T)."""

    @abc.abstractmethod
    def fit(
        self,
        latent: np.ndarray,
        weights: np.ndarray,
        temperatures: np.ndarray,
        held_out: np.ndarray | None = None,
    ) -> GenerativePrior:
        """Return this prior fitted to latent points (n, d) with equilibrium ``weights`` at ``temperatures`` (n,).

        ``held_out`` (n,) marks points kept for validation (contiguous blocks of trajectories).
        """

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers, for ``torch.save(weights_only=True)``."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict[str, Any]) -> GenerativePrior:
        """Rebuild the prior that :meth:`state` describes."""


def checked_fit_data(
    latent: np.ndarray, weights: np.ndarray, temperatures: np.ndarray, dim: int, source: str = "prior fit"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return a prior fit's latent (n, ``dim``), weights (n,) and temperatures (n,) as float64, checked.

    Raise :class:`LatfError`, naming ``source``, for another shape, NaN, negative or all-zero
    weights, or temperatures ≤ 0.
    """
    latent = checked_latent(latent, dim)
    n = len(latent)
    weights = np.asarray(weights, dtype=np.float64)
    temperatures = np.broadcast_to(np.asarray(temperatures, dtype=np.float64), (n,))
    if weights.shape != (n,) or not (np.isfinite(weights).all() and (weights >= 0).all()) or weights.sum() <= 0:
        raise LatfError(f"{source}: weights must be finite, ≥ 0, one per point, not all zero")
    if not (np.isfinite(temperatures).all() and (temperatures > 0).all()):
        raise LatfError(f"{source}: temperatures must be finite and > 0")
    return latent, weights, temperatures


class VampPrior(GenerativePrior):
    """SPIB's VampPrior r(s) = Σ_k w_k N(s; c_k, σ²I): the state centres c_k = μ(X_k) of its representative inputs.

    It has no temperature: it is the training data's latent distribution at their temperature.
    It generates and has a density only there (any temperature when the data had none), and
    refuses others rather than return the training ensemble under another name.
    """

    kind = "vamp"

    def __init__(
        self, centres: np.ndarray, log_var: float, log_weights: np.ndarray, temperatures: list[float] | None
    ) -> None:
        self.centres = np.asarray(centres, dtype=np.float64)
        self.log_var = float(log_var)
        self.log_weights = np.asarray(log_weights, dtype=np.float64)
        self.temperatures = None if temperatures is None else [float(t) for t in temperatures]
        self.reference_temperature = 1.0 if not self.temperatures else min(self.temperatures)

    @property
    def dim(self) -> int:
        """Latent dimension d."""
        return self.centres.shape[1]

    def _check(self, temperature: float) -> None:
        temperature = checked_temperature(temperature)
        if self.temperatures is None:
            return
        if len(self.temperatures) > 1 or not math.isclose(temperature, self.temperatures[0], rel_tol=1e-9):
            trained = ", ".join(f"{t:g}" for t in self.temperatures)
            raise LatfError(
                f"a SPIB model's VampPrior has no temperature dependence: it describes its training data "
                f"(T = {trained}) and cannot generate at {temperature:g}; train a generative model "
                "('latf train --model latf' or '--model dspib')"
            )

    def _component_log_probs(self, latent: np.ndarray) -> np.ndarray:
        squared = ((latent[:, None, :] - self.centres[None]) ** 2).sum(-1)
        normal = -0.5 * (squared * math.exp(-self.log_var) + self.dim * (self.log_var + math.log(2 * math.pi)))
        return normal + self.log_weights

    def log_prob(self, latent: np.ndarray, temperature: float) -> np.ndarray:
        """Return log r(s) of latent points (n, d)."""
        self._check(temperature)
        return np.logaddexp.reduce(self._component_log_probs(checked_latent(latent, self.dim)), axis=1)

    def sample(self, temperature: float, n: int, seed: int | None = None) -> np.ndarray:
        """Return ``n`` samples: a component by its weight, then its Gaussian."""
        self._check(temperature)
        generator = generator_for(seed)
        weights = torch.from_numpy(np.exp(self.log_weights - self.log_weights.max()))
        n = checked_count(n)
        components = torch.multinomial(weights, n, replacement=True, generator=generator) if n else torch.zeros(0, int)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator).numpy()
        return self.centres[components.numpy()] + math.exp(0.5 * self.log_var) * noise

    def fit(
        self,
        latent: np.ndarray,
        weights: np.ndarray,
        temperatures: np.ndarray,
        held_out: np.ndarray | None = None,
    ) -> VampPrior:
        """Return the mixture with its weights w_k fitted by weighted EM (centres and σ fixed: they are the CV's).

        Every point counts (``held_out`` is not needed: the weights are a convex fit).
        """
        latent, weights, temperatures = checked_fit_data(latent, weights, temperatures, self.dim)
        log_weights = self.log_weights.copy()
        for _ in range(500):
            joint = self._component_log_probs(latent) - self.log_weights + log_weights
            responsibility = np.exp(joint - np.logaddexp.reduce(joint, axis=1, keepdims=True))
            mass = weights @ responsibility
            updated = np.log(np.maximum(mass / mass.sum(), 1e-300))
            converged = np.abs(np.exp(updated) - np.exp(log_weights)).max() < 1e-10
            log_weights = updated
            if converged:
                break
        return VampPrior(self.centres, self.log_var, log_weights, sorted(set(temperatures.tolist())))

    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers."""
        return {
            "centres": torch.from_numpy(self.centres),
            "log_var": self.log_var,
            "log_weights": torch.from_numpy(self.log_weights),
            "temperatures": self.temperatures,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> VampPrior:
        """Rebuild the prior that :meth:`state` describes."""
        return cls(state["centres"].numpy(), state["log_var"], state["log_weights"].numpy(), state["temperatures"])


@dataclass(frozen=True)
class FitSettings:
    """Optimizer settings of a neural prior's :meth:`NeuralPrior.fit` (the "polishing").

    Attributes
    ----------
    steps
        Adam steps; the learning rate decays to zero over them (cosine).
    learning_rate, batch_size
        Adam's initial learning rate and the minibatch of latent points.
    noise
        Standard deviation of Gaussian noise added to the latent points at every step.
    seed
        Seed of the shuffling and the noise.
    check_every
        Steps between validation checks; the prior with the best held-out loss is kept.
    """

    steps: int = 9000
    learning_rate: float = 5e-3
    batch_size: int = 512
    noise: float = 0.0
    seed: int = 0
    check_every: int = 1000


class NeuralPrior(GenerativePrior, nn.Module):
    """A prior that is a torch module, trained jointly with SPIB through :meth:`loss`, refitted by :meth:`fit`.

    Attributes
    ----------
    fit_settings
        How :meth:`fit` optimizes; set by the estimator before fitting.
    fit_history
        The held-out loss at each check of the last :meth:`fit`, as ``{"step", "validation_loss"}``.
    """

    entropy_term: ClassVar[bool] = False  # whether the joint loss adds β·E[log q] (the encoder's entropy)

    def __init__(self, reference_temperature: float) -> None:
        nn.Module.__init__(self)
        self.reference_temperature = float(reference_temperature)
        self.fit_settings = FitSettings()
        self.fit_history: list[dict[str, float]] = []

    @abc.abstractmethod
    def loss(self, latent: torch.Tensor, scaled_temperature: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per-point training objective (−log p, up to a constant at each T, or a bound on it) at T′ (n,)."""

    def _scaled(self, temperature: float) -> float:
        return checked_temperature(temperature) / self.reference_temperature

    def start_at(self, centres: torch.Tensor) -> None:
        """Before joint training, place the prior where the states' mean latent points ``centres`` (k, d) are."""

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def fit(
        self,
        latent: np.ndarray,
        weights: np.ndarray,
        temperatures: np.ndarray,
        held_out: np.ndarray | None = None,
    ) -> NeuralPrior:
        """Return a copy fitted by minimizing the weighted mean :meth:`loss` on the points not held out.

        Adam over ``fit_settings.steps`` minibatches, learning rate decayed to zero (cosine);
        the copy with the best weighted held-out loss among the checks (and the start) is kept,
        so that a small data set is not overfitted (without held-out points, the training
        points decide). Temperature weights enter as in joint training: through T′.
        """
        latent, weights, temperatures = checked_fit_data(latent, weights, temperatures, self.dim)
        held_out = np.zeros(len(latent), bool) if held_out is None else np.asarray(held_out, bool)
        if held_out.shape != (len(latent),) or held_out.all():
            raise LatfError("prior fit: held_out must mark some, not all, of the points")
        prior = copy.deepcopy(self)
        prior.fit_history = []
        if self.fit_settings.steps == 0:
            return prior
        train = prior._fit_tensors(latent, weights, temperatures, ~held_out)
        if float(train[1].sum()) <= 0:
            raise LatfError("prior fit: the points not held out carry no weight")
        validation = prior._fit_tensors(latent, weights, temperatures, held_out) if held_out.any() else train
        prior._optimize(train, validation)
        return prior

    def _fit_tensors(
        self, latent: np.ndarray, weights: np.ndarray, temperatures: np.ndarray, mask: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the points in ``mask``, their weights (mean 1) and T′, as tensors on the prior's device."""
        parameter = next(self.parameters())
        w = weights[mask] / max(weights[mask].mean(), 1e-300)
        return tuple(
            torch.as_tensor(a, dtype=parameter.dtype, device=parameter.device)
            for a in (latent[mask], w, temperatures[mask] / self.reference_temperature)
        )

    @torch.no_grad()
    def _weighted_loss(self, points: torch.Tensor, weights: torch.Tensor, scaled: torch.Tensor) -> float:
        """Return the weighted mean :meth:`loss`, with the same noise at every call."""
        fixed = torch.Generator().manual_seed(self.fit_settings.seed + 1)
        total = sum(
            float((weights[c] * self.loss(points[c], scaled[c], fixed)).sum())
            for c in torch.arange(len(weights)).split(65536)
        )
        return total / max(float(weights.sum()), 1e-300)

    def _optimize(self, train: tuple[torch.Tensor, ...], validation: tuple[torch.Tensor, ...]) -> None:
        """Minimize the weighted loss on ``train`` in place; keep the parameters best on ``validation``."""
        settings = self.fit_settings
        best = (self._weighted_loss(*validation), copy.deepcopy(self.state_dict()))
        optimizer = torch.optim.Adam(self.parameters(), lr=settings.learning_rate)
        generator = torch.Generator().manual_seed(settings.seed)
        points, w, scaled = train
        batch = min(settings.batch_size, len(points))
        per_pass = len(points) - len(points) % batch
        for step in range(settings.steps):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * settings.learning_rate * (1 + math.cos(math.pi * step / settings.steps))
            start = (step * batch) % per_pass
            if start == 0:  # a new pass: shuffle once, then take contiguous slices (views)
                order = torch.randperm(len(points), generator=generator).to(points.device)
                points, w, scaled = points[order], w[order], scaled[order]
            window = slice(start, start + batch)
            u = points[window]
            if settings.noise > 0:
                u = u + settings.noise * torch.randn(u.shape, generator=generator, dtype=u.dtype).to(u.device)
            loss = (w[window] * self.loss(u, scaled[window], generator)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if (step + 1) % settings.check_every == 0 or step + 1 == settings.steps:
                current = self._weighted_loss(*validation)
                if not math.isfinite(current):
                    raise LatfError(f"fitting the {self.kind} prior diverged; lower polish_learning_rate")
                self.fit_history.append({"step": step + 1, "validation_loss": current})
                if current < best[0]:
                    best = (current, copy.deepcopy(self.state_dict()))
        self.load_state_dict(best[1])


class FlowPrior(NeuralPrior):
    """LaTF's prior: a RealNVP flow z = f(s) onto the temperature-steered tilted Gaussian (:mod:`.tilted`).

        log p(s | T) = log p_tilt(f(s) | τ, T′) + log|det ∂f/∂s|

    Parameters
    ----------
    dim, layers, hidden
        Latent dimension and the RealNVP's size.
    tau
        Tilting factor τ.
    reference_temperature
        T_ref, where T′ = 1.
    """

    kind = "flow"

    def __init__(self, dim: int, layers: int, hidden: int, tau: float, reference_temperature: float) -> None:
        super().__init__(reference_temperature)
        self.flow = RealNVP(dim, layers, hidden)
        self.tau = float(tau)
        self.layers, self.hidden = int(layers), int(hidden)

    @property
    def dim(self) -> int:
        """Latent dimension d."""
        return self.flow.layers[0].shift.numel()

    def start_at(self, centres: torch.Tensor) -> None:
        """Set the flow's ActNorm layer so that ``centres`` lie on the prior's most probable shell at T′ = 1."""
        shell = 0.5 * (self.tau + math.sqrt(self.tau**2 + 4 * (self.dim - 1)))  # mode of r^(d-1) exp(τr − r²/2)
        self.flow.initialize(centres.cpu(), shell)

    def loss(
        self, latent: torch.Tensor, scaled_temperature: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """−log p(f(s) | T′) − log|det ∂f/∂s| per point, up to log Z (a constant at each T)."""
        z, log_det = self.flow(latent)
        return -tilted.unnormalized_log_prob(z, self.tau, scaled_temperature) - log_det

    @torch.no_grad()
    def log_prob(self, latent: np.ndarray, temperature: float) -> np.ndarray:
        """Return log p(s | T) by change of variables, in float64."""
        flow = copy.deepcopy(self.flow).double().cpu()  # float64 density; the prior keeps its dtype
        z, log_det = flow(torch.from_numpy(checked_latent(latent, self.dim)))
        return (tilted.log_prob(z, self.tau, self._scaled(temperature)) + log_det).numpy()

    @torch.no_grad()
    def sample(self, temperature: float, n: int, seed: int | None = None) -> np.ndarray:
        """Exact samples: the tilted Gaussian at T′ through the inverse flow."""
        z = tilted.sample(checked_count(n), self.dim, self.tau, self._scaled(temperature), generator_for(seed))
        parameter = next(self.flow.parameters())
        u, _ = self.flow.inverse(z.to(parameter.dtype).to(parameter.device))
        return u.cpu().numpy()

    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers."""
        return {
            "dim": self.dim,
            "layers": self.layers,
            "hidden": self.hidden,
            "tau": self.tau,
            "reference_temperature": self.reference_temperature,
            "weights": {k: v.cpu() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FlowPrior:
        """Rebuild the prior that :meth:`state` describes."""
        prior = cls(state["dim"], state["layers"], state["hidden"], state["tau"], state["reference_temperature"])
        prior.load_state_dict(state["weights"])
        return prior.eval()
