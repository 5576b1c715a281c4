"""Dependencies run one way (docs/architecture.md, "Layers"): every import statement of every package, lazy ones in
function bodies included, is checked against the layer table, and importing the two base packages loads no Prefect.

    lafs_core  <-  data_tools  <-  flows  <-  lafs_cli, experiments          bench: lafs_core and data_tools only
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lafs_core", "data_tools", "flows", "lafs_cli", "experiments", "bench")
# What each package may import of the repository's packages (besides itself), and third-party modules it may not.
ALLOWED = {
    "lafs_core": set(),
    "data_tools": {"lafs_core"},
    "flows": {"lafs_core", "data_tools"},
    "lafs_cli": {"lafs_core", "data_tools", "flows"},
    "experiments": {"lafs_core", "data_tools", "flows"},
    "bench": {"lafs_core", "data_tools"},
}
FORBIDDEN_THIRD_PARTY = {"lafs_core": {"prefect"}, "data_tools": {"prefect"}, "bench": {"prefect"}}
# Inside lafs_core the evaluation code never depends on training (training calls the one verification path).
FORBIDDEN_INSIDE = {"lafs_core.eval": ("lafs_core.train",)}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_layers(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        module = module_name(path)
        for line, imported in imports_of(path):
            top = imported.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
            if top in FORBIDDEN_THIRD_PARTY.get(package, ()):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
            for inside, banned in FORBIDDEN_INSIDE.items():
                if module.startswith(inside) and imported.startswith(banned):
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not wrong, "imports against docs/architecture.md's layers:\n" + "\n".join(wrong)


def test_the_base_packages_and_the_experiment_driver_load_without_prefect() -> None:
    """Every module of lafs_core and data_tools, and the lfw-v1 driver (which runs the chain of flows/chain.py),
    imported in a fresh interpreter: no Prefect, no flows module that needs it, no CLI."""
    modules = [module_name(p) for pkg in ("lafs_core", "data_tools") for p in sorted((ROOT / pkg).rglob("*.py"))]
    modules = [m.removesuffix(".__init__") for m in modules] + ["experiments.lfw_v1.run"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'lafs_cli'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == ""
