"""The layers stay apart: the engine imports no Slicer, VTK or Qt; the scene logic and the review controller
import no Qt (nor trame), and use no Slicer application globals.

The engine must run in a plain Python (CLI, training on a cluster, CI) and the scene logic in the web review
app and on slicer-core, so an import that crosses a layer breaks those users even when Slicer still works.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "LayerEnsemblesSegmentation" / "LayerEnsemblesLib"
SCENE_DIR = PACKAGE_DIR / "scene"
REVIEW_DIR = PACKAGE_DIR / "review"  # the review controller: MRML through the scene logic, no GUI
SLICER_AND_GUI = {"slicer", "slicer_core", "vtk", "vtkmodules", "qt", "ctk", "PythonQt", "MRMLCorePython"}
# "from __main__ import qt" is the old Slicer idiom
GUI = {"qt", "ctk", "PythonQt", "__main__", "trame", "trame_slicer"}
APPLICATION_GLOBALS = {"app", "modules", "mrmlScene"}  # slicer.<these> exist only in the application
# slicer.util helpers that work on any scene; the others reach for slicer.mrmlScene or slicer.modules
SCENE_SAFE_UTIL = {"arrayFromVolume", "updateVolumeFromArray", "arrayFromSegmentInternalBinaryLabelmap",
                   "VTKObservationMixin", "NodeModify"}


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def imported_top_modules(path: Path) -> dict[str, int]:
    """Every absolute module imported anywhere in the file (also inside functions), with a line number."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name.split(".")[0], node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.setdefault(node.module.split(".")[0], node.lineno)
    return found


def engine_files() -> list[Path]:
    return [p for p in python_files(PACKAGE_DIR) if SCENE_DIR not in p.parents and REVIEW_DIR not in p.parents
            and "webapp" not in p.relative_to(PACKAGE_DIR).parts]


def test_engine_imports_no_slicer_vtk_or_qt():
    files = engine_files()
    assert len(files) > 10
    offences = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in files
                for name, line in imported_top_modules(p).items() if name in SLICER_AND_GUI | {"__main__"}]
    assert not offences, offences


def test_scene_logic_and_review_controller_import_no_gui_and_use_no_application_globals():
    files = python_files(SCENE_DIR) + python_files(REVIEW_DIR)
    assert len(files) > 12
    offences = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in files
                for name, line in imported_top_modules(p).items() if name in GUI]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            if _is_name(node.value, "slicer") and node.attr in APPLICATION_GLOBALS:
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno} uses slicer.{node.attr}")
            if (isinstance(node.value, ast.Attribute) and node.value.attr == "util"
                    and _is_name(node.value.value, "slicer") and node.attr not in SCENE_SAFE_UTIL):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno} uses slicer.util.{node.attr}")
    assert not offences, offences


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def test_importing_the_whole_engine_loads_no_slicer_vtk_or_qt():
    modules = [".".join(p.relative_to(PACKAGE_DIR.parent).with_suffix("").parts).removesuffix(".__init__")
               for p in engine_files()]
    script = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); "
              "[importlib.import_module(m) for m in sys.argv[3:]]; "
              "bad = sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[2].split(',')); print(bad)")
    arguments = [str(PACKAGE_DIR.parent), ",".join(SLICER_AND_GUI), *modules]
    completed = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"
