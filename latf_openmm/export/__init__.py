"""Export: a trained encoder plus its featurizer as one TorchScript file, positions → CV.

The exported module maps positions (nm; float32 or float64, as OpenMM's CPU and
Reference platforms pass float64) and an optional periodic box to the latent CV:
features → normalization → encoder. With ``component=k`` it returns the scalar CV
component k, which is what a TorchForce inside an OpenMM ``CustomCVForce`` needs.
Metadata (feature description, atom count, CV dimension, units, training-data hash,
versions) travel inside the file as ``latf_metadata.json``; loading needs only torch.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from latf_openmm.errors import LatfError
from latf_openmm.features import Featurizer
from latf_openmm.files import atomic_path
from latf_openmm.models import LatentModel
from latf_openmm.versions import versions

METADATA_FILE = "latf_metadata.json"


class LatentMean(torch.nn.Module):
    """Features (..., n_features) → latent CV (..., d); shared by the OpenMM and PLUMED exports.

    Normalization runs in float64, the encoder in its own dtype, and the result is float64.
    """

    def __init__(self, model: LatentModel) -> None:
        super().__init__()
        network = model.network
        self.register_buffer("feature_mean", network.feature_mean.clone())
        self.register_buffer("feature_scale", network.feature_scale.clone())
        self.encoder = copy.deepcopy(network.encoder)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the latent mean (..., d) of ``features`` (..., n_features), float64."""
        features = features.to(torch.float64)
        normalized = (features - self.feature_mean.to(torch.float64)) / self.feature_scale.to(torch.float64)
        return self.encoder(normalized.to(self.feature_mean.dtype)).to(torch.float64)


def paired_featurizer(model: LatentModel, featurizer: Featurizer | None = None) -> Featurizer:
    """Return the featurizer to pair with ``model``: the one given, or the one the model keeps.

    Raise if the given one does not make the model's features: another count, or (for a model
    that keeps its featurizer) other features; or if neither is there.
    """
    kept = model.info.get("featurizer")
    if featurizer is None:
        if kept is None:
            raise LatfError(
                "this model does not keep its featurizer (trained on .npz arrays, or saved before models kept "
                "it): give the featurizer (or --system), or retrain it from the run folders"
            )
        return model.featurizer
    if featurizer.n_features != len(model.feature_names):
        raise LatfError(
            f"the featurizer makes {featurizer.n_features} features but the model expects "
            f"{len(model.feature_names)}; use the featurizer the model was trained with"
        )
    if kept is not None and json.loads(json.dumps(featurizer.resolved())) != kept:
        raise LatfError("the featurizer is not the one the model was trained with (other atoms or features)")
    return featurizer


class CollectiveVariable(torch.nn.Module):
    """positions (n_atoms, 3) [+ box (3, 3)] → CV (d,), or its component ``component`` (a scalar).

    Features are computed in float64 and passed to the encoder in its own dtype; the
    result is float64.
    """

    def __init__(self, featurizer: Featurizer | None, model: LatentModel, component: int | None = None) -> None:
        super().__init__()
        featurizer = paired_featurizer(model, featurizer)
        if component is not None and not 0 <= component < model.latent_dim:
            raise LatfError(f"component {component} out of range for a {model.latent_dim}-D CV")
        self.featurizer = featurizer
        self.latent = LatentMean(model)
        self.component = -1 if component is None else int(component)

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """Return the CV (d,) of ``positions`` (n_atoms, 3) in nm, or its chosen component."""
        positions = positions.to(torch.float64)
        if box is not None:
            box = box.to(torch.float64)
        cv = self.latent(self.featurizer(positions, box))
        if self.component >= 0:
            return cv[self.component]
        return cv


def export_cv(
    model: LatentModel,
    featurizer: Featurizer | None,
    path: str | Path,
    component: int | None = None,
    feature_description: list[dict[str, Any]] | None = None,
) -> Path:
    """Write the CV of ``model`` with ``featurizer`` as one TorchScript file (atomically).

    Parameters
    ----------
    model
        A trained SPIB or LaTF model.
    featurizer
        The featurizer whose features the model was trained on; None: the one the model keeps.
    path
        Output file (``.pt``).
    component
        Export only this CV component as a scalar (for an OpenMM CustomCVForce).
    feature_description
        The featurizer's description (a system's ``features``), stored in the metadata;
        None: the featurizer's resolved form (its atoms and features).
    """
    featurizer = paired_featurizer(model, featurizer)
    module = torch.jit.script(CollectiveVariable(featurizer, model, component).eval())
    metadata = {
        "format": "latf_openmm.cv",
        "cv_dimension": model.latent_dim,
        "component": component,
        "n_atoms": featurizer.n_atoms,
        "n_features": featurizer.n_features,
        "feature_names": featurizer.names,
        "features": featurizer.resolved() if feature_description is None else feature_description,
        "units": {"positions": "nm", "box": "nm", "cv": "latent (dimensionless)"},
        "data_digest": model.info.get("data_digest"),
        "versions": versions(),
    }
    with atomic_path(path) as tmp:
        torch.jit.save(module, str(tmp), _extra_files={METADATA_FILE: json.dumps(metadata)})
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read the metadata stored in an exported CV file."""
    extra = {METADATA_FILE: ""}
    try:
        torch.jit.load(str(path), _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise LatfError(f"cannot read exported CV {path}: {exc}") from exc
    return json.loads(extra[METADATA_FILE])


__all__ = ["CollectiveVariable", "LatentMean", "export_cv", "paired_featurizer", "read_metadata"]
