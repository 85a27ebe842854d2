"""The scene and the module logics the scene functions need, in Slicer or without it.

Every scene function takes a :class:`SceneContext` instead of reaching for ``slicer.mrmlScene`` and
``slicer.modules``: the same code then runs inside Slicer (``SceneContext.from_slicer``), on slicer-core in
the tests, and in the web review app (``create_scene``). The bootstrap follows what Slicer's application does
at start-up: an application logic, then each module logic given the scene and the application logic and
registered under its module name. Without the "Segmentations" logic no segment can be created, and
without "Colors" the volumes logic cannot pick display colours.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

import slicer

SLICE_VIEW_NAMES = ("Red", "Yellow", "Green")
_ORIENTATIONS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


@dataclass
class SceneContext:
    """A scene and the logics registered with it."""

    scene: Any
    app_logic: Any
    colors_logic: Any
    volumes_logic: Any
    segmentations_logic: Any
    # The application logic holds module logics by weak reference: the context keeps them alive.
    subject_hierarchy_logic: Any = None

    @classmethod
    def from_slicer(cls, slicer_module: Any) -> SceneContext:
        """The running Slicer application's scene and logics (``slicer`` is passed in, not imported here)."""
        return cls(
            scene=slicer_module.mrmlScene,
            app_logic=slicer_module.app.applicationLogic(),
            colors_logic=slicer_module.modules.colors.logic(),
            volumes_logic=slicer_module.modules.volumes.logic(),
            segmentations_logic=slicer_module.modules.segmentations.logic(),
            subject_hierarchy_logic=slicer_module.modules.subjecthierarchy.logic(),
        )

    def nodes_by_class(self, class_name: str) -> list:
        return [self.scene.GetNthNodeByClass(i, class_name)
                for i in range(self.scene.GetNumberOfNodesByClass(class_name))]

    def node(self, node_id: str | None):
        return self.scene.GetNodeByID(node_id) if node_id else None


_home_directory: str | None = None


def _application_home() -> str:
    """An empty application home: the Colors logic finds a (blank) colour-file folder and logs nothing."""
    global _home_directory
    if _home_directory is None:
        _home_directory = tempfile.mkdtemp(prefix="layer-ensembles-scene-")
        os.makedirs(os.path.join(_home_directory, "share", "ColorFiles"))
    return _home_directory


def _register(context_app_logic, scene, logic, name: str):
    # The application logic must be known before the scene: the Colors logic looks for files on SetMRMLScene.
    logic.SetMRMLApplicationLogic(context_app_logic)
    logic.SetMRMLScene(scene)
    context_app_logic.SetModuleLogic(name, logic)
    return logic


def create_scene(slice_views: bool = True) -> SceneContext:
    """A scene set up like Slicer's at start-up, with the Red, Yellow and Green slice views when asked.

    Slicer creates the slice view nodes from its layout; without a layout they are added here so that
    "show in every slice view" has something to act on, as it does in the application.
    """
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    home = _application_home()
    app_logic.SetHomeDirectory(home)
    app_logic.SetShareDirectory("share")
    app_logic.SetTemporaryPath(home)

    colors_logic = _register(app_logic, scene, slicer.vtkSlicerColorLogic(), "Colors")
    app_logic.SetColorLogic(colors_logic)
    volumes_logic = _register(app_logic, scene, slicer.vtkSlicerVolumesLogic(), "Volumes")
    segmentations_logic = _register(app_logic, scene, slicer.vtkSlicerSegmentationsModuleLogic(),
                                    "Segmentations")
    hierarchy_logic = _register(app_logic, scene, slicer.vtkSlicerSubjectHierarchyModuleLogic(),
                                "SubjectHierarchy")
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)

    context = SceneContext(scene, app_logic, colors_logic, volumes_logic, segmentations_logic,
                           hierarchy_logic)
    if slice_views:
        add_slice_views(context)
    return context


def add_slice_views(context: SceneContext) -> None:
    for name in SLICE_VIEW_NAMES:
        # Created through the scene so the node starts from the scene's defaults (its orientation presets).
        slice_node = context.scene.CreateNodeByClass("vtkMRMLSliceNode")
        slice_node.UnRegister(None)  # CreateNodeByClass hands over a reference that Python also holds
        slice_node.SetName(name)
        slice_node.SetLayoutName(name)
        slice_node.SetSingletonTag(name)
        context.scene.AddNode(slice_node)
        slice_node.SetOrientation(_ORIENTATIONS[name])
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        composite.SetSingletonTag(name)
        context.scene.AddNode(composite)
