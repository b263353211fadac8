"""Featurizers: TorchScript-compatible modules mapping positions (nm) to features.

The same module computes features of saved trajectories (for training) and, later,
inside an exported CV model that OpenMM runs, so the two can never disagree.

Every module takes ``positions`` (..., n_atoms, 3) and an optional ``box`` (..., 3, 3)
of periodic box vectors as rows, in OpenMM's reduced form (a along x, b in the xy
plane), as a TorchForce with periodic boundary conditions receives it. With a box,
displacements use the minimum image (orthorhombic or triclinic), the way OpenMM
reduces them: exact for displacements shorter than half the smallest box width.

A featurizer is described by a list of blocks (the ``[[features]]`` tables of a
recipe); each block is a mapping with a ``kind``:

``positions``
    Cartesian components of atoms: ``atoms`` (mdtraj selection or index list),
    ``components`` (subset of ``"xyz"``, default ``"xyz"``).
``distances``
    ``pairs`` (list of index pairs), or all pairs within ``atoms`` (selection or list)
    except those ``exclude_neighbors`` or fewer bonds apart (default 0: keep all).
    Bonded (1) and angle (2) pairs barely move; normalized by their tiny spread, they make
    a CV stiff along bond vibrations, which a bias along it then drives.
``dihedrals``
    ``angles`` (names from ``phi``, ``psi``, ``omega``, ``chi1`` ... as mdtraj defines
    them) or ``quadruplets`` (index lists); each angle gives sin and cos.
``coordination``
    Coordination number of each atom in ``atoms`` with the others in ``atoms``,
    c_i = Σ_j (1 − (r_ij/r0)^n) / (1 − (r_ij/r0)^m); ``r0`` (nm), ``n``, ``m``.
``contacts``
    Contact map: the same rational switch of each pair's distance, one feature per pair;
    ``pairs`` or all pairs within ``atoms`` (with ``exclude_neighbors``), and ``r0``, ``n``, ``m``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import mdtraj
import numpy as np
import openmm.app as app
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path

from latf_openmm.errors import LatfError

_COMPONENTS = {"x": 0, "y": 1, "z": 2}


def minimum_image(delta: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """Displacements (..., m, 3) reduced to their minimum image in ``box`` (..., 3, 3), if given."""
    if box is None:
        return delta
    for k in (2, 1, 0):  # c, then b, then a: valid for OpenMM's reduced triclinic boxes
        vector = box[..., k, :].unsqueeze(-2)
        shift = torch.round(delta[..., k] / vector[..., k])
        delta = delta - shift.unsqueeze(-1) * vector
    return delta


class Positions(torch.nn.Module):
    """Selected Cartesian components of selected atoms."""

    __jit_ignored_attributes__ = ["names"]  # noqa: RUF012  (metadata, not scripted)

    def __init__(self, atom_indices: Iterable[int], components: str = "xyz") -> None:
        super().__init__()
        atoms = [int(i) for i in atom_indices]
        comps = [_COMPONENTS[c] for c in components]
        self.register_buffer("atom_indices", torch.tensor(atoms, dtype=torch.long))
        self.register_buffer("component_indices", torch.tensor(comps, dtype=torch.long))
        self.names = [f"{c}{i}" for i in atoms for c in components]
        self.components = components

    def resolved(self) -> dict[str, object]:
        """Return this block's description with explicit atom indices (see :meth:`Featurizer.resolved`)."""
        return {"kind": "positions", "atoms": self.atom_indices.tolist(), "components": self.components}

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """Return the selected components of the selected atoms, flattened (..., n_atoms * n_components)."""
        selected = positions.index_select(-2, self.atom_indices).index_select(-1, self.component_indices)
        return selected.flatten(start_dim=-2)


