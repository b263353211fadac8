"""PLUMED integration through the files PLUMED reads and writes.

- :func:`write_plumed_model`: the features → CV part of a model as a TorchScript file for
  PLUMED's ``PYTORCH_MODEL`` (input float32 (1, n_features), output (1, n_cv)).
- :func:`write_plumed`: both files in one folder.
- :func:`plumed_input`: a ``plumed.dat`` that computes the same features with PLUMED
  actions (1-based atom numbers, nm), feeds them to ``PYTORCH_MODEL``, biases the CV with
  ``OPES_METAD`` or well-tempered ``METAD`` and prints CV and bias to ``COLVAR``.
- :func:`read_colvar`: PLUMED ``COLVAR`` and ``HILLS`` files (``#! FIELDS`` headers, restarts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latf_openmm.errors import LatfError
from latf_openmm.export import LatentMean
from latf_openmm.features import Contacts, CoordinationNumbers, Dihedrals, Distances, Featurizer, Positions
from latf_openmm.files import atomic_path
from latf_openmm.models import SPIBModel


class _PlumedCV(torch.nn.Module):
    """PYTORCH_MODEL's contract: float32 features (1, n_features) in, float32 CV (1, n_cv) out."""

    def __init__(self, model: SPIBModel) -> None:
        super().__init__()
        self.latent = LatentMean(model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.latent(features).to(torch.float32)


def write_plumed_model(model: SPIBModel, path: str | Path) -> Path:
    """Write features (1, n_features) → CV (1, n_cv) as TorchScript for PLUMED's PYTORCH_MODEL."""
    module = torch.jit.script(_PlumedCV(model).eval())
    with atomic_path(path) as tmp:
        torch.jit.save(module, str(tmp))
    return Path(path)


def write_plumed(
    model: SPIBModel, featurizer: Featurizer, folder: str | Path, temperature: float, bias: str = "opes"
) -> tuple[Path, Path]:
    """Write ``folder/model.ptc`` (:func:`write_plumed_model`) and ``folder/plumed.dat``
    (:func:`plumed_input` with ``bias`` at ``temperature``, K), each atomically; returns both paths."""
    folder = Path(folder)
    model_path = write_plumed_model(model, folder / "model.ptc")
    with atomic_path(folder / "plumed.dat") as tmp:
        tmp.write_text(plumed_input(featurizer, model_path.name, model.latent_dim, temperature, bias=bias))
    return model_path, folder / "plumed.dat"


def _feature_lines(featurizer: Featurizer) -> tuple[list[str], list[str]]:
    """PLUMED actions computing the featurizer's features, and the labels in feature order."""
    lines: list[str] = []
    labels: list[str] = []
    for b, block in enumerate(featurizer.blocks):
        if isinstance(block, Distances):
            for k, (i, j) in enumerate(block.pairs.tolist()):
                lines.append(f"d{b}_{k}: DISTANCE ATOMS={i + 1},{j + 1}")
                labels.append(f"d{b}_{k}")
        elif isinstance(block, Dihedrals):
            quads = block.quadruplets.tolist()
            for k, quad in enumerate(quads):
                lines.append(f"t{b}_{k}: TORSION ATOMS={','.join(str(a + 1) for a in quad)}")
            for func in ("sin", "cos"):
                for k in range(len(quads)):
                    lines.append(f"{func}{b}_{k}: CUSTOM ARG=t{b}_{k} FUNC={func}(x) PERIODIC=NO")
                    labels.append(f"{func}{b}_{k}")
        elif isinstance(block, Positions):
            components = "xyz"
            for atom in block.atom_indices.tolist():
                lines.append(f"p{b}_{atom}: POSITION ATOM={atom + 1} NOPBC")
                labels.extend(f"p{b}_{atom}.{components[c]}" for c in block.component_indices.tolist())
        elif isinstance(block, CoordinationNumbers):
            atoms = block.atom_indices.tolist()
            for atom in atoms:
                others = ",".join(str(a + 1) for a in atoms if a != atom)
                lines.append(
                    f"cn{b}_{atom}: COORDINATION GROUPA={atom + 1} GROUPB={others} "
                    f"SWITCH={{RATIONAL R_0={block.r0} NN={block.n} MM={block.m}}}"
                )
                labels.append(f"cn{b}_{atom}")
        elif isinstance(block, Contacts):
            for k, (i, j) in enumerate(block.distances.pairs.tolist()):
                lines.append(
                    f"c{b}_{k}: COORDINATION GROUPA={i + 1} GROUPB={j + 1} "
                    f"SWITCH={{RATIONAL R_0={block.r0} NN={block.n} MM={block.m}}}"
                )
                labels.append(f"c{b}_{k}")
        else:  # pragma: no cover - every block kind is handled above
            raise LatfError(f"no PLUMED equivalent for feature block {type(block).__name__}")
    return lines, labels


def plumed_input(
    featurizer: Featurizer,
    model_file: str,
    cv_dimension: int,
    temperature: float,
    bias: str = "opes",
    pace: int = 500,
    barrier: float = 40.0,
    sigma: float | list[float] = 0.1,
    height: float = 1.2,
    biasfactor: float = 10.0,
    stride: int = 500,
) -> str:
    """Text of a ``plumed.dat`` biasing the learned CV (kJ/mol, nm, K, as PLUMED's defaults).

    Parameters
    ----------
    featurizer
        The featurizer the model was trained on.
    model_file
        File written by :func:`write_plumed_model`.
    cv_dimension
        Number of CV components (1 or 2 are biased; more are printed only).
    temperature
        Temperature, K.
    bias
        ``"opes"`` (OPES_METAD with ``barrier``) or ``"metad"`` (well-tempered METAD
        with ``sigma``, ``height``, ``biasfactor``).
    pace, stride
        Deposition and printing strides in steps.
    """
    if bias not in ("opes", "metad"):
        raise LatfError(f"bias must be 'opes' or 'metad', got {bias!r}")
    if cv_dimension < 1 or temperature <= 0 or pace < 1 or stride < 1:
        raise LatfError("cv_dimension ≥ 1, temperature > 0, pace ≥ 1 and stride ≥ 1 are required")
    lines, labels = _feature_lines(featurizer)
    cvs = [f"cv.node-{k}" for k in range(cv_dimension)]
    biased = ",".join(cvs[:2])
    out = [
        "# latf_openmm: learned CV, written by latf_openmm.export.plumed",
        "UNITS LENGTH=nm ENERGY=kj/mol TIME=ps",
        *lines,
        f"cv: PYTORCH_MODEL FILE={model_file} ARG={','.join(labels)}",
    ]
    if bias == "opes":
        out.append(f"bias: OPES_METAD ARG={biased} PACE={pace} BARRIER={barrier} TEMP={temperature}")
        printed = "bias.bias,bias.rct"
    else:
        sigmas = ",".join(str(s) for s in (np.broadcast_to(sigma, (len(cvs[:2]),))))
        out.append(
            f"bias: METAD ARG={biased} PACE={pace} SIGMA={sigmas} HEIGHT={height} "
            f"BIASFACTOR={biasfactor} TEMP={temperature} CALC_RCT FILE=HILLS"
        )
        printed = "bias.bias,bias.rct"
    out.append(f"PRINT ARG={','.join(cvs)},{printed} STRIDE={stride} FILE=COLVAR")
    return "\n".join(out) + "\n"


def write_colvar(path: str | Path, fields: list[str], table: np.ndarray) -> None:
    """Write a PLUMED ``COLVAR`` file (``#! FIELDS`` header, one row per line), atomically."""
    table = np.asarray(table, dtype=float).reshape(-1, len(fields))
    with atomic_path(path) as tmp:
        np.savetxt(tmp, table, fmt="%.10g", header="! FIELDS " + " ".join(fields), comments="#")


def read_colvar(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a PLUMED ``COLVAR`` or ``HILLS`` file by field name.

    Later ``#! FIELDS`` headers (from restarts) must repeat the same fields; ``#! SET``
    lines and blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise LatfError(f"PLUMED file not found: {path}")
    fields: list[str] | None = None
    rows: list[list[float]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("#! FIELDS"):
            header = line.split()[2:]
            if fields is not None and header != fields:
                raise LatfError(f"{path}:{number}: fields change from {fields} to {header}")
            fields = header
        elif not line.strip() or line.startswith("#"):
            continue
        else:
            if fields is None:
                raise LatfError(f"{path}:{number}: data before the '#! FIELDS' header")
            values = line.split()
            if len(values) != len(fields):
                raise LatfError(f"{path}:{number}: {len(values)} values for {len(fields)} fields")
            try:
                rows.append([float(v) for v in values])
            except ValueError as exc:
                raise LatfError(f"{path}:{number}: {exc}") from exc
    if fields is None:
        raise LatfError(f"{path} has no '#! FIELDS' header; is it a PLUMED COLVAR or HILLS file?")
    table = np.array(rows, dtype=float).reshape(-1, len(fields))
    return {name: table[:, k] for k, name in enumerate(fields)}


__all__ = ["plumed_input", "read_colvar", "write_colvar", "write_plumed", "write_plumed_model"]
