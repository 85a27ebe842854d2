"""LayerEnsembles Segmentation: one-click segmentation with a layer-agreement heatmap and an AULA decision.

The module is the thin Qt layer of four (see README): the engine (``LayerEnsemblesLib``) segments and
scores in a child process, the scene logic (``LayerEnsemblesLib.scene``) turns results into MRML nodes,
the review controller (``LayerEnsemblesLib.review``) holds the review's state and actions, and this file
binds the panel's widgets to that controller and nothing else. torch comes from the PyTorch extension
and is imported only when a model is used, never when Slicer loads the module. Requires Slicer 5.10 or
later (Python 3.12).
"""

import enum
import html
import logging
import os
import pathlib
import sys
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from LayerEnsemblesLib.review.controller import ReviewController
from LayerEnsemblesLib.review.models import DEMO_MODEL, resolve_model_path, stored_model_path
from LayerEnsemblesLib.review.queue_view import queue_text
from LayerEnsemblesLib.scene import SceneContext, runtime
from LayerEnsemblesLib.scene.heatmaps import module_volume_ids
from LayerEnsemblesLib.scene.plots import agreement_plot_view
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Default, FloatRange, RangeBounds, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MINIMUM_SLICER = "5.10"  # Python 3.12; also in README, CMakeLists.txt and LayerEnsembles.json
MAX_HEADS = 64  # bound of the kept-heads range parameter; the widget narrows it to the model's head count
POLL_INTERVAL_MS = 100
RECOMBINE_DELAY_MS = 250  # let a dragged slider settle before recombining
# A kept-heads change shows the slice views first; the uncertain regions and the 3D view follow this
# long after (the controller's finish_redraw), once Qt has drawn the slice views.
SECOND_PART_DELAY_MS = 50
INPUT_VOLUME_SELECTORS = ("inputVolumeSelector", "worklistVolumesSelector")  # they hide the heatmaps


class HeatmapKind(enum.Enum):
    agreement = "agreement"
    entropy = "entropy"
    mutual_information = "mutual_information"
    variance = "variance"


class LayerEnsemblesSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LayerEnsembles Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []  # PyTorchUtils is used when present; it is checked on first Segment
        self.parent.contributors = ["LayerEnsembles contributors"]
        self.parent.helpText = f"""
Segments a volume with a Layer Ensembles model in a single forward pass and shows how much the model's
heads agree: a heatmap of layer disagreement over the image, the agreement curve between adjacent heads,
and the AULA score (area under that curve) with an accept/flag decision. Flagged cases and uncertain
regions point the reviewer to where a correction is most likely needed. Requires Slicer {MINIMUM_SLICER}
or later. See the <a href="https://github.com/LayerEnsembles/SlicerLayerEnsembles">documentation</a>.
"""
        self.parent.acknowledgementText = """
Method: K. Kushibar et al., "Layer Ensembles: A Single-Pass Uncertainty Estimation in Deep Learning for
Segmentation", MICCAI 2022. This implementation is independent of the authors' code.
"""