class Distances(torch.nn.Module):
    """Distances between atom pairs, nm."""

    __jit_ignored_attributes__ = ["names"]  # noqa: RUF012  (metadata, not scripted)

    def __init__(self, pairs: Iterable[Iterable[int]]) -> None:
        super().__init__()
        pairs_t = torch.tensor([[int(i), int(j)] for i, j in pairs], dtype=torch.long).reshape(-1, 2)
        self.register_buffer("pairs", pairs_t)
        self.names = [f"d{i}-{j}" for i, j in pairs_t.tolist()]

    def resolved(self) -> dict[str, object]:
        """Return this block's description with explicit atom indices (see :meth:`Featurizer.resolved`)."""
        return {"kind": "distances", "pairs": self.pairs.tolist()}

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """Return the pair distances (..., n_pairs), nm, by the minimum image if ``box`` is given."""
        delta = positions.index_select(-2, self.pairs[:, 1]) - positions.index_select(-2, self.pairs[:, 0])
        delta = minimum_image(delta, box)
        return torch.linalg.vector_norm(delta, dim=-1)


class Dihedrals(torch.nn.Module):
    """Dihedral angles as (sin, cos) pairs: sin of all angles, then cos of all angles."""

    __jit_ignored_attributes__ = ["names"]  # noqa: RUF012  (metadata, not scripted)

    def __init__(self, quadruplets: Iterable[Iterable[int]], labels: list[str] | None = None) -> None:
        super().__init__()
        quads = torch.tensor([[int(i) for i in q] for q in quadruplets], dtype=torch.long).reshape(-1, 4)
        self.register_buffer("quadruplets", quads)
        labels = labels or ["dih" + "-".join(map(str, q)) for q in quads.tolist()]
        self.names = [f"sin({a})" for a in labels] + [f"cos({a})" for a in labels]
        self.labels = list(labels)

    def resolved(self) -> dict[str, object]:
        """Return this block's description with explicit atom indices (see :meth:`Featurizer.resolved`)."""
        return {"kind": "dihedrals", "quadruplets": self.quadruplets.tolist(), "labels": self.labels}

    def angles(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """Return the dihedral angles in radians, (-π, π], with mdtraj's sign convention."""
        p = [positions.index_select(-2, self.quadruplets[:, k]) for k in range(4)]
        b1 = minimum_image(p[1] - p[0], box)
        b2 = minimum_image(p[2] - p[1], box)
        b3 = minimum_image(p[3] - p[2], box)
        n1 = torch.linalg.cross(b1, b2)
        n2 = torch.linalg.cross(b2, b3)
        y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
        x = (n1 * n2).sum(-1)
        return torch.atan2(y, x)

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """Return sin of all angles, then cos of all angles (..., 2 n_angles)."""
        angle = self.angles(positions, box)
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def rational_switch(ratio: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """(1 − x^n)/(1 − x^m) of x = r/r0, with x moved off its removable singularity at 1 (value n/m)."""
    near_one = (ratio - 1.0).abs() < 1e-6
    ratio = torch.where(near_one, torch.full_like(ratio, 1.0 + 1e-6), ratio)
    return (1.0 - ratio.pow(n)) / (1.0 - ratio.pow(m))


def _check_switch(r0: float, n: int, m: int) -> None:
    if not (r0 > 0 and m > n > 0):
        raise LatfError(f"switching functions need r0 > 0 and m > n > 0, got r0={r0}, n={n}, m={m}")


class Contacts(torch.nn.Module):
    """Contact map: a rational switch of each pair's distance."""

    __jit_ignored_attributes__ = ["names"]  # noqa: RUF012  (metadata, not scripted)

    def __init__(self, pairs: Iterable[Iterable[int]], r0: float, n: int = 6, m: int = 12) -> None:
        super().__init__()
        _check_switch(r0, n, m)
        self.distances = Distances(pairs)
        self.r0, self.n, self.m = float(r0), int(n), int(m)
        self.names = [f"contact{name[1:]}" for name in self.distances.names]

    def resolved(self) -> dict[str, object]:
        """Return this block's description with explicit atom indices (see :meth:`Featurizer.resolved`)."""
        return {"kind": "contacts", "pairs": self.distances.pairs.tolist(), "r0": self.r0, "n": self.n, "m": self.m}

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """Return the switched distance of each pair (..., n_pairs)."""
        return rational_switch(self.distances(positions, box) / self.r0, self.n, self.m)


class CoordinationNumbers(torch.nn.Module):
    """Coordination number of each atom of a group with the rest of the group."""

    __jit_ignored_attributes__ = ["names"]  # noqa: RUF012  (metadata, not scripted)

    def __init__(self, atom_indices: Iterable[int], r0: float, n: int = 6, m: int = 12) -> None:
        super().__init__()
        atoms = [int(i) for i in atom_indices]
        if len(atoms) < 2:
            raise LatfError("coordination numbers need at least two atoms")
        _check_switch(r0, n, m)
        self.register_buffer("atom_indices", torch.tensor(atoms, dtype=torch.long))
        self.r0, self.n, self.m = float(r0), int(n), int(m)
        self.names = [f"cn{i}" for i in atoms]

    def resolved(self) -> dict[str, object]:
        """Return this block's description with explicit atom indices (see :meth:`Featurizer.resolved`)."""
        return {"kind": "coordination", "atoms": self.atom_indices.tolist(), "r0": self.r0, "n": self.n, "m": self.m}

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """Return each group atom's coordination number with the others (..., n_atoms)."""
        group = positions.index_select(-2, self.atom_indices)
        n = group.shape[-2]
        delta = (group.unsqueeze(-2) - group.unsqueeze(-3)).flatten(-3, -2)  # (..., n*n, 3)
        delta = minimum_image(delta, box).unflatten(-2, (n, n))
        switch = rational_switch(torch.linalg.vector_norm(delta, dim=-1) / self.r0, self.n, self.m)
        eye = torch.eye(group.shape[-2], dtype=torch.bool, device=group.device)
        return torch.where(eye, torch.zeros_like(switch), switch).sum(-1)


class Featurizer(torch.nn.Module):
    """Concatenation of feature blocks: positions (..., n_atoms, 3) → features (..., n_features)."""

    __jit_ignored_attributes__ = ["names"]  # noqa: RUF012  (metadata, not scripted)
    __jit_unused_properties__ = ["n_features"]  # noqa: RUF012

    def __init__(self, blocks: list[torch.nn.Module], n_atoms: int) -> None:
        super().__init__()
        if not blocks:
            raise LatfError("a featurizer needs at least one feature block")
        self.blocks = torch.nn.ModuleList(blocks)
        self.n_atoms = int(n_atoms)
        self.names = [name for block in blocks for name in block.names]

    def resolved(self) -> dict[str, object]:
        """Return the featurizer as numbers: its blocks' descriptions with explicit atom indices.

        :func:`resolved_featurizer` rebuilds it without the topology; a model keeps it, so
        its CV can never be paired with another featurizer.
        """
        return {"n_atoms": self.n_atoms, "blocks": [block.resolved() for block in self.blocks]}

    @property
    def n_features(self) -> int:
        """Number of output features."""
        return len(self.names)

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """Return the blocks' features, concatenated in block order (..., n_features)."""
        return torch.cat([block(positions, box) for block in self.blocks], dim=-1)

    def transform(self, xyz: np.ndarray, boxes: np.ndarray | None = None, batch_size: int = 65536) -> np.ndarray:
        """Features of a trajectory (n_frames, n_atoms, 3) in nm, computed in float64.

        ``boxes`` (n_frames, 3, 3), box vectors as rows in nm, turns on the minimum image.
        """
        xyz = np.asarray(xyz)
        if xyz.ndim != 3 or xyz.shape[1:] != (self.n_atoms, 3):
            raise LatfError(f"positions must have shape (n_frames, {self.n_atoms}, 3), got {xyz.shape}")
        if boxes is not None and np.shape(boxes) != (len(xyz), 3, 3):
            raise LatfError(f"boxes must have shape ({len(xyz)}, 3, 3), got {np.shape(boxes)}")
        positions = torch.from_numpy(xyz).to(torch.float64)
        cells = None if boxes is None else torch.from_numpy(np.asarray(boxes)).to(torch.float64)
        with torch.no_grad():
            return torch.cat(
                [
                    self(chunk, None if cells is None else cells[start : start + len(chunk)])
                    for start, chunk in zip(
                        range(0, len(positions), batch_size), positions.split(batch_size), strict=True
                    )
                ]
            ).numpy()


def _as_mdtraj(topology: app.Topology | mdtraj.Topology) -> mdtraj.Topology:
    return topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)


def _select(topology: mdtraj.Topology, atoms: str | Iterable[int], kind: str) -> list[int]:
    """Return the atom indices of a selection string or index list, checked against ``topology``."""
    if isinstance(atoms, str):
        try:
            indices = topology.select(atoms).tolist()
        except Exception as exc:  # mdtraj raises several types for bad selections
            raise LatfError(f"{kind} features: invalid atom selection {atoms!r}: {exc}") from exc
    else:
        indices = [int(i) for i in atoms]
    if not indices:
        raise LatfError(f"{kind} features: selection {atoms!r} matches no atoms")
    bad = [i for i in indices if not 0 <= i < topology.n_atoms]
    if bad:
        raise LatfError(f"{kind} features: atom indices {bad} outside the topology's {topology.n_atoms} atoms")
    return indices


def _bonds_apart(topology: mdtraj.Topology, indices: list[int]) -> np.ndarray:
    """Bonds on the shortest path between each two of ``indices`` (inf if not connected)."""
    bonds = np.array([[a.index, b.index] for a, b in topology.bonds]).reshape(-1, 2)
    if not len(bonds):
        raise LatfError("exclude_neighbors needs bonds, but the topology has none; give the pairs instead")
    n = topology.n_atoms
    graph = coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n, n))
    return shortest_path(graph, directed=False, unweighted=True, indices=indices)[:, indices]


