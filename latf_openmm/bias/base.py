"""What every bias along a learned CV shares: one force in its own force group, COLVAR rows, state."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as u

from latf_openmm.bias.cv import LearnedCV
from latf_openmm.errors import LatfError, blew_up
from latf_openmm.files import array_digest


def with_force_in_own_group(system: openmm.System, force: openmm.Force, n_atoms: int) -> tuple[openmm.System, int]:
    """Return a copy of ``system`` with ``force`` added in a free force group, and the group.

    ``n_atoms`` is what the CV was built for; another system is refused.
    """
    if system.getNumParticles() != n_atoms:
        raise LatfError(
            f"the CV was built for {n_atoms} atoms but the system has {system.getNumParticles()}; "
            "use the system the model was trained on"
        )
    system = openmm.XmlSerializer.clone(system)
    free = set(range(32)) - {other.getForceGroup() for other in system.getForces()}
    if not free:
        raise LatfError("all 32 force groups are in use; the bias needs one of its own")
    force.setForceGroup(max(free))
    system.addForce(force)
    return system, max(free)


def group_energy(context: openmm.Context, group: int) -> float:
    """Return the energy of force group ``group`` in ``context``, kJ/mol."""
    state = context.getState(getEnergy=True, groups={group})
    return state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


class CVBias:
    """A bias along a :class:`LearnedCV`, run by :func:`latf_openmm.simulation.simulate`.

    Subclasses set ``self.force`` (made by ``cv.energy_force``) and may deposit every
    ``interval`` steps (:meth:`update`). Each saved frame gets a COLVAR row with the
    fields :attr:`fields`: the CV components, the bias energy (kJ/mol) and, for
    adaptive biases, the reweighting constant c(t) (kJ/mol).
    """

    kind = "bias"
    interval: int | None = None

    def __init__(self, cv: LearnedCV, force: openmm.Force) -> None:
        self.cv = cv
        self.force = force
        self.group: int | None = None
        self.frozen = False

    def freeze(self) -> None:
        """Hold the bias fixed at its current state, written into the force itself.

        It then acts the same in Contexts this object never sees (replica exchange creates its own).
        """
        self.frozen = True

    @property
    def fields(self) -> list[str]:
        """COLVAR columns after ``time``."""
        return [f"s{k}" for k in range(self.cv.dim)] + [f"{self.kind}.bias"]

    def add_to(self, system: openmm.System, folder: Path | None = None) -> openmm.System:
        """Return a copy of ``system`` with the bias force in a force group of its own (``folder`` is unused)."""
        if not self.force.thisown:
            raise LatfError(
                "this bias already drives a simulation; build a new one for the next (load() continues a saved bias)"
            )
        system, self.group = with_force_in_own_group(system, self.force, self.cv.featurizer.n_atoms)
        return system

    def session(self) -> AbstractContextManager[None]:
        """Return a context that does nothing: the bias holds no resource for the run."""
        return nullcontext()

    def energy(self, context: openmm.Context) -> float:
        """Return the bias energy in ``context``, kJ/mol."""
        return group_energy(context, self.group)

    def cv_values(self, context: openmm.Context, step: int) -> np.ndarray:
        """Return the CV of the context's current positions; raise if it is not finite."""
        state = context.getState(getPositions=True)
        positions = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        box = None
        if self.force.usesPeriodicBoundaryConditions():
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        if not np.isfinite(positions).all():
            raise blew_up(step, context.getIntegrator().getStepSize().value_in_unit(u.picosecond))
        values = self.cv.values(positions, box)
        if not np.isfinite(values).all():
            raise LatfError(f"the CV is not finite at step {step} ({values.tolist()}); check the model and structure")
        return values

    def observe(self, context: openmm.Context, step: int) -> np.ndarray:
        """Return the COLVAR row (without time) of the current state."""
        return np.array([*self.cv_values(context, step), self.energy(context)])

    def update(self, context: openmm.Context, step: int) -> None:
        """Act every ``interval`` steps (adaptive biases deposit here)."""

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that restore the bias (saved with each checkpoint)."""
        return {}

    def _acting_state(self) -> list[np.ndarray]:
        """Return the arrays that, with :meth:`settings`, fix how the bias acts.

        Their digest identifies a fixed bias.
        """
        return list(self.state().values())

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state` (call :meth:`attach` afterwards to reach a running context)."""

    def attach(self, context: openmm.Context) -> None:
        """Bring the force in ``context`` up to date with this bias (after creation or :meth:`restore`)."""

    def settings(self) -> dict[str, Any]:
        """Return everything that defines the bias (part of a run's identity).

        With the CV's digest, and for a fixed bias the digest of its state, so that runs under
        different biases never look alike (:func:`latf_openmm.reweighting.temperature_estimate`
        groups runs by these).
        """
        frozen = {"frozen": True, "state_sha256": array_digest(self._acting_state())} if self.frozen else {}
        return {"kind": self.kind, "backend": self.cv.backend, "cv_dim": self.cv.dim, "cv_sha256": self.cv.digest,
                **frozen}  # fmt: skip


__all__ = ["CVBias", "group_energy", "with_force_in_own_group"]