@parameterNodeWrapper
class LayerEnsemblesSegmentationParameterNode:
    """The panel's settings, saved with the scene. The review itself lives in the controller.

    modelPath - relative paths are taken from the module folder (the demo model), so a saved scene
    does not point at an old install after an update.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    modelPath: pathlib.Path = pathlib.Path(DEMO_MODEL)
    device: str = "auto"
    aulaThreshold: Annotated[float, WithinRange(0.0, 1.0), Default(0.9)]
    keptHeads: Annotated[FloatRange, RangeBounds(1, MAX_HEADS), Default(FloatRange(1, MAX_HEADS))]
    heatmapKind: HeatmapKind = HeatmapKind.agreement
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0), Default(0.5)]
    worklistFolder: pathlib.Path = pathlib.Path()


class LayerEnsemblesSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LayerEnsemblesSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LayerEnsemblesSegmentationLogic()
        self.controller = self.logic.controller
        self.controller.redraw_in_two_parts = True  # see SECOND_PART_DELAY_MS

        self.ui.progressBar.setVisible(False)
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.onPoll)
        self._recombineTimer = qt.QTimer()
        self._recombineTimer.setSingleShot(True)
        self._recombineTimer.setInterval(RECOMBINE_DELAY_MS)
        self._recombineTimer.timeout.connect(self.onRecombine)
        self._unsubscribe = [
            self.controller.subscribe("state_changed", self.onStateChanged),
            self.controller.subscribe("progress", self.onProgress),
            self.controller.subscribe("result_shown", self.onResultShown),
            self.controller.subscribe("error", self.onError),
        ]

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneImported)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.previousRegionButton.connect("clicked(bool)", self.onPreviousRegionButton)
        self.ui.nextRegionButton.connect("clicked(bool)", self.onNextRegionButton)
        self.ui.previousCaseButton.connect("clicked(bool)", self.onPreviousCaseButton)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCaseButton)
        self.ui.acceptButton.connect("clicked(bool)", self.onAcceptButton)
        self.ui.flagButton.connect("clicked(bool)", self.onFlagButton)
        self.ui.correctButton.connect("clicked(bool)", self.onCorrectButton)
        self.ui.segmentVolumesButton.connect("clicked(bool)", self.onSegmentVolumesButton)
        self.ui.segmentFolderButton.connect("clicked(bool)", self.onSegmentFolderButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.worklistTableView.connect("clicked(QModelIndex)", self.onWorklistRowClicked)

        self.initializeParameterNode()
        self.fillDeviceComboBox()
        self.onNodeAdded()
        self.onStateChanged(self.controller.state)

    def cleanup(self) -> None:
        """The module is going away: stop both timers and the child process, drop every observer."""
        self._pollTimer.stop()
        self._recombineTimer.stop()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self.controller.close()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)  # the controller cancels its run and forgets the cases itself

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneImported(self, caller, event) -> None:
        """A saved scene was opened: take up its cases; heads and threshold recombine from their bundles."""
        self.controller.restore_from_scene()

    def onNodeAdded(self, caller=None, event=None) -> None:
        """The module's heatmap volumes are outputs: the input selectors do not offer them."""
        hidden = module_volume_ids(self.controller.context)
        for name in INPUT_VOLUME_SELECTORS:
            getattr(self.ui, name).sortFilterProxyModel().hiddenNodeIDs = hidden

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and firstVolumeNode.GetID() not in module_volume_ids(self.controller.context):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a SlicerParameterName dynamic property in the .ui are bound to the fields here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
            self.onParameterChanged()
            self.onStateChanged(self.controller.state)  # connecting reset the range widget's bounds

    # -- panel -> controller ---------------------------------------------------------------------------

    def onParameterChanged(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if parameters is None or self._updatingGui:
            return
        state = self.controller.state
        if runtime.torch_available() and stored_model_path(parameters.modelPath) != state.model_path:
            self.controller.load_model(parameters.modelPath)  # the same file keeps the user's settings
        if abs(float(parameters.heatmapOpacity) - state.heatmap_opacity) > 1e-6:
            self.controller.set_heatmap(opacity=float(parameters.heatmapOpacity))
        if self._panelSettings() != self._controllerSettings():
            self._recombineTimer.start()  # restarted on every change: recombine once the slider settles
        self._updateButtons()

    def _panelSettings(self):
        parameters = self._parameterNode
        heads = parameters.keptHeads
        return (
            (int(round(heads.minimum)), int(round(heads.maximum))),
            round(float(parameters.aulaThreshold), 4),
            parameters.heatmapKind.value,
        )

    def _controllerSettings(self):
        state = self.controller.state
        threshold = round(state.threshold, 4) if state.threshold is not None else None
        return state.kept_heads, threshold, state.heatmap_kind

    def onRecombine(self) -> None:
        if self._parameterNode is None or self.controller.running:
            return
        (heads, threshold, kind), (stateHeads, stateThreshold, stateKind) = (
            self._panelSettings(),
            self._controllerSettings(),
        )
        with slicer.util.WaitCursor():
            if heads != stateHeads and stateHeads is not None:
                self.controller.set_kept_heads(*heads)
                if self.controller.redraw_pending:
                    qt.QTimer.singleShot(SECOND_PART_DELAY_MS, self.controller.finish_redraw)
            if threshold != stateThreshold and stateThreshold is not None:
                self.controller.set_threshold(threshold)
            if kind != stateKind:
                self.controller.set_heatmap(kind=kind)

    def fillDeviceComboBox(self) -> None:
        self.controller.refresh_devices()
        self.ui.deviceComboBox.blockSignals(True)
        self.ui.deviceComboBox.clear()
        for label, spec in self.controller.state.devices:
            self.ui.deviceComboBox.addItem(label, spec)
        wanted = self._parameterNode.device if self._parameterNode else "auto"
        self.ui.deviceComboBox.setCurrentIndex(max(self.ui.deviceComboBox.findData(wanted), 0))
        self.ui.deviceComboBox.blockSignals(False)
        self.controller.set_device(
            self.ui.deviceComboBox.itemData(self.ui.deviceComboBox.currentIndex) or "auto"
        )

    def onDeviceChanged(self, index: int) -> None:
        if index >= 0:
            device = self.ui.deviceComboBox.itemData(index) or "auto"
            self.controller.set_device(device)
            if self._parameterNode is not None:
                self._parameterNode.device = device

    def _ready(self) -> bool:
        """PyTorch present and recent enough, installed after asking if not; the model loaded."""
        if not self.logic.ensureTorch(askConfirmation=True):
            return False
        self.fillDeviceComboBox()
        if (
            self.controller.state.model is None
            or stored_model_path(self._parameterNode.modelPath) != self.controller.state.model_path
        ):
            return bool(self.controller.load_model(self._parameterNode.modelPath))
        return True

    def onApplyButton(self) -> None:
        if self._ready():
            self._startPolling(
                self.controller.segment_volume(self._parameterNode.inputVolume, self._parameterNode.roi)
            )

    def onSegmentVolumesButton(self) -> None:
        if self._ready():
            volumes = list(self.ui.worklistVolumesSelector.checkedNodes())
            self._startPolling(self.controller.segment_volumes(volumes, self._parameterNode.roi))

    def onSegmentFolderButton(self) -> None:
        if self._ready():
            self._startPolling(
                self.controller.segment_folder(self._parameterNode.worklistFolder, self._parameterNode.roi)
            )

    def _startPolling(self, started) -> None:
        if started:
            self._pollTimer.start()

    def onPoll(self) -> None:
        if not self.controller.poll():
            self._pollTimer.stop()

    def onCancelButton(self) -> None:
        self.controller.cancel()

    def onPreviousRegionButton(self) -> None:
        self.controller.previous_region()

    def onNextRegionButton(self) -> None:
        self.controller.next_region()

    def onPreviousCaseButton(self) -> None:
        self.controller.previous_case()

    def onNextCaseButton(self) -> None:
        self.controller.next_case()

    def onAcceptButton(self) -> None:
        self.controller.accept()

    def onFlagButton(self) -> None:
        self.controller.flag()

    def onCorrectButton(self) -> None:
        nodes = self.controller.hand_off_for_correction()
        if nodes:
            self.logic.openInSegmentEditor(*nodes)

    def onWorklistRowClicked(self, index) -> None:
        table = self.ui.worklistTableView.mrmlTableNode()
        segmentationId = (
            table.GetCellText(index.row(), table.GetColumnIndex("segmentation ID")) if table else ""
        )
        for position, case in enumerate(self.controller.state.cases):
            if case.segmentation_id == segmentationId:
                self.controller.open_case(position)

    # -- controller -> panel ---------------------------------------------------------------------------

    def onStateChanged(self, state) -> None:
        self._updatingGui = True
        try:
            self.ui.statusLabel.text = state.status
            self.ui.progressBar.setVisible(state.run.running)
            queued = queue_text(state)
            self.ui.queueLabel.text = queued
            self.ui.queueLabel.setVisible(bool(queued))
            self.ui.cancelButton.setEnabled(state.run.running)
            modelPath = resolve_model_path(self._parameterNode.modelPath) if self._parameterNode else ""
            self.ui.modelSummaryText.plainText = (
                state.model.summary if state.model else runtime.model_summary(modelPath)["text"]
            )
            self.ui.deviceInfoLabel.text = state.torch_summary
            if state.model is not None:
                self.ui.keptHeadsRangeWidget.setRange(1, state.model.head_count)
            parameters = self._parameterNode
            if parameters is not None and state.kept_heads is not None:
                wasModifying = parameters.StartModify()
                parameters.keptHeads = FloatRange(*state.kept_heads)
                parameters.aulaThreshold = state.threshold
                parameters.EndModify(wasModifying)
            case = state.current_case
            for button in (self.ui.acceptButton, self.ui.flagButton, self.ui.correctButton):
                button.enabled = case is not None and not state.run.running
            for button in (self.ui.previousCaseButton, self.ui.nextCaseButton):
                button.enabled = len(state.cases) > 1
            for button in (self.ui.previousRegionButton, self.ui.nextRegionButton):
                button.enabled = case is not None
            if state.region_count:
                self.ui.regionLabel.text = f"{state.region_count} uncertain region(s)."
            self._showBadge(case)
        finally:
            self._updatingGui = False
        self._updateButtons()

    def _updateButtons(self) -> None:
        running = self.controller.running
        parameters = self._parameterNode
        ready = (
            parameters is not None
            and bool(parameters.inputVolume)
            and str(parameters.modelPath) not in ("", ".")
        )
        self.ui.applyButton.enabled = ready and not running
        self.ui.segmentVolumesButton.enabled = self.ui.segmentFolderButton.enabled = not running

    def _showBadge(self, case) -> None:
        if case is None or case.score is None:
            self.ui.aulaBadgeLabel.text = ""
            return
        accepted = case.decision == "accepted"
        colour = "#2e7d32" if accepted else "#c62828"
        source = "" if case.decision_source == "model" else f" ({case.decision_source})"
        # The estimated Dice (or why the model has none) under the AULA, smaller: rich text in the label.
        estimate = html.escape(case.estimated_dice_text or "")
        self.ui.aulaBadgeLabel.text = f"AULA {case.score:.3f}  {case.decision.upper()}{source}" + (
            f"<br><span style='font-size: 11pt; font-weight: normal'>{estimate}</span>" if estimate else ""
        )
        first, last = case.kept_heads or (0, 0)
        self.ui.aulaBadgeLabel.toolTip = (
            f"{case.model_name}: heads {first}-{last}, threshold "
            f"{case.threshold:.3f}; model decision {case.model_decision}"
        )
        self.ui.aulaBadgeLabel.styleSheet = (
            "QLabel { font-size: 18pt; font-weight: bold; padding: 8px; "
            "border-radius: 6px; color: white; "
            f"background-color: {colour}; }}"
        )

    def onProgress(self, payload) -> None:
        self.ui.progressBar.value = int(100 * payload["fraction"])
        self.ui.statusLabel.text = payload["message"]

    def onResultShown(self, case) -> None:
        chartId = self.controller.current_chart_id()
        self.ui.agreementPlotWidget.setMRMLPlotViewNode(agreement_plot_view(self.controller.context, chartId))
        tableId = self.controller.worklist_table_id()
        if tableId:
            self.ui.worklistTableView.setMRMLTableNode(slicer.mrmlScene.GetNodeByID(tableId))
            self.ui.worklistCollapsibleButton.collapsed = False

    def onError(self, line: str) -> None:
        """One line in the status label; a failed run also gets one dialog (one per run, not per case)."""
        self.ui.statusLabel.text = line
        if not self.controller.running and self._pollTimer.isActive():
            slicer.util.errorDisplay(line, windowTitle="LayerEnsembles")


class LayerEnsemblesSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer-specific steps around the review controller (``logic.controller``, usable from the console)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.controller = ReviewController(
            SceneContext.from_slicer(slicer), python_executable=pythonSlicerExecutable()
        )
        self._installingTorch = False

    def getParameterNode(self):
        return LayerEnsemblesSegmentationParameterNode(super().getParameterNode())

    def ensureTorch(self, askConfirmation: bool = True) -> bool:
        """PyTorch present and recent enough; installed through the PyTorch extension (once) if missing."""
        if self._installingTorch:
            slicer.util.warningDisplay("PyTorch is being installed; wait for it to finish.")
            return False
        if not runtime.torch_available():
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay(
                    "PyTorch is not installed, and the PyTorch extension is missing: install "
                    "'PyTorch' from the Extensions Manager, restart Slicer and try again."
                )
                return False
            self._installingTorch = True
            try:
                with slicer.util.tryWithErrorDisplay("PyTorch could not be installed.", waitCursor=True):
                    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                        askConfirmation=askConfirmation, torchVersionRequirement=runtime.TORCH_REQUIREMENT
                    )
                    if torch is None:
                        return False
            finally:
                self._installingTorch = False
        problem = runtime.torch_version_problem()
        if problem:
            slicer.util.errorDisplay(problem)
            return False
        return True

    @staticmethod
    def openInSegmentEditor(segmentationNode, sourceVolumeNode) -> None:
        """Select Segment Editor with the result's segmentation and its input as source volume."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        editor.setSourceVolumeNode(sourceVolumeNode)


def pythonSlicerExecutable() -> str:
    """Slicer's own Python launcher for the child process (same packages, same torch); else this Python."""
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidate = pathlib.Path(sys.executable).with_name(name)
    return str(candidate) if candidate.is_file() else sys.executable


class LayerEnsemblesSegmentationTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test): the panel binds, and a real segmentation runs through it."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PanelBinds()
        if not runtime.torch_available():
            self.delayDisplay(
                "PyTorch is not installed: the segmentation test is skipped (install it with the "
                "PyTorch Utils module)."
            )
            logging.warning("LayerEnsembles self-test: segmentation skipped, PyTorch is not installed")
            return
        self.setUp()
        self.test_SegmentThroughThePanel()

    def _widget(self):
        slicer.util.selectModule("LayerEnsemblesSegmentation")
        return slicer.modules.layerensemblessegmentation.widgetRepresentation().self()

    def test_PanelBinds(self):
        """connectGui succeeds: parameters reach the widgets and back (defect 1 broke exactly this)."""
        self.delayDisplay("Binding the panel")
        widget = self._widget()
        self.assertIsNotNone(widget._parameterNodeGuiTag)
        self.assertGreaterEqual(widget.ui.deviceComboBox.count, 2)
        widget._parameterNode.aulaThreshold = 0.42
        self.assertAlmostEqual(widget.ui.thresholdSliderWidget.value, 0.42)
        widget._parameterNode.keptHeads = FloatRange(2, 5)
        self.assertEqual(
            (widget.ui.keptHeadsRangeWidget.minimumValue, widget.ui.keptHeadsRangeWidget.maximumValue), (2, 5)
        )
        self.delayDisplay("Test passed")

    def _syntheticVolume(self):
        import numpy as np

        z, y, x = np.mgrid[:24, :28, :32]
        array = (100.0 * np.exp(-((z - 12) ** 2 + (y - 14) ** 2 + (x - 16) ** 2) / 40.0)).astype(np.float32)
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
        slicer.util.updateVolumeFromArray(volume, array)
        volume.CreateDefaultDisplayNodes()
        return volume

    def test_SegmentThroughThePanel(self):
        """Segment with a tiny exported model in the child process, by clicking Segment; then recombine."""
        self.delayDisplay("Segmenting through the panel")
        import torch
        from LayerEnsemblesLib.contract import ModelMetadata, default_classes, export_model
        from LayerEnsemblesLib.networks import LayerEnsembleUNet

        torch.manual_seed(0)
        network = LayerEnsembleUNet(3, 1, 3, depth=3, base_channels=4)
        metadata = ModelMetadata(
            spatial_dims=3,
            in_channels=1,
            classes=default_classes(["background", "a", "b"]),
            head_names=network.head_names,
            head_strides=network.head_strides,
            patch_size=[32, 32, 32],
            size_divisor=[network.size_divisor] * 3,
            target_spacing=[1.0, 1.0, 1.0],
            name="reload-and-test model",
        )
        modelPath = export_model(network, metadata, os.path.join(tempfile.mkdtemp(), "tiny.pt"))
        widget = self._widget()
        volume = self._syntheticVolume()
        widget._parameterNode.inputVolume = volume
        widget._parameterNode.modelPath = pathlib.Path(modelPath)
        self.assertTrue(widget.ui.applyButton.enabled)
        widget.ui.applyButton.click()
        for _ in range(6000):  # at most ten minutes
            slicer.app.processEvents()
            if not widget.controller.running:
                break
            qt.QThread.msleep(100)
        state = widget.controller.state
        self.assertEqual(state.last_error, "")
        case = state.current_case
        self.assertIsNotNone(case)
        self.assertIn("AULA", widget.ui.aulaBadgeLabel.text)
        segmentation = slicer.mrmlScene.GetNodeByID(case.segmentation_id)
        self.assertIn(segmentation.GetAttribute("LayerEnsembles.Decision"), ("accepted", "flagged"))
        widget.controller.set_kept_heads(2, metadata.num_heads)
        self.assertEqual(segmentation.GetAttribute("LayerEnsembles.KeptHeads"), f"1:{metadata.num_heads}")
        widget.ui.acceptButton.click()
        self.assertEqual(segmentation.GetAttribute("LayerEnsembles.ReviewerDecision"), "accepted")
        self.delayDisplay("Test passed")