def _pairs_within(topology: mdtraj.Topology, spec: Mapping[str, Any], kind: str) -> list[tuple[int, int]]:
    """All pairs of ``spec["atoms"]`` more than ``spec["exclude_neighbors"]`` bonds apart."""
    indices = _select(topology, spec.get("atoms", "all"), kind)
    exclude = spec.get("exclude_neighbors", 0)
    if isinstance(exclude, bool) or not isinstance(exclude, int) or exclude < 0:
        raise LatfError(f"{kind} features: exclude_neighbors must be a whole number ≥ 0, got {exclude!r}")
    apart = _bonds_apart(topology, indices) if exclude else None
    return [
        (indices[a], indices[b])
        for a, b in itertools.combinations(range(len(indices)), 2)
        if apart is None or apart[a, b] > exclude
    ]


def _named_dihedrals(topology: mdtraj.Topology, names: list[str]) -> tuple[list[list[int]], list[str]]:
    frame = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3)), topology)
    quads: list[list[int]] = []
    labels: list[str] = []
    for name in names:
        compute = getattr(mdtraj, f"compute_{name}", None)
        if compute is None or name not in ("phi", "psi", "omega", "chi1", "chi2", "chi3", "chi4"):
            raise LatfError(f"dihedral features: unknown angle {name!r}; use phi, psi, omega, chi1-chi4")
        indices, _ = compute(frame)
        if len(indices) == 0:
            raise LatfError(f"dihedral features: the topology has no {name} angles")
        for quad in indices.tolist():
            quads.append(quad)
            labels.append(f"{name}{topology.atom(quad[1]).residue.resSeq}")
    return quads, labels


