"""PLUMED ``COLVAR`` and ``HILLS`` files.

They are what a biased run writes beside its frames, and what biased data from other
engines bring in (``#! FIELDS`` headers, restarts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latf_openmm.errors import LatfError
from latf_openmm.files import atomic_path


def write_colvar(path: str | Path, fields: list[str], table: np.ndarray) -> None:
    """Write a PLUMED ``COLVAR`` file (``#! FIELDS`` header, one row per line), atomically."""
    table = np.asarray(table, dtype=float).reshape(-1, len(fields))
    with atomic_path(path) as tmp:
        np.savetxt(tmp, table, fmt="%.10g", header="! FIELDS " + " ".join(fields), comments="#")


def read_colvar(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a PLUMED ``COLVAR`` or ``HILLS`` file by field name.

    Later ``#! FIELDS`` headers (from restarts) must repeat the same fields; ``#! SET``
    lines and blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise LatfError(f"PLUMED file not found: {path}")
    fields, columns = parse_colvar(path.read_text(), str(path))
    if fields is None:
        raise LatfError(f"{path} has no '#! FIELDS' header; is it a PLUMED COLVAR or HILLS file?")
    return columns


def parse_colvar(
    text: str, source: str, fields: list[str] | None = None
) -> tuple[list[str] | None, dict[str, np.ndarray]]:
    """Return the fields and the columns of COLVAR/HILLS ``text`` (named ``source`` in errors).

    ``fields`` are those of a header before ``text`` (for a file read as it grows); the
    returned fields are the last header's.
    """
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#! FIELDS"):
            header = line.split()[2:]
            if fields is not None and header != fields:
                raise LatfError(f"{source}:{number}: fields change from {fields} to {header}")
            fields = header
        elif not line.strip() or line.startswith("#"):
            continue
        else:
            if fields is None:
                raise LatfError(f"{source}:{number}: data before the '#! FIELDS' header")
            values = line.split()
            if len(values) != len(fields):
                raise LatfError(f"{source}:{number}: {len(values)} values for {len(fields)} fields")
            try:
                rows.append([float(v) for v in values])
            except ValueError as exc:
                raise LatfError(f"{source}:{number}: {exc}") from exc
    if fields is None:
        return None, {}
    table = np.array(rows, dtype=float).reshape(-1, len(fields))
    return fields, {name: table[:, k] for k, name in enumerate(fields)}


__all__ = ["parse_colvar", "read_colvar", "write_colvar"]
