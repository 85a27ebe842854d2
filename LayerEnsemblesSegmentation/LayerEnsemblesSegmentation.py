"""LayerEnsembles Segmentation: one-click segmentation with a layer-agreement heatmap and an AULA decision.

The module is the thin Qt layer of three (see README): the engine (``LayerEnsemblesLib``) segments and
scores, the scene logic (``LayerEnsemblesLib.scene``) turns results into MRML nodes, and this file binds
the GUI to a parameter node and calls the logic. torch comes from the PyTorch extension and is imported
only when a model is used, never when Slicer loads the module.
"""

import enum
import logging
import os
import pathlib
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from LayerEnsemblesLib import scene as sceneLogic
from LayerEnsemblesLib.errors import Cancelled, InputError
from LayerEnsemblesLib.scene import runtime
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import FloatRange, RangeBounds, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = pathlib.Path(__file__).resolve().parent
DEMO_MODEL_PATH = MODULE_DIR / "Resources" / "Models" / "hippocampus_le3d.pt"
TORCH_REQUIREMENT = ">=2.1"
MAX_HEADS = 64  # bound of the kept-heads range parameter; the widget narrows it to the model's head count
POLL_INTERVAL_MS = 100
RECOMBINE_DELAY_MS = 250  # let a dragged slider settle before recombining


class HeatmapKind(enum.Enum):
    agreement = "agreement"
    entropy = "entropy"
    mutual_information = "mutual_information"
    variance = "variance"

    def label(self):
        return {"agreement": "Layer disagreement (1 - agreement)", "entropy": "Entropy",
                "mutual_information": "Mutual information", "variance": "Variance across heads"}[self.value]


#
# LayerEnsemblesSegmentation
#


class LayerEnsemblesSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LayerEnsembles Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []  # PyTorchUtils is used when present; it is checked on first Apply
        self.parent.contributors = ["LayerEnsembles contributors"]
        self.parent.helpText = """
Segments a volume with a Layer Ensembles model in a single forward pass and shows how much the model's
heads agree: a heatmap of layer disagreement over the image, the agreement curve between adjacent heads,
and the AULA score (area under that curve) with an accept/flag decision. Flagged cases and uncertain
regions point the reviewer to where a correction is most likely needed.
See the <a href="https://github.com/LayerEnsembles/SlicerLayerEnsembles">documentation</a>.
"""
        self.parent.acknowledgementText = """
Method: K. Kushibar et al., "Layer Ensembles: A Single-Pass Uncertainty Estimation in Deep Learning for
Segmentation", MICCAI 2022. This implementation is independent of the authors' code.
"""


#
# LayerEnsemblesSegmentationParameterNode
#