def _positions_block(spec: Mapping[str, Any], topology: mdtraj.Topology) -> Positions:
    """Build a ``positions`` block: Cartesian components of the selected atoms."""
    components = spec.get("components", "xyz")
    if not components or set(components) - set(_COMPONENTS):
        raise LatfError(f"positions features: components must be letters of 'xyz', got {components!r}")
    return Positions(_select(topology, spec.get("atoms", "all"), "positions"), components)


def _block_pairs(spec: Mapping[str, Any], topology: mdtraj.Topology, kind: str) -> Sequence[Sequence[int]]:
    """Return the atom pairs of a ``distances`` or ``contacts`` block: explicit or within ``atoms``."""
    if "pairs" in spec:
        if "exclude_neighbors" in spec:
            raise LatfError(f"{kind} features: exclude_neighbors applies to atoms, not to explicit pairs")
        pairs = [list(p) for p in spec["pairs"]]
        if any(len(p) != 2 for p in pairs):
            raise LatfError(f"{kind} features: each pair needs two atom indices")
        _select(topology, [i for p in pairs for i in p], kind)
    else:
        pairs = _pairs_within(topology, spec, kind)
    if not pairs:
        raise LatfError(f"{kind} features: no atom pairs")
    return pairs


def _distances_block(spec: Mapping[str, Any], topology: mdtraj.Topology) -> Distances:
    """Build a ``distances`` block."""
    return Distances(_block_pairs(spec, topology, "distances"))


