"""Import modules that print banners at import time (pymbar's JAX notice and timeseries warning)."""

from __future__ import annotations

import contextlib
import importlib
import io
from types import ModuleType


def quiet_import(name: str) -> ModuleType:
    """Import ``name`` with stdout and stderr captured; import errors still propagate."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(name)
