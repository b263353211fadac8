"""A run folder as :func:`~latf_openmm.simulation.simulate` and replica exchange write it.

This module is also the one reader of such folders (:class:`Run`, :func:`find_runs`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mdtraj
import numpy as np

from latf_openmm._quiet import quiet_stdout
from latf_openmm.errors import LatfError

MANIFEST = "manifest.json"  # written last: a run folder with it is finished
TIMESERIES = "timeseries.npz"
TOPOLOGY = "topology.pdb"


@dataclass(frozen=True)
class Run:
    """A finished run: its folder and manifest.

    ``ran_now`` says whether the call that returned it ran MD (False when the run was
    already complete, or was opened with :meth:`open`).
    """

    directory: Path
    manifest: dict[str, Any]
    ran_now: bool = False

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Open the finished run in folder ``path``."""
        manifest_path = Path(path) / MANIFEST
        if not manifest_path.is_file():
            raise LatfError(f"{path} is not a finished run (no {MANIFEST})")
        return cls(Path(path), json.loads(manifest_path.read_text()))

    @property
    def settings(self) -> dict[str, Any]:
        """How the run was made.

        These are the temperature (``temperature`` in the user-facing unit, ``temperature_K``),
        steps, MD options, and its ``bias`` settings if biased.
        """
        return self.manifest["settings"]

    @property
    def bias(self) -> dict[str, Any] | None:
        """The settings of the bias the run carried, or None."""
        return self.settings.get("bias")

    @property
    def trajectory(self) -> Path:
        """Path of the trajectory file."""
        return self.directory / self.manifest["files"]["trajectory"]

    def load_timeseries(self) -> dict[str, np.ndarray]:
        """Load the run's time series.

        These are time, step, energies, temperature, features and, for a biased run,
        ``colvar`` and ``colvar_fields``.
        """
        with np.load(self.directory / self.manifest["files"]["timeseries"]) as data:
            return {key: data[key] for key in data.files}

    def load_trajectory(self) -> mdtraj.Trajectory:
        """Load the run's frames as an mdtraj trajectory (quietly: mdtraj's DCD reader prints its format)."""
        with quiet_stdout():
            return mdtraj.load(str(self.trajectory), top=str(self.directory / TOPOLOGY))

    def load_frame(self, index: int) -> mdtraj.Trajectory:
        """Load frame ``index`` (negative: counted from the end) as a one-frame mdtraj trajectory."""
        n_frames = self.manifest["n_frames"]
        if not -n_frames <= index < n_frames:
            raise LatfError(f"{self.directory} has {n_frames} frames; there is no frame {index}")
        with quiet_stdout():
            return mdtraj.load_frame(str(self.trajectory), index % n_frames, top=str(self.directory / TOPOLOGY))


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Finished run folders in ``paths`` (each a run or a folder of runs)."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / MANIFEST).is_file():
            runs.append(path)
        elif path.is_dir():
            runs.extend(sorted(p.parent for p in path.glob(f"*/{MANIFEST}")))
        else:
            raise LatfError(f"no such run directory: {path}")
    if not runs:
        raise LatfError(f"no finished runs (folders with {MANIFEST}) in {', '.join(map(str, paths))}")
    return runs


__all__ = ["MANIFEST", "TIMESERIES", "TOPOLOGY", "Run", "find_runs"]
