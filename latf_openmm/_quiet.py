"""Silence libraries that print.

These are banners at import time (pymbar's JAX notice and timeseries warning) and C code
that writes to the process's stdout (mdtraj's DCD reader).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
from collections.abc import Iterator
from types import ModuleType


def quiet_import(name: str) -> ModuleType:
    """Import ``name`` with stdout and stderr captured; import errors still propagate."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(name)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send the process's file descriptor 1 (C ``printf`` included) to /dev/null meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
