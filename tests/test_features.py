"""Featurizers against mdtraj and direct formulas."""

import itertools

import mdtraj
import networkx
import numpy as np
import pytest
import torch

from latf_openmm import LatfError, build_featurizer, load_system


@pytest.fixture(scope="module")
def ala2_frames(ala2_vacuum):
    rng = np.random.default_rng(7)
    xyz = ala2_vacuum.positions[None] + rng.normal(scale=0.03, size=(50, 22, 3))
    return mdtraj.Trajectory(xyz.astype(np.float32), mdtraj.Topology.from_openmm(ala2_vacuum.topology))


def pairs_more_bonds_apart(topology: mdtraj.Topology, selection: str, bonds: int) -> np.ndarray:
    """Pairs of the selection more than ``bonds`` bonds apart, from mdtraj's bond graph (networkx)."""
    graph = topology.to_bondgraph()
    atoms = [topology.atom(i) for i in topology.select(selection)]
    return np.array(
        [
            (a.index, b.index)
            for a, b in itertools.combinations(atoms, 2)
            if networkx.shortest_path_length(graph, a, b) > bonds
        ]
    )


def test_distances_and_dihedrals_match_mdtraj(ala2_vacuum, ala2_frames):
    featurizer = build_featurizer(ala2_vacuum.features, ala2_vacuum.topology)
    features = featurizer.transform(ala2_frames.xyz)
    _, phi = mdtraj.compute_phi(ala2_frames)
    _, psi = mdtraj.compute_psi(ala2_frames)
    angles = np.c_[phi, psi]
    np.testing.assert_allclose(features[:, 0:2], np.sin(angles), atol=1e-5)
    np.testing.assert_allclose(features[:, 2:4], np.cos(angles), atol=1e-5)
    pairs = pairs_more_bonds_apart(ala2_frames.topology, "not element H", 3)  # as the recipe asks
    assert len(pairs) == 15  # of 45 heavy-atom pairs, 9 are bonded, 11 share an angle, 10 a dihedral
    np.testing.assert_allclose(features[:, 4:], mdtraj.compute_distances(ala2_frames, pairs), atol=1e-5)
    assert featurizer.names[:4] == ["sin(phi2)", "sin(psi2)", "cos(phi2)", "cos(psi2)"]


@pytest.mark.parametrize("bonds", [0, 1, 2])
def test_distances_leave_out_near_neighbours_along_bonds(ala2_vacuum, ala2_frames, bonds):
    featurizer = build_featurizer(
        [{"kind": "distances", "atoms": "not element H", "exclude_neighbors": bonds}], ala2_vacuum.topology
    )
    pairs = pairs_more_bonds_apart(ala2_frames.topology, "not element H", bonds)
    assert len(pairs) == [45, 36, 25][bonds]
    np.testing.assert_array_equal(featurizer.blocks[0].pairs.numpy(), pairs)
    np.testing.assert_allclose(
        featurizer.transform(ala2_frames.xyz), mdtraj.compute_distances(ala2_frames, pairs), atol=1e-5
    )


def test_dihedral_angles_signed_like_mdtraj(ala2_vacuum, ala2_frames):
    indices, phi = mdtraj.compute_phi(ala2_frames)
    featurizer = build_featurizer([{"kind": "dihedrals", "quadruplets": indices.tolist()}], ala2_vacuum.topology)
    angles = featurizer.blocks[0].angles(torch.from_numpy(ala2_frames.xyz).double()).numpy()
    np.testing.assert_allclose(angles, phi, atol=1e-5)


def test_coordination_numbers_match_formula(rng):
    lj7 = load_system("lj7")
    featurizer = build_featurizer(lj7.features, lj7.topology)
    xyz = lj7.positions[None] + rng.normal(scale=0.1, size=(20, 7, 3))
    r = np.linalg.norm(xyz[:, :, None] - xyz[:, None], axis=-1) / 1.5
    switch = (1 - r**8) / (1 - r**16)
    expected = np.where(np.eye(7, dtype=bool), 0.0, switch).sum(-1)
    np.testing.assert_allclose(featurizer.transform(xyz), expected, rtol=1e-10)
    # at exactly r = r0 the switching function is n/m, not 0/0
    on_r0 = np.zeros((1, 7, 3))
    on_r0[0, 1, 0] = 1.5
    on_r0[0, 2:, 0] = 100.0 + np.arange(5) * 10
    assert featurizer.transform(on_r0)[0, 0] == pytest.approx(0.5, abs=1e-5)


