"""The worklist: many cases segmented, ranked by AULA (lowest first), rows that show their case, rollback."""

from __future__ import annotations

import pytest
import SimpleITK as sitk
from LayerEnsemblesLib.errors import Cancelled
from LayerEnsemblesLib.scene import (
    Worklist,
    add_volume_from_image,
    case_input_from_volume,
    case_inputs_from_folder,
    create_scene,
    segment_cases,
)
from LayerEnsemblesLib.scene.worklist import CaseInput
from scene_support import blob_image, predictor  # noqa: F401 - predictor is a fixture


def node_ids(context) -> list[str]:
    return [context.scene.GetNthNode(i).GetID() for i in range(context.scene.GetNumberOfNodes())]


def column(table_node, name: str) -> list:
    table = table_node.GetTable()
    return [table.GetValueByName(row, name) for row in range(table.GetNumberOfRows())]


@pytest.fixture
def volumes_case():
    context = create_scene()
    images = [blob_image(shape=(16, 20, 24), seed=seed) for seed in range(3)]
    inverted = sitk.ShiftScale(images[1], shift=0.0, scale=-1.0)  # inverted contrast: a different score
    images[1] = sitk.Cast(inverted, sitk.sitkFloat32)
    volumes = [add_volume_from_image(context.scene, image, f"case {i}") for i, image in enumerate(images)]
    return context, volumes


def test_cases_are_ranked_lowest_aula_first(volumes_case, predictor):  # noqa: F811
    context, volumes = volumes_case
    worklist = segment_cases(context, predictor, [case_input_from_volume(v) for v in volumes])
    table = worklist.table_node
    scores = [v.ToDouble() for v in column(table, "AULA (normalised)")]
    assert len(scores) == 3 and scores == sorted(scores)
    by_name = {case.input_id: case.prediction.score for case in worklist.cases}
    assert [by_name[v.ToString()] for v in column(table, "input ID")] == pytest.approx(scores)
    assert [v.ToDouble() for v in column(table, "rank")] == [1.0, 2.0, 3.0]
    assert {v.ToString() for v in column(table, "decision")} <= {"accepted", "flagged"}
    for case, decision in zip(worklist.ranked(), column(table, "decision"), strict=True):
        assert case.prediction.decision == decision.ToString()
    # the first (most doubtful) case is shown after the batch
    composite = context.nodes_by_class("vtkMRMLSliceCompositeNode")[0]
    assert composite.GetBackgroundVolumeID() == column(table, "input ID")[0].ToString()


def test_selecting_a_row_shows_that_case(volumes_case, predictor):  # noqa: F811
    context, volumes = volumes_case
    worklist = segment_cases(context, predictor, [case_input_from_volume(v) for v in volumes])
    for row in (2, 0, 1):
        shown = worklist.show_row(row)
        case = worklist.case_at_row(row)
        assert shown == case.segmentation_id
        for composite in context.nodes_by_class("vtkMRMLSliceCompositeNode"):
            assert composite.GetBackgroundVolumeID() == case.input_id
            assert composite.GetForegroundVolumeID() == case.heatmap_ids["agreement"]
        visible = [n.GetID() for n in context.nodes_by_class("vtkMRMLSegmentationNode")
                   if n.GetDisplayNode().GetVisibility()]
        assert visible == [case.segmentation_id]
    assert worklist.show_row(7) is None


def test_a_reloaded_table_still_opens_its_cases(volumes_case, predictor):  # noqa: F811
    context, volumes = volumes_case
    worklist = segment_cases(context, predictor, [case_input_from_volume(v) for v in volumes[:2]])
    fresh = Worklist(context, worklist.table_node)  # what a reloaded scene offers: the table alone
    assert fresh.cases == []
    assert fresh.show_row(1) == worklist.case_at_row(1).segmentation_id


def test_cancel_in_the_middle_removes_everything_the_batch_added(volumes_case, predictor):  # noqa: F811
    context, volumes = volumes_case
    before = node_ids(context)
    state = {"second case started": False}

    def progress(fraction, message):
        if "(2/3)" in message:
            state["second case started"] = True

    with pytest.raises(Cancelled):
        segment_cases(context, predictor, [case_input_from_volume(v) for v in volumes], progress=progress,
                      cancel=lambda: state["second case started"])
    assert state["second case started"]
    assert node_ids(context) == before


def test_a_folder_of_files_becomes_volumes_and_a_worklist(tmp_path, predictor):  # noqa: F811
    for seed in range(2):
        sitk.WriteImage(blob_image(shape=(16, 20, 24), seed=seed), str(tmp_path / f"patient{seed}.nii.gz"))
    (tmp_path / "notes.txt").write_text("not an image")
    cases = case_inputs_from_folder(tmp_path)
    assert [c.name for c in cases] == ["patient0", "patient1"]
    context = create_scene()
    worklist = segment_cases(context, predictor, cases)
    names = sorted(v.ToString() for v in column(worklist.table_node, "case"))
    assert names == ["patient0", "patient1"]
    volume = context.node(worklist.case_at_row(0).input_id)
    assert volume.GetImageData().GetDimensions() == (24, 20, 16)


def test_real_hippocampus_cases(hippocampus_dir, predictor):  # noqa: F811
    files = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[:3]
    context = create_scene()
    cases = [CaseInput(path.name.split(".")[0], path=str(path)) for path in files]
    worklist = segment_cases(context, predictor, cases)
    scores = [v.ToDouble() for v in column(worklist.table_node, "AULA (normalised)")]
    assert len(scores) == 3 and scores == sorted(scores)
    for case in worklist.cases:
        name = context.node(case.input_id).GetName()
        reference = sitk.ReadImage(next(p for p in files if p.name.startswith(name)))
        heatmap = context.node(case.heatmap_ids["agreement"])
        assert heatmap.GetImageData().GetDimensions() == reference.GetSize()
