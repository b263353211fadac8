"""MD speed per shipped system: steps/s and ns/day on the CPU platform (and Reference for toys).

Usage: python bench/md_speed.py [--seconds 10] [--threads N]

Each system is minimized, warmed up for 1 s, then stepped for ``--seconds`` of wall
time in chunks of 100 steps (no frames saved). Prints one JSON line per system and
platform, then a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import time

import openmm
import openmm.unit as u

import latf_openmm  # noqa: F401  (torch before openmm)
from latf_openmm.simulation import select_platform
from latf_openmm.systems import available_systems, load_system


def steps_per_second(molsys, platform: str, threads: int | None, seconds: float) -> float:
    platform_obj, properties = select_platform(platform, threads=threads if platform == "CPU" else None)
    integrator = openmm.LangevinMiddleIntegrator(
        molsys.temperatures[0] * u.kelvin, molsys.friction / u.picosecond, molsys.timestep * u.picoseconds
    )
    context = openmm.Context(molsys.system, integrator, platform_obj, properties)
    context.setPositions(molsys.positions * u.nanometer)
    if molsys.minimize:
        openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(molsys.temperatures[0] * u.kelvin, 1)
    for budget in (1.0, seconds):  # warm-up, then measurement
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget:
            integrator.step(100)
            steps += 100
        context.getState(getEnergy=True)  # wait for the device
        rate = steps / (time.perf_counter() - start)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured wall time per system")
    parser.add_argument("--threads", type=int, default=None, help="CPU platform threads (default: OpenMM's)")
    args = parser.parse_args()
    rows = []
    for name in available_systems():
        molsys = load_system(name)
        platforms = ["CPU"] + (["Reference"] if molsys.platform == "Reference" else [])
        for platform in platforms:
            rate = steps_per_second(molsys, platform, args.threads, args.seconds)
            row = {
                "system": name,
                "platform": platform,
                "threads": args.threads,
                "atoms": molsys.system.getNumParticles(),
                "timestep_ps": molsys.timestep,
                "steps_per_s": round(rate, 1),
                "ns_per_day": round(rate * molsys.timestep * 86400 * 1e-3, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| system | atoms | platform | steps/s | ns/day |\n|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['system']} | {r['atoms']} | {r['platform']} | {r['steps_per_s']:.0f} | {r['ns_per_day']:.4g} |")


if __name__ == "__main__":
    main()