def _contacts_block(spec: Mapping[str, Any], topology: mdtraj.Topology) -> Contacts:
    """Build a ``contacts`` block (r0 default 0.8 nm)."""
    pairs = _block_pairs(spec, topology, "contacts")
    return Contacts(pairs, r0=float(spec.get("r0", 0.8)), n=int(spec.get("n", 6)), m=int(spec.get("m", 12)))


def _dihedrals_block(spec: Mapping[str, Any], topology: mdtraj.Topology) -> Dihedrals:
    """Build a ``dihedrals`` block from explicit quadruplets or named angles (default phi and psi)."""
    if "quadruplets" in spec:
        quads = [list(q) for q in spec["quadruplets"]]
        if not quads or any(len(q) != 4 for q in quads):
            raise LatfError("dihedral features: each quadruplet needs four atom indices")
        _select(topology, [i for q in quads for i in q], "dihedrals")
        return Dihedrals(quads, spec.get("labels"))
    quads, labels = _named_dihedrals(topology, list(spec.get("angles", ["phi", "psi"])))
    return Dihedrals(quads, labels)


def _coordination_block(spec: Mapping[str, Any], topology: mdtraj.Topology) -> CoordinationNumbers:
    """Build a ``coordination`` block (r0 default 1.5 nm)."""
    return CoordinationNumbers(
        _select(topology, spec.get("atoms", "all"), "coordination"),
        r0=float(spec.get("r0", 1.5)),
        n=int(spec.get("n", 6)),
        m=int(spec.get("m", 12)),
    )


# Each feature kind's allowed keys (besides ``kind``) and the function that builds its block.
_BLOCK_KINDS: dict[str, tuple[set[str], Callable[[Mapping[str, Any], mdtraj.Topology], torch.nn.Module]]] = {
    "positions": ({"atoms", "components"}, _positions_block),
    "distances": ({"atoms", "pairs", "exclude_neighbors"}, _distances_block),
    "dihedrals": ({"angles", "quadruplets", "labels"}, _dihedrals_block),
    "coordination": ({"atoms", "r0", "n", "m"}, _coordination_block),
    "contacts": ({"atoms", "pairs", "exclude_neighbors", "r0", "n", "m"}, _contacts_block),
}


def _block(spec: Mapping[str, Any], topology: mdtraj.Topology) -> torch.nn.Module:
    """Build the feature block one ``[[features]]`` table describes, after checking its kind and keys."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in _BLOCK_KINDS:
        raise LatfError(f"unknown feature kind {kind!r}; use one of {sorted(_BLOCK_KINDS)}")
    allowed, build = _BLOCK_KINDS[kind]
    unknown = set(spec) - allowed
    if unknown:
        raise LatfError(f"{kind} features: unknown keys {sorted(unknown)}; allowed {sorted(allowed)}")
    return build(spec, topology)


def build_featurizer(description: Iterable[Mapping[str, Any]], topology: app.Topology | mdtraj.Topology) -> Featurizer:
    """Build a featurizer from its description and the topology it applies to."""
    top = _as_mdtraj(topology)
    return Featurizer([_block(spec, top) for spec in description], top.n_atoms)


def resolved_featurizer(resolved: Mapping[str, Any]) -> Featurizer:
    """Rebuild a featurizer from :meth:`Featurizer.resolved` (explicit atom indices, no topology)."""
    try:
        n_atoms, blocks = int(resolved["n_atoms"]), list(resolved["blocks"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LatfError(f"not a resolved featurizer (n_atoms and blocks): {exc}") from exc
    topology = mdtraj.Topology()
    residue = topology.add_residue("X", topology.add_chain())
    for _ in range(n_atoms):  # explicit indices need only the atom count
        topology.add_atom("X", None, residue)
    return build_featurizer(blocks, topology)


__all__ = [
    "Contacts",
    "CoordinationNumbers",
    "Dihedrals",
    "Distances",
    "Featurizer",
    "Positions",
    "build_featurizer",
    "rational_switch",
    "resolved_featurizer",
]
