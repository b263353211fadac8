"""Export a small encoder and its featurizer as OpenMM (Lepton) expressions: no libtorch on the hot path.

An OpenMM ``CustomCompoundBondForce`` with one "bond" over the featurizer's atoms can
evaluate features (distances, dihedrals, coordinates; coordination numbers compile too
slowly and are left to the TorchScript path), the normalization (folded into the first
layer) and the encoder as compiled expressions, on every platform (CPU, CUDA, OpenCL)
without openmm-torch. On alanine dipeptide this costs a fraction of a TorchForce call
(see ``bench/bias_overhead.py``).

OpenMM differentiates the expression symbolically when the Context is created; its
cost grows quickly with the encoder's size, so this path is for small encoders:
linear, or hidden layers whose :func:`expression_size` (input features times the widths
of the hidden layers) stays below :data:`MAX_EXPRESSION_SIZE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latf_openmm.errors import LatfError
from latf_openmm.export import paired_featurizer
from latf_openmm.features import Dihedrals, Distances, Featurizer, Positions
from latf_openmm.models import LatentModel

MAX_EXPRESSION_SIZE = 200  # a few s of Context creation on one core (measured in bench/bias_overhead.py)

_ACTIVATIONS = {
    torch.nn.ReLU: lambda x: f"max(0, {x})",
    torch.nn.Tanh: lambda x: f"tanh({x})",
    torch.nn.SiLU: lambda x: f"{x}/(1 + exp(-{x}))",
}


@dataclass(frozen=True)
class CVExpression:
    """The CV as Lepton definitions over the particles ``p1 … pN`` of one compound bond.

    ``atoms`` are the system's atom indices of ``p1 … pN``; ``definitions`` define the
    names ``s0 … s{d-1}`` (the CV components) for an energy expression to use.
    """

    atoms: list[int]
    definitions: list[str]
    dim: int

    def energy(self, expression: str) -> str:
        """Return a full energy expression: ``expression`` in s0 … s{d-1}, followed by the definitions."""
        return "; ".join([expression, *self.definitions])


def _number(value: float) -> str:
    return f"({float(value)!r})"


def _layers(model: LatentModel) -> list[torch.nn.Module]:
    encoder = model.network.encoder
    return list(encoder) if isinstance(encoder, torch.nn.Sequential) else [encoder]


def expression_size(model: LatentModel) -> int:
    """Input features times the widths of the encoder's hidden layers (1 for a linear encoder)."""
    widths = [layer.out_features for layer in _layers(model) if isinstance(layer, torch.nn.Linear)]
    return model.network.feature_mean.numel() * math.prod(widths[:-1])


def _no_expression(block: torch.nn.Module) -> str:
    return f"{type(block).__name__} features have no OpenMM expression here; use backend 'torch'"


def _block_atoms(block: torch.nn.Module) -> list[int]:
    for kind, name in ((Distances, "pairs"), (Dihedrals, "quadruplets"), (Positions, "atom_indices")):
        if isinstance(block, kind):
            return getattr(block, name).flatten().tolist()
    raise LatfError(_no_expression(block))


def _feature_definitions(featurizer: Featurizer, slot: dict[int, int]) -> list[str]:
    """Definitions of the features ``latf_f0 …``."""

    def p(atom: int) -> str:
        return f"p{slot[atom]}"

    features: list[str] = []
    for block in featurizer.blocks:
        if isinstance(block, Distances):
            features += [f"distance({p(i)}, {p(j)})" for i, j in block.pairs.tolist()]
        elif isinstance(block, Dihedrals):
            angles = [f"dihedral({', '.join(p(a) for a in quad)})" for quad in block.quadruplets.tolist()]
            features += [f"sin({a})" for a in angles] + [f"cos({a})" for a in angles]
        elif isinstance(block, Positions):
            features += [
                f"{'xyz'[c]}{slot[a]}" for a in block.atom_indices.tolist() for c in block.component_indices.tolist()
            ]
        else:
            raise LatfError(_no_expression(block))
    return [f"latf_f{i} = {expr}" for i, expr in enumerate(features)]


def cv_expression(model: LatentModel, featurizer: Featurizer, max_size: int = MAX_EXPRESSION_SIZE) -> CVExpression:
    """Return the CV of ``model`` on ``featurizer``'s features as OpenMM expressions.

    Raises
    ------
    LatfError
        If a layer or feature has no expression form, or the encoder is too large
        (``expression_size`` above ``max_size``) for OpenMM to compile in reasonable time.
    """
    featurizer = paired_featurizer(model, featurizer)
    size = expression_size(model)
    if size > max_size:
        raise LatfError(
            f"the encoder is too large for OpenMM expressions (size {size} > {max_size}: features × hidden widths); "
            "use backend 'torch', or train a smaller encoder (fewer features, --encoder-layers 1 or 0)"
        )
    atoms = sorted({atom for block in featurizer.blocks for atom in _block_atoms(block)})
    definitions = _feature_definitions(featurizer, {atom: k + 1 for k, atom in enumerate(atoms)})
    network = model.network
    mean = network.feature_mean.detach().double().numpy()
    scale = network.feature_scale.detach().double().numpy()
    names = [f"latf_f{i}" for i in range(featurizer.n_features)]
    first = True
    layer_index = 0
    for layer in _layers(model):
        if isinstance(layer, torch.nn.Linear):
            weight = layer.weight.detach().double().numpy()
            bias = layer.bias.detach().double().numpy()
            if first:  # fold (f - mean) / scale into the first layer
                weight = weight / scale
                bias = bias - weight @ mean
                first = False
            new_names = [f"latf_h{layer_index}_{k}" for k in range(weight.shape[0])]
            for name, row, b in zip(new_names, weight, bias, strict=True):
                terms = [f"{_number(w)}*{x}" for w, x in zip(row, names, strict=True) if w != 0.0]
                definitions.append(f"{name} = {' + '.join([*terms, _number(b)])}")
            names, layer_index = new_names, layer_index + 1
        elif type(layer) in _ACTIVATIONS or isinstance(layer, torch.nn.LeakyReLU):
            new_names = [f"{name}a" for name in names]
            for new, old in zip(new_names, names, strict=True):
                if isinstance(layer, torch.nn.LeakyReLU):
                    definitions.append(f"{new} = max({old}, {layer.negative_slope!r}*{old})")
                else:
                    definitions.append(f"{new} = {_ACTIVATIONS[type(layer)](old)}")
            names = new_names
        else:
            raise LatfError(f"encoder layer {type(layer).__name__} has no OpenMM expression; use backend 'torch'")
    definitions += [f"s{k} = {name}" for k, name in enumerate(names)]
    # Lepton substitutes a definition into the ones listed before it: outputs first.
    return CVExpression(atoms, definitions[::-1], len(names))


__all__ = ["MAX_EXPRESSION_SIZE", "CVExpression", "cv_expression", "expression_size"]
