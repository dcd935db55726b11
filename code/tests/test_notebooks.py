"""Notebook hygiene: one tagged parameters cell declaring every parameter the Makefile passes."""

from __future__ import annotations

import ast
import json
import re

import pytest

from isodepth import paths
from isodepth.notebooks import parameters_cell

NOTEBOOKS = sorted((paths.ROOT / "notebooks").glob("*.ipynb"))


def makefile_parameters() -> dict[str, set[str]]:
    """Map notebook file name -> parameter names passed with -p in the Makefile and its fragments."""
    makefiles = [paths.ROOT / "Makefile", *sorted((paths.ROOT / "make").glob("*.mk"))]
    text = "\n".join(f.read_text() for f in makefiles).replace("\\\n", " ")
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.search(r"\$\(NOTEBOOK\)\s+notebooks/(\S+\.ipynb)(.*)", line)
        if match:
            found.setdefault(match.group(1), set()).update(re.findall(r"-p\s+(\w+)", match.group(2)))
    return found


def declared(notebook) -> set[str]:
    cell = parameters_cell(notebook)[0]
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets}


def test_notebooks_exist():
    assert NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell(notebook):
    assert len(parameters_cell(notebook)) == 1


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_makefile_parameters_declared(notebook):
    passed = makefile_parameters().get(notebook.name, set())
    assert passed <= declared(notebook), f"undeclared: {sorted(passed - declared(notebook))}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_stripped(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)


def test_every_makefile_notebook_exists():
    for name in makefile_parameters():
        assert (paths.ROOT / "notebooks" / name).exists(), name
