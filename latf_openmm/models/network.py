"""The network shared by every model: encoder, decoder and SPIB's VampPrior."""

from __future__ import annotations

import torch
from torch import nn

from latf_openmm.models.flow import mlp
from latf_openmm.models.priors import VampPrior


class LatentNetwork(nn.Module):
    """Features → latent CV (encoder mean), plus everything the training objectives need.

    Parameters
    ----------
    n_features, latent_dim, n_states
        Input, latent and output sizes.
    encoder_layers
        Number of ReLU hidden layers of the encoder MLP (``encoder_hidden`` wide); 0 gives a
        linear encoder.
    encoder_hidden, decoder_hidden
        Hidden widths.
    """

    def __init__(
        self,
        n_features: int,
        latent_dim: int,
        n_states: int,
        encoder_layers: int = 2,
        encoder_hidden: int = 16,
        decoder_hidden: int = 16,
    ) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        self.encoder = (
            mlp(n_features, encoder_hidden, latent_dim, n_hidden_layers=encoder_layers)
            if encoder_layers
            else nn.Linear(n_features, latent_dim)
        )
        self.log_var = nn.Parameter(torch.zeros(()))
        self.decoder = mlp(latent_dim, decoder_hidden, n_states)
        self.register_buffer("representative_inputs", torch.zeros(n_states, n_features))
        self.prior_logits = nn.Parameter(torch.zeros(n_states))
        self.latent_dim = latent_dim

    @property
    def n_states(self) -> int:
        """Current number of states (decoder outputs)."""
        return self.decoder[-1].out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Latent CV: the encoder mean of (normalized) features."""
        return self.encoder((features - self.feature_mean) / self.feature_scale)

    def state_log_probs(self, latent: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the future state given latent points."""
        return torch.log_softmax(self.decoder(latent), dim=-1)

    def vamp_log_prior(self, latent: torch.Tensor) -> torch.Tensor:
        """Return log r(u) for the VampPrior Σ_k w_k N(u; μ(X_k), σ²) (up to the shared −d/2 log 2π)."""
        centres = self(self.representative_inputs)
        squared = (latent.unsqueeze(1) - centres.unsqueeze(0)).pow(2).sum(-1)
        log_normal = -0.5 * (self.latent_dim * self.log_var + squared * torch.exp(-self.log_var))
        return torch.logsumexp(log_normal + torch.log_softmax(self.prior_logits, 0), dim=1)

    @torch.no_grad()
    def vamp_prior(self, temperatures: list[float] | None) -> VampPrior:
        """Return the VampPrior as a :class:`VampPrior`, of training data at ``temperatures`` (None: no temperature)."""
        return VampPrior(
            self(self.representative_inputs).double().cpu().numpy(),
            float(self.log_var),
            torch.log_softmax(self.prior_logits.double(), 0).cpu().numpy(),
            None if temperatures is None else sorted(set(temperatures)),
        )

    def keep_states(self, keep: torch.Tensor, representative_inputs: torch.Tensor) -> None:
        """Drop decoder outputs of states not in ``keep`` (bool mask), keeping the others' weights.

        The VampPrior is reset to the new representative inputs with equal weights.
        """
        old = self.decoder[-1]
        new = nn.Linear(old.in_features, int(keep.sum()), device=old.weight.device)
        with torch.no_grad():
            new.weight.copy_(old.weight[keep])
            new.bias.copy_(old.bias[keep])
        self.decoder[-1] = new
        self.representative_inputs = representative_inputs.detach().clone()
        self.prior_logits = nn.Parameter(torch.zeros(new.out_features, device=old.weight.device))