@parameterNodeWrapper
class LayerEnsemblesSegmentationParameterNode:
    """
    inputVolume - the volume to segment.
    roi - optional box to segment inside of.
    modelPath - the LayerEnsembles model file.
    device - "auto", "cpu" or "cuda:N" (bound by hand: the choices depend on the machine).
    aulaThreshold - normalised AULA at or above which a result is accepted.
    keptHeads - first and last kept head, 1-based, shallow to deep.
    heatmapKind - which voxel uncertainty is overlaid.
    heatmapOpacity - foreground opacity of the heatmap in the slice views.
    worklistFolder - folder whose image files the worklist segments.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    modelPath: pathlib.Path = DEMO_MODEL_PATH if DEMO_MODEL_PATH.is_file() else pathlib.Path()
    device: str = "auto"
    aulaThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.9
    keptHeads: Annotated[FloatRange, RangeBounds(1, MAX_HEADS)] = FloatRange(1, MAX_HEADS)
    heatmapKind: HeatmapKind = HeatmapKind.agreement
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    worklistFolder: pathlib.Path = pathlib.Path()


#
# LayerEnsemblesSegmentationWidget
#


class LayerEnsemblesSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._batch = None
        self._appliedSettings = None
        self._loadedModelPath = None
        self._headCount = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LayerEnsemblesSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LayerEnsemblesSegmentationLogic()

        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setEnabled(False)
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.onPollJob)
        self._recombineTimer = qt.QTimer()
        self._recombineTimer.setSingleShot(True)
        self._recombineTimer.setInterval(RECOMBINE_DELAY_MS)
        self._recombineTimer.timeout.connect(self.onRecombine)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.nextRegionButton.connect("clicked(bool)", self.onNextRegionButton)
        self.ui.correctButton.connect("clicked(bool)", self.onCorrectButton)
        self.ui.segmentVolumesButton.connect("clicked(bool)", self.onSegmentVolumesButton)
        self.ui.segmentFolderButton.connect("clicked(bool)", self.onSegmentFolderButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.worklistTableView.connect("clicked(QModelIndex)", self.onWorklistRowClicked)

        self.initializeParameterNode()
        self.fillDeviceComboBox()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()
        self.logic.session.forget()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: LayerEnsemblesSegmentationParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a SlicerParameterName dynamic property in the .ui are bound to the fields here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._applyHeadCount()  # connecting resets the range widget to the parameter's static bounds
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    # -- parameter changes -----------------------------------------------------------------------------

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        self._updateModelSummary()
        self._updateApplyButton()
        settings = self._reviewSettings()
        applied = self._appliedSettings
        if applied is not None and settings != applied and self.logic.session.current:
            if settings["opacity"] != self._appliedSettings["opacity"]:
                self.logic.session.set_heatmap_opacity(settings["opacity"])
                self._appliedSettings = dict(self._appliedSettings, opacity=settings["opacity"])
            if settings != self._appliedSettings:
                self._recombineTimer.start()  # restarted on every change: recombine once the slider settles

    def _reviewSettings(self) -> dict:
        parameters = self._parameterNode
        return {
            "threshold": round(float(parameters.aulaThreshold), 4),
            "heads": (int(round(parameters.keptHeads.minimum)), int(round(parameters.keptHeads.maximum))),
            "heatmap": parameters.heatmapKind.value,
            "opacity": round(float(parameters.heatmapOpacity), 3),
        }

    def _updateApplyButton(self) -> None:
        running = self._job is not None
        parameters = self._parameterNode
        ready = bool(parameters.inputVolume) and str(parameters.modelPath) not in ("", ".")
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = ("Segment the input volume and score it" if ready
                                       else "Select an input volume and a model file")
        self.ui.segmentVolumesButton.enabled = not running
        self.ui.segmentFolderButton.enabled = not running

    def _updateModelSummary(self) -> None:
        modelPath = str(self._parameterNode.modelPath)
        if modelPath == self._loadedModelPath:
            return
        self._loadedModelPath = modelPath
        summary = runtime.model_summary(modelPath)
        self.ui.modelSummaryText.plainText = summary["text"]
        self._headCount = summary.get("headCount")
        if self._headCount:
            # A new model: its heads and its calibrated threshold become the defaults.
            self._applyHeadCount()
            wasModifying = self._parameterNode.StartModify()
            self._parameterNode.keptHeads = FloatRange(summary["skipHeads"] + 1, self._headCount)
            self._parameterNode.aulaThreshold = summary["threshold"]
            self._parameterNode.EndModify(wasModifying)

    def _applyHeadCount(self) -> None:
        if self._headCount:
            self.ui.keptHeadsRangeWidget.setRange(1, self._headCount)

    # -- devices ---------------------------------------------------------------------------------------

    def fillDeviceComboBox(self) -> None:
        self.ui.deviceComboBox.blockSignals(True)
        self.ui.deviceComboBox.clear()
        for label, spec in runtime.device_choices():
            self.ui.deviceComboBox.addItem(label, spec)
        wanted = self._parameterNode.device if self._parameterNode else "auto"
        index = max(self.ui.deviceComboBox.findData(wanted), 0)
        self.ui.deviceComboBox.setCurrentIndex(index)
        self.ui.deviceComboBox.blockSignals(False)
        self.ui.deviceInfoLabel.text = runtime.torch_summary()

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    # -- running ---------------------------------------------------------------------------------------

    def _ensureTorch(self) -> bool:
        with slicer.util.tryWithErrorDisplay("PyTorch is needed to run the model.", waitCursor=True):
            if not self.logic.ensureTorch(askConfirmation=True):
                self.ui.statusLabel.text = "PyTorch was not installed; nothing was run."
                return False
        self._loadedModelPath = None  # the summary can now be read with torch
        self._updateModelSummary()
        self.fillDeviceComboBox()
        return True

    def onApplyButton(self) -> None:
        if not self._ensureTorch():
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Segmentation could not start.", waitCursor=True):
            cases = [self.logic.session.case_from_volume(parameters.inputVolume, parameters.roi)]
            self._startJob(cases, batch=False)

    def onSegmentVolumesButton(self) -> None:
        if not self._ensureTorch():
            return
        volumes = list(self.ui.worklistVolumesSelector.checkedNodes())
        with slicer.util.tryWithErrorDisplay("The worklist could not start.", waitCursor=True):
            if not volumes:
                raise InputError("worklist: check at least one volume in the Volumes list")
            roi = self._parameterNode.roi
            cases = [self.logic.session.case_from_volume(volume, roi) for volume in volumes]
            self._startJob(cases, batch=True)

    def onSegmentFolderButton(self) -> None:
        if not self._ensureTorch():
            return
        with slicer.util.tryWithErrorDisplay("The worklist could not start.", waitCursor=True):
            parameters = self._parameterNode
            cases = self.logic.session.cases_from_folder(parameters.worklistFolder, parameters.roi)
            self._startJob(cases, batch=True)

    def _startJob(self, cases, batch: bool) -> None:
        parameters = self._parameterNode
        self._job = self.logic.session.start_job(cases, parameters.modelPath, parameters.device,
                                                 self._headRange(), parameters.aulaThreshold,
                                                 parameters.heatmapKind.value)
        self._batch = self.logic.session.new_batch() if batch else None
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(True)
        self.ui.cancelButton.setEnabled(True)
        self.ui.statusLabel.text = "Starting..."
        self._updateApplyButton()
        self._pollTimer.start()

    def _headRange(self):
        heads = self._parameterNode.keptHeads
        return (int(round(heads.minimum)) - 1, int(round(heads.maximum)))

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = "Cancelling..."

    def onPollJob(self) -> None:
        """Main-thread side of the worker: show progress, commit finished cases, report the end."""
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        self.ui.progressBar.value = int(100 * job.progress)
        self.ui.statusLabel.text = job.message
        if not job.cancelled:  # after a cancel, cases still queued are dropped: nothing more is written
            for finished in job.finished():
                try:
                    message = f"Writing {finished.case.name} into the scene failed."
                    with slicer.util.tryWithErrorDisplay(message):
                        opacity = self._parameterNode.heatmapOpacity
                        self._showResult(self.logic.session.commit(finished, self._batch, opacity))
                except Exception:
                    logging.exception("LayerEnsembles: could not write %s", finished.case.name)
        if not job.done:
            return
        self._pollTimer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setEnabled(False)
        self._updateApplyButton()
        if job.cancelled:
            if self._batch is not None:
                self._batch.rollback()
            self.ui.statusLabel.text = "Cancelled: the scene is unchanged."
        else:
            if self._batch is not None and self._batch.results:  # cases finished before an error are kept
                self._batch.finish()
                self.ui.worklistTableView.setMRMLTableNode(self._batch.worklist.table_node)
                self.ui.worklistCollapsibleButton.collapsed = False
                first = self.logic.session.show_worklist_row(0, self._parameterNode.heatmapOpacity)
                if first is not None:
                    self._showResult(first)
            if job.error is not None:
                self.ui.statusLabel.text = "Failed: " + runtime.explain_error(job.error)
                try:
                    with slicer.util.tryWithErrorDisplay("Segmentation failed."):
                        raise RuntimeError(runtime.explain_error(job.error)) from job.error
                except RuntimeError:
                    logging.exception("LayerEnsembles segmentation failed")
            else:
                current = self.logic.session.current
                warnings = current.prediction.warnings if current is not None else []
                self.ui.statusLabel.text = "Done." + "".join(f"\n{w}" for w in warnings)
        self._batch = None

    # -- review ----------------------------------------------------------------------------------------

    def _showResult(self, result) -> None:
        prediction = result.prediction
        accepted = prediction.decision == "accepted"
        colour = "#2e7d32" if accepted else "#c62828"
        self.ui.aulaBadgeLabel.text = f"AULA {prediction.score:.3f}  {'ACCEPTED' if accepted else 'FLAGGED'}"
        first, stop = prediction.head_range
        rawAula = prediction.aula.raw.get("union", 0.0)
        self.ui.aulaBadgeLabel.toolTip = (f"{prediction.reason}\n"
                                          f"raw AULA {rawAula:.2f} over heads {first + 1}-{stop}")
        self.ui.aulaBadgeLabel.styleSheet = ("QLabel { font-size: 18pt; font-weight: bold; padding: 8px; "
                                             "border-radius: 6px; color: white; "
                                             f"background-color: {colour}; }}")
        self.ui.agreementPlotWidget.setMRMLPlotViewNode(self.logic.plotViewNode(result))
        self.ui.nextRegionButton.enabled = bool(result.regions)
        self.ui.correctButton.enabled = True
        self.ui.regionLabel.text = f"{len(result.regions)} uncertain region(s) found."
        self._appliedSettings = self._reviewSettings()

    def onRecombine(self) -> None:
        result = self.logic.session.current
        if result is None or self._job is not None:
            return
        settings = self._reviewSettings()
        if self._headRange()[1] > result.metadata.num_heads:
            return  # the range belongs to another model than the one that produced this result
        with slicer.util.tryWithErrorDisplay("Recombining the heads failed.", waitCursor=True):
            previousSegmentationId = result.segmentation_id
            self.logic.session.recombine(result, self._headRange(), settings["threshold"],
                                         settings["heatmap"], settings["opacity"])
            self._showResult(result)
            if result.segmentation_id != previousSegmentationId:
                self.ui.statusLabel.text = ("The previous segmentation was edited, so it was kept; the new "
                                            "result is in a new segmentation node.")

    def onNextRegionButton(self) -> None:
        region = self.logic.session.next_region()
        if region is None:
            self.ui.regionLabel.text = "No uncertain region."
            return
        total = len(self.logic.session.current.regions)
        self.ui.regionLabel.text = (f"Region {region.rank}/{total}: {region.volume_mm3:.0f} mm³, "
                                    f"mean disagreement {region.mean_disagreement:.2f}")

    def onCorrectButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not open Segment Editor."):
            self.logic.openInSegmentEditor(self.logic.session.current)

    def onWorklistRowClicked(self, index) -> None:
        with slicer.util.tryWithErrorDisplay("Could not show this case."):
            result = self.logic.session.show_worklist_row(index.row(), self._parameterNode.heatmapOpacity)
            if result is not None:
                self._showResult(result)


#
# LayerEnsemblesSegmentationLogic
#


class LayerEnsemblesSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer-specific steps; the review flow itself is ``LayerEnsemblesLib.scene.ReviewSession``.

    Usable from the Python console: ``logic.session.process(volumeNode, modelPath)`` segments a volume.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.session = sceneLogic.ReviewSession(sceneLogic.SceneContext.from_slicer(slicer))
        self._plotViewNodeId = None

    def getParameterNode(self):
        return LayerEnsemblesSegmentationParameterNode(super().getParameterNode())

    def ensureTorch(self, askConfirmation: bool = True) -> bool:
        """Install PyTorch through the PyTorch extension if it is missing (asks first, shows progress)."""
        if runtime.torch_available():
            return True
        try:
            import PyTorchUtils
        except ImportError:
            raise InputError("PyTorch: not installed, and the PyTorch extension is missing; install "
                             "'PyTorch' from the Extensions Manager, restart Slicer and try again") from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=askConfirmation,
                                            torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                return False
        return runtime.torch_available()

    def plotViewNode(self, result):
        """A plot view node for the module panel's plot widget, showing this result's agreement chart."""
        viewNode = slicer.mrmlScene.GetNodeByID(self._plotViewNodeId) if self._plotViewNodeId else None
        if viewNode is None:
            viewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "LayerEnsembles plot view")
            viewNode.SetLayoutLabel("LE")
            self._plotViewNodeId = viewNode.GetID()
        viewNode.SetPlotChartNodeID(result.chart_id)
        return viewNode

    def openInSegmentEditor(self, result) -> None:
        """Select Segment Editor with the result's segmentation and its input as source volume."""
        if result is None:
            raise InputError("no result to correct yet: run a segmentation first")
        segmentationNode = slicer.mrmlScene.GetNodeByID(result.segmentation_id)
        inputNode = slicer.mrmlScene.GetNodeByID(result.input_id)
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        editor.setSourceVolumeNode(inputNode)


