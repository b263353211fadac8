"""Unit conventions.

latf_openmm works in OpenMM's units: nm, ps, amu, kJ/mol, K.

Toy systems (three-hole, LJ7) are written in reduced units and mapped onto OpenMM's
units by choosing the unit of length σ = 1 nm, of energy ε = 1 kJ/mol and of mass
m = 1 amu. The unit of time is then sqrt(m σ² / ε) = 1 ps exactly, and a reduced
temperature k_B T / ε = t corresponds to T = t / k_B = t / 0.00831446... K
(k_B T = 0.75 ε is 90.2 K).
"""

from __future__ import annotations

import openmm.unit as u

from latf_openmm.errors import LatfError

#: Boltzmann's constant times Avogadro's number, in kJ/(mol K).
KB_KJ_PER_MOL_K: float = (u.BOLTZMANN_CONSTANT_kB * u.AVOGADRO_CONSTANT_NA).value_in_unit(
    u.kilojoule_per_mole / u.kelvin
)


def reduced_to_kelvin(reduced_temperature: float) -> float:
    """Convert k_B T / ε (with ε = 1 kJ/mol) to kelvin."""
    return reduced_temperature / KB_KJ_PER_MOL_K


def kelvin_to_reduced(temperature: float) -> float:
    """Convert kelvin to k_B T / ε (with ε = 1 kJ/mol)."""
    return temperature * KB_KJ_PER_MOL_K


def temperature_to_kelvin(temperature: float, unit: str) -> float:
    """Convert a temperature in a run's or model's ``temperature_unit`` (``"K"`` or ``"kT/eps"``) to K."""
    if unit not in ("K", "kT/eps"):
        raise LatfError(f"unknown temperature unit {unit!r}: use 'K' or 'kT/eps'")
    return reduced_to_kelvin(temperature) if unit == "kT/eps" else float(temperature)
