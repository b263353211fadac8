"""The temperature-steered exponentially tilted Gaussian prior of LaTF.

    log p(z | T) = τ|z| − |z|² / (2T′) − log Z(τ, d, T′),   T′ = T / T_ref

Its density peaks on the shell |z| = τT′; the width grows with temperature.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special


def log_normalizer(tau: float, dim: int, t_scaled: float) -> float:
    """Return log Z(τ, d, T′), exact, through confluent hypergeometric functions.

    Z = (2πT′)^{d/2} [₁F₁(d/2; 1/2; a) + μ₁ τ √T′ ₁F₁((d+1)/2; 3/2; a)], a = τ²T′/2,
    μ₁ = √2 Γ((d+1)/2) / Γ(d/2).
    """
    a = tau * tau * t_scaled / 2
    mu1 = math.sqrt(2) * math.exp(special.gammaln((dim + 1) / 2) - special.gammaln(dim / 2))
    bracket = special.hyp1f1(dim / 2, 0.5, a) + mu1 * tau * math.sqrt(t_scaled) * special.hyp1f1((dim + 1) / 2, 1.5, a)
    return 0.5 * dim * math.log(2 * math.pi * t_scaled) + math.log(bracket)


def unnormalized_log_prob(z: torch.Tensor, tau: float, t_scaled: torch.Tensor | float) -> torch.Tensor:
    """τ|z| − |z|²/(2T′) for z of shape (n, d); ``t_scaled`` a scalar or (n,) tensor."""
    squared = z.pow(2).sum(-1)
    return tau * torch.sqrt(squared + 1e-12) - 0.5 * squared / t_scaled


def log_prob(z: torch.Tensor, tau: float, t_scaled: float) -> torch.Tensor:
    """Return the normalized log-density of z (n, d) at scaled temperature T′."""
    return unnormalized_log_prob(z, tau, t_scaled) - log_normalizer(tau, z.shape[-1], t_scaled)


def sample(n: int, dim: int, tau: float, t_scaled: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw samples z = r n̂ of the tilted Gaussian in any dimension (float64, shape (n, d)).

    The direction n̂ is uniform on the sphere; the radius has density
    ∝ r^{d−1} exp(τr − r²/(2T′)) and is drawn by inverting its CDF, tabulated on
    200 001 points spanning the mode ± 14 widths (interpolation error < 1e-9).
    """
    direction = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    direction /= torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    radii, cdf = _radial_cdf(dim, tau, t_scaled)
    uniform = torch.rand(n, dtype=torch.float64, generator=generator).numpy()
    radius = np.interp(uniform, cdf, radii)
    return direction * torch.from_numpy(radius)[:, None]


def _radial_cdf(dim: int, tau: float, t_scaled: float) -> tuple[np.ndarray, np.ndarray]:
    width = math.sqrt(t_scaled)
    r_max = tau * t_scaled + 14 * width + math.sqrt(max(dim - 1, 0) * t_scaled) * 2
    radii = np.linspace(0.0, r_max, 200_001)
    with np.errstate(divide="ignore"):
        log_radius = np.log(radii) if dim > 1 else np.zeros_like(radii)
    log_density = (dim - 1) * log_radius + tau * radii - radii**2 / (2 * t_scaled)
    density = np.exp(log_density - log_density.max())
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) * 0.5 * np.diff(radii))])
    return radii, cdf / cdf[-1]
