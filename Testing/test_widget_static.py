"""Static checks of the Qt widget, which cannot run here (no PythonQt, CTK or qMRML outside Slicer).

They catch what would otherwise only fail when a user opens the module: a .ui that does not load, a
widget the code refers to but the .ui lacks, a parameter bound to no field, an undefined name, a slot
that does not exist, or torch imported when Slicer loads the module.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LayerEnsemblesSegmentation"
MODULE_FILE = MODULE_DIR / "LayerEnsemblesSegmentation.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LayerEnsemblesSegmentation.ui"
WIDGET_CLASS = re.compile(r"^(Q[A-Z]\w*|ctk[A-Z]\w*|qMRML[A-Z]\w*|qSlicer[A-Z]\w*)$")
# parameter type -> widget classes the parameterNodeWrapper can bind it to (guiConnectors.py)
CONNECTORS = {
    "float": {"ctkSliderWidget", "QDoubleSpinBox"},
    "bool": {"QCheckBox", "QPushButton"},
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "FloatRange": {"ctkRangeWidget"},
    "node": {"qMRMLNodeComboBox"},
    "enum": {"QComboBox"},
}


@pytest.fixture(scope="module")
def ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE))


def ui_widgets(ui: ET.Element) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ui.iter("widget")}


def parameter_fields(tree: ast.Module) -> dict[str, ast.expr]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {item.target.id: item.annotation for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in the module")


def class_named(tree: ast.Module, suffix: str) -> ast.ClassDef:
    wanted = f"LayerEnsemblesSegmentation{suffix}"
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == wanted)


def test_ui_is_valid_xml_with_a_qmrmlwidget_on_top(ui):
    assert ui.tag == "ui" and ui.get("version") == "4.0"
    top = ui.find("widget")
    assert top.get("class") == "qMRMLWidget"
    assert top.get("name") == ui.findtext("class") == "LayerEnsemblesSegmentation"


def test_every_widget_class_is_qt_ctk_or_qmrml_and_custom_ones_are_declared(ui):
    classes = set(ui_widgets(ui).values())
    assert not [c for c in classes if not WIDGET_CLASS.match(c)]
    declared = {c.findtext("class"): c for c in ui.iter("customwidget")}
    for name in classes:
        if not name.startswith("Q"):
            assert name in declared, f"{name} is used but not declared in <customwidgets>"
            assert declared[name].findtext("header") == f"{name}.h"


def test_every_self_ui_name_exists_in_the_ui(ui, module_tree):
    def is_self_ui(node) -> bool:
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "ui"
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        )

    names = {
        node.attr
        for node in ast.walk(module_tree)
        if isinstance(node, ast.Attribute) and is_self_ui(node.value)
    }
    assert len(names) > 10  # the walk finds them (the widget uses 18)
    missing = names - set(ui_widgets(ui))
    assert not missing, f"self.ui names missing from the .ui: {sorted(missing)}"


def test_every_slicer_parameter_name_is_a_field_bound_to_a_suitable_widget(ui, module_tree):
    fields = parameter_fields(module_tree)
    enums = {
        n.name
        for n in module_tree.body
        if isinstance(n, ast.ClassDef)
        and any(getattr(b, "attr", getattr(b, "id", "")) == "Enum" for b in n.bases)
    }
    bound = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("class")
    assert bound, "no widget is bound to the parameter node"
    for name, widget_class in bound.items():
        assert name in fields, f"SlicerParameterName {name!r} is not a parameter node field"
        annotation = ast.unparse(fields[name])
        if annotation.startswith("vtkMRML"):
            kind = "node"
        elif annotation.split(".")[-1] in enums:
            kind = "enum"
        else:
            kind = next(
                k
                for k in CONNECTORS
                if re.search(rf"\b{k}\b", annotation) or (k == "Path" and "pathlib.Path" in annotation)
            )
        assert widget_class in CONNECTORS[kind], f"{name}: {annotation} cannot bind to {widget_class}"
        if kind == "float" and widget_class == "ctkSliderWidget":
            assert "WithinRange" in annotation, f"{name}: a slider needs a bounded float"
        if kind == "FloatRange":
            assert "RangeBounds" in annotation, f"{name}: a range widget needs RangeBounds"


def test_each_mrml_widget_receives_the_scene(ui):
    receivers = {
        c.findtext("receiver")
        for c in ui.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
        and c.findtext("sender") == "LayerEnsemblesSegmentation"
    }
    mrml_widgets = {
        name
        for name, cls in ui_widgets(ui).items()
        if cls.startswith("qMRML") and name != "LayerEnsemblesSegmentation"
    }
    assert mrml_widgets and mrml_widgets <= receivers, sorted(mrml_widgets - receivers)


def test_connected_slots_exist_on_the_widget(module_tree):
    widget = class_named(module_tree, "Widget")
    methods = {n.name for n in widget.body if isinstance(n, ast.FunctionDef)}
    slots = []
    for call in ast.walk(widget):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "connect" and call.args:
            target = call.args[-1]  # widget.connect("signal()", self.slot) or signal.connect(self.slot)
            if isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "self":
                slots.append(target.attr)
    assert len(slots) >= 8
    assert set(slots) <= methods, sorted(set(slots) - methods)


def test_template_structure(module_tree):
    names = {n.name for n in module_tree.body if isinstance(n, ast.ClassDef)}
    for suffix in ("", "ParameterNode", "Widget", "Logic", "Test"):
        assert f"LayerEnsemblesSegmentation{suffix}" in names
    test_class = class_named(module_tree, "Test")
    assert {"setUp", "runTest"} <= {n.name for n in test_class.body if isinstance(n, ast.FunctionDef)}


def test_torch_is_not_imported_when_slicer_loads_the_module(module_tree):
    top_level = [n for n in module_tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    imported = {alias.name.split(".")[0] for n in top_level for alias in n.names} | {
        (n.module or "").split(".")[0] for n in top_level if isinstance(n, ast.ImportFrom)
    }
    assert "torch" not in imported
    # and the LayerEnsemblesLib modules the module file imports at load time do not pull torch in either
    engine = [
        f"{n.module}.{alias.name}" if n.module == "LayerEnsemblesLib" else n.module
        for n in top_level
        if isinstance(n, ast.ImportFrom) and n.module.startswith("LayerEnsemblesLib")
        for alias in n.names
    ]
    assert len(engine) >= 3
    script = (
        "import importlib, sys; sys.path.insert(0, sys.argv[1]); "
        "[importlib.import_module(m) for m in sys.argv[2:]]; print('torch' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(MODULE_DIR), *engine], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "False"


def _ruff_undefined_names(path: Path) -> subprocess.CompletedProcess:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    command = [ruff, "check", "--no-cache", "--isolated", "--select", "F821", str(path)]
    return subprocess.run(command, capture_output=True, text=True)


def test_ruff_finds_no_undefined_names_in_the_module_file():
    completed = _ruff_undefined_names(MODULE_FILE)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_undefined_name_check_would_catch_one(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(MODULE_FILE.read_text() + "\n\ndef later():\n    return undefinedHelper()\n")
    completed = _ruff_undefined_names(broken)
    assert completed.returncode == 1 and "undefinedHelper" in completed.stdout


# -- defects found in real Slicer (issue 10) ---------------------------------------------------------------

RANGE_VALIDATORS = {"WithinRange", "RangeBounds"}


def range_parameters_without_default(tree: ast.Module) -> list[str]:
    """Parameters with a range annotation but no ``Default(...)`` in it.

    Slicer's range connectors validate the annotation's default; a default given by ``=`` is not seen
    there, the connector gets ``0`` and ``connectGui`` raises inside ``setup()``: no control is bound.
    """
    missing = []
    for name, annotation in parameter_fields(tree).items():
        called = {
            getattr(node.func, "id", getattr(node.func, "attr", ""))
            for node in ast.walk(annotation)
            if isinstance(node, ast.Call)
        }
        if called & RANGE_VALIDATORS and "Default" not in called:
            missing.append(name)
    return missing


def test_every_range_parameter_has_its_default_in_the_annotation(module_tree):
    fields = parameter_fields(module_tree)
    assert {"keptHeads", "aulaThreshold", "heatmapOpacity"} <= set(fields)
    assert range_parameters_without_default(module_tree) == []


def test_the_default_check_would_catch_the_unbound_panel():
    old = (
        "@parameterNodeWrapper\nclass LayerEnsemblesSegmentationParameterNode:\n"
        "    keptHeads: Annotated[FloatRange, RangeBounds(1, MAX_HEADS)] = FloatRange(1, MAX_HEADS)\n"
        "    aulaThreshold: Annotated[float, WithinRange(0.0, 1.0), Default(0.9)]\n"
    )
    assert range_parameters_without_default(ast.parse(old)) == ["keptHeads"]


def volume_selectors(ui: ET.Element) -> set[str]:
    selectors = set()
    for widget in ui.iter("widget"):
        if widget.get("class") in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox"):
            types = [
                s.text
                for p in widget.findall("property")
                if p.get("name") == "nodeTypes"
                for s in p.iter("string")
            ]
            if any(t in ("vtkMRMLScalarVolumeNode", "vtkMRMLVolumeNode") for t in types):
                selectors.add(widget.get("name"))
    return selectors


def module_constant(tree: ast.Module, name: str):
    return next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == name
    )


def test_input_volume_selectors_hide_the_modules_heatmaps(ui, module_tree):
    """The heatmaps are volumes too: every volume selector of the panel hides them, on every node added."""
    selectors = volume_selectors(ui)
    assert selectors == {"inputVolumeSelector", "worklistVolumesSelector"}
    assert set(module_constant(module_tree, "INPUT_VOLUME_SELECTORS")) == selectors
    widget = class_named(module_tree, "Widget")
    hider = next(
        f
        for f in widget.body
        if isinstance(f, ast.FunctionDef)
        and any(isinstance(n, ast.Attribute) and n.attr == "hiddenNodeIDs" for n in ast.walk(f))
    )
    source = ast.unparse(hider)
    assert "module_volume_ids(" in source and "in INPUT_VOLUME_SELECTORS" in source
    observed = [
        ast.unparse(call)
        for call in ast.walk(widget)
        if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "addObserver"
    ]
    assert any("NodeAddedEvent" in call and f"self.{hider.name}" in call for call in observed)


WIDGET_ATTRIBUTES = {
    "logic",
    "controller",
    "ui",
    "_parameterNode",
    "_parameterNodeGuiTag",
    "_updatingGui",
    "_pollTimer",
    "_recombineTimer",
    "_unsubscribe",
}


def test_the_widget_holds_no_review_state(module_tree):
    """Only bindings: the review's state lives in LayerEnsemblesLib.review.ReviewController."""
    widget = class_named(module_tree, "Widget")
    assigned = {
        target.attr
        for node in ast.walk(widget)
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "self"
    }
    assert assigned <= WIDGET_ATTRIBUTES, sorted(assigned - WIDGET_ATTRIBUTES)
    assert len(MODULE_FILE.read_text().splitlines()) < 592  # the module before issue 10


