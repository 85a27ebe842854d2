"""The extension's build files: what CMake is told to install exists, and nothing the module needs is missing.

A file missing from ``slicerMacroBuildScriptedModule`` is silently absent from the installed extension
and the module fails to import on the user's machine, so every Python file of the package must be listed.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LayerEnsemblesSegmentation"
PACKAGE = "LayerEnsemblesLib"


def cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(command, arguments) for each command of a CMake file, comments removed (enough for these files)."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    return [(name.lower(), re.findall(r'"[^"]*"|[^\s]+', body))
            for name, body in re.findall(r"(\w+)\s*\(([^)]*)\)", text)]


def module_lists() -> dict[str, list[str]]:
    commands = cmake_commands(MODULE_DIR / "CMakeLists.txt")
    variables = {args[0]: args[1:] for name, args in commands if name == "set"}
    module_name = variables["MODULE_NAME"][0]
    return {key: [v.replace("${MODULE_NAME}", module_name) for v in values]
            for key, values in variables.items()}


def module_globs() -> list[str]:
    patterns = []
    for name, args in cmake_commands(MODULE_DIR / "CMakeLists.txt"):
        if name == "file" and args[0] == "GLOB":
            patterns += [a.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for a in args if "*" in a]
    return patterns


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_every_listed_file_exists():
    lists = module_lists()
    listed = lists["MODULE_PYTHON_SCRIPTS"] + lists["MODULE_PYTHON_RESOURCES"]
    assert "LayerEnsemblesSegmentation.py" in listed
    missing = [f for f in listed if not f.startswith("${") and not (MODULE_DIR / f).is_file()]
    assert not missing, f"listed in LayerEnsemblesSegmentation/CMakeLists.txt but absent: {missing}"


def test_every_python_file_of_the_package_is_listed():
    scripts = set(module_lists()["MODULE_PYTHON_SCRIPTS"])
    files = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / PACKAGE).rglob("*.py")
             if "__pycache__" not in p.parts}
    assert f"{PACKAGE}/scene/__init__.py" in files
    unlisted = sorted(files - scripts)
    assert not unlisted, ("add these to MODULE_PYTHON_SCRIPTS in LayerEnsemblesSegmentation/CMakeLists.txt: "
                          f"{unlisted}")


def test_package_data_and_models_are_shipped():
    lists = module_lists()
    resources = set(lists["MODULE_PYTHON_RESOURCES"])
    data = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / PACKAGE).rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert data <= resources, f"package data not listed as resources: {sorted(data - resources)}"
    globs = module_globs()
    assert "Resources/Models/*.pt" in globs  # the demo model is shipped whenever it is present
    for model in (MODULE_DIR / "Resources" / "Models").glob("*.pt"):
        assert any(fnmatch.fnmatch(model.relative_to(MODULE_DIR).as_posix(), g) for g in globs)


def test_the_module_defaults_to_the_shipped_demo_model_by_a_relative_path():
    """The default is stored in scenes: an absolute install path would be stale after an update."""
    from LayerEnsemblesLib.review.models import DEMO_MODEL, resolve_model_path

    assert not Path(DEMO_MODEL).is_absolute()
    assert any(fnmatch.fnmatch(DEMO_MODEL, g) for g in module_globs())
    assert resolve_model_path(DEMO_MODEL) == str(MODULE_DIR / DEMO_MODEL)
    tree = ast.parse((MODULE_DIR / "LayerEnsemblesSegmentation.py").read_text())
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterNode"))
    model_path = next(n for n in wrapper.body if isinstance(n, ast.AnnAssign) and n.target.id == "modelPath")
    assert ast.unparse(model_path.value) == "pathlib.Path(DEMO_MODEL)"


def test_module_macros():
    commands = dict(cmake_commands(MODULE_DIR / "CMakeLists.txt"))
    build = commands["slicermacrobuildscriptedmodule"]
    assert build[:2] == ["NAME", "${MODULE_NAME}"] and "WITH_GENERIC_TESTS" in build
    assert commands["slicer_add_python_unittest"] == ["SCRIPT", "${MODULE_NAME}.py"]
    resources = module_lists()["MODULE_PYTHON_RESOURCES"]
    assert "Resources/Icons/LayerEnsemblesSegmentation.png" in resources
    assert "Resources/UI/LayerEnsemblesSegmentation.ui" in resources
    assert png_size(MODULE_DIR / "Resources/Icons/LayerEnsemblesSegmentation.png") == (128, 128)


def test_top_level_extension_description():
    commands = cmake_commands(ROOT / "CMakeLists.txt")
    names = [name for name, _ in commands]
    variables = {args[0]: " ".join(args[1:]).strip('"') for name, args in commands if name == "set"}
    assert ("project", ["LayerEnsembles"]) in commands
    keys = ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS")
    for key in keys:
        assert variables.get(f"EXTENSION_{key}"), f"EXTENSION_{key} is not set"
    assert variables["EXTENSION_CATEGORY"] == "Segmentation"
    assert variables["EXTENSION_DEPENDS"] == "PyTorch"
    assert ("find_package", ["Slicer", "REQUIRED"]) in commands
    includes = [args[0] for name, args in commands if name == "include"]
    assert includes == ["${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}",
                        "${Slicer_EXTENSION_CPACK}"]
    subdirectories = [args[0] for name, args in commands if name == "add_subdirectory"]
    assert subdirectories == ["LayerEnsemblesSegmentation"]
    assert names.index("find_package") < names.index("add_subdirectory")
    assert (ROOT / subdirectories[0] / "CMakeLists.txt").is_file()


def test_s4ext_description_and_extension_resources():
    entries = {}
    for line in (ROOT / "LayerEnsembles.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            entries[key] = value.strip()
    for key in ("scm", "scmurl", "scmrevision"):
        assert entries.get(key), f"{key} is required"
    assert entries["depends"] == "PyTorch" and entries["category"] == "Segmentation"
    assert entries["build_subdirectory"] == "."
    assert entries["iconurl"].endswith("/Resources/LayerEnsembles.png")
    assert png_size(ROOT / "Resources" / "LayerEnsembles.png") == (128, 128)
    assert (ROOT / "LICENSE").is_file()


def test_repository_stays_small():
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [ROOT / f for f in files.decode().split("\0") if f]
    total = sum(p.stat().st_size for p in paths if p.is_file())
    assert total < 100 * 1024**2, f"tracked files take {total / 1024**2:.0f} MB; the index wants < 100 MB"
