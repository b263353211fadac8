"""The pinned OpenMM / openmm-torch / torch stack and its known failure modes."""

import subprocess
import sys
from importlib import metadata

import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch
from openmmtorch import TorchForce


def test_exact_pins():
    # openmm 8.6.x segfaults on TorchForce inside CustomCVForce; openmmtorch 1.5 needs torch 2.9.1.
    assert openmm.__version__ == "8.5.2"
    assert metadata.version("openmmtorch") == "1.5"
    assert torch.__version__.split("+")[0] == "2.9.1"


class _LinearCV(torch.nn.Module):
    """cv = w · x (flattened positions), computed in float32 like an exported encoder."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(weights.numel(), 1, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weights.reshape(1, -1))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.linear(positions.to(self.linear.weight.dtype).reshape(1, -1)).reshape(())


class _DtypeProbe(torch.nn.Module):
    """Energy 1 if OpenMM hands float64 positions, 2 if float32."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        flag = 1.0 if positions.dtype == torch.float64 else 2.0
        return positions.sum().to(torch.float64) * 0.0 + flag  # depends on positions for autograd


def _context(system, platform):
    integrator = openmm.VerletIntegrator(0.001)
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))


@pytest.mark.parametrize("platform", ["CPU", "Reference"])
def test_torchforce_inside_customcvforce_energy_and_forces(platform, rng):
    n_atoms, k, s0 = 5, 40.0, 0.3
    weights = torch.tensor(rng.normal(size=n_atoms * 3), dtype=torch.float32)
    positions = rng.normal(size=(n_atoms, 3))
    system = openmm.System()
    for _ in range(n_atoms):
        system.addParticle(1.0)
    cv_force = openmm.CustomCVForce("0.5*k*(s-s0)^2")
    cv_force.addGlobalParameter("k", k)
    cv_force.addGlobalParameter("s0", s0)
    cv_force.addCollectiveVariable("s", TorchForce(torch.jit.script(_LinearCV(weights))))
    system.addForce(cv_force)
    context = _context(system, platform)
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)

    w = weights.double().numpy()
    s = float(w @ positions.ravel())
    assert cv_force.getCollectiveVariableValues(context)[0] == pytest.approx(s, abs=1e-5)
    energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    assert energy == pytest.approx(0.5 * k * (s - s0) ** 2, rel=1e-5, abs=1e-5)
    forces = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    np.testing.assert_allclose(forces.ravel(), -k * (s - s0) * w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("platform", ["CPU", "Reference"])
def test_cpu_and_reference_pass_float64_positions(platform):
    system = openmm.System()
    system.addParticle(1.0)
    system.addForce(TorchForce(torch.jit.script(_DtypeProbe())))
    context = _context(system, platform)
    context.setPositions([[0.1, 0.2, 0.3]])
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    assert energy == pytest.approx(1.0)  # float64: exported models must cast (they do, see _LinearCV)


def test_torchforce_works_when_openmm_was_imported_before_torch(tmp_path):
    script = tmp_path / "openmm_first.py"
    script.write_text(
        "import openmm\n"
        "import latf_openmm\n"
        "import torch\n"
        "from openmmtorch import TorchForce\n\n\n"
        "class Energy(torch.nn.Module):\n"
        "    def forward(self, positions):\n"
        "        return (positions**2).sum()\n\n\n"
        "system = openmm.System()\n"
        "system.addParticle(1.0)\n"
        "system.addForce(TorchForce(torch.jit.script(Energy())))\n"
        "context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName('CPU'))\n"
        "context.setPositions([[1.0, 2.0, 3.0]])\n"
        "print(context.getState(getEnergy=True).getPotentialEnergy()._value)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(14.0)
