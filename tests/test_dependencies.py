"""Every library the server imports directly is declared in pyproject.toml."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# The standard library, and the modules pipecat_base itself provides.
OURS = {"pipecat_base", "pipecatcloud_system"}


def imported_top_levels() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "pipecat_base").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in OURS}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib; pipecat-ai is absent on 3.10")
def test_every_library_imported_directly_is_declared():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["testing"]
    declared = {Requirement(r).name.lower().replace("_", "-") for r in requirements}
    providers = metadata.packages_distributions()
    undeclared = {}
    for module in sorted(imported_top_levels()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        # A module named as its distribution may be absent here (exceptiongroup: Python < 3.11).
        if not dists & declared and module.replace("_", "-") not in declared:
            undeclared[module] = sorted(dists) or ["(not installed)"]
    assert undeclared == {}
