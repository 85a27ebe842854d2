"""A correction in the web review app, below the browser: the real app object (trame-slicer's offscreen
views and Segment Editor on slicer-core), the shipped demo model in its child process, real hippocampus
cases, and paint strokes sent to the real axial view's interactor, as the browser's mouse events are.

What a saved correction must hold, voxel for voxel: unedited, exactly the model's segmentation; after a
stroke, the same with only the stroke's voxels changed (to the painted segment, in the painted slice, no
foreground lost); and still the stroke when the reviewer moves the threshold or the kept heads while
painting (a recombination once moved the case to a fresh node behind the editor's back, and the save
wrote the model's voxels: issue 11). Each test corrects its own case, so they run alone or in any order.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from webapp_support import DEMO_MODEL, assert_only_the_stroke_changed, copy_cases

pytest.importorskip("trame_slicer", reason="the web app needs trame-slicer (pip install -e '.[slicer]')")

CASES = ["hippocampus_006", "hippocampus_007", "hippocampus_008"]


@pytest.fixture(scope="module")
def app(hippocampus_dir, tmp_path_factory):
    from LayerEnsemblesLib.webapp.app import ReviewWebApp

    root = tmp_path_factory.mktemp("correction")
    copy_cases(hippocampus_dir, CASES, root / "inputs")
    review = ReviewWebApp([root / "inputs"], str(DEMO_MODEL), root / "out", device="cpu")
    review.start_review()
    deadline = time.monotonic() + 300
    while review.controller.poll():
        assert time.monotonic() < deadline, "the child process did not finish"
        time.sleep(0.05)
    assert not review.load_errors and review.controller.state.last_error == ""
    assert sorted(case.name for case in review.controller.state.cases) == CASES
    yield review
    review.controller.close()


def open_case(app, name: str):
    index = next(i for i, case in enumerate(app.controller.state.cases) if case.name == name)
    app._act("open_case", index)
    assert app.controller.state.current_case.name == name
    return app.controller.state.current_case


def scene_labels(app) -> np.ndarray:
    from LayerEnsemblesLib.review.corrections import labels_from_segmentation

    segmentation, volume = app.controller.hand_off_for_correction()
    return sitk.GetArrayFromImage(labels_from_segmentation(segmentation, volume))


def stroke(app) -> None:
    """A drag across the axial view's centre, as the browser test draws it (press, 12 moves, release)."""
    view = next(
        v for v in app.host.app.view_manager.get_slice_views() if v.get_view_node().GetLayoutName() == "Red"
    )
    interactor = view.interactor()
    width, height = view.render_window().GetSize()
    x, y = width // 2, height // 2

    def event(name: str, px: float, py: float) -> None:
        interactor.SetEventInformation(int(px), int(py), 0, 0)
        interactor.InvokeEvent(name)

    event("MouseMoveEvent", x - 60, y)
    event("LeftButtonPressEvent", x - 60, y)
    for step in range(12):
        event("MouseMoveEvent", x - 60 + 10 * step, y + 5 * step)
    event("LeftButtonReleaseEvent", x + 50, y + 55)


def save(app) -> tuple[str, np.ndarray]:
    app.save_correction()
    assert not app.load_errors and not app.controller.state.last_error, app.controller.state.last_error
    path = app.recorder.get(app.controller.state.current_case.name).corrected_file
    return path, sitk.GetArrayFromImage(sitk.ReadImage(path))


def test_an_unedited_save_is_the_model_and_a_stroke_changes_only_its_voxels(app):
    import slicer

    case = open_case(app, "hippocampus_006")
    model = sitk.GetArrayFromImage(app.controller.prediction().segmentation)
    app.start_correction()
    assert app.state.le_editing and app.state.le_tool == "paint"
    path, unedited = save(app)
    np.testing.assert_array_equal(unedited, model)  # activating the editor changed no voxel
    image = sitk.ReadImage(path)
    source = sitk.ReadImage(str(app.recorder.inputs[case.name]))
    assert image.GetSize() == source.GetSize() and image.GetOrigin() == pytest.approx(source.GetOrigin())
    assert image.GetSpacing() == pytest.approx(source.GetSpacing())
    assert image.GetDirection() == pytest.approx(source.GetDirection())

    app.start_correction()
    segmentation = app.host.editor.active_segmentation_node
    stroke(app)
    second, painted = save(app)
    assert second != path and second.endswith(f"{case.name}_corrected_2.nii.gz")
    assert_only_the_stroke_changed(unedited, painted)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(path)), model)  # never overwritten
    # The 3D view keeps showing the segment surfaces while the case is corrected.
    closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    assert segmentation.GetSegmentation().ContainsRepresentation(closed)


def test_a_threshold_moved_while_painting_keeps_the_stroke_in_the_saved_correction(app):
    case = open_case(app, "hippocampus_007")
    before = scene_labels(app)
    app.start_correction()
    stroke(app)
    painted = scene_labels(app)
    assert_only_the_stroke_changed(before, painted)
    threshold = app.controller.state.threshold
    app._on_threshold(le_threshold=round(threshold + 0.05, 3))  # as the slider reports a move
    shown = app.controller.state.current_case
    assert shown.threshold == pytest.approx(threshold + 0.05, abs=1e-3)  # the decision follows it
    assert shown.segmentation_id == case.segmentation_id  # the reviewer's node is still the case's
    app._on_threshold(le_threshold=round(threshold + 0.05, 3))  # a slider echoing what it shows
    assert app.controller.state.current_case.segmentation_id == case.segmentation_id
    _, saved = save(app)
    np.testing.assert_array_equal(saved, painted)


def test_kept_heads_wait_while_painting_and_the_save_keeps_the_stroke(app):
    case = open_case(app, "hippocampus_008")
    first, last = app.controller.state.kept_heads
    before = scene_labels(app)
    app.start_correction()
    stroke(app)
    painted = scene_labels(app)
    assert_only_the_stroke_changed(before, painted)
    app._on_heads(le_heads=[first, last])  # the slider echoing the shown heads: nothing happens
    app._on_heads(le_heads=[first + 1, last])  # other heads while painting: refused, in one line
    assert app.controller.state.kept_heads == (first, last) and app.state.le_editing
    assert "save the correction" in app.controller.state.last_error
    assert "save the correction" in app.state.le_error and not app.load_errors  # the controller's line
    assert app.controller.state.current_case.segmentation_id == case.segmentation_id
    path, saved = save(app)
    np.testing.assert_array_equal(saved, painted)
    # The refusal was about the open correction: once it is saved, the page no longer shows it.
    assert not app.controller.state.correcting and not app.state.le_editing
    assert app.controller.state.last_error == "" and not app.state.le_errors
    # Once saved, other heads recombine: the corrected node is kept, the new result goes beside it.
    app._on_heads(le_heads=[first + 1, last])
    shown = app.controller.state.current_case
    assert app.controller.state.kept_heads == (first + 1, last)
    assert shown.segmentation_id != case.segmentation_id
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(path)), painted)