#
# LayerEnsemblesSegmentationTest
#


class LayerEnsemblesSegmentationTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test): a synthetic volume, a tiny exported model, the nodes created."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSyntheticVolume()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def _tinyModel(self):
        import torch
        from LayerEnsemblesLib.contract import ModelMetadata, default_classes, export_model
        from LayerEnsemblesLib.networks import LayerEnsembleUNet

        torch.manual_seed(0)
        network = LayerEnsembleUNet(3, 1, 3, depth=3, base_channels=4)
        classes = default_classes(["background", "anterior", "posterior"])
        metadata = ModelMetadata(spatial_dims=3, in_channels=1, classes=classes,
                                 head_names=network.head_names, head_strides=network.head_strides,
                                 patch_size=[16, 16, 16], size_divisor=[network.size_divisor] * 3,
                                 target_spacing=[1.0, 1.0, 1.0], name="reload-and-test model")
        path = os.path.join(tempfile.mkdtemp(), "tiny.pt")
        export_model(network, metadata, path)
        return path, metadata

    def _syntheticVolume(self):
        import numpy as np

        z, y, x = np.mgrid[:24, :28, :32]
        array = (100.0 * np.exp(-((z - 12) ** 2 + (y - 14) ** 2 + (x - 16) ** 2) / 40.0)).astype(np.float32)
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
        slicer.util.updateVolumeFromArray(volume, array)
        volume.SetSpacing(1.0, 1.0, 1.0)
        volume.CreateDefaultDisplayNodes()
        return volume

    def test_SegmentSyntheticVolume(self):
        self.delayDisplay("Segmenting a synthetic volume with a tiny model")
        if not runtime.torch_available():
            self.skipTest("PyTorch is not installed (install it with the PyTorch Utils module)")
        logic = LayerEnsemblesSegmentationLogic()
        modelPath, metadata = self._tinyModel()
        volume = self._syntheticVolume()
        result = logic.session.process(volume, modelPath, device="cpu")

        segmentation = slicer.mrmlScene.GetNodeByID(result.segmentation_id)
        self.assertIsNotNone(segmentation)
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, ["anterior", "posterior"])
        decision = segmentation.GetAttribute("LayerEnsembles.Decision")
        self.assertIn(decision, ("accepted", "flagged"))
        expectedStatus = "completed" if decision == "accepted" else "flagged"
        segment = segmentation.GetSegmentation().GetSegment("class_1")
        status = sceneLogic.segment_tag(segment, "Segmentation.Status")
        self.assertIn(status, ("completed", "flagged"))
        if "anterior" not in result.prediction.aula.empty_classes:
            self.assertEqual(status, expectedStatus)
        heatmap = slicer.mrmlScene.GetNodeByID(result.heatmap_ids["agreement"])
        self.assertEqual(heatmap.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        compositeNode = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
        self.assertEqual(compositeNode.GetForegroundVolumeID(), heatmap.GetID())
        chart = slicer.mrmlScene.GetNodeByID(result.chart_id)
        self.assertIn("AULA", chart.GetTitle())
        self.assertEqual(slicer.mrmlScene.GetNodeByID(result.table_id).GetNumberOfRows(),
                         len(result.prediction.aula.pair_labels))

        # Recombination rewrites the same nodes.
        logic.session.recombine(result, head_range=(1, metadata.num_heads), threshold=0.0)
        self.assertEqual(result.segmentation_id, segmentation.GetID())
        self.assertEqual(segmentation.GetAttribute("LayerEnsembles.KeptHeads"), f"1:{metadata.num_heads}")
        self.delayDisplay("Test passed")

    def test_CancelLeavesSceneUnchanged(self):
        self.delayDisplay("Cancelling a run")
        if not runtime.torch_available():
            self.skipTest("PyTorch is not installed (install it with the PyTorch Utils module)")
        logic = LayerEnsemblesSegmentationLogic()
        modelPath, _ = self._tinyModel()
        volume = self._syntheticVolume()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(Cancelled):
            logic.session.process(volume, modelPath, device="cpu", cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")
