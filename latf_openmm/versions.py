"""Versions of the packages a result depends on, for manifests."""

from __future__ import annotations

from importlib import metadata

_PACKAGES = ("latf_openmm", "openmm", "openmmtorch", "torch", "mdtraj", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of latf_openmm and its core dependencies (None if missing)."""
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
