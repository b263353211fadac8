"""A run folder as :func:`~latf_openmm.simulation.simulate` and replica exchange write it.

This module is also the one reader of such folders (:class:`Run`, :func:`find_runs`).
"""

from __future__ import annotations

import functools
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
    def temperature_K(self) -> float:
        """The run's temperature, K."""
        return float(self.settings["temperature_K"])

    @property
    def n_frames(self) -> int:
        """The number of frames saved."""
        return int(self.manifest["n_frames"])

    @property
    def recipe(self) -> dict[str, Any]:
        """The recipe the run's system was built from (:func:`~latf_openmm.systems.system_from_recipe`)."""
        return self.manifest["recipe"]

    @property
    def featurizer(self) -> dict[str, Any] | None:
        """The featurizer that made the run's features, resolved to numbers; None if it has none."""
        return self.manifest.get("featurizer")

    @property
    def ns_per_day(self) -> float | None:
        """The speed of the run's last session that ran MD, ns/day (None if not recorded)."""
        return self.manifest.get("ns_per_day_last_session")

    @property
    def trajectory(self) -> Path:
        """Path of the trajectory file."""
        return self.directory / self.manifest["files"]["trajectory"]

    def load_timeseries(self) -> dict[str, np.ndarray]:
        """Return the run's time series (read-only arrays, read once per :class:`Run`).

        These are time, step, energies, temperature, features and, for a biased run,
        ``colvar`` and ``colvar_fields``.
        """
        return dict(self._timeseries)

    @functools.cached_property
    def _timeseries(self) -> dict[str, np.ndarray]:
        with np.load(self.directory / self.manifest["files"]["timeseries"]) as data:
            series = {key: data[key] for key in data.files}
        for array in series.values():
            array.flags.writeable = False
        return series

    def _colvar_column(self, name: str) -> np.ndarray | None:
        """Return the COLVAR column ``name`` (each frame's), None if the run has none of that name."""
        fields = [str(f) for f in self._timeseries.get("colvar_fields", [])]
        return self._timeseries["colvar"][:, fields.index(name)] if name in fields else None

    def cv(self) -> np.ndarray:
        """Return the CV the run's bias saw at each frame (n_frames, cv_dim): COLVAR's first columns."""
        if self.bias is None:
            raise LatfError(f"{self.directory} is an unbiased run: it has no CV in its COLVAR")
        return self._timeseries["colvar"][:, : self.bias["cv_dim"]]

    def bias_energy(self) -> np.ndarray | None:
        """Return each frame's bias energy, kJ/mol (None for an unbiased run)."""
        if self.bias is None:
            return None
        energy = self._colvar_column(f"{self.bias['kind']}.bias")
        if energy is None:
            raise LatfError(f"{self.directory} ran under a {self.bias['kind']} bias but its COLVAR has no bias column")
        return energy

    def reweighting_constant(self) -> np.ndarray | None:
        """Return an adaptive bias's c(t) at each frame, kJ/mol (None for other runs)."""
        return None if self.bias is None else self._colvar_column(f"{self.bias['kind']}.rct")

    def unbiased_energy(self) -> np.ndarray:
        """Return each frame's potential energy without the run's bias, kJ/mol."""
        energy, bias = self._timeseries["potential_energy"], self.bias_energy()
        return energy if bias is None else energy - bias

    def load_trajectory(self) -> mdtraj.Trajectory:
        """Load the run's frames as an mdtraj trajectory (quietly: mdtraj's DCD reader prints its format)."""
        with quiet_stdout():
            return mdtraj.load(str(self.trajectory), top=str(self.directory / TOPOLOGY))

    def load_frame(self, index: int) -> mdtraj.Trajectory:
        """Load frame ``index`` (negative: counted from the end) as a one-frame mdtraj trajectory."""
        n_frames = self.n_frames
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
