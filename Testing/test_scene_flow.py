"""The whole scene-logic flow on slicer-core, with a real exported model and a real predictor.

Covers what the reviewer sees: nodes and their geometry, segments and statuses, the heatmap's colour table,
threshold and slice-view layers, the agreement plot, uncertain regions, recombination in place, protection
of user edits, cancellation, and the decision surviving a save and reload of the scene.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from LayerEnsemblesLib.errors import Cancelled
from LayerEnsemblesLib.scene import (
    ReviewSession,
    apply_prediction,
    content_hash,
    create_scene,
    is_user_edited,
    read_decision,
    recombine_result,
    segment_array,
    segment_status,
    segment_tag,
)
from LayerEnsemblesLib.scene.colors import COLOR_TABLE_ATTRIBUTE
from LayerEnsemblesLib.scene.geometry import add_volume_from_image, oriented_image_from_array
from scene_support import blob_image, predictor  # noqa: F401 - predictor is a fixture

SegmentsLogic = slicer.vtkSlicerSegmentationsModuleLogic


@pytest.fixture(scope="module")
def image():
    return blob_image()


@pytest.fixture(scope="module")
def prediction(predictor, image):  # noqa: F811
    return predictor.predict(image, maps=("agreement",))


@pytest.fixture
def case(predictor, prediction, image):  # noqa: F811
    """A fresh scene with the input in a study folder, and the prediction applied to it."""
    context = create_scene()
    volume = add_volume_from_image(context.scene, image, "patient volume")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(context.scene)
    subject = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    study = hierarchy.CreateStudyItem(subject, "study")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(volume), study)
    result = apply_prediction(context, volume, prediction, predictor.metadata, image)
    return context, volume, result


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_nodes_have_the_input_geometry_and_sit_next_to_it(case, predictor):  # noqa: F811
    context, volume, result = case
    segmentation = context.node(result.segmentation_id)
    heatmap = context.node(result.heatmap_ids["agreement"])
    assert heatmap.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(ijk_to_ras(heatmap), ijk_to_ras(volume), atol=1e-9)
    geometry = slicer.vtkOrientedImageData()
    converter = slicer.vtkSegmentationConverter
    geometry_string = segmentation.GetSegmentation().GetConversionParameter(
        converter.GetReferenceImageGeometryParameterName())
    converter.DeserializeImageGeometry(geometry_string, geometry)
    assert geometry.GetDimensions() == volume.GetImageData().GetDimensions()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(context.scene)
    study = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(volume))
    for node in (segmentation, heatmap, context.node(result.table_id), context.node(result.chart_id)):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study, node.GetName()


def test_one_segment_per_class_with_names_colours_and_voxels(case, predictor, prediction):  # noqa: F811
    context, _, result = case
    segmentation = context.node(result.segmentation_id).GetSegmentation()
    foreground = [c for c in predictor.metadata.classes if c.value != 0]
    assert segmentation.GetNumberOfSegments() == len(foreground)
    labels = sitk.GetArrayFromImage(prediction.segmentation)
    for info in foreground:
        segment = segmentation.GetSegment(f"class_{info.value}")
        assert segment.GetName() == info.name
        assert segment.GetColor() == pytest.approx([c / 255 for c in info.color])
        np.testing.assert_array_equal(segment_array(context.node(result.segmentation_id), info.value),
                                      labels == info.value)


def test_decision_attributes_and_segment_statuses(case, predictor, prediction, image):  # noqa: F811
    context, _, result = case
    segmentation = context.node(result.segmentation_id)
    decision = read_decision(segmentation)
    assert float(decision["AULA"]) == pytest.approx(prediction.aula.raw["union"], rel=1e-5)
    assert float(decision["AULANormalized"]) == pytest.approx(prediction.score, rel=1e-5)
    assert decision["ModelName"] == predictor.metadata.name == "tiny-test-model"
    for name, value in prediction.aula.normalized.items():
        assert float(decision[f"AULANormalized.{name}"]) == pytest.approx(value, rel=1e-5)

    recombine_result(context, result, image, threshold=0.0)
    assert read_decision(segmentation)["Decision"] == "accepted"
    assert read_decision(segmentation)["Threshold"] == "0"
    foreground = [c.value for c in predictor.metadata.classes if c.value]
    statuses = {segment_status(segmentation, f"class_{value}") for value in foreground}
    assert statuses == {"completed"}
    segment = segmentation.GetSegmentation().GetSegment("class_1")
    assert segment_tag(segment, SegmentsLogic.GetStatusTagName()) == "completed"

    recombine_result(context, result, image, threshold=1.0)
    assert read_decision(segmentation)["Decision"] == "flagged"
    assert segment_tag(segment, "Segmentation.Status") == "flagged"
    assert segment_tag(segment, "LayerEnsembles.Decision") == "flagged"


def test_heatmap_display_colour_table_and_slice_views(case, prediction):
    context, volume, result = case
    heatmap = context.node(result.heatmap_ids["agreement"])
    display = heatmap.GetDisplayNode()
    table = context.node(display.GetColorNodeID())
    assert table.GetAttribute(COLOR_TABLE_ATTRIBUTE) == "heatmap"
    assert table.GetType() == slicer.vtkMRMLColorTableNode.User
    assert table.GetNumberOfColors() == 256
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assert not display.GetAutoWindowLevel()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.2)
    assert context.colors_logic.GetColorLegendDisplayNode(heatmap) is not None
    expected = 1.0 - sitk.GetArrayFromImage(prediction.maps["agreement"])
    np.testing.assert_allclose(slicer.util.arrayFromVolume(heatmap), expected, atol=1e-6)
    composites = context.nodes_by_class("vtkMRMLSliceCompositeNode")
    assert len(composites) == 3
    for composite in composites:
        assert composite.GetForegroundVolumeID() == heatmap.GetID()
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)


def test_agreement_plot_is_populated(case, prediction):
    context, _, result = case
    table = context.node(result.table_id)
    aula = prediction.aula
    assert table.GetNumberOfRows() == len(aula.pair_labels) == 5  # six heads kept by default
    assert [table.GetTable().GetValueByName(r, "heads").ToString() for r in range(5)] == aula.pair_labels
    for name, curve in aula.curves.items():
        column = [table.GetTable().GetValueByName(r, name).ToDouble() for r in range(5)]
        np.testing.assert_allclose(column, curve)
    chart = context.node(result.chart_id)
    assert chart.GetNumberOfPlotSeriesNodes() == len(aula.curves)
    assert f"AULA {aula.raw['union']:.2f}" in chart.GetTitle()
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert {s.GetYColumnName() for s in series} == set(aula.curves)


def test_regions_end_to_end_match_the_heatmap(case):
    context, _, result = case
    shown = slicer.util.arrayFromVolume(context.node(result.heatmap_ids["agreement"]))
    assert result.regions, "the untrained tiny model's heads disagree somewhere"
    assert sum(r.voxels for r in result.regions) <= int((shown >= 0.2).sum())
    assert [r.score for r in result.regions] == sorted((r.score for r in result.regions), reverse=True)
    x, y, z, sx, sy, sz = result.regions[0].bounding_box
    assert shown[z:z + sz, y:y + sy, x:x + sx].max() >= 0.2


def test_recombination_updates_everything_in_place(case, predictor, image):  # noqa: F811
    context, _, result = case
    ids = (result.segmentation_id, result.heatmap_ids["agreement"], result.table_id, result.chart_id)
    count = context.scene.GetNumberOfNodes()
    recombine_result(context, result, image, head_range=(2, 6))
    assert (result.segmentation_id, result.heatmap_ids["agreement"], result.table_id, result.chart_id) == ids
    assert context.scene.GetNumberOfNodes() == count
    segmentation = context.node(result.segmentation_id)
    assert read_decision(segmentation)["KeptHeads"] == "2:6"
    assert context.node(result.table_id).GetNumberOfRows() == 3
    labels = sitk.GetArrayFromImage(result.prediction.segmentation)
    np.testing.assert_array_equal(segment_array(segmentation, 1), labels == 1)
    heatmap = slicer.util.arrayFromVolume(context.node(result.heatmap_ids["agreement"]))
    agreement = sitk.GetArrayFromImage(result.prediction.maps["agreement"])
    np.testing.assert_allclose(heatmap, 1.0 - agreement, atol=1e-6)
    assert not is_user_edited(segmentation)

    # asking for another heatmap adds that one node and shows it
    recombine_result(context, result, image, heatmap_kind="entropy")
    entropy = context.node(result.heatmap_ids["entropy"])
    assert entropy is not None and result.heatmap_ids["agreement"] == ids[1]
    assert slicer.util.arrayFromVolume(entropy).max() <= 1.0


def test_an_edited_segmentation_is_kept_and_a_new_one_is_made(case, image):
    context, _, result = case
    edited = context.node(result.segmentation_id)
    mask = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    mask[5:9, 5:9, 5:9] = 1  # the user paints a cube as structure 1
    SegmentsLogic.SetBinaryLabelmapToSegment(oriented_image_from_array(mask, image), edited, "class_1")
    assert is_user_edited(edited)
    edited_hash = content_hash(edited)

    recombine_result(context, result, image, head_range=(1, 6))
    assert result.segmentation_id != edited.GetID()
    assert content_hash(edited) == edited_hash, "the user's edit must not be touched"
    np.testing.assert_array_equal(segment_array(edited, 1), mask.astype(bool))
    assert edited.GetAttribute("LayerEnsembles.UserEdited") == "true"
    fresh = context.node(result.segmentation_id)
    assert read_decision(fresh)["KeptHeads"] == "1:6"
    assert not is_user_edited(fresh)


def test_a_new_threshold_keeps_an_edited_segmentation_in_place(case, image):
    """A threshold changes the decision, never a voxel: an edited case stays on its node (a new node with
    the model's voxels left a Segment Editor editing a node the case no longer pointed to; issue 11)."""
    context, _, result = case
    edited = context.node(result.segmentation_id)
    mask = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    mask[5:9, 5:9, 5:9] = 1
    SegmentsLogic.SetBinaryLabelmapToSegment(oriented_image_from_array(mask, image), edited, "class_1")
    edited_hash = content_hash(edited)
    count = context.scene.GetNumberOfNodes()

    recombine_result(context, result, image, threshold=0.0)
    assert result.segmentation_id == edited.GetID() and context.scene.GetNumberOfNodes() == count
    assert content_hash(edited) == edited_hash
    assert read_decision(edited)["Threshold"] == "0" and read_decision(edited)["Decision"] == "accepted"
    recombine_result(context, result, image, threshold=1.0)
    assert result.segmentation_id == edited.GetID() and read_decision(edited)["Decision"] == "flagged"
    np.testing.assert_array_equal(segment_array(edited, 1), mask.astype(bool))


def test_cancel_leaves_the_scene_exactly_as_it_was(tiny_model_file, image):
    context = create_scene()
    volume = add_volume_from_image(context.scene, image, "input")
    session = ReviewSession(context)
    before = [context.scene.GetNthNode(i).GetID() for i in range(context.scene.GetNumberOfNodes())]
    with pytest.raises(Cancelled):
        session.process(volume, tiny_model_file, device="cpu", cancel=lambda: True)
    after = [context.scene.GetNthNode(i).GetID() for i in range(context.scene.GetNumberOfNodes())]
    assert after == before
    assert session.current is None


def test_roi_crop_results_keep_the_input_geometry(tiny_model_file, image):
    context = create_scene()
    volume = add_volume_from_image(context.scene, image, "input")
    roi = context.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    centre = image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()])
    roi.SetCenter(-centre[0], -centre[1], centre[2])
    roi.SetSize(12.0, 12.0, 12.0)
    result = ReviewSession(context).process(volume, tiny_model_file, roi_node=roi, device="cpu")
    heatmap = context.node(result.heatmap_ids["agreement"])
    np.testing.assert_allclose(ijk_to_ras(heatmap), ijk_to_ras(volume), atol=1e-9)
    shown = slicer.util.arrayFromVolume(heatmap)
    assert shown.shape == slicer.util.arrayFromVolume(volume).shape
    x, y, z = result.crop_index
    assert shown[:z].max() == 0.0 and shown[:, :y].max() == 0.0  # outside the ROI: agreement 1, shown 0


