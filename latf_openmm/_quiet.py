"""Silence libraries that print.

These are banners at import time (pymbar's JAX notice and timeseries warning) and C code
that writes to the process's stdout (mdtraj's DCD reader).
"""

from __future__ import annotations

import contextlib
import ctypes
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


_LIBC = ctypes.CDLL(None)


@contextlib.contextmanager
def stdout_to(path: str | os.PathLike) -> Iterator[None]:
    """Send the process's file descriptor 1 (C ``printf`` included) to ``path`` (appended) meanwhile."""
    sys.stdout.flush()
    _LIBC.fflush(None)  # what C code buffered before goes where it was meant to
    saved = os.dup(1)
    try:
        with open(path, "ab") as target:
            os.dup2(target.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        _LIBC.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def quiet_stdout() -> contextlib.AbstractContextManager[None]:
    """Send the process's file descriptor 1 (C ``printf`` included) to /dev/null meanwhile."""
    return stdout_to(os.devnull)
