"""D-SPIB's prior: a temperature-conditioned denoising diffusion model on the SPIB latent.

The forward process is the DDPM of 100 steps with β linear from 1e-4 to 0.2, its noise
scaled by the temperature (standard deviation × T′, T′ = T / T_ref):

    s_t = √ᾱ(t) s_0 + √(1 − ᾱ(t)) · T′ · ε,    ε ~ N(0, I),

and a network ε̂(s_t, t, T′) learns the noise (loss ½ MSE, 16 draws per point). Choices
that differ from the public D-SPIB code (rickyjohnwhu/diff-spib), and why:

- **Continuous diffusion time.** log ᾱ(t) is the piecewise-linear interpolation in t ∈ [0, 1]
  of the DDPM's log ᾱ_i at t = i/100, so the 100-step sampler is the published DDPM at its
  grid points, and training draws t uniformly in (0, 1] rather than the 100 integers: the
  probability-flow ODE, which evaluates the network between the grid points, then meets
  trained times only. The step enters the network as t ∈ (0, 1], not as a raw integer.
- **One map from noise to latent, for sampling and density alike.** Samples come from the
  deterministic reverse process (DDIM: the probability-flow ODE's 100-step discretization,
  as many network calls as the ancestral DDPM), started where training ends, s_1 ~ N(0, T′² I)
  (the public code starts without the temperature factor). The density is the same ODE's, so
  samples and free energies describe one distribution.
- **Temperatures outside the trained range.** The network is conditioned on T clamped to the
  range of temperatures it was trained at; the start's width stays T′. Inside the range this
  is the paper's conditional model. Outside it, the ODE acts as LaTF's flow does: a fixed map
  from a base whose width grows with T. Measured on three-hole trained at one k_BT (0.75),
  at 1.25 × and 0.8 × k_BT the three wells' populations move by −0.018 / +0.025 / −0.006 and
  +0.017 / −0.022 / +0.005 (quadrature: −0.017 / +0.035 / −0.017 and +0.015 / −0.031 /
  +0.015). Conditioning on the new T instead moves them by up to 0.12, the wrong way for the
  top well, and the ancestral sampler with the noise × T′ moves them by < 0.005.
- **Smooth embeddings.** Gaussian-Fourier features of t (frequency scale 4) and of log T′
  (scale 1), so that the network interpolates between training temperatures instead of
  seeing a new random code at each one (scale 100 on raw values, in the public code).
- **Gaussian noise**, as the DDPM's reverse steps assume (the public code draws tilted-Gaussian
  noise, whose reverse steps are not Gaussian).
- **Weighted loss:** each point's ½ MSE is weighted by its equilibrium weight, as the flow's
  likelihood is.

The density is the probability-flow ODE's, ds/dt = −½β(t)[s − T_c′ ε̂(s, t, T_c′)/√(1 − ᾱ(t))]
(T_c′ the clamped T′), integrated
from t = 1e-3 to 1 by RK4 (each of the 100 grid cells one step, the first cell five), with
log p(s_0) = log N(s_1; 0, T′²I) + ∫ ∇·f dt: the exact divergence for d ≤ 3 (d backward
passes), Hutchinson's estimator (one Rademacher probe, fixed seed) above.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from latf_openmm.models.priors import (
    NeuralPrior,
    checked_count,
    checked_latent,
    checked_temperature,
    generator_for,
)

STEPS = 100
BETA_FIRST, BETA_LAST = 1e-4, 0.2
NOISE_DRAWS = 16
EMBEDDING_SIZE = 16
STEP_FREQUENCY_SCALE = 4.0
TEMPERATURE_FREQUENCY_SCALE = 1.0
WIDTHS = (16, 64, 64, 64, 64, 16)
ODE_START = 1e-3  # diffusion time where the density integration starts (noise std 0.003·T′)
FIRST_CELL_STEPS = 5
EXACT_DIVERGENCE_MAX_DIM = 3
SAMPLE_CHUNK = 8192
DENSITY_CHUNK = 20_000


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features [sin 2πWx, cos 2πWx] of a scalar, W ~ N(0, scale²)."""

    def __init__(self, size: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.randn(size // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed x (n,) as (n, size)."""
        angle = 2 * math.pi * x[:, None] * self.frequencies
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class NoisePredictor(nn.Module):
    """ε̂(s, t, T′): the MLP d → 16 → 64 → 64 → 64 → 64 → 16 → d (ReLU), residual in the 64 → 64 layers.

    The embeddings of t and of log T′ (16 each, through a linear layer and ReLU) enter every
    layer through their own linear maps; one linear layer on both embeddings computes all of
    them at once. When t and T′ are the same for every point (sampling), the maps are computed
    once and broadcast.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.step_embedding = nn.Sequential(
            FourierEmbedding(EMBEDDING_SIZE, STEP_FREQUENCY_SCALE), nn.Linear(EMBEDDING_SIZE, EMBEDDING_SIZE), nn.ReLU()
        )
        self.temperature_embedding = nn.Sequential(
            FourierEmbedding(EMBEDDING_SIZE, TEMPERATURE_FREQUENCY_SCALE),
            nn.Linear(EMBEDDING_SIZE, EMBEDDING_SIZE),
            nn.ReLU(),
        )
        self.widths = (*WIDTHS, dim)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip((dim, *WIDTHS), self.widths, strict=True))
        self.conditioning = nn.Linear(2 * EMBEDDING_SIZE, sum(self.widths))

    def forward(self, s: torch.Tensor, time: torch.Tensor, scaled_temperature: torch.Tensor) -> torch.Tensor:
        """Predicted noise at points s (n, d), diffusion times (n,) or (1,), T′ (n,) or (1,)."""
        embedded = torch.cat(
            [self.step_embedding(time), self.temperature_embedding(torch.log(scaled_temperature))], dim=-1
        )
        shifts = self.conditioning(embedded).split(self.widths, dim=-1)
        *hidden, (last_layer, last_shift) = zip(self.layers, shifts, strict=True)
        h = s
        # addmm: the matrix product and the (conditioned) bias in one call; ReLU and the residual
        # in place (2× faster sampling than Linear, add, relu for layers this small)
        for layer, shift in hidden:
            out = torch.addmm(layer.bias + shift, h, layer.weight.t())
            if out.shape[-1] == h.shape[-1]:
                out += h
            h = out.relu_()
        return torch.addmm(last_layer.bias + last_shift, h, last_layer.weight.t())


class DiffusionPrior(NeuralPrior):
    """D-SPIB's prior p(s | T): the reverse diffusion of :class:`NoisePredictor` (module docstring).

    Parameters
    ----------
    dim
        Latent dimension d.
    reference_temperature
        T_ref, where T′ = 1 and the noise has unit standard deviation.
    trained_temperatures
        The lowest and highest temperature of the training data (the network's conditioning
        range; :meth:`fit` widens it to its data's).
    """

    kind = "diffusion"
    entropy_term = True  # the published D-SPIB loss: cross-entropy + β E[log q] + β ½ MSE

    def __init__(self, dim: int, reference_temperature: float, trained_temperatures: tuple[float, float]) -> None:
        super().__init__(reference_temperature)
        low, high = sorted(checked_temperature(t) for t in trained_temperatures)
        self.trained_temperatures = (low, high)
        self.network = NoisePredictor(dim)
        betas = torch.linspace(BETA_FIRST, BETA_LAST, STEPS, dtype=torch.float64)
        log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
        self.register_buffer("log_alpha_bar", log_alpha_bar)  # at t = i / STEPS, i = 0 … STEPS

    @property
    def dim(self) -> int:
        """Latent dimension d."""
        return self.network.widths[-1]

    def _log_alpha_bar(self, time: torch.Tensor) -> torch.Tensor:
        """Log ᾱ(t), piecewise linear between the DDPM's steps (dtype of ``time``)."""
        table = self.log_alpha_bar.to(time.dtype)
        position = (time * STEPS).clamp(0, STEPS)
        cell = position.floor().clamp(max=STEPS - 1).long()
        fraction = position - cell
        return table[cell] + fraction * (table[cell + 1] - table[cell])

    def _beta(self, time: float) -> float:
        """β(t) = −d log ᾱ / dt in the cell holding t (the continuous rate of the DDPM's step)."""
        cell = min(int(time * STEPS), STEPS - 1)
        return float(self.log_alpha_bar[cell] - self.log_alpha_bar[cell + 1]) * STEPS

    def loss(
        self, latent: torch.Tensor, scaled_temperature: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """½ MSE of the predicted noise per point, averaged over ``NOISE_DRAWS`` draws of t and ε."""
        n, dim = latent.shape
        s0 = latent.repeat_interleave(NOISE_DRAWS, dim=0)
        scaled = scaled_temperature.reshape(-1).expand(n).repeat_interleave(NOISE_DRAWS)
        time = 1 - torch.rand(n * NOISE_DRAWS, generator=generator, dtype=latent.dtype).to(latent.device)
        noise = torch.randn(n * NOISE_DRAWS, dim, generator=generator, dtype=latent.dtype).to(latent.device)
        log_alpha_bar = self._log_alpha_bar(time)[:, None]
        noised = torch.exp(0.5 * log_alpha_bar) * s0 + torch.sqrt(-torch.expm1(log_alpha_bar)) * scaled[:, None] * noise
        error = self.network(noised, time, scaled) - noise
        return 0.5 * error.pow(2).mean(-1).reshape(n, NOISE_DRAWS).mean(-1)

    def _conditioning(self, temperature: float) -> tuple[float, float]:
        """Return (T′, T_c′): the start's width and the network's temperature, T clamped to the trained range."""
        low, high = self.trained_temperatures
        return self._scaled(temperature), min(max(temperature, low), high) / self.reference_temperature

    def fit(
        self,
        latent: np.ndarray,
        weights: np.ndarray,
        temperatures: np.ndarray,
        held_out: np.ndarray | None = None,
    ) -> DiffusionPrior:
        """:meth:`NeuralPrior.fit`, the trained range widened to ``temperatures``."""
        prior = super().fit(latent, weights, temperatures, held_out)
        prior.trained_temperatures = (
            min(self.trained_temperatures[0], float(np.min(temperatures))),
            max(self.trained_temperatures[1], float(np.max(temperatures))),
        )
        return prior

    @torch.no_grad()
    def sample(self, temperature: float, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` samples by the 100 deterministic reverse (DDIM) steps, all at once (chunks of 8192)."""
        scaled, conditioning = self._conditioning(temperature)
        generator = generator_for(seed)
        n = checked_count(n)
        parameter = next(self.parameters())
        root_alpha_bar = torch.exp(0.5 * self.log_alpha_bar).to(parameter.dtype)
        root_one_minus = torch.sqrt(-torch.expm1(self.log_alpha_bar)).to(parameter.dtype) * conditioning
        temperature_tensor = torch.full((1,), conditioning, dtype=parameter.dtype, device=parameter.device)
        chunks = []
        for size in [SAMPLE_CHUNK] * (n // SAMPLE_CHUNK) + ([n % SAMPLE_CHUNK] if n % SAMPLE_CHUNK else []):
            s = scaled * torch.randn(size, self.dim, generator=generator, dtype=parameter.dtype)
            s = s.to(parameter.device)
            for i in range(STEPS, 0, -1):
                time = torch.full((1,), i / STEPS, dtype=parameter.dtype, device=parameter.device)
                predicted = self.network(s, time, temperature_tensor)
                denoised = (s - root_one_minus[i] * predicted) / root_alpha_bar[i]
                s = root_alpha_bar[i - 1] * denoised + root_one_minus[i - 1] * predicted
            chunks.append(s.cpu())
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, self.dim), np.float32)

    def _drift_and_divergence(
        self,
        network: NoisePredictor,
        s: torch.Tensor,
        time: float,
        beta: float,
        conditioning: float,
        probe: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the probability-flow ODE's f(s, t) at T_c′ and ∇·f (exact, or Hutchinson's with ``probe``)."""
        log_alpha_bar = float(self._log_alpha_bar(torch.tensor(time, dtype=torch.float64)))
        factor = conditioning / math.sqrt(-math.expm1(log_alpha_bar))
        with torch.enable_grad():
            s = s.detach().requires_grad_(True)
            predicted = network(s, torch.full((1,), time, dtype=s.dtype), torch.full((1,), conditioning, dtype=s.dtype))
            if probe is None:
                divergence = sum(
                    torch.autograd.grad(predicted[:, k].sum(), s, retain_graph=k < self.dim - 1)[0][:, k]
                    for k in range(self.dim)
                )
            else:
                divergence = (torch.autograd.grad((predicted * probe).sum(), s)[0] * probe).sum(-1)
        drift = -0.5 * beta * (s.detach() - factor * predicted.detach())
        return drift, -0.5 * beta * (self.dim - factor * divergence.detach())

    @torch.no_grad()
    def log_prob(self, latent: np.ndarray, temperature: float) -> np.ndarray:
        """Return log p(s | T) by the probability-flow ODE (float64; module docstring)."""
        scaled, conditioning = self._conditioning(temperature)
        latent = torch.from_numpy(checked_latent(latent, self.dim))
        network = copy.deepcopy(self.network).double().cpu()  # float64 density; the prior keeps its dtype
        return torch.cat(
            [self._log_prob_chunk(network, c, scaled, conditioning) for c in latent.split(DENSITY_CHUNK)]
        ).numpy()

    def _log_prob_chunk(
        self, network: NoisePredictor, s: torch.Tensor, scaled: float, conditioning: float
    ) -> torch.Tensor:
        """RK4 from ``ODE_START`` to 1; within each step β is its DDPM cell's (piecewise constant)."""
        probe = None
        if self.dim > EXACT_DIVERGENCE_MAX_DIM:
            signs = torch.randint(0, 2, s.shape, generator=torch.Generator().manual_seed(0))
            probe = (2 * signs - 1).to(s.dtype)
        integral = torch.zeros(len(s), dtype=s.dtype)
        first_cell = np.geomspace(ODE_START, 1.0 / STEPS, FIRST_CELL_STEPS + 1).tolist()
        times = [*first_cell, *(np.arange(2, STEPS + 1) / STEPS).tolist()]
        for start, end in itertools.pairwise(times):
            h, middle = end - start, 0.5 * (start + end)
            beta = self._beta(middle)
            k1, d1 = self._drift_and_divergence(network, s, start, beta, conditioning, probe)
            k2, d2 = self._drift_and_divergence(network, s + 0.5 * h * k1, middle, beta, conditioning, probe)
            k3, d3 = self._drift_and_divergence(network, s + 0.5 * h * k2, middle, beta, conditioning, probe)
            k4, d4 = self._drift_and_divergence(network, s + h * k3, end, beta, conditioning, probe)
            s = s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            integral = integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
        log_end = -0.5 * (s.pow(2).sum(-1) / scaled**2 + self.dim * math.log(2 * math.pi * scaled**2))
        return log_end + integral

    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers."""
        return {
            "dim": self.dim,
            "reference_temperature": self.reference_temperature,
            "trained_temperatures": list(self.trained_temperatures),
            "weights": {k: v.cpu() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DiffusionPrior:
        """Rebuild the prior that :meth:`state` describes."""
        prior = cls(state["dim"], state["reference_temperature"], state["trained_temperatures"])
        prior.load_state_dict(state["weights"])
        return prior.eval()
