"""Estimators: ``SPIB(...)``, ``LaTF(...)``, ``DSPIB(...)``; each ``fit(data)`` returns a :class:`LatentModel`.

The three differ only in the model's prior on the latent (:mod:`latf_openmm.models.priors`):
SPIB's VampPrior, LaTF's flow (or latent free energy), D-SPIB's diffusion model.

Training keeps the whole data set as tensors on the device and draws minibatches by
indexing a random permutation, so a step costs one forward/backward pass and nothing
else. Labels are refined only when a stage has converged (not every epoch), and the
validation loss, which decides convergence, is one batched pass per epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from latf_openmm.devices import check_device_name, torch_device
from latf_openmm.errors import LatfError
from latf_openmm.models.data import LABEL_DESCRIPTORS, LABEL_METHODS, TrainingData, initial_labels
from latf_openmm.models.diffusion import DiffusionPrior
from latf_openmm.models.free_energy import LatentFreeEnergy, LatentFreeEnergyModel
from latf_openmm.models.model import LatentModel
from latf_openmm.models.network import LatentNetwork
from latf_openmm.models.priors import FitSettings, FlowPrior, GenerativePrior, NeuralPrior
from latf_openmm.specs import option
from latf_openmm.versions import versions

log = logging.getLogger(__name__)


MODELS = ("spib", "latf", "dspib")
PRIORS = ("flow", "grid")
SPIB_WEIGHTS = ("data", "sampled")
GENERATION_CHECK_SAMPLES = 100_000
GENERATION_ADVICE = {
    "flow": "use prior = 'grid', another lag or more data",
    "grid": "try another lag, or more data (and overlap between neighbouring temperatures) where it fails",
    "diffusion": "try more polish_steps, another lag or more data",
}
MIN_STEPS_PER_EPOCH = 32
SMALL_STATE, SMALL_STATE_TOLERANCE = (0.01, 0.05), 0.25  # a 1–5 % state generated more than 25 % off: a warning
POLISH_CHECK = 1000  # prior-fitting steps between validation checks
HELD_OUT_BLOCKS = 10  # the prior's fit holds out one of this many contiguous blocks of each trajectory


@dataclass
class TrainingConfig:
    """Hyperparameters of SPIB, LaTF and D-SPIB training.

    Each field's ``help`` metadata describes it (``latf train --help`` shows the same text).
    """

    model: str = option(
        "latf",
        "what to train: 'spib' (the CV and its states), 'latf' (SPIB + a flow onto a temperature-steered "
        "tilted Gaussian, or a latent free energy: see prior) or 'dspib' (SPIB + a temperature-conditioned "
        "diffusion model)",
    )
    latent_dim: int = option(2, "dimension d of the latent CV")
    lag: int = option(1, "lag time in frames; pairs (t, t+lag) never cross trajectories or replica exchanges")
    beta: float = option(1e-3, "weight of the prior (information-bottleneck) term")
    encoder_layers: int = option(2, "encoder hidden layers (ReLU); 0 gives a linear encoder")
    encoder_hidden: int = option(16, "encoder hidden-layer width")
    decoder_hidden: int = option(16, "decoder hidden-layer width")
    learning_rate: float = option(1e-3, "Adam learning rate (reset at each refinement)")
    lr_decay: float = option(0.99, "learning-rate factor per epoch")
    batch_size: int = option(2048, "minibatch size (lagged pairs); small data sets use smaller batches, ≥ 32 per epoch")
    tolerance: float = option(
        2e-3,
        "a training round ends when the validation loss (joint stage: its cross-entropy and its "
        "prior term, in nats) changes by less than this for 'patience' epochs",
    )
    patience: int = option(2, "epochs within tolerance that end a training round")
    max_epochs: int = option(30, "epoch cap per SPIB training round")
    refinements: int = option(
        10, "maximum label refinements in the SPIB stage (stops once fewer than 1 in 1000 labels change)"
    )
    n_initial_states: int = option(50, "initial states when no labels are given")
    label_method: str = option("auto", "initial states: 'grid', 'kmeans', or 'auto' (grid for ≤ 2 descriptors)")
    label_descriptors: str = option(
        "features",
        "what initial states cluster: 'features', or 'central_moments' (each frame's 2nd and 3rd central "
        "moments over its features; the same when identical particles swap, e.g. LJ7's coordination numbers)",
    )
    spib_weights: str = option(
        "data",
        "what SPIB's state-predictive loss weighs each frame by: 'data' (its data weight, e.g. a biased run's "
        "unbiasing weight, as published) or 'sampled' (every frame as sampled, so that states the bias "
        "reached but that weigh little at equilibrium stay visible; the prior and the state populations "
        "keep the weights either way)",
    )
    validation_fraction: float = option(0.1, "fraction of lagged pairs held out for the validation loss")
    seed: int = option(0, "seed for initialization, splitting, batching and noise")
    flow_layers: int = option(10, "LaTF: number of RealNVP coupling layers")
    flow_hidden: int = option(16, "LaTF: coupling-network hidden width")
    tau: float = option(3.0, "LaTF: tilting factor tau of the prior")
    reference_temperature: float | None = option(
        None, "LaTF: T_ref, where T' = T/T_ref = 1 (default: lowest training temperature, else 1)"
    )
    joint_refinements: int = option(0, "LaTF, D-SPIB: label refinements in the joint stage (0 or 1)")
    joint_max_epochs: int = option(50, "LaTF, D-SPIB: epoch cap per joint training round")
    polish_steps: int = option(
        9000,
        "LaTF's flow, D-SPIB: after the joint stage, optimizer steps that fit the prior alone (its joint loss, "
        "equilibrium- and temperature-weighted) to the frozen encoder's latent points, encoded once (0: none)",
    )
    polish_learning_rate: float = option(
        5e-3, "LaTF's flow, D-SPIB: the prior fit's Adam learning rate, decayed to zero over the steps (cosine)"
    )
    polish_batch_size: int = option(512, "LaTF's flow, D-SPIB: the prior fit's minibatch size (latent points)")
    polish_noise: float = option(
        0.0,
        "LaTF's flow, D-SPIB: the prior fit adds this times the encoder's noise σ to the latent means "
        "(1: the joint loss's sampled latent; 0: the means, i.e. the CV values themselves)",
    )
    prior: str = option(
        "flow",
        "LaTF: the generative prior on the latent: 'flow' (the published model: RealNVP onto the "
        "temperature-steered tilted Gaussian, trained jointly) or 'grid' (a latent free energy "
        "H(s) − T·S(s) on a grid over the SPIB latent, fitted to all training temperatures by convex "
        "penalized likelihood; d ≤ 3; one training temperature generates at that temperature only)",
    )
    generation_tolerance: float | None = option(
        0.05,
        "LaTF: after training, every state's generated population at every training temperature must be "
        "within this of the training data's (equilibrium-weighted), or training stops with an error "
        "rather than return a model that generates the wrong ensemble (None: no check)",
    )
    device: str | None = option("auto", "'auto' (CUDA when torch finds it, else the CPU), 'cpu', 'cuda' or 'cuda:N'")

    def validate(self) -> None:
        """Raise :class:`LatfError` for out-of-range values."""
        checks = [
            (self.latent_dim >= 1, "latent_dim must be ≥ 1"),
            (self.lag >= 1, "lag must be ≥ 1 frame"),
            (self.beta >= 0, "beta must be ≥ 0"),
            (self.encoder_layers >= 0, "encoder_layers must be ≥ 0"),
            (min(self.encoder_hidden, self.decoder_hidden, self.flow_hidden) >= 1, "hidden widths must be ≥ 1"),
            (self.learning_rate > 0 and 0 < self.lr_decay <= 1, "learning_rate > 0 and 0 < lr_decay ≤ 1 required"),
            (self.batch_size >= 1, "batch_size must be ≥ 1"),
            (self.tolerance >= 0 and self.patience >= 1, "tolerance ≥ 0 and patience ≥ 1 required"),
            (self.max_epochs >= 1 and self.joint_max_epochs >= 1, "max_epochs must be ≥ 1"),
            (self.refinements >= 0 and self.joint_refinements >= 0, "refinements must be ≥ 0"),
            (self.n_initial_states >= 2, "n_initial_states must be ≥ 2"),
            (self.label_method in LABEL_METHODS, f"label_method must be one of {', '.join(LABEL_METHODS)}"),
            (self.spib_weights in SPIB_WEIGHTS, f"spib_weights must be one of {', '.join(SPIB_WEIGHTS)}"),
            (
                self.label_descriptors in LABEL_DESCRIPTORS,
                f"label_descriptors must be one of {', '.join(LABEL_DESCRIPTORS)}",
            ),
            (0 <= self.validation_fraction < 1, "validation_fraction must be in [0, 1)"),
            (self.flow_layers >= 1, "flow_layers must be ≥ 1"),
            (self.polish_steps >= 0 and self.polish_batch_size >= 1, "polish_steps ≥ 0, polish_batch_size ≥ 1"),
            (self.polish_learning_rate > 0 and self.polish_noise >= 0, "polish_learning_rate > 0, polish_noise ≥ 0"),
            (self.tau >= 0, "tau must be ≥ 0"),
            (self.reference_temperature is None or self.reference_temperature > 0, "reference_temperature must be > 0"),
            (self.model in MODELS, f"model must be one of {', '.join(MODELS)}"),
            (self.prior in PRIORS, f"prior must be one of {', '.join(PRIORS)}"),
            (self.prior != "grid" or self.latent_dim <= 3, "prior = 'grid' needs latent_dim ≤ 3"),
            (
                self.generation_tolerance is None or 0 < self.generation_tolerance <= 1,
                "generation_tolerance must be in (0, 1] or None",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise LatfError(f"training config: {message}")
        try:
            check_device_name(self.device)
        except LatfError as error:
            raise LatfError(f"training config: {error}") from None


def population_check(temperature: float, data: np.ndarray, generated: np.ndarray, prior: str) -> dict[str, Any]:
    """Return the generation check's record of one temperature: the states' shares in the data and generated.

    A state holding 1–5 % of the data (``SMALL_STATE``) generated more than 25 % off its share
    is logged as a warning: an absolute tolerance cannot see it, yet it sets that state's free
    energy (ala2's φ > 0 basin, LJ7's rare isomers).
    """
    small = (data >= SMALL_STATE[0]) & (data < SMALL_STATE[1])
    relative = np.where(small, np.abs(generated - data) / np.maximum(data, 1e-300), 0.0)
    if relative.max() > SMALL_STATE_TOLERANCE:
        state = int(np.argmax(relative))
        log.warning(
            "generation check: at T = %g the %s prior generates the small state %d at %.4f where the training data "
            "have %.4f (%.0f %% off, more than %.0f %%): its free energy is not reliable; %s",
            temperature, prior, state, generated[state], data[state], 100 * relative[state],
            100 * SMALL_STATE_TOLERANCE, GENERATION_ADVICE[prior],
        )  # fmt: skip
    return {
        "temperature": temperature,
        "data": np.round(data, 5).tolist(),
        "generated": np.round(generated, 5).tolist(),
        "max_error": round(float(np.abs(generated - data).max()), 5),
        "small_state_relative_error": round(float(relative.max()), 3),
    }


class SPIB:
    """State Predictive Information Bottleneck estimator (deeptime style: ``fit`` → model).

    Its model's prior is the VampPrior, which describes the training data only.

    Parameters
    ----------
    config
        A :class:`TrainingConfig`; keyword arguments override its fields. ``config.model``
        must name this estimator (``'spib'``; see :func:`estimator`).
    """

    model = "spib"

    def __init__(self, config: TrainingConfig | None = None, **overrides: float | str | None) -> None:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainingConfig)}
        if unknown:
            raise LatfError(f"unknown training option(s): {sorted(unknown)}")
        config = dataclasses.replace(config or TrainingConfig(), **overrides)
        if config.model != self.model and (config.model != TrainingConfig.model or "model" in overrides):
            raise LatfError(f"{type(self).__name__} trains model '{self.model}', not '{config.model}'; see estimator()")
        self.config = dataclasses.replace(config, model=self.model)
        self.config.validate()
        torch_device(self.config.device)  # here, where it trains: a CUDA device torch cannot find is refused now

    def fit(self, data: TrainingData) -> LatentModel:
        """Train on ``data``; returns the model."""
        trainer = _Trainer(data, self.config)
        trainer.spib_stage()
        temperatures = data.temperatures
        trainer.prior = trainer.network.vamp_prior(None if temperatures is None else temperatures.tolist())
        return trainer.model()

    def refit_prior(self, model: LatentModel, data: TrainingData) -> LatentModel:
        """Return the trained ``model`` with its prior fitted again to ``data`` (encoder, decoder, states kept).

        The prior's own weighted fit (:meth:`GenerativePrior.fit`) on the model's latent of the
        data, by their equilibrium weights at their temperatures: SPIB's VampPrior weights, LaTF's
        flow polishing or latent free energy, D-SPIB's diffusion polishing (``polish_*``). For a
        density estimate that depends on the model's own CV (the loop pools runs along it).
        """
        labels = [model.predict_state(f) for f in data.features]  # the model's states; no initial clustering
        trainer = _Trainer(dataclasses.replace(data, labels=labels), self.config)
        if not np.isclose(trainer.reference_temperature, model.reference_temperature):
            raise LatfError(
                f"the data's reference temperature {trainer.reference_temperature:g} is not the model's "
                f"{model.reference_temperature:g}; set reference_temperature"
            )
        trainer.network = copy.deepcopy(model.network).to(trainer.device)
        trainer.prior = copy.deepcopy(model.prior)
        if isinstance(trainer.prior, NeuralPrior):
            trainer.prior.to(trainer.device)
        trainer.history = list(model.info["history"])
        trainer.fit_prior()
        return trainer.model()


class LaTF(SPIB):
    """Latent Thermodynamic Flows: SPIB pre-training, then the generative prior.

    With ``prior = 'flow'`` (the published model) joint encoder + decoder + flow training and
    flow polishing; with ``prior = 'grid'`` the latent free energy fitted to the trained SPIB
    encoder's latent. Either way the model must pass the generation check
    (``generation_tolerance``) at every training temperature.
    """

    model = "latf"

    def fit(self, data: TrainingData) -> LatentModel:
        """Train on ``data``; returns the model."""
        trainer = _Trainer(data, self.config)
        trainer.spib_stage()
        if trainer.prior is not None:
            trainer.joint_stage()
        trainer.fit_prior()
        return trainer.model()


class DSPIB(LaTF):
    """Diffusive SPIB (D-SPIB): SPIB pre-training, then joint training with a temperature-conditioned diffusion prior.

    The prior (:class:`~latf_openmm.models.diffusion.DiffusionPrior`) is then polished alone
    (``polish_*``), and the model must pass the generation check as LaTF's.
    """

    model = "dspib"


ESTIMATORS: dict[str, type[SPIB]] = {e.model: e for e in (SPIB, LaTF, DSPIB)}


def estimator(config: TrainingConfig) -> SPIB:
    """Return the estimator that ``config.model`` names ('spib', 'latf' or 'dspib')."""
    if config.model not in ESTIMATORS:
        raise LatfError(f"training config: model must be one of {', '.join(MODELS)}, got {config.model!r}")
    return ESTIMATORS[config.model](config)


class _Trainer:
    """Holds the data as tensors and runs the training stages."""

    def __init__(self, data: TrainingData, config: TrainingConfig) -> None:
        self.config = config
        self.data = data
        self.device = torch_device(config.device)
        self.started = time.perf_counter()
        self.history: list[dict[str, Any]] = []
        too_short = [i for i, n in enumerate(data.lengths) if n <= config.lag]
        if too_short:
            raise LatfError(
                f"lag ({config.lag} frames) is not shorter than trajectories {too_short[:5]} "
                f"(lengths {[data.lengths[i] for i in too_short[:5]]}); lower the lag or drop them"
            )
        features = np.concatenate(data.features)
        labels = (
            np.concatenate(data.labels)
            if data.labels is not None
            else initial_labels(
                features, config.n_initial_states, config.seed, config.label_method, config.label_descriptors
            )
        )
        data_weights = np.concatenate(data.weights) if data.weights is not None else np.ones(len(features))
        equilibrium = np.concatenate(data.equilibrium_weights) if data.equilibrium_weights is not None else data_weights
        weights = np.ones(len(features)) if config.spib_weights == "sampled" else data_weights
        past = data.lagged_starts(config.lag)
        self.generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(past), generator=self.generator).numpy()
        n_val = round(config.validation_fraction * len(past))
        if len(past) - n_val < 1:
            raise LatfError(
                f"too few lagged pairs for training ({len(past)}); with replica exchange, exchange less "
                "often than the lag (exchange_interval)"
            )
        if data.temperatures is not None:
            t_ref = config.reference_temperature or float(data.temperatures.min())
            per_frame_t = np.repeat(data.temperatures, data.lengths)
        else:
            t_ref = config.reference_temperature or 1.0
            per_frame_t = np.full(len(features), t_ref)
        self.reference_temperature = t_ref
        self.frame_temperatures = per_frame_t
        to = dict(device=self.device)
        self.x = torch.as_tensor(features, dtype=torch.float32, **to)
        self.weights = torch.as_tensor(weights / weights[past].mean(), dtype=torch.float32, **to)
        self.equilibrium_weights = torch.as_tensor(equilibrium / equilibrium[past].mean(), dtype=torch.float32, **to)
        self.scaled_temperatures = torch.as_tensor(per_frame_t / t_ref, dtype=torch.float32, **to)
        self.labels = torch.as_tensor(np.unique(labels, return_inverse=True)[1], dtype=torch.long, **to)
        past_t = torch.as_tensor(past, dtype=torch.long, **to)
        self.train_past = past_t[torch.as_tensor(order[n_val:], **to)]
        # Small data sets: at most 1/MIN_STEPS_PER_EPOCH of the pairs per batch (≥ 64), so that
        # an epoch is still enough optimizer steps for the convergence test to mean something.
        self.batch_size = min(config.batch_size, max(64, len(self.train_past) // MIN_STEPS_PER_EPOCH))
        self.val_past = past_t[torch.as_tensor(order[:n_val], **to)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.network = LatentNetwork(
                data.n_features,
                config.latent_dim,
                int(self.labels.max()) + 1,
                config.encoder_layers,
                config.encoder_hidden,
                config.decoder_hidden,
            ).to(self.device)
            self.prior: GenerativePrior | None = self._new_prior()
        w = self.weights[:, None]
        mean = (w * self.x).sum(0) / w.sum()
        scale = torch.sqrt((w * (self.x - mean) ** 2).sum(0) / w.sum())
        self.network.feature_mean.copy_(mean)
        self.network.feature_scale.copy_(torch.where(scale > 1e-8, scale, torch.ones_like(scale)))
        self._reset_states()

    # ----------------------------------------------------------------- losses
    def _terms(
        self, past: torch.Tensor, joint: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair cross-entropy and prior term (β's factor) for pairs starting at ``past``."""
        net, lag = self.network, self.config.lag
        mean = net(self.x[past])
        noise = torch.randn(mean.shape, generator=generator or self.generator).to(self.device)
        latent = mean + torch.exp(0.5 * net.log_var) * noise
        cross_entropy = F.nll_loss(net.state_log_probs(latent), self.labels[past + lag], reduction="none")
        log_q = -0.5 * (net.latent_dim * net.log_var + noise.pow(2).sum(-1))
        if not joint:
            return cross_entropy, log_q - net.vamp_log_prior(latent)
        prior_term = self.prior.loss(latent, self.scaled_temperatures[past], generator or self.generator)
        return cross_entropy, prior_term + log_q if self.prior.entropy_term else prior_term

    def _new_prior(self) -> NeuralPrior | None:
        """Return the model's untrained neural prior: LaTF's flow, D-SPIB's diffusion; None for SPIB and the grid."""
        cfg = self.config
        if cfg.model == "dspib":
            trained = (float(self.frame_temperatures.min()), float(self.frame_temperatures.max()))
            return DiffusionPrior(cfg.latent_dim, self.reference_temperature, trained).to(self.device)
        if cfg.model == "latf" and cfg.prior == "flow":
            return FlowPrior(cfg.latent_dim, cfg.flow_layers, cfg.flow_hidden, cfg.tau, self.reference_temperature).to(
                self.device
            )
        return None

    def _prior_weights(self, joint: bool) -> torch.Tensor:
        """Return the per-frame weights of the prior term.

        These are the equilibrium weights for the flow's density (joint stage), the data
        weights for SPIB's VampPrior term.
        """
        return self.equilibrium_weights if joint else self.weights

    def _loss(self, past: torch.Tensor, joint: bool) -> torch.Tensor:
        """Weighted mean loss: cross-entropy + β × prior term."""
        cross_entropy, regularizer = self._terms(past, joint)
        prior_weights = self._prior_weights(joint)[past]
        return (self.weights[past] * cross_entropy + self.config.beta * prior_weights * regularizer).mean()

    @torch.no_grad()
    def _validation_terms(self, joint: bool) -> np.ndarray:
        """Weighted mean cross-entropy and prior term over the validation pairs."""
        pairs = self.val_past if len(self.val_past) else self.train_past
        weights = torch.stack([self.weights, self._prior_weights(joint)])  # (2, n_frames), one per term
        total = torch.zeros(2, device=self.device)
        noise = torch.Generator().manual_seed(self.config.seed + 1)  # the same noise every epoch
        for chunk in pairs.split(65536):
            total += (weights[:, chunk] * torch.stack(self._terms(chunk, joint, noise))).sum(1)
        return (total / weights[:, pairs].sum(1)).cpu().numpy()

    # --------------------------------------------------------------- training
    def _train_round(self, joint: bool, max_epochs: int, stage: str, refinement: int) -> None:
        cfg = self.config
        # fused Adam: one kernel for all of these many small tensors instead of a loop over them
        parameters = [*self.network.parameters(), *(self.prior.parameters() if joint else ())]
        optimizer = torch.optim.Adam(parameters, lr=cfg.learning_rate, fused=True)
        previous, calm = None, 0
        n = len(self.train_past)
        # a bar of the epochs, on a terminal only (tqdm's disable=None), as the MD's progress bar
        epochs = tqdm(range(max_epochs), desc=f"{stage} round {refinement}", unit="epoch", leave=False, disable=None)
        for epoch in epochs:
            for group in optimizer.param_groups:
                group["lr"] = cfg.learning_rate * cfg.lr_decay**epoch
            order = self.train_past[torch.randperm(n, generator=self.generator).to(self.device)]
            for batch in order.split(self.batch_size):
                loss = self._loss(batch, joint)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            terms = self._validation_terms(joint)
            current = float(terms[0] + cfg.beta * terms[1])
            if not np.isfinite(current):
                raise LatfError(f"{stage} training diverged (loss is {current}); lower learning_rate or beta")
            self.history.append(
                {
                    "stage": stage,
                    "refinement": refinement,
                    "epoch": epoch,
                    "val_loss": current,
                    "val_cross_entropy": float(terms[0]),
                    "val_prior_term": float(terms[1]),
                    "n_states": self.network.n_states,
                    "seconds": round(time.perf_counter() - self.started, 3),
                }
            )
            # SPIB rounds watch the total loss; joint rounds also the flow's prior term, which
            # β scales down in the total but which decides how well the model generates
            watched = terms if joint else np.array([current])
            calm = calm + 1 if previous is not None and np.all(np.abs(watched - previous) < cfg.tolerance) else 0
            previous = watched
            epochs.set_postfix(val_loss=f"{current:.4f}", states=self.network.n_states, refresh=False)
            if calm >= cfg.patience:
                break
        epochs.close()
        log.info(
            "%s round %d: %d epochs, validation loss %.4f, %d states, %.1f s",
            stage,
            refinement,
            epoch + 1,
            current,
            self.network.n_states,
            time.perf_counter() - self.started,
        )

    @torch.no_grad()
    def _encoded(self, features: torch.Tensor) -> torch.Tensor:
        """Latent means of ``features`` (n, n_features), in chunks of 65 536 frames."""
        return torch.cat([self.network(chunk) for chunk in features.split(65536)])

    @torch.no_grad()
    def _states_at(self, latent: torch.Tensor) -> torch.Tensor:
        """Return the decoder's most probable state at latent points (m, d)."""
        return torch.cat([self.network.state_log_probs(c).argmax(-1) for c in latent.split(65536)])

    def _predicted_labels(self) -> torch.Tensor:
        return self._states_at(self._encoded(self.x))

    def _latent_states(self, latent: np.ndarray) -> np.ndarray:
        """Return :meth:`_states_at` of numpy points: the states whose populations the grid prior matches."""
        return self._states_at(torch.as_tensor(latent, dtype=torch.float32, device=self.device)).cpu().numpy()

    @torch.no_grad()
    def _reset_states(self) -> None:
        """Keep the states present among the targets; renumber; re-pick representative inputs.

        The targets are those of the training and the validation pairs.
        """
        targets = torch.cat([self.train_past, self.val_past]) + self.config.lag
        present = torch.bincount(self.labels[targets], minlength=self.network.n_states) > 0
        if int(present.sum()) < 2:
            raise LatfError("only one metastable state is left; lower beta, shorten the lag, or give more data")
        kept = present[self.labels]  # frames whose state survives (others are never targets)
        self.labels = torch.cumsum(present.long(), 0)[self.labels] - 1
        mean = self._encoded(self.x)
        representatives = []
        for k in range(int(present.sum())):
            members = kept & (self.labels == k)
            w = self.weights[members][:, None]
            centre = (w * mean[members]).sum(0) / w.sum().clamp(min=1e-30)
            representatives.append(self.x[torch.argmin((mean - centre).pow(2).sum(-1))])
        self.network.keep_states(present, torch.stack(representatives))

    def _refine(self) -> float:
        """Relabel every frame by the decoder at its latent mean; returns the fraction changed."""
        new = self._predicted_labels()
        changed = float((new != self.labels).float().mean())
        self.labels = new
        self._reset_states()
        return changed

    def spib_stage(self) -> None:
        """SPIB with the VampPrior and iterative label refinement."""
        for refinement in range(self.config.refinements + 1):
            self._train_round(False, self.config.max_epochs, "spib", refinement)
            if refinement == self.config.refinements:
                break
            before = self.network.n_states
            if self._refine() < 1e-3 and self.network.n_states == before:
                break

    def joint_stage(self) -> None:
        """Joint encoder + decoder + neural prior training (the prior's loss as SPIB's prior term).

        The prior is first placed at the states' mean latent points
        (:meth:`NeuralPrior.start_at`: LaTF's flow puts them on its most probable shell).
        """
        latent = self._encoded(self.x)
        members = [self.labels == k for k in range(self.network.n_states)]
        centres = torch.stack([(self.weights[m, None] * latent[m]).sum(0) / self.weights[m].sum() for m in members])
        self.prior.start_at(centres)
        for refinement in range(self.config.joint_refinements + 1):
            self._train_round(True, self.config.joint_max_epochs, "joint", refinement)
            if refinement == self.config.joint_refinements:
                break
            self._refine()

    def _held_out(self) -> np.ndarray:
        """Frames held out of the prior's fit: one of the 10 contiguous blocks of each trajectory.

        The block is picked by the trajectory's content (a CRC-32 of its features), so a
        trajectory given more than once (the loop counts each run at every temperature, with
        that temperature's weights) holds out the same frames every time: otherwise the frames
        held out at one temperature are fitted at another, and the held-out likelihood rewards
        a rough fit.
        """
        blocks = HELD_OUT_BLOCKS
        return np.concatenate(
            [
                (np.arange(len(f)) * blocks // len(f)) == zlib.crc32(np.ascontiguousarray(f).tobytes()) % blocks
                for f in self.data.features
            ]
        )

    def fit_prior(self) -> None:
        """Fit the prior alone to every frame's latent mean, encoder frozen, by the equilibrium weights.

        Its own weighted fit (:meth:`GenerativePrior.fit`): for the neural priors the joint loss
        ("polishing", ``polish_*``), which the joint stage stops long before it has converged;
        LaTF's latent free energy (``prior = 'grid'``) is fitted here anew, each of the decoder's
        states given its weighted share of the frames at each temperature. Contiguous
        blocks of the trajectories are held out (:meth:`_held_out`): they choose the grid's
        smoothing and the neural priors' best checkpoint, so that correlated neighbours do not
        reward overfitting.
        """
        cfg = self.config
        if isinstance(self.prior, NeuralPrior) and cfg.polish_steps == 0:
            return
        latent = self._encoded(self.x).double().cpu().numpy()
        weights = self.equilibrium_weights.double().cpu().numpy()
        held_out = self._held_out()
        if self.prior is None or isinstance(self.prior, LatentFreeEnergyModel):  # LaTF's grid, fitted anew
            scratch = LatentFreeEnergy(reference_temperature=self.reference_temperature)
            grid = scratch if self.prior is None else self.prior  # a refit keeps the model's nodes and T_ref
            self.prior = grid.fit(
                latent, temperatures=self.frame_temperatures, weights=weights, held_out=held_out,
                states=self._latent_states,
            )  # fmt: skip
            records = [{"stage": "free_energy", "epoch": 0, "smoothing": self.prior.smoothing}]
        elif isinstance(self.prior, NeuralPrior):
            self.prior.fit_settings = FitSettings(
                steps=cfg.polish_steps,
                learning_rate=cfg.polish_learning_rate,
                batch_size=cfg.polish_batch_size,
                noise=cfg.polish_noise * float(torch.exp(0.5 * self.network.log_var.detach())),
                seed=cfg.seed + 2,
                check_every=POLISH_CHECK,
            )
            self.prior = self.prior.fit(latent, weights, self.frame_temperatures, held_out)
            records = [  # epoch: optimizer steps, not epochs
                {"stage": "polish", "epoch": r["step"], "val_prior_term": r["validation_loss"]}
                for r in self.prior.fit_history
            ]
        else:
            self.prior = self.prior.fit(latent, weights, self.frame_temperatures, held_out)
            records = [{"stage": f"{self.prior.kind}_fit", "epoch": 0}]
        seconds = round(time.perf_counter() - self.started, 3)
        self.history += [{**r, "refinement": 0, "n_states": self.network.n_states, "seconds": seconds} for r in records]
        log.info("%s prior fitted, %.1f s", self.prior.kind, time.perf_counter() - self.started)

    def model(self) -> LatentModel:
        """Return the trained model; a generative one after the generation check at every training temperature.

        At each temperature with equilibrium weight, the populations of the model's states in
        ``GENERATION_CHECK_SAMPLES`` generated samples are compared with the training frames'
        (equilibrium-weighted, :func:`population_check`); the figures go to
        ``info["generation_check"]``. A state off by more than ``generation_tolerance`` is an
        error: the model would generate a wrong ensemble with confidence. SPIB's VampPrior is
        not checked: it claims no temperature; nor is any prior with ``generation_tolerance``
        None (the loop's training, whose prior is refitted and checked next).
        """
        info = self.info()
        model = LatentModel(self.network, info, self.prior)
        if model.kind == "spib" or self.config.generation_tolerance is None:
            return model
        labels = self._predicted_labels().cpu().numpy()
        weights = self.equilibrium_weights.double().cpu().numpy()
        checks = []
        for temperature in np.unique(self.frame_temperatures):
            at = self.frame_temperatures == temperature
            if weights[at].sum() <= 0:
                continue
            data = np.bincount(labels[at], weights[at], minlength=model.n_states) / weights[at].sum()
            generated = model.state_populations(float(temperature), GENERATION_CHECK_SAMPLES, self.config.seed)
            checks.append(population_check(float(temperature), data, generated, self.prior.kind))
        info["generation_check"] = checks
        tolerance = self.config.generation_tolerance
        worst = max(checks, key=lambda c: c["max_error"], default=None)
        if tolerance is not None and worst is not None and worst["max_error"] > tolerance:
            state = int(np.argmax(np.abs(np.subtract(worst["generated"], worst["data"]))))
            raise LatfError(
                f"generation check failed: at T = {worst['temperature']:g} the {self.prior.kind} prior generates "
                f"state {state} at {worst['generated'][state]:.3f} where the training data have "
                f"{worst['data'][state]:.3f} (generation_tolerance {tolerance:g}); the data do not support this "
                f"model: {GENERATION_ADVICE[self.prior.kind]}"
            )
        return model

    # ----------------------------------------------------------------- output
    @torch.no_grad()
    def info(self) -> dict[str, Any]:
        labels = self._predicted_labels()
        populations = torch.bincount(labels, weights=self.equilibrium_weights, minlength=self.network.n_states)
        config = dataclasses.asdict(self.config)
        latent = self._encoded(self.x)
        return {
            "architecture": {
                "n_features": self.data.n_features,
                "latent_dim": self.config.latent_dim,
                "encoder_layers": self.config.encoder_layers,
                "encoder_hidden": self.config.encoder_hidden,
                "decoder_hidden": self.config.decoder_hidden,
            },
            "config": config,
            "feature_names": list(self.data.feature_names),
            "featurizer": self.data.featurizer,
            "data_digest": self.data.digest(),
            "n_frames": len(self.x),
            "temperatures": None if self.data.temperatures is None else self.data.temperatures.tolist(),
            "temperature_unit": self.data.temperature_unit,
            "reference_temperature": self.reference_temperature,
            "state_populations": (populations / populations.sum()).cpu().tolist(),
            "latent_range": [latent.min(0).values.cpu().tolist(), latent.max(0).values.cpu().tolist()],
            "history": self.history,
            "train_seconds": round(time.perf_counter() - self.started, 3),
            "versions": versions(),
        }
