"""PLUMED integration through the files PLUMED reads and writes.

- :func:`write_plumed_model`: the features → CV part of a model as a TorchScript file for
  PLUMED's ``PYTORCH_MODEL`` (input float32 (1, n_features), output (1, n_cv)).
- :func:`write_plumed`: both files in one folder.
- :func:`plumed_input`: a ``plumed.dat`` that computes the same features with PLUMED
  actions (1-based atom numbers, nm), feeds them to ``PYTORCH_MODEL``, biases the CV as a
  :class:`~latf_openmm.specs.BiasSpec` says (``OPES_METAD``, well-tempered ``METAD`` or
  ``RESTRAINT``, with walls) and prints CV and bias to ``COLVAR``.

PLUMED's ``COLVAR`` and ``HILLS`` files are read and written by :mod:`latf_openmm.simulation.colvar`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latf_openmm.errors import LatfError
from latf_openmm.export import LatentMean
from latf_openmm.features import Contacts, CoordinationNumbers, Dihedrals, Distances, Featurizer, Positions
from latf_openmm.files import atomic_path
from latf_openmm.models import LatentModel
from latf_openmm.specs import BiasSpec, bias_grid


class _PlumedCV(torch.nn.Module):
    """PYTORCH_MODEL's contract: float32 features (1, n_features) in, float32 CV (1, n_cv) out."""

    def __init__(self, model: LatentModel) -> None:
        super().__init__()
        self.latent = LatentMean(model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.latent(features).to(torch.float32)


def write_plumed_model(model: LatentModel, path: str | Path) -> Path:
    """Write features (1, n_features) → CV (1, n_cv) as TorchScript for PLUMED's PYTORCH_MODEL."""
    module = torch.jit.script(_PlumedCV(model).eval())
    with atomic_path(path) as tmp:
        torch.jit.save(module, str(tmp))
    return Path(path)


def write_plumed(
    model: LatentModel, featurizer: Featurizer, folder: str | Path, temperature: float, bias: BiasSpec
) -> tuple[Path, Path]:
    """Write ``folder/model.ptc`` and ``folder/plumed.dat``, each atomically; return both paths.

    They are :func:`write_plumed_model` and :func:`plumed_input` with ``bias`` at
    ``temperature`` (K).
    """
    folder = Path(folder)
    text = plumed_input(
        featurizer, "model.ptc", model.latent_dim, temperature, bias, model.info.get("latent_range")
    )  # first: a bad bias writes nothing
    model_path = write_plumed_model(model, folder / "model.ptc")
    with atomic_path(folder / "plumed.dat") as tmp:
        tmp.write_text(text)
    return model_path, folder / "plumed.dat"


def _rational_switch(block: Contacts | CoordinationNumbers) -> str:
    """Return PLUMED's ``SWITCH`` keyword for the block's rational switching function."""
    return f"SWITCH={{RATIONAL R_0={block.r0} NN={block.n} MM={block.m}}}"


def _distance_actions(b: int, block: Distances) -> tuple[list[str], list[str]]:
    """Return one ``DISTANCE`` per pair of block ``b`` and their labels."""
    lines: list[str] = []
    labels: list[str] = []
    for k, (i, j) in enumerate(block.pairs.tolist()):
        lines.append(f"d{b}_{k}: DISTANCE ATOMS={i + 1},{j + 1}")
        labels.append(f"d{b}_{k}")
    return lines, labels


def _dihedral_actions(b: int, block: Dihedrals) -> tuple[list[str], list[str]]:
    """Return a ``TORSION`` per angle of block ``b``, then their sines and cosines (the labelled features)."""
    quads = block.quadruplets.tolist()
    lines = [f"t{b}_{k}: TORSION ATOMS={','.join(str(a + 1) for a in quad)}" for k, quad in enumerate(quads)]
    labels: list[str] = []
    for func in ("sin", "cos"):
        for k in range(len(quads)):
            lines.append(f"{func}{b}_{k}: CUSTOM ARG=t{b}_{k} FUNC={func}(x) PERIODIC=NO")
            labels.append(f"{func}{b}_{k}")
    return lines, labels


def _position_actions(b: int, block: Positions) -> tuple[list[str], list[str]]:
    """Return a ``POSITION`` per atom of block ``b`` and the labels of its selected components."""
    components = "xyz"
    lines: list[str] = []
    labels: list[str] = []
    for atom in block.atom_indices.tolist():
        lines.append(f"p{b}_{atom}: POSITION ATOM={atom + 1} NOPBC")
        labels.extend(f"p{b}_{atom}.{components[c]}" for c in block.component_indices.tolist())
    return lines, labels


def _coordination_actions(b: int, block: CoordinationNumbers) -> tuple[list[str], list[str]]:
    """Return a ``COORDINATION`` of each atom of block ``b`` with the others, and their labels."""
    atoms = block.atom_indices.tolist()
    lines: list[str] = []
    labels: list[str] = []
    for atom in atoms:
        others = ",".join(str(a + 1) for a in atoms if a != atom)
        lines.append(f"cn{b}_{atom}: COORDINATION GROUPA={atom + 1} GROUPB={others} {_rational_switch(block)}")
        labels.append(f"cn{b}_{atom}")
    return lines, labels


def _contact_actions(b: int, block: Contacts) -> tuple[list[str], list[str]]:
    """Return a ``COORDINATION`` per pair of block ``b`` (a contact) and their labels."""
    lines: list[str] = []
    labels: list[str] = []
    for k, (i, j) in enumerate(block.distances.pairs.tolist()):
        lines.append(f"c{b}_{k}: COORDINATION GROUPA={i + 1} GROUPB={j + 1} {_rational_switch(block)}")
        labels.append(f"c{b}_{k}")
    return lines, labels


# The function that writes each feature block's PLUMED actions and labels.
_BLOCK_ACTIONS: dict[type[torch.nn.Module], Callable[[int, Any], tuple[list[str], list[str]]]] = {
    Distances: _distance_actions,
    Dihedrals: _dihedral_actions,
    Positions: _position_actions,
    CoordinationNumbers: _coordination_actions,
    Contacts: _contact_actions,
}


def _feature_lines(featurizer: Featurizer) -> tuple[list[str], list[str]]:
    """Return PLUMED actions computing the featurizer's features, and the labels in feature order."""
    lines: list[str] = []
    labels: list[str] = []
    for b, block in enumerate(featurizer.blocks):
        actions = next((write for kind, write in _BLOCK_ACTIONS.items() if isinstance(block, kind)), None)
        if actions is None:  # pragma: no cover - every block kind has an entry above
            raise LatfError(f"no PLUMED equivalent for feature block {type(block).__name__}")
        block_lines, block_labels = actions(b, block)
        lines += block_lines
        labels += block_labels
    return lines, labels


def _numbers(values: Sequence[float]) -> str:
    return ",".join(f"{float(v):.6g}" for v in values)


def require_plumed_path(path: Path, remedy: str) -> None:
    """Raise unless PLUMED can read ``path`` in its input (PLUMED splits file names at spaces)."""
    if any(character.isspace() for character in str(path)):
        raise LatfError(f"PLUMED cannot read file names with spaces: {remedy} ({path})")


@dataclass(frozen=True)
class PlumedWalkers:
    """METAD walkers that share their hills through files in one folder (PLUMED's ``WALKERS_*``).

    Walker ``index`` of ``count`` writes ``folder/HILLS.<index>`` and reads the others'
    every ``read_stride`` steps.
    """

    count: int
    index: int
    folder: Path
    read_stride: int

    def __post_init__(self) -> None:
        """Reject an index out of range, a non-positive stride and a folder name PLUMED cannot read."""
        if not (self.count >= 2 and 0 <= self.index < self.count and self.read_stride >= 1):
            raise LatfError(f"walker {self.index} of {self.count}, reading every {self.read_stride} steps: invalid")
        require_plumed_path(self.folder, "share walkers elsewhere")

    def hills(self, index: int) -> Path:
        """Return walker ``index``'s hills file."""
        return self.folder / f"HILLS.{index}"

    def keywords(self) -> str:
        """Return METAD's keywords for these walkers."""
        return (f"FILE=HILLS WALKERS_N={self.count} WALKERS_ID={self.index} WALKERS_DIR={self.folder} "
                f"WALKERS_RSTRIDE={self.read_stride}")  # fmt: skip


def require_shared_walkers(method: str) -> None:
    """Raise unless PLUMED shares walkers of ``method`` through files (METAD's ``WALKERS_*``)."""
    if method != "metad":
        raise LatfError(
            f"PLUMED shares {method} walkers only over MPI: several walkers on the plumed engine run "
            "method 'metad' (OPES walkers share on the openmm engine)"
        )


def plumed_input(
    featurizer: Featurizer,
    model_file: str,
    cv_dimension: int,
    temperature: float,
    bias: BiasSpec,
    latent_range: Sequence[Sequence[float]] | None = None,
    stride: int = 500,
    folder: str | Path | None = None,
    walkers: PlumedWalkers | None = None,
) -> str:
    """Text of a ``plumed.dat`` biasing the learned CV as ``bias`` says (kJ/mol, nm, K).

    The bias's defaults are resolved as :func:`latf_openmm.bias.build_bias` resolves them
    (:meth:`BiasSpec.resolved`), so the file carries the same components, walls, kernel
    widths, pace, height or barrier and bias factor as the OpenMM run would.

    Parameters
    ----------
    featurizer
        The featurizer the model was trained on.
    model_file
        File written by :func:`write_plumed_model`.
    cv_dimension
        Number of CV components (all are printed).
    temperature
        Temperature, K.
    bias
        ``opes`` (``OPES_METAD`` with fixed kernels and no compression, as latf_openmm's
        OPES), ``metad`` (well-tempered ``METAD``) or ``restraint`` (``RESTRAINT``); the
        walls (of metad/opes, and of a restraint given lower and upper) are
        ``LOWER_WALLS``/``UPPER_WALLS`` (KAPPA = wall_constant/2: PLUMED's walls have no ½).
    latent_range
        The model's training range per component (``info["latent_range"]``), for default walls.
    stride
        Printing stride in steps.
    folder
        Where PLUMED writes ``COLVAR`` and ``HILLS``/``KERNELS`` (default: its working folder).
    walkers
        METAD walkers sharing their hills (PLUMED's ``WALKERS_*``): this walker's ``HILLS.<index>``
        is then in ``walkers.folder``, beside the others'.
    """
    if cv_dimension < 1 or temperature <= 0 or stride < 1:
        raise LatfError("cv_dimension ≥ 1, temperature > 0 and stride ≥ 1 are required")
    spec = bias.resolved(cv_dimension, latent_range, temperature)
    if walkers is not None:
        require_shared_walkers(spec.method)

    def output(name: str) -> str:
        return name if folder is None else str(Path(folder) / name)

    lines, labels = _feature_lines(featurizer)
    cvs = [f"cv.node-{k}" for k in range(cv_dimension)]
    out = [
        "# latf_openmm: learned CV, written by latf_openmm.export.plumed",
        "UNITS LENGTH=nm ENERGY=kj/mol TIME=ps",
        *lines,
        f"cv: PYTORCH_MODEL FILE={model_file} ARG={','.join(labels)}",
    ]
    if spec.method == "restraint":
        if len(spec.centre) != cv_dimension:
            raise LatfError(f"a restraint needs one centre per CV component ({cv_dimension}), got {spec.centre}")
        out.append(f"bias: RESTRAINT ARG={','.join(cvs)} AT={_numbers(spec.centre)} "
                   f"KAPPA={_numbers([spec.force_constant] * cv_dimension)}")  # fmt: skip
        printed = ["bias.bias"]
        walled = list(range(cv_dimension))
    else:
        walled = list(spec.components)
        biased = ",".join(cvs[c] for c in spec.components)
        common = f"ARG={biased} PACE={spec.pace} SIGMA={_numbers(spec.sigma)} BIASFACTOR={spec.bias_factor:.6g}"
        if spec.method == "opes":
            kernels = "" if folder is None else f" FILE={output('KERNELS')}"  # PLUMED's default name otherwise
            out.append(f"bias: OPES_METAD {common} BARRIER={spec.barrier:g} TEMP={temperature:.6g} "
                       f"FIXED_SIGMA COMPRESSION_THRESHOLD=0{kernels}")  # fmt: skip
        else:
            grid_lower, grid_upper, points = bias_grid(spec.lower, spec.upper, spec.sigma, spec.bins)
            bins = ",".join(str(p - 1) for p in points)  # the package's own grid: PLUMED counts bins, not points
            grid = f"GRID_MIN={_numbers(grid_lower)} GRID_MAX={_numbers(grid_upper)} GRID_BIN={bins}"
            hills = f"FILE={output('HILLS')}" if walkers is None else walkers.keywords()
            out.append(f"bias: METAD {common} HEIGHT={spec.height:g} TEMP={temperature:.6g} {grid} CALC_RCT {hills}")
        printed = ["bias.bias", "bias.rct"]
    on, kappa = ",".join(cvs[c] for c in walled), _numbers([spec.wall_constant / 2] * len(walled))
    for label, action, at in (("lwall", "LOWER_WALLS", spec.lower), ("uwall", "UPPER_WALLS", spec.upper)):
        if at is not None:
            out.append(f"{label}: {action} ARG={on} AT={_numbers(at)} KAPPA={kappa}")
            printed.append(f"{label}.bias")
    out.append(f"PRINT ARG={','.join([*cvs, *printed])} STRIDE={stride} FILE={output('COLVAR')}")
    return "\n".join(out) + "\n"


__all__ = [
    "PlumedWalkers",
    "plumed_input",
    "require_plumed_path",
    "require_shared_walkers",
    "write_plumed",
    "write_plumed_model",
]