def test_cleanup_stops_the_timers_and_the_child(module_tree):
    widget = class_named(module_tree, "Widget")
    methods = {f.name: f for f in widget.body if isinstance(f, ast.FunctionDef)}
    cleanup = ast.unparse(methods["cleanup"])
    for call in (
        "self._pollTimer.stop()",
        "self._recombineTimer.stop()",
        "self.controller.close()",
        "self.removeObservers()",
    ):
        assert call in cleanup


def test_the_self_test_checks_the_panel_first_and_skips_the_run_without_torch(module_tree):
    """Reload and Test must fail when the panel does not bind, and not fail just because torch is absent."""
    test_class = class_named(module_tree, "Test")
    methods = {f.name: f for f in test_class.body if isinstance(f, ast.FunctionDef)}
    body = methods["runTest"].body
    calls = [ast.unparse(statement) for statement in body]
    binds = calls.index("self.test_PanelBinds()")
    guard = next(
        i for i, s in enumerate(body) if isinstance(s, ast.If) and "torch_available" in ast.unparse(s.test)
    )
    assert binds < guard and isinstance(body[guard].body[-1], ast.Return)
    panel = ast.unparse(methods["test_PanelBinds"])
    assert "_parameterNodeGuiTag" in panel and "keptHeadsRangeWidget" in panel and "deviceComboBox" in panel
    assert "applyButton.click()" in ast.unparse(methods["test_SegmentThroughThePanel"])


def test_torch_is_installed_once_and_an_old_one_is_refused(module_tree):
    logic = class_named(module_tree, "Logic")
    ensure = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == "ensureTorch")
    source = ast.unparse(ensure)
    first = ensure.body[1]  # after the docstring: a second click while installing does nothing
    assert isinstance(first, ast.If) and "self._installingTorch" in ast.unparse(first.test)
    assert isinstance(first.body[-1], ast.Return)
    guarded = [
        n for n in ast.walk(ensure) if isinstance(n, ast.Try) and "installTorch" in ast.unparse(n.body)
    ]
    assert guarded and "self._installingTorch = False" in ast.unparse(guarded[0].finalbody)
    assert (
        "runtime.torch_version_problem()" in source
        and "torchVersionRequirement=runtime.TORCH_REQUIREMENT" in source
    )
