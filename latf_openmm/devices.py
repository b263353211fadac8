"""The torch device of training, sampling, exported CVs and latent dynamics: one option, ``auto`` by default."""

from __future__ import annotations

import torch

from latf_openmm.errors import LatfError

#: What a ``device`` option accepts besides ``cuda:N``.
DEVICES = ("auto", "cpu", "cuda")


def check_device_name(name: str | None) -> None:
    """Raise :class:`LatfError` unless ``name`` is None, ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if name is None or name in DEVICES:
        return
    index = str(name).removeprefix("cuda:")
    if not (str(name).startswith("cuda:") and index.isdigit()):
        raise LatfError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {name!r}")


def torch_device(name: str | None = "auto") -> torch.device:
    """Return the torch device called ``name``: ``auto`` (or None) is CUDA where torch finds it, else the CPU.

    A CUDA device that torch cannot find here is a one-line :class:`LatfError`.
    """
    check_device_name(name)
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LatfError(f"device {name!r}: torch finds no CUDA device here; use 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LatfError(f"device {name!r}: torch finds {torch.cuda.device_count()} CUDA device(s) here")
    return device
