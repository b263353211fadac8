"""The ``plumed`` engine: a bias that PLUMED runs, through openmm-plumed's ``PlumedForce``.

The force runs the exported ``plumed.dat`` and ``model.ptc`` (:mod:`latf_openmm.export.plumed`):
PLUMED computes the features and the CV, deposits, and applies the bias and its walls. A
mirror, the package's own bias of the same spec, takes each of PLUMED's depositions as
PLUMED writes it (``HILLS``, ``KERNELS``) and keeps them in the package's format. So a
run's ``bias_state.npz``, the walkers' shared files, the fixed bias of later runs and the
loop's estimate are those of the openmm engine, and its COLVAR rows carry PLUMED's own bias
energy and c(t). From the same depositions the package's bias is PLUMED's within 0.05 kJ/mol
(``tests/test_plumed_driver.py``).

PLUMED's files stay in the run's ``plumed/`` folder. A checkpoint saves its deposition file
as it was then, so a killed run restarts PLUMED (``RESTART``) from the same depositions.

METAD walkers share their hills as PLUMED's multiple walkers do (``WALKERS_N/ID/DIR``): each
writes ``HILLS.<walker>`` in the shared folder and reads the others' every ``share_interval``
steps; the mirrors also publish their ``walker_*.npz`` there, which the fixed bias after the
walkers merges. The other walkers read a walker's file as it grows, so a killed walker keeps
it and appends (``RESTART``): what it deposited after its checkpoint stays in the bias, as in
PLUMED. OPES_METAD shares walkers only over MPI, so OPES runs one walker per bias here.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import openmm

from latf_openmm._quiet import stdout_to
from latf_openmm.bias.adaptive import GridBias
from latf_openmm.bias.base import CVBias, group_energy, with_force_in_own_group
from latf_openmm.errors import LatfError
from latf_openmm.export.plumed import (
    PlumedWalkers,
    plumed_input,
    require_plumed_path,
    require_shared_walkers,
    write_plumed_model,
)
from latf_openmm.simulation import parse_colvar
from latf_openmm.specs import BiasSpec

try:
    import openmmplumed
except ImportError:  # built by `make plumed` (scripts/install_plumed.sh)
    openmmplumed = None

FOLDER = "plumed"  # in the run folder: plumed.dat, model.ptc and what PLUMED writes
DEPOSITIONS = {"metad": "HILLS", "opes": "KERNELS"}
_SAVED = "plumed_"  # state keys of PLUMED's own files
_BOX_NM = 100.0  # the box a non-periodic system gets for PLUMED (see add_to)
_RESTRAINT_STRIDE = 1000  # steps between PLUMED's COLVAR rows for a restraint (the run's own come from the force)


def require_openmm_plumed() -> None:
    """Raise unless openmm-plumed can be imported."""
    if openmmplumed is None:
        raise LatfError("engine 'plumed' needs openmm-plumed: run `make plumed` (scripts/install_plumed.sh)")


class _FollowedFile:
    """A file that PLUMED appends to (``#! FIELDS`` header, rows): the rows added since the last read."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.fields = path, 0, None

    def new_rows(self, limit: int = -1) -> dict[str, np.ndarray]:
        """Return the complete rows written since the last call (in its next ``limit`` bytes), by field."""
        if not self.path.is_file():
            return {}
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            text = handle.read(limit)
        complete = text[: text.rfind(b"\n") + 1]
        self.offset += len(complete)
        self.fields, rows = parse_colvar(complete.decode(), str(self.path), self.fields)
        return rows if rows and len(next(iter(rows.values()))) else {}


class PlumedBias:
    """A bias along the learned CV that PLUMED runs; :func:`~latf_openmm.bias.build_bias` makes one.

    Parameters
    ----------
    mirror
        The package's bias of the same spec (built by ``build_bias`` with the openmm engine).
    spec
        The spec, resolved (:meth:`BiasSpec.resolved`).
    temperature
        Simulation temperature, K.
    walkers
        Number of METAD walkers sharing the mirror's ``walkers_dir`` (PLUMED needs the count).
    """

    def __init__(self, mirror: CVBias, spec: BiasSpec, temperature: float, walkers: int = 1) -> None:
        require_openmm_plumed()
        self.mirror, self.spec, self.temperature = mirror, spec, float(temperature)
        shared = getattr(mirror, "walkers_dir", None)
        if walkers > 1 and shared is None:
            raise LatfError(f"{walkers} walkers on the plumed engine need a folder to share their hills (walkers_dir)")
        self.walkers = None if walkers <= 1 else PlumedWalkers(walkers, mirror.walker, Path(shared).resolve(),
                                                               mirror.share_interval)  # fmt: skip
        if self.walkers is not None:
            require_shared_walkers(spec.method)
        self.kind = mirror.kind
        self.interval = int(mirror.interval or 0)
        self.fields = mirror.fields
        self.folder: Path | None = None
        self.group: int | None = None
        self._saved: dict[str, bytes] = {}  # PLUMED's deposition file at the checkpoint resumed from
        self._constant = -spec.barrier if spec.method == "opes" else 0.0  # PLUMED's c(t) before any deposition
        self._colvar: _FollowedFile | None = None
        self._depositions: _FollowedFile | None = None

    def settings(self) -> dict[str, Any]:
        """Return the mirror's settings, marked as run by PLUMED."""
        walkers = {} if self.walkers is None else {"walkers": self.walkers.count}
        return {**self.mirror.settings(), "engine": "plumed", **walkers}

    def add_to(self, system: openmm.System, folder: Path | None = None) -> openmm.System:
        """Return a copy of ``system`` with a PlumedForce running the exported files in ``folder/plumed``.

        openmm-plumed gives PLUMED a box only for a periodic system, and PLUMED 2.10 warns at
        every step without one: a non-periodic system gets a force that uses a 100 nm box and
        acts on nothing (its trajectory keeps no box).
        """
        if folder is None:
            raise LatfError("the PLUMED engine needs the run folder (simulate passes it)")
        if self.group is not None:
            raise LatfError("this bias already drives a simulation; build a new one for the next")
        self.folder = Path(folder).resolve() / FOLDER
        require_plumed_path(self.folder, "run in a folder without them")
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in (*DEPOSITIONS.values(), "COLVAR"):
            (self.folder / name).unlink(missing_ok=True)  # what a killed run wrote after its checkpoint
        restart = self._place_depositions()
        cv = self.mirror.cv
        write_plumed_model(cv.model, self.folder / "model.ptc")
        stride = self.interval or _RESTRAINT_STRIDE
        text = plumed_input(cv.featurizer, str(self.folder / "model.ptc"), cv.dim, self.temperature, self.spec,
                            cv.model.info.get("latent_range"), stride=stride, folder=self.folder,
                            walkers=self.walkers)  # fmt: skip
        text += f"FLUSH STRIDE={stride}\n"  # PLUMED's files on disk at every deposition, for the mirror
        (self.folder / "plumed.dat").write_text(text)
        force = openmmplumed.PlumedForce(text)
        force.setRestart(restart)
        system, self.group = with_force_in_own_group(system, force, cv.featurizer.n_atoms)
        if not system.usesPeriodicBoundaryConditions():
            box = openmm.CustomBondForce("0")
            box.setUsesPeriodicBoundaryConditions(True)
            system.addForce(box)
            system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in _BOX_NM * np.eye(3)))
        self._colvar = _FollowedFile(self.folder / "COLVAR")
        if self.kind in DEPOSITIONS:
            self._depositions = _FollowedFile(self._deposition_file())
            self._depositions.new_rows(len(self._saved.get(DEPOSITIONS[self.kind], b"")))  # in the mirror already
        return system

    def _deposition_file(self) -> Path:
        """Return the file PLUMED writes this bias's depositions to."""
        if self.walkers is not None:
            return self.walkers.hills(self.walkers.index)
        return self.folder / DEPOSITIONS[self.kind]

    def _place_depositions(self) -> bool:
        """Put the restored depositions where PLUMED reads them; return whether PLUMED restarts from them.

        One walker: its file as saved at the checkpoint (OPES_METAD refuses to restart from an
        empty KERNELS file). Shared walkers: every walker's file exists (PLUMED's restart needs
        them all, and appends to this walker's, so the others keep reading it), and PLUMED
        always restarts from them; the rows after the checkpoint go to the mirror as it reads.
        """
        if self.walkers is not None:
            self.walkers.folder.mkdir(parents=True, exist_ok=True)
            for index in range(self.walkers.count):
                self.walkers.hills(index).touch()  # creates a missing file, keeps an existing one
            own, saved = self._deposition_file(), self._saved.get(DEPOSITIONS[self.kind], b"")
            with open(own, "rb+") as handle:
                content = handle.read()
                if not content.startswith(saved):
                    raise LatfError(f"{own} no longer holds the hills this walker's checkpoint saved; "
                                    "resume with the walkers' shared folder as it was")  # fmt: skip
                handle.truncate(content.rfind(b"\n") + 1)  # a line cut short by the kill: PLUMED appends after it
            return True
        saved = {name: content for name, content in self._saved.items() if content}  # PLUMED writes a header first
        for name, content in saved.items():
            (self.folder / name).write_bytes(content)
        return bool(saved)

    def session(self) -> AbstractContextManager[None]:
        """Send PLUMED's log to ``plumed/log`` in the run folder while the run lasts.

        openmm-plumed logs to the process's standard output, and its Python API cannot pass
        another stream, so the process's file descriptor 1 is redirected: anything else
        printed there meanwhile goes to the log too, and two such runs in threads of one
        process would mix their logs (the loop's walkers are processes).
        """
        return stdout_to(self.folder / "log")

    def attach(self, context: openmm.Context) -> None:
        """Nothing to do: PLUMED holds its own state."""

    def update(self, context: openmm.Context, step: int) -> None:
        """Let PLUMED deposit at this step, and pass its deposition and c(t) to the mirror."""
        group_energy(context, self.group)  # PLUMED updates (deposits, prints, flushes) at a step's first evaluation
        self._read()

    def _read(self) -> None:
        """Take PLUMED's new depositions into the mirror and its latest c(t)."""
        if self._depositions is not None:
            rows = self._depositions.new_rows()
            if rows:
                self._add_depositions(rows)
        colvar = self._colvar.new_rows() if self._colvar is not None else {}
        if "bias.rct" in colvar:
            self._constant = float(colvar["bias.rct"][-1])

    def _add_depositions(self, rows: dict[str, np.ndarray]) -> None:
        """Add PLUMED's HILLS or KERNELS rows to the mirror: HILLS holds h·γ/(γ − 1), KERNELS ln w."""
        mirror: GridBias = self.mirror  # type: ignore[assignment]
        centres = np.stack([rows[f"cv.node-{c}"] for c in mirror.components], axis=1)
        if self.kind == "metad":
            sizes = rows["height"] * (rows["biasf"] - 1) / rows["biasf"]  # γ as PLUMED read it
        else:
            sizes = np.exp(rows["logweight"])
        for centre, size in zip(centres, sizes, strict=True):
            mirror.add_deposition(centre, float(size))

    def observe(self, context: openmm.Context, step: int) -> np.ndarray:
        """Return the COLVAR row (without time): the CV, PLUMED's bias energy and, if adaptive, its c(t)."""
        values = self.mirror.cv_values(context, step)
        constant = [self._constant] if self.interval else []
        return np.array([*values, group_energy(context, self.group), *constant])  # PLUMED's, walls included

    def state(self) -> dict[str, np.ndarray]:
        """Return the mirror's state, PLUMED's deposition file as it is now and c(t)."""
        if not self.interval:
            return {}
        self._read()
        name = DEPOSITIONS[self.kind]
        path = self._deposition_file() if self.folder is not None else None
        saved = path.read_bytes() if path is not None and path.is_file() else self._saved.get(name, b"")
        return {**self.mirror.state(), _SAVED + name: np.frombuffer(saved, dtype=np.uint8),
                _SAVED + "rct": np.array(self._constant)}  # fmt: skip

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state` (before :meth:`add_to`, which hands PLUMED its file)."""
        if not self.interval:
            return
        self.mirror.restore(state)
        name = DEPOSITIONS[self.kind]
        if _SAVED + name not in state:
            raise LatfError("the saved bias state was not written by the PLUMED engine; use the same settings")
        self._saved = {name: np.asarray(state[_SAVED + name], dtype=np.uint8).tobytes()}
        self._constant = float(state[_SAVED + "rct"])

    def load(self, path: str | Path) -> None:
        """Refuse: PLUMED starts from its own files only; continue a saved bias on the openmm engine."""
        raise LatfError(f"the PLUMED engine cannot continue the saved bias {path}; use the openmm engine for it")

    def freeze(self) -> None:
        """Refuse: a fixed bias runs on the openmm engine (the mirror's state is the same bias)."""
        raise LatfError(
            "the PLUMED engine runs adaptive walkers and restraints; a fixed metad/opes bias (replica exchange, "
            "production) runs on the openmm engine from the walkers' bias_state.npz"
        )


__all__ = ["PlumedBias", "require_openmm_plumed"]
