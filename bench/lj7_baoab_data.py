"""LJ7 data from an integrator independent of OpenMM: 2-D BAOAB Langevin in numpy.

Usage: python bench/lj7_baoab_data.py OUT.npz [--temperatures 0.2 0.3 0.4 0.5 0.6 0.7]
       [--trajectories 10] [--frames 10000] [--stride 100] [--seed 0]

Seven particles (ε = σ = m = 1, no cutoff) in the plane, with the flat-bottom wall of
the package's recipe (k = 100 beyond 2.0 from the centre of mass), γ = 1, dt = 0.005.
Every trajectory starts from the hexagon and equilibrates for 2000 steps; a frame is
saved every ``stride`` steps. All trajectories at all temperatures advance together as
one (n_runs, 7, 2) array, so one step is a few numpy operations. Writes
``features`` (n_temperatures, n_trajectories, n_frames, 7): the coordination numbers
c_i = Σ_j (1 − (r/1.5)^8) / (1 − (r/1.5)^16), ``potential_energy``
(…, n_frames), ``temperatures`` and ``stride``.
This is the data of issue 13's LJ7 case, made without any code of the package.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

DT, FRICTION, EQUILIBRATION = 0.005, 1.0, 2000
WALL_RADIUS, WALL_K = 2.0, 100.0


def forces(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lennard-Jones + wall forces on positions (n_runs, 7, 2), and the potential energy (n_runs,)."""
    delta = x[:, :, None, :] - x[:, None, :, :]
    r2 = (delta**2).sum(-1)
    np.einsum("kii->ki", r2)[:] = np.inf
    inv6 = r2**-3
    magnitude = (48 * inv6 * inv6 - 24 * inv6) / r2  # −dU/dr / r
    force = (magnitude[..., None] * delta).sum(2)
    offset = x - x.mean(1, keepdims=True)
    distance = np.linalg.norm(offset, axis=-1, keepdims=True)
    outside = np.maximum(distance - WALL_RADIUS, 0.0)
    wall = -WALL_K * outside * offset / np.maximum(distance, 1e-12)
    energy = 2 * (inv6 * inv6 - inv6).sum((1, 2)) + 0.5 * WALL_K * (outside**2).sum((1, 2))
    # the wall acts between each particle and the centre of mass: the reaction is spread evenly
    return force + wall - wall.mean(1, keepdims=True), energy


def coordination(x: np.ndarray, r0: float = 1.5) -> np.ndarray:
    """Coordination numbers (..., 7) of positions (..., 7, 2)."""
    r = np.linalg.norm(x[..., :, None, :] - x[..., None, :, :], axis=-1) / r0
    switch = (1 - r**8) / (1 - r**16)
    switch[np.isclose(r, 1.0)] = 0.5
    np.einsum("...ii->...i", switch)[:] = 0.0
    return switch.sum(-1)


def simulate(
    temperatures: np.ndarray, n_traj: int, n_frames: int, stride: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Coordination numbers (n_temperatures, n_traj, n_frames, 7) and potential energies (…, n_frames)."""
    rng = np.random.default_rng(seed)
    kt = np.repeat(temperatures, n_traj)[:, None, None]
    angles = np.arange(6) * np.pi / 3
    hexagon = np.vstack([[0.0, 0.0], 2 ** (1 / 6) * np.c_[np.cos(angles), np.sin(angles)]])
    x = np.repeat(hexagon[None], len(kt), axis=0)
    p = rng.standard_normal(x.shape) * np.sqrt(kt)
    c1 = np.exp(-FRICTION * DT)
    c2 = np.sqrt((1 - c1 * c1) * kt)
    f, _ = forces(x)
    out = np.empty((len(kt), n_frames, 7))
    energies = np.empty((len(kt), n_frames))
    for step in range(EQUILIBRATION + n_frames * stride):
        p += 0.5 * DT * f
        x += 0.5 * DT * p
        p = c1 * p + c2 * rng.standard_normal(x.shape)
        x += 0.5 * DT * p
        f, energy = forces(x)
        p += 0.5 * DT * f
        saved = step + 1 - EQUILIBRATION
        if saved > 0 and saved % stride == 0:
            out[:, saved // stride - 1] = coordination(x)
            energies[:, saved // stride - 1] = energy
    shape = (len(temperatures), n_traj, n_frames)
    return out.reshape(*shape, 7), energies.reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--trajectories", type=int, default=10)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--stride", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    temperatures = np.asarray(args.temperatures, dtype=float)
    start = time.perf_counter()
    features, energies = simulate(temperatures, args.trajectories, args.frames, args.stride, args.seed)
    np.savez(args.out, features=features, potential_energy=energies, temperatures=temperatures, stride=args.stride)
    print(f"{features.shape} in {time.perf_counter() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