def test_contact_map_matches_mdtraj_distances_through_the_switch(ala2_vacuum, ala2_frames):
    featurizer = build_featurizer(
        [{"kind": "contacts", "atoms": "name CA or name C", "r0": 0.25, "n": 6, "m": 12}], ala2_vacuum.topology
    )
    atoms = mdtraj.Topology.from_openmm(ala2_vacuum.topology).select("name CA or name C")
    pairs = np.array(list(itertools.combinations(atoms, 2)))
    x = mdtraj.compute_distances(ala2_frames, pairs) / 0.25
    np.testing.assert_allclose(featurizer.transform(ala2_frames.xyz), (1 - x**6) / (1 - x**12), rtol=1e-5)
    assert featurizer.names[0].startswith("contact")
    with pytest.raises(LatfError, match="m > n > 0"):
        build_featurizer([{"kind": "contacts", "pairs": [[0, 1]], "r0": 0.3, "n": 12, "m": 6}], ala2_vacuum.topology)


def test_featurizer_is_torchscriptable_and_dtype_preserving(ala2_vacuum, ala2_frames):
    featurizer = build_featurizer(ala2_vacuum.features, ala2_vacuum.topology)
    scripted = torch.jit.script(featurizer)
    positions = torch.from_numpy(ala2_frames.xyz[0]).double()
    out = scripted(positions)
    assert out.dtype == torch.float64 and out.shape == (19,)
    np.testing.assert_allclose(out.numpy(), featurizer.transform(ala2_frames.xyz[:1])[0], atol=1e-12)
    positions.requires_grad_(True)
    scripted(positions).sum().backward()
    assert torch.isfinite(positions.grad).all()


def test_bad_feature_descriptions(ala2_vacuum):
    top = ala2_vacuum.topology
    with pytest.raises(LatfError, match="unknown feature kind"):
        build_featurizer([{"kind": "angles"}], top)
    with pytest.raises(LatfError, match="matches no atoms"):
        build_featurizer([{"kind": "distances", "atoms": "name XYZ"}], top)
    with pytest.raises(LatfError, match="outside the topology"):
        build_featurizer([{"kind": "distances", "pairs": [[0, 99]]}], top)
    with pytest.raises(LatfError, match="exclude_neighbors must be a whole number"):
        build_featurizer([{"kind": "distances", "atoms": "all", "exclude_neighbors": -1}], top)
    with pytest.raises(LatfError, match="exclude_neighbors must be a whole number"):
        build_featurizer([{"kind": "distances", "atoms": "all", "exclude_neighbors": True}], top)
    with pytest.raises(LatfError, match="not to explicit pairs"):
        build_featurizer([{"kind": "distances", "pairs": [[0, 4]], "exclude_neighbors": 1}], top)
    with pytest.raises(LatfError, match="unknown angle"):
        build_featurizer([{"kind": "dihedrals", "angles": ["theta"]}], top)
    with pytest.raises(LatfError, match="unknown keys"):
        build_featurizer([{"kind": "positions", "atom": "all"}], top)
    featurizer = build_featurizer([{"kind": "positions", "atoms": [0]}], top)
    with pytest.raises(LatfError, match="shape"):
        featurizer.transform(np.zeros((3, 5, 3)))


@pytest.mark.parametrize(
    "box",
    [
        np.diag([2.0, 2.2, 2.4]),  # orthorhombic; widths > 2 × the longest intramolecular distance
        np.array([[2.4, 0.0, 0.0], [0.7, 2.2, 0.0], [-0.6, 0.8, 2.1]]),  # triclinic, OpenMM reduced form
    ],
)
def test_periodic_features_match_mdtraj_and_unwrapped(ala2_vacuum, ala2_frames, box):
    featurizer = build_featurizer(
        [*ala2_vacuum.features, {"kind": "coordination", "atoms": "not element H", "r0": 0.3}], ala2_vacuum.topology
    )
    unwrapped = ala2_frames.xyz.astype(np.float64) - ala2_frames.xyz.mean((0, 1))  # centred on a box corner
    fractional = unwrapped @ np.linalg.inv(box)
    wrapped = (fractional - np.floor(fractional)) @ box  # every atom wrapped into the cell: the molecule is split
    boxes = np.repeat(box[None], len(wrapped), axis=0)
    reference = featurizer.transform(unwrapped)
    periodic = featurizer.transform(wrapped, boxes)
    assert not np.allclose(featurizer.transform(wrapped), reference, atol=1e-3)  # the split matters without PBC
    np.testing.assert_allclose(periodic, reference, atol=1e-9)
    traj = mdtraj.Trajectory(wrapped.astype(np.float32), ala2_frames.topology)
    traj.unitcell_vectors = boxes.astype(np.float32)
    pairs = pairs_more_bonds_apart(traj.topology, "not element H", 3)
    np.testing.assert_allclose(periodic[:, 4:19], mdtraj.compute_distances(traj, pairs, periodic=True), atol=1e-5)
    _, phi = mdtraj.compute_phi(traj, periodic=True)
    np.testing.assert_allclose(periodic[:, 0], np.sin(phi[:, 0]), atol=1e-5)
    scripted = torch.jit.script(featurizer)
    out = scripted(torch.from_numpy(wrapped[0]), torch.from_numpy(box))
    np.testing.assert_allclose(out.numpy(), periodic[0], atol=1e-12)
