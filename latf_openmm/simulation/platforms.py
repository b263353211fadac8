"""Choosing an OpenMM platform and its properties."""

from __future__ import annotations

import openmm

from latf_openmm.errors import LatfError
from latf_openmm.specs import PRECISIONS


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms that load on this machine."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def select_platform(
    name: str | None = None, precision: str | None = None, threads: int | None = None
) -> tuple[openmm.Platform, dict[str, str]]:
    """Pick a platform and its properties.

    Parameters
    ----------
    name
        ``CUDA``, ``OpenCL``, ``CPU`` or ``Reference``; ``None`` picks CUDA when it is
        available, otherwise CPU.
    precision
        ``single``, ``mixed`` or ``double`` (CUDA and OpenCL only; default mixed).
    threads
        Number of CPU threads (CPU platform only; default: OpenMM's choice).

    Returns
    -------
    platform, properties
    """
    available = available_platforms()
    if name is None:
        name = "CUDA" if "CUDA" in available else "CPU"
    matches = [p for p in available if p.lower() == name.lower()]
    if not matches:
        raise LatfError(f"platform {name!r} is not available here; available: {', '.join(available)}")
    name = matches[0]
    properties: dict[str, str] = {}
    if precision is not None:
        if precision not in PRECISIONS:
            raise LatfError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if name not in ("CUDA", "OpenCL"):
            raise LatfError(f"precision can only be set on CUDA or OpenCL, not on {name}")
        properties["Precision"] = precision
    elif name in ("CUDA", "OpenCL"):
        properties["Precision"] = "mixed"
    if threads is not None:
        if name != "CPU":
            raise LatfError(f"threads can only be set on the CPU platform, not on {name}")
        if int(threads) < 1:
            raise LatfError(f"threads must be at least 1, got {threads}")
        properties["Threads"] = str(int(threads))
    return openmm.Platform.getPlatformByName(name), properties
