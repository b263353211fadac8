"""The bias a :class:`~latf_openmm.specs.BiasSpec` describes, along a learned CV."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from latf_openmm.bias.adaptive import OPES, Metadynamics
from latf_openmm.bias.base import CVBias
from latf_openmm.bias.cv import LearnedCV
from latf_openmm.bias.harmonic import HarmonicBias
from latf_openmm.bias.plumed import PlumedBias
from latf_openmm.specs import BiasSpec


def build_bias(
    spec: BiasSpec,
    cv: LearnedCV,
    temperature: float,
    periodic: bool,
    walkers_dir: str | Path | None = None,
    walker: int = 0,
    walkers: int = 1,
) -> CVBias | PlumedBias:
    """Build the bias of ``spec`` along ``cv`` at ``temperature`` (K).

    Its defaults are resolved against the model (:meth:`BiasSpec.resolved`, as the PLUMED
    writer resolves them); ``periodic`` comes from the system; ``walkers_dir``/``walker``
    share an adaptive bias with other walkers, ``walkers`` of them (PLUMED needs the count).
    The ``plumed`` engine gives a :class:`PlumedBias` whose mirror is this bias on the
    openmm engine.
    """
    spec = spec.resolved(cv.dim, cv.model.info.get("latent_range"), temperature)
    if spec.engine == "plumed":
        mirror = build_bias(dataclasses.replace(spec, engine="openmm"), cv, temperature, periodic, walkers_dir, walker)
        return PlumedBias(mirror, spec, temperature, walkers)
    if spec.method == "restraint":
        return HarmonicBias(
            cv, spec.centre, spec.force_constant, spec.lower, spec.upper, spec.wall_constant, periodic=periodic
        )
    grid = dict(
        components=spec.components, lower=spec.lower, upper=spec.upper, sigma=spec.sigma, bins=spec.bins,
        pace=spec.pace, bias_factor=spec.bias_factor, wall_constant=spec.wall_constant, walkers_dir=walkers_dir,
        walker=walker, share_interval=spec.share_interval, periodic=periodic,
    )  # fmt: skip
    if spec.method == "metad":
        return Metadynamics(cv, temperature, height=spec.height, **grid)
    return OPES(cv, temperature, barrier=spec.barrier, **grid)


__all__ = ["build_bias"]
