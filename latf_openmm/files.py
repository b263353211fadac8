"""Atomic file output (every file appears complete under its final name, or not at all) and digests."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from latf_openmm.errors import LatfError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_UMASK = os.umask(0)
os.umask(_UMASK)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_output(path: str | os.PathLike, kind: str = "file") -> Path:
    """Return ``path`` if it can be written as ``kind`` (``"file"``, ``"figure"`` or ``"folder"``); else raise.

    Nothing is created. The error (a :class:`LatfError`, one line) comes before any work:
    the path, or a folder on its way, is a file where a folder is needed or the other way
    round; the nearest existing folder is not writable; a figure's name has no image suffix.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise LatfError(f"{path} is a file; give a folder to write into")
    if kind != "folder" and path.is_dir():
        raise LatfError(f"{path} is a folder; give a file name")
    if kind == "figure" and path.suffix.lower() not in FIGURE_SUFFIXES:
        raise LatfError(f"{path}: give a figure file name ending in {', '.join(FIGURE_SUFFIXES)}")
    existing = path if path.is_dir() else next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir():
        raise LatfError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise LatfError(f"cannot write {path}: no permission to write in {existing}")
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary file keeps ``path``'s suffix, so writers that choose a format by
    suffix (mdtraj, matplotlib) still work. On failure the temporary file is removed
    and any existing ``path`` is left untouched.
    """
    path = check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """Return what tells one version of file ``path`` from another: inode, size, modification and change times (ns).

    Files written here replace their name atomically (a new inode), so a rewrite within the
    file system's time resolution still changes the stamp.
    """
    try:
        stat = os.stat(path)
    except OSError as error:
        raise LatfError(f"cannot read {path}: {error.strerror}") from None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def write_json(path: str | os.PathLike, data: object) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays to an uncompressed ``.npz``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def array_digest(arrays: Iterable[np.ndarray]) -> str:
    """SHA-256 of the arrays' contents, in order (for provenance and identity)."""
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()


def save_figure(fig: Figure, out_png: str | Path, layout: bool = True) -> None:
    """Lay out (unless ``layout`` is False), save atomically (120 dpi, format by suffix) and close a figure."""
    import matplotlib.pyplot as plt  # matplotlib is slow to import: only where a figure is saved

    check_output(out_png, "figure")
    if layout:
        fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
