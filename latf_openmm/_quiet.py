"""Silence libraries that print, or send what they print to a file.

These are banners at import time (pymbar's JAX notice and timeseries warning) and C code
that writes to the process's stdout (mdtraj's DCD reader; PLUMED's log, which goes to the
run's file).
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


@contextlib.contextmanager
def stdout_to(path: str | os.PathLike) -> Iterator[None]:
    """Send the process's file descriptor 1 (C ``printf`` included) to ``path`` (appended) meanwhile."""
    c_streams = ctypes.CDLL(None)  # C's stdio buffers, flushed at both ends
    sys.stdout.flush()
    c_streams.fflush(None)
    saved = os.dup(1)
    try:
        with open(path, "ab") as target:
            os.dup2(target.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        c_streams.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def quiet_stdout() -> contextlib.AbstractContextManager[None]:
    """Send the process's file descriptor 1 (C ``printf`` included) to /dev/null meanwhile."""
    return stdout_to(os.devnull)
