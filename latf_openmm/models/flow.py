"""RealNVP normalizing flow: affine coupling layers with alternating one-hot masks."""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(
    n_in: int, hidden: int, n_out: int, n_hidden_layers: int = 2, activation: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """Build a multilayer perceptron with ``n_hidden_layers`` hidden layers of ``hidden`` units."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.01)


class AffineCoupling(nn.Module):
    """z = b⊙u + (1−b)⊙(u·exp(s) + t), with (s̃, t) = MLP(b⊙u) and s = scale·tanh(s̃).

    One conditioner MLP (LeakyReLU(0.01), two hidden layers of ``hidden`` units)
    outputs both the scale and the shift: with ``hidden`` twice the width of the
    published separate scale and shift networks it can represent both of them
    (block-diagonal weights) at half the number of layer calls, which is what costs
    time for networks this small. The conditioner's last layer starts at zero, so a
    new layer is the identity; ``scale`` (per dimension) starts at one, not zero:
    with both factors of s at zero neither gets a gradient, and the layers would
    stay volume-preserving (shift only) for good.
    """

    def __init__(self, mask: torch.Tensor, hidden: int) -> None:
        super().__init__()
        dim = mask.numel()
        self.register_buffer("mask", mask.float())
        self.conditioner = mlp(dim, hidden, 2 * dim, activation=_LeakyReLU)
        self.scale = nn.Parameter(torch.ones(dim))
        nn.init.zeros_(self.conditioner[-1].weight)
        nn.init.zeros_(self.conditioner[-1].bias)

    def _scale_shift(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the log-scale and shift, both zero on the fixed dimensions."""
        free = 1.0 - self.mask
        raw_scale, shift = self.conditioner(self.mask * u).chunk(2, dim=-1)
        # tanh is several times slower on the strided half than on a contiguous copy
        return (free * self.scale) * torch.tanh(raw_scale.contiguous()), free * shift

    # log_scale and shift vanish on the fixed dimensions, so u·exp(log_scale) + shift leaves
    # them unchanged: the same map as b⊙u + (1−b)⊙(u·exp(s) + t) with fewer tensor operations
    # (what a step of these tiny networks costs on a CPU)
    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map u → z; return z and log|det ∂z/∂u| per sample."""
        log_scale, shift = self._scale_shift(u)
        return u * torch.exp(log_scale) + shift, log_scale.sum(-1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map z → u; return u and log|det ∂u/∂z| per sample."""
        log_scale, shift = self._scale_shift(z)
        return (z - shift) * torch.exp(-log_scale), -log_scale.sum(-1)


class ActNorm(nn.Module):
    """Elementwise affine z = (u − shift)·exp(log_scale), initialized from data (as in Glow)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map u → z; return z and log|det ∂z/∂u| per sample."""
        return (u - self.shift) * torch.exp(self.log_scale), self.log_scale.sum().expand(u.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map z → u; return u and log|det ∂u/∂z| per sample."""
        return z * torch.exp(-self.log_scale) + self.shift, -self.log_scale.sum().expand(z.shape[0])


class RealNVP(nn.Module):
    """An :class:`ActNorm` layer, then affine coupling layers.

    Coupling layer k keeps dimension k mod d fixed.

    For d = 1 a coupling layer has nothing to condition on and reduces to an affine
    map, so a one-dimensional LaTF flow is affine.
    """

    def __init__(self, dim: int, n_layers: int = 10, hidden: int = 16) -> None:
        super().__init__()
        eye = torch.eye(dim)
        masks = [eye[k % dim] if dim > 1 else torch.tensor([float(k % 2)]) for k in range(n_layers)]
        self.layers = nn.ModuleList([ActNorm(dim), *(AffineCoupling(mask, hidden) for mask in masks)])

    @torch.no_grad()
    def initialize(self, centres: torch.Tensor, radius: float) -> None:
        """Set the ActNorm layer so that the points ``centres`` (k, d) land near the sphere |z| = ``radius``.

        The sphere through the centres is a least-squares fit (Kåsa's linear method)
        when there are more than d of them; otherwise their mean and mean distance.
        The map is isotropic: shift by the fitted centre, scale by radius / fitted radius.
        """
        centres = centres.double()
        k, dim = centres.shape
        if k > dim:
            design = torch.cat([2 * centres, torch.ones(k, 1, dtype=centres.dtype)], dim=1)
            solution = torch.linalg.lstsq(design, centres.pow(2).sum(1, keepdim=True)).solution[:, 0]
            centre = solution[:-1]
            fitted = float(torch.sqrt((solution[-1] + centre.pow(2).sum()).clamp(min=0)))
        else:
            centre = centres.mean(0)
            fitted = float((centres - centre).norm(dim=1).mean())
        actnorm = self.layers[0]
        actnorm.shift.copy_(centre)
        actnorm.log_scale.fill_(math.log(radius / max(fitted, 1e-6)))

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map u → z; return z and log|det ∂z/∂u|."""
        log_det = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
        for layer in self.layers:
            u, step = layer(u)
            log_det = log_det + step
        return u, log_det

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map z → u; return u and log|det ∂u/∂z|."""
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for layer in reversed(self.layers):
            z, step = layer.inverse(z)
            log_det = log_det + step
        return z, log_det
