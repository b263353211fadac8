"""The package's layers: every import of every module, the ones inside functions included, goes
to its own layer or a lower one, so there is no cycle between subpackages."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "latf_openmm"
LAYERS = [  # lowest first; the root package (the public API) sits on top of them all
    "systems", "features", "simulation", "models", "export", "bias", "reweighting", "generation", "reports", "loop",
    "cli",
]  # fmt: skip
SHARED_LEAVES = {"errors", "files", "units", "versions", "devices", "specs", "_quiet", "_plugins"}  # importable by all


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """The latf_openmm modules a module's source imports, with line numbers, at any depth.

    Relative imports are resolved against ``module`` (a package's ``__init__`` when ``is_package``).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names = [base] if node.module else [f"{base}.{alias.name}" for alias in node.names]
            found.extend((name, node.lineno) for name in names)
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
    return [(name, line) for name, line in found if name.split(".")[0] == "latf_openmm"]


def unit(module: str) -> str | None:
    """The subpackage or leaf module (``bias``, ``errors``) a dotted name belongs to; None for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Imports that go up a layer, out of a shared leaf, or into an unknown unit, one line each."""
    found = []
    for module, targets in sorted(graph.items()):
        owner = unit(module)
        for target, line in targets:
            goal = unit(target)
            if goal is None and owner is not None:
                found.append(f"{module}:{line} imports the root package")
            elif owner is None or goal is None or goal == owner:
                continue
            elif owner in SHARED_LEAVES and goal not in SHARED_LEAVES:
                found.append(f"{module}:{line} (a shared leaf) imports {target}")
            elif goal in SHARED_LEAVES:
                continue
            elif goal not in LAYERS or owner not in LAYERS:
                found.append(f"{module}:{line}: {owner if owner not in LAYERS else goal} is in no layer")
            elif LAYERS.index(goal) > LAYERS.index(owner):
                found.append(f"{module}:{line} ({owner}) imports {target} from a higher layer ({goal})")
    return found


def package_graph() -> dict[str, list[tuple[str, int]]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        graph[".".join(parts)] = imports(path.read_text(), ".".join(parts), relative.name == "__init__")
    return graph


def test_every_import_goes_to_the_same_or_a_lower_layer():
    graph = package_graph()
    assert len(graph) > 40 and {unit(m) for m in graph} - {None} <= {*LAYERS, *SHARED_LEAVES}
    assert violations(graph) == []


@pytest.mark.parametrize(
    "module, source, message",
    [
        ("latf_openmm.simulation.md", "def f():\n    from latf_openmm.bias import CVBias\n", "higher layer (bias)"),
        ("latf_openmm.models.data", "from latf_openmm.reweighting import run_weights\n", "higher layer"),
        ("latf_openmm.files", "import latf_openmm.models\n", "a shared leaf"),
        ("latf_openmm.bias.cv", "from latf_openmm.export import paired_featurizer\n", None),  # downwards: fine
        ("latf_openmm.simulation.md", "from ..bias import CVBias\n", "higher layer (bias)"),  # relative
        ("latf_openmm.simulation.md", "from . import run\nfrom .protocol import SimulationBias\n", None),
    ],
)
def test_the_check_catches_an_upward_import(module, source, message):
    found = violations({module: imports(source, module)})
    assert (found == []) if message is None else (len(found) == 1 and message in found[0])