@pytest.mark.parametrize("bundle", [False, True], ids=["folder", "mrb"])
def test_saving_and_reloading_keeps_the_decision(case, image, tmp_path, bundle):
    context, _, result = case
    recombine_result(context, result, image, threshold=1.0)  # flagged, whatever the score
    segmentation = context.node(result.segmentation_id)
    expected = read_decision(segmentation)
    folder = tmp_path / "saved"
    folder.mkdir()
    assert context.app_logic.SaveSceneToSlicerDataBundleDirectory(str(folder), None)
    reloaded = create_scene(slice_views=False)
    if bundle:
        archive = tmp_path / "review.mrb"
        assert context.app_logic.Zip(str(archive), str(folder))
        (tmp_path / "unpacked").mkdir()
        assert reloaded.app_logic.OpenSlicerDataBundle(str(archive), str(tmp_path / "unpacked"))
    else:
        reloaded.scene.SetURL(str(next(folder.glob("*.mrml"))))
        assert reloaded.scene.Import()
    loaded = reloaded.scene.GetFirstNodeByName(segmentation.GetName())
    assert read_decision(loaded) == expected
    assert expected["Decision"] == "flagged"
    assert segment_status(loaded, "class_1") == "flagged"
    assert segment_tag(loaded.GetSegmentation().GetSegment("class_1"), "LayerEnsembles.Decision") == "flagged"
    assert not is_user_edited(loaded), "the content hash must survive storage"
    heatmap = loaded.GetNodeReference("LayerEnsembles.heatmap.agreement")
    table = heatmap.GetDisplayNode().GetColorNode()
    assert table.GetAttribute(COLOR_TABLE_ATTRIBUTE) == "heatmap" and table.GetNumberOfColors() == 256


def test_the_plot_title_names_the_score_the_decision_is_made_on(tmp_path):
    from conftest import make_tiny_model
    from engine_models import sphere_image
    from LayerEnsemblesLib.decision_scores import label
    from LayerEnsemblesLib.inference import Predictor
    from LayerEnsemblesLib.scene.plots import chart_title

    model = make_tiny_model(tmp_path / "mean.pt", decision_score="aula_norm_class_mean")
    image, _ = sphere_image(size=(32, 32, 32))
    prediction = Predictor(model, device="cpu").predict(image)
    title = chart_title(prediction)
    assert prediction.score_name == "aula_norm_class_mean"
    assert f"{label('aula_norm_class_mean')} {prediction.score:.3f}" in title
    assert f"AULA {prediction.aula.raw['union']:.2f} (union)" in title
