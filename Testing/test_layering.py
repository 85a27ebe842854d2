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
WEBAPP_DIR = PACKAGE_DIR / "webapp"
TRAME = {"trame", "trame_slicer", "trame_client", "trame_server", "trame_vuetify", "trame_rca", "wslink"}
WEBAPP_LAUNCHER = PACKAGE_DIR / "commands" / "review.py"  # starts the web app; imports it lazily
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
    above_engine = (SCENE_DIR, REVIEW_DIR, WEBAPP_DIR)
    return [p for p in python_files(PACKAGE_DIR) if not any(layer in p.parents for layer in above_engine)]


def imports_webapp(path: Path) -> int | None:
    """The line of an import of the web app package (relative or absolute), or None."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [alias.name for alias in node.names]
            if (node.level > 0 and (module.split(".")[0] == "webapp" or (not module and "webapp" in names))) \
                    or module.startswith("LayerEnsemblesLib.webapp"):
                return node.lineno
        elif isinstance(node, ast.Import) and any(
                alias.name.startswith("LayerEnsemblesLib.webapp") for alias in node.names):
            return node.lineno
    return None


def test_only_the_web_app_imports_trame_and_nothing_below_it_imports_the_web_app():
    offences = []
    for path in python_files(PACKAGE_DIR):
        if WEBAPP_DIR in path.parents:
            continue
        offences += [f"{path.relative_to(ROOT)}:{line} imports {name}"
                     for name, line in imported_top_modules(path).items() if name in TRAME]
        line = imports_webapp(path)
        if line is not None and path != WEBAPP_LAUNCHER:
            offences.append(f"{path.relative_to(ROOT)}:{line} imports the web app")
    assert not offences, offences
    assert python_files(WEBAPP_DIR), "the web app package is missing"


def test_web_app_imports_no_qt():
    offences = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in python_files(WEBAPP_DIR)
                for name, line in imported_top_modules(p).items() if name in GUI - TRAME]
    assert not offences, offences


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


def test_the_review_server_starts_and_reads_its_model_without_importing_torch():
    """torch's import takes 1.5 s and 190 MiB; the web app's page and first views must not wait for it
    (it comes with the first result). Slicer's panel also summarises a model before PyTorch is installed."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import LayerEnsemblesLib.webapp.app;"
        "from LayerEnsemblesLib.scene import create_scene;"
        "from LayerEnsemblesLib.review.controller import ReviewController;"
        "from LayerEnsemblesLib.review.models import DEMO_MODEL;"
        "controller = ReviewController(create_scene());"
        "assert controller.load_model(DEMO_MODEL), controller.state.last_error;"
        "assert controller.state.model.head_count == 8 and 'hippocampus' in controller.state.model.summary;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:5])"
    )
    completed = subprocess.run([sys.executable, "-c", script, str(PACKAGE_DIR.parent)], capture_output=True,
                               text=True, timeout=300)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"
