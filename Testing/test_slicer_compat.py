"""The declared minimum Slicer is true: every file Slicer loads imports in its Python, and it is declared
the same everywhere (module help, CMake, README). The Extensions Index catalogue entry follows its schema.

Slicer 5.8 (Python 3.9) could not import the module (``X | None`` evaluated at import, ``zip(strict=)``),
which no test here saw because the tests run on a newer Python; these checks read the source instead.
"""

from __future__ import annotations

import ast
import json
import re

import pytest
from python_compat import SLICER_PYTHON, problems, problems_in_files
from test_cmake_lists import MODULE_DIR, ROOT, cmake_commands, module_lists

MODULE_FILE = MODULE_DIR / "LayerEnsemblesSegmentation.py"
CATALOGUE = ROOT / "LayerEnsembles.json"
SCHEMA_URL = re.compile(
    r"^https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
    r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#$"
)
# The catalogue entry schema (Slicer/Schemas, v1.0.x): these keys only, three of them required.
CATALOGUE_KEYS = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}
CATALOGUE_REQUIRED = {"$schema", "category", "scm_url"}


def declared_minimum() -> str:
    tree = ast.parse(MODULE_FILE.read_text())
    return next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MINIMUM_SLICER"
    )


def shipped_python_files():
    """Every Python file Slicer loads from the extension (the module and its package, as CMake lists them)."""
    return [MODULE_DIR / name for name in module_lists()["MODULE_PYTHON_SCRIPTS"] if name.endswith(".py")]


def test_the_minimum_slicer_is_declared_the_same_everywhere():
    minimum = declared_minimum()
    assert minimum in SLICER_PYTHON
    variables = {args[0]: args[1:] for name, args in cmake_commands(ROOT / "CMakeLists.txt") if name == "set"}
    assert variables["LayerEnsembles_MINIMUM_SLICER"] == [f'"{minimum}"']
    assert "VERSION_LESS" in (ROOT / "CMakeLists.txt").read_text()
    readme = (ROOT / "README.md").read_text()
    assert f"Slicer {minimum} or later" in readme and "Slicer 5.8 or later" not in readme
    assert "Requires Slicer {MINIMUM_SLICER}" in MODULE_FILE.read_text().replace("\n", " ")


def test_every_file_slicer_loads_runs_on_the_declared_minimum_python():
    files = shipped_python_files()
    assert MODULE_FILE in files and len(files) > 40
    version = SLICER_PYTHON[declared_minimum()]
    assert problems_in_files(files, version) == []


def test_the_check_finds_what_broke_slicer_5_8():
    old_parameter_node = (
        "from typing import Annotated\n"
        "@parameterNodeWrapper\n"
        "class Parameters:\n"
        "    inputVolume: vtkMRMLScalarVolumeNode | None\n"
    )
    old_method = "def setParameterNode(self, node: Parameters | None) -> None:\n    pass\n"
    engine = "def pairs(a, b):\n    return list(zip(a, b, strict=True))\n"
    assert len(problems(old_parameter_node, "module.py", (3, 9))) == 1
    assert len(problems("from __future__ import annotations\n" + old_parameter_node, "m.py", (3, 9))) == 1
    assert "needs Python 3.10" in problems(old_method, "module.py", (3, 9))[0]
    assert problems("from __future__ import annotations\n" + old_method, "module.py", (3, 9)) == []
    assert "zip(strict=...)" in problems(engine, "engine.py", (3, 9))[0]
    assert "cannot parse" in problems("match x:\n    case 1:\n        pass\n", "m.py", (3, 9))[0]
    assert "tomllib needs Python 3.11" in problems("import tomllib\n", "m.py", (3, 10))[0]
    for source in (old_parameter_node, old_method, engine):
        assert problems(source, "m.py", SLICER_PYTHON["5.10"]) == []
    # and the shipped sources do use what 5.8 lacks: declaring 5.8 would fail the check above
    assert any("zip(strict=...)" in line for line in problems_in_files(shipped_python_files(), (3, 9)))


def test_the_extensions_index_catalogue_entry():
    entry = json.loads(CATALOGUE.read_text())
    assert CATALOGUE_REQUIRED <= set(entry) <= set(CATALOGUE_KEYS), sorted(set(entry) - set(CATALOGUE_KEYS))
    for key, value in entry.items():
        assert isinstance(value, CATALOGUE_KEYS[key]), f"{key}: {type(value).__name__}"
    assert SCHEMA_URL.match(entry["$schema"])
    assert entry.get("scm_type", "git") == "git" and entry.get("tier", 5) in (1, 3, 5)
    assert all(isinstance(name, str) for name in entry["build_dependencies"])
    # the same facts as the top-level CMakeLists.txt and the .s4ext the product card names
    variables = {
        args[0]: " ".join(args[1:]).strip('"')
        for name, args in cmake_commands(ROOT / "CMakeLists.txt")
        if name == "set"
    }
    assert entry["category"] == variables["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == variables["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    s4ext = dict(
        line.split(" ", 1)
        for line in (ROOT / "LayerEnsembles.s4ext").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert entry["scm_url"] == s4ext["scmurl"] and entry["scm_revision"] == s4ext["scmrevision"]
    assert entry["build_subdirectory"] == s4ext["build_subdirectory"]


@pytest.mark.parametrize("key", ["description", "homepage"])
def test_the_catalogue_entry_check_refuses_keys_the_schema_forbids(key):
    entry = json.loads(CATALOGUE.read_text()) | {key: "x"}
    assert not set(entry) <= set(CATALOGUE_KEYS)
