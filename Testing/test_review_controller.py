"""The review controller driven as a GUI drives it, on a real slicer-core scene, with the engine in a real
child process: segment, recombine, switch model, cancel, close the scene, save and reopen, decide."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_tiny_model
from LayerEnsemblesLib.fileio import read_image
from LayerEnsemblesLib.review.cases import BUNDLE_ATTRIBUTE, REVIEWER_ATTRIBUTE, SOURCE_ATTRIBUTE
from LayerEnsemblesLib.review.controller import ReviewController
from LayerEnsemblesLib.review.models import DEMO_MODEL, MODULE_DIR
from LayerEnsemblesLib.review.queue_view import queue_text
from LayerEnsemblesLib.scene import (
    add_volume_from_image,
    create_scene,
    read_decision,
    segment_array,
    segment_status,
)
from scene_support import blob_image

RUN_TIMEOUT = 300


def node_ids(context) -> list[str]:
    return [context.scene.GetNthNode(i).GetID() for i in range(context.scene.GetNumberOfNodes())]


def run_to_end(controller: ReviewController) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while controller.poll():
        assert time.monotonic() < deadline, "the child process did not finish"
        time.sleep(0.05)


class Recorder:
    """Every event the controller emits, as a GUI would receive them."""

    def __init__(self, controller: ReviewController):
        self.events: list[tuple[str, object]] = []
        for name in ("progress", "result_shown", "error", "state_changed"):
            controller.subscribe(name, lambda payload, _name=name: self.events.append((_name, payload)))

    def of(self, name: str) -> list:
        return [payload for event, payload in self.events if event == name]


@pytest.fixture
def review(tmp_path):
    context = create_scene()
    controller = ReviewController(context, bundle_folder=tmp_path / "bundles")
    yield context, controller, Recorder(controller)
    controller.close()


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    """Another model: other weights, two shallow heads skipped by default, its own calibrated threshold."""
    return make_tiny_model(
        tmp_path_factory.mktemp("models") / "other.pt",
        seed=1,
        skip_heads=2,
        aula_threshold=0.25,
        name="other-model",
    )


def blob_volumes(context, count: int, shape=(16, 20, 24)):
    return [
        add_volume_from_image(context.scene, blob_image(shape=shape, seed=s), f"case {s}")
        for s in range(count)
    ]


def labels_in_scene(context, case) -> np.ndarray:
    node = context.node(case.segmentation_id)
    return sum(value * segment_array(node, value).astype(np.uint8) for value in (1, 2))


def test_whole_review_of_a_hippocampus_case_in_a_child_process(review, hippocampus_dir, tmp_path):
    """Segment a real case, recombine, decide, save, reopen and recombine from the bundle."""
    from LayerEnsemblesLib.inference import Predictor

    context, controller, events = review
    image_file = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[0]
    image = read_image(image_file)
    volume = add_volume_from_image(context.scene, image, "hippocampus")
    assert controller.load_model(DEMO_MODEL)  # stored relative to the module, resolved to the shipped file
    model = controller.state.model
    assert controller.state.model_path == DEMO_MODEL and model.path == str(MODULE_DIR / DEMO_MODEL)
    assert controller.state.kept_heads == model.default_heads
    assert controller.segment_volume(volume) and controller.state.run.running
    run_to_end(controller)
    assert not events.of("error"), events.of("error")
    assert events.of("progress") and events.of("progress")[-1]["fraction"] == pytest.approx(1.0)
    case = controller.state.current_case
    assert case is not None and events.of("result_shown")[-1] is case

    # The child's result is the in-process engine's, voxel for voxel, and its AULA exactly.
    first, last = case.kept_heads
    fresh = Predictor(model.path, device="cpu").predict(image, head_range=(first - 1, last))
    np.testing.assert_array_equal(labels_in_scene(context, case), sitk.GetArrayFromImage(fresh.segmentation))
    child = controller.prediction()
    assert child.score == fresh.score and child.aula.raw == fresh.aula.raw
    assert case.score == pytest.approx(float(f"{fresh.score:.6g}"), abs=0)  # what the scene stores
    assert case.model_decision == fresh.decision

    # Fewer heads and another threshold change the shown result in place.
    segmentation_id = case.segmentation_id
    assert controller.set_kept_heads(first + 1, last)
    recombined = controller.state.current_case
    expected = fresh.recombine(head_range=(first, last))
    assert recombined.segmentation_id == segmentation_id and recombined.kept_heads == (first + 1, last)
    assert recombined.score == pytest.approx(float(f"{expected.score:.6g}"), abs=0)
    assert controller.set_threshold(0.0) and controller.state.current_case.model_decision == "accepted"
    assert controller.state.current_case.threshold == 0.0

    # The reviewer flags it: saved as attributes and as every segment's status.
    assert controller.flag()
    node = context.node(segmentation_id)
    assert node.GetAttribute(REVIEWER_ATTRIBUTE) == "flagged"
    assert node.GetAttribute(SOURCE_ATTRIBUTE) == "flagged by reviewer"
    assert segment_status(node, "class_1") == segment_status(node, "class_2") == "flagged"
    segmentation_node, source_node = controller.hand_off_for_correction()
    assert segmentation_node is node and source_node is volume

    # Save, reopen in a new scene, take the review up again, recombine from the bundle.
    scene_file = controller.save(tmp_path / "saved")
    assert scene_file and not events.of("error")
    assert node.GetAttribute(BUNDLE_ATTRIBUTE).startswith("LayerEnsembles bundles/")
    reopened = create_scene()
    reopened.scene.SetURL(scene_file)
    assert reopened.scene.Import()
    again = ReviewController(reopened, bundle_folder=tmp_path / "other-bundles")
    try:
        assert again.restore_from_scene() == 1
        restored = again.state.current_case
        assert restored.reviewer_decision == "flagged" and restored.decision_source == "flagged by reviewer"
        assert restored.kept_heads == (first + 1, last) and restored.threshold == 0.0
        assert again.state.kept_heads == (first + 1, last)  # the panel shows what the scene stored
        assert again.load_model(DEMO_MODEL)  # the case's own model: what the scene stored stays (defect 3)
        assert again.state.kept_heads == (first + 1, last) and again.state.threshold == 0.0
        assert again.set_kept_heads(first, last), again.state.last_error
        back = again.state.current_case
        assert again.prediction().score == fresh.score  # recombined from the bundle: bit for bit
        np.testing.assert_array_equal(
            labels_in_scene(reopened, back), sitk.GetArrayFromImage(fresh.segmentation)
        )
        assert back.reviewer_decision == "flagged"  # the reviewer's decision outlives a recombination
        assert segment_status(reopened.node(back.segmentation_id), "class_1") == "flagged"
        assert (
            again.accept()
            and reopened.node(back.segmentation_id).GetAttribute(REVIEWER_ATTRIBUTE) == "accepted"
        )
    finally:
        again.close()


def test_a_missing_bundle_is_one_line_not_a_crash(review, tiny_model_file, tmp_path):
    context, controller, events = review
    volume = blob_volumes(context, 1)[0]
    controller.load_model(tiny_model_file)
    controller.segment_volume(volume)
    run_to_end(controller)
    scene_file = controller.save(tmp_path / "saved")
    for bundle in (tmp_path / "saved" / "LayerEnsembles bundles").iterdir():
        bundle.unlink()
    reopened = create_scene()
    reopened.scene.SetURL(scene_file)
    assert reopened.scene.Import()
    again = ReviewController(reopened)
    errors = Recorder(again)
    try:
        assert again.restore_from_scene() == 1
        assert again.set_threshold(0.5) is None
        (line,) = errors.of("error")
        assert "\n" not in line and "results bundle" in line and "missing" in line
        assert again.next_region() is not None or again.state.status == "No uncertain region."
    finally:
        again.close()


def test_segmenting_keeps_the_heads_and_threshold_the_user_set(review, tiny_model_file):
    """Defect 3: Segment used to reload the model and reset its defaults."""
    context, controller, events = review
    volumes = blob_volumes(context, 1)
    controller.load_model(tiny_model_file)
    controller.set_kept_heads(2, 5)
    controller.set_threshold(0.3)
    controller.load_model(tiny_model_file)  # the same file again: nothing the user set is lost
    assert controller.state.kept_heads == (2, 5) and controller.state.threshold == 0.3
    controller.segment_volume(volumes[0])
    run_to_end(controller)
    case = controller.state.current_case
    assert case.kept_heads == (2, 5) and case.threshold == 0.3
    assert read_decision(context.node(case.segmentation_id))["KeptHeads"] == "1:5"
    assert controller.state.kept_heads == (2, 5) and controller.state.threshold == 0.3


def test_switching_model_keeps_the_shown_result_until_it_is_segmented_again(
    review, tiny_model_file, second_model
):
    """Defect 4: a new model's settings used to re-score the old result."""
    context, controller, events = review
    volume = blob_volumes(context, 1)[0]
    controller.load_model(tiny_model_file)
    controller.segment_volume(volume)
    run_to_end(controller)
    shown = controller.state.current_case
    before = read_decision(context.node(shown.segmentation_id))

    controller.load_model(second_model)
    assert controller.state.kept_heads == (3, 6) and controller.state.threshold == 0.25  # the new defaults
    assert controller.state.current_case == shown  # the result still shows its own model's settings
    assert controller.set_threshold(0.1) is False and controller.set_kept_heads(4, 6) is False
    assert "tiny-test-model" in controller.state.status
    assert read_decision(context.node(shown.segmentation_id)) == before

    controller.segment_volume(volume)  # explicitly segmented again: now the new model's result
    run_to_end(controller)
    new = controller.state.current_case
    assert new.model_name == "other-model" and new.kept_heads == (4, 6) and new.threshold == 0.1
    assert len(controller.state.cases) == 2
    assert controller.open_case(0) and controller.state.current_case.model_name == "tiny-test-model"


def test_a_batch_shows_its_cases_queued_then_segmenting_until_each_has_its_result(review, tiny_model_file):
    """What the worklist shows while the child runs: every case without a result, in run order, queued
    until the child starts it, then segmenting with its share done; gone once its result is in."""
    context, controller, events = review
    volumes = blob_volumes(context, 3)
    controller.load_model(tiny_model_file)
    snapshots = []
    panel_texts = []  # what the Slicer panel's queue label shows (the web app's rows have the same words)
    controller.subscribe(
        "progress",
        lambda _payload: (
            snapshots.append(
                (
                    [(q.name, q.status, q.fraction) for q in controller.state.run.cases],
                    len(controller.state.cases),
                )
            ),
            panel_texts.append(queue_text(controller.state)),
        ),
    )
    assert controller.segment_volumes(volumes)
    names = [volume.GetName() for volume in volumes]
    assert [(q.name, q.status) for q in controller.state.run.cases] == [(n, "queued") for n in names]
    run_to_end(controller)
    assert not events.of("error") and len(controller.state.cases) == 3
    assert controller.state.run.cases == [] and not controller.state.run.running
    # The first case started while the others waited; each case left the queue when its result came in.
    assert (
        [(names[0], "running", 0.0), (names[1], "queued", 0.0), (names[2], "queued", 0.0)],
        0,
    ) in snapshots
    for done in range(3):
        shown = [queue for queue, results in snapshots if results == done]
        assert shown and all([name for name, _, _ in queue] == names[done:] for queue in shown)
    assert any(0.0 < fraction < 1.0 for queue, _ in snapshots for _, status, fraction in queue)
    assert f"{names[0]}: segmenting 0%\n{names[1]}: queued\n{names[2]}: queued" in panel_texts
    assert any(text.startswith(f"{names[2]}: segmenting ") and "\n" not in text for text in panel_texts)
    assert queue_text(controller.state) == ""  # nothing waits once the run is over


def cancel_after_first_commit(controller: ReviewController, action) -> None:
    """Do ``action`` from the progress event that follows the first committed case (as a click would)."""

    def on_progress(payload):
        if payload["message"].endswith(": done") and controller.running:
            action()

    controller.subscribe("progress", on_progress)


def test_cancel_mid_batch_leaves_the_scene_exactly_as_it_was(review, tiny_model_file):
    context, controller, events = review
    volumes = blob_volumes(context, 3)
    controller.load_model(tiny_model_file)
    before = node_ids(context)
    cancel_after_first_commit(controller, controller.cancel)
    controller.segment_volumes(volumes)
    run_to_end(controller)
    assert node_ids(context) == before
    assert controller.state.cases == [] and controller.state.current is None
    assert controller.state.run.message == "Cancelled: the scene is unchanged."
    assert not events.of("error")


def test_cancel_during_the_forward_pass_terminates_the_child(review, tiny_model_file):
    context, controller, events = review
    volume = blob_volumes(context, 1)[0]
    controller.load_model(tiny_model_file)
    before = node_ids(context)
    controller.segment_volume(volume)
    process = controller._run.process
    deadline = time.monotonic() + RUN_TIMEOUT
    while not any("window" in p["message"] for p in events.of("progress")):
        assert controller.poll() and time.monotonic() < deadline
        time.sleep(0.02)
    assert controller.cancel()
    assert process.returncode is not None and not controller.poll()
    assert node_ids(context) == before


def test_closing_the_scene_mid_batch_cancels_it_and_removes_nothing_from_the_new_scene(
    review, tiny_model_file
):
    """Defect 5: the old rollback removed nodes by their IDs from the new scene."""
    context, controller, events = review
    volumes = blob_volumes(context, 3)
    controller.load_model(tiny_model_file)
    fresh_ids = []

    def close_and_load_new_data():
        context.scene.Clear(0)
        # the new scene's first volume gets the ID the batch's first input had: a rollback by ID would hit it
        fresh = blob_volumes(context, 3)
        fresh_ids.extend(node.GetID() for node in fresh)

    cancel_after_first_commit(controller, close_and_load_new_data)
    controller.segment_volumes(volumes)
    process = controller._run.process
    run_to_end(controller)
    assert fresh_ids and fresh_ids[0] == volumes[0].GetID()
    after = node_ids(context)
    assert all(node_id in after for node_id in fresh_ids)
    assert process.returncode is not None, "the child must be stopped"
    assert controller.state.cases == [] and not controller.running
    assert controller.poll() is False  # a timer that fires after the close (panel hidden) is harmless
    assert node_ids(context) == after


def test_a_failing_batch_is_reported_once(review, tiny_model_file, tmp_path):
    context, controller, events = review
    folder = tmp_path / "cases"
    folder.mkdir()
    sitk.WriteImage(blob_image(shape=(16, 20, 24)), str(folder / "good.nrrd"))
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    (folder / "empty.nrrd").write_bytes(b"")
    controller.load_model(tiny_model_file)
    assert controller.segment_folder(folder)
    run_to_end(controller)
    (line,) = events.of("error")
    assert line.startswith("2 of 3 case(s) failed (1 done)") and "broken" in line and "empty" in line
    assert [case.name for case in controller.state.cases] == ["good"]
    assert controller.state.current_case.name == "good"
    # The run's failure stays shown while the reviewer works on; an action's refusal only until an
    # action succeeds (it no longer describes the review then).
    assert controller.accept() and controller.state.last_error == line
    assert controller.set_kept_heads(3, 2) is None and "kept heads 3-2" in controller.state.last_error
    assert controller.flag() and controller.state.last_error == ""


def test_kept_heads_are_locked_while_a_correction_is_open(review, tiny_model_file, tmp_path):
    context, controller, events = review
    controller.load_model(tiny_model_file)
    controller.segment_volume(blob_volumes(context, 1)[0])
    run_to_end(controller)
    first, last = controller.state.kept_heads
    segmentation, volume = controller.begin_correction()
    assert controller.state.correcting
    assert segmentation.GetID() == controller.state.current_case.segmentation_id
    assert controller.set_kept_heads(first, last) is not None  # the heads it shows: nothing to refuse
    assert controller.set_kept_heads(first + 1, last) is None
    assert "save the correction" in controller.state.last_error
    assert controller.state.kept_heads == (first, last)
    path = controller.save_correction(segmentation, volume, tmp_path)
    assert path.endswith("_corrected.nii.gz") and (tmp_path / path.split("/")[-1]).is_file()
    assert not controller.state.correcting and controller.state.last_error == ""
    assert controller.state.current_case.reviewer_decision == "corrected"
    assert controller.set_kept_heads(first + 1, last) and controller.state.kept_heads == (first + 1, last)
    # A correction that cannot be written says why, and stays open (nothing the reviewer painted is lost).
    segmentation, volume = controller.begin_correction()
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    assert controller.save_correction(segmentation, volume, blocked) is None
    assert "correction not saved" in controller.state.last_error and controller.state.correcting
    controller.end_correction()
    assert not controller.state.correcting


def test_actions_without_a_model_or_case_say_why_in_one_line(review):
    context, controller, events = review
    assert controller.poll() is False
    assert controller.segment_volume(blob_volumes(context, 1)[0]) is None
    assert controller.accept() is None and controller.next_region() is None
    assert controller.set_kept_heads(3, 2) is None
    assert controller.load_model("missing.pt") is None
    lines = events.of("error")
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    assert "load a model" in lines[0] and "no case" in lines[1] and "missing.pt" in lines[4]
    assert controller.state.last_error == lines[-1]


def test_an_roi_run_keeps_the_input_geometry_and_an_edit_marks_the_case_corrected(review, tiny_model_file):
    import slicer
    from LayerEnsemblesLib.scene.geometry import oriented_image_from_array

    context, controller, events = review
    image = blob_image(shape=(16, 20, 24))
    volume = add_volume_from_image(context.scene, image, "input")
    roi = context.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    centre = image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()])
    roi.SetCenter(-centre[0], -centre[1], centre[2])
    roi.SetSize(12.0, 12.0, 12.0)
    controller.load_model(tiny_model_file)
    controller.segment_volume(volume, roi)
    run_to_end(controller)
    case = controller.state.current_case
    assert not events.of("error") and case.input_id == volume.GetID()
    segmentation = context.node(case.segmentation_id)
    heatmap = segmentation.GetNodeReference("LayerEnsembles.heatmap.agreement")
    assert slicer.util.arrayFromVolume(heatmap).shape == slicer.util.arrayFromVolume(volume).shape
    assert segmentation.GetAttribute("LayerEnsembles.CropIndex") != ""

    # the reviewer paints in Segment Editor: reopening the case records it as corrected
    mask = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    mask[5:9, 5:9, 5:9] = 1
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image_from_array(mask, image), segmentation, "class_1"
    )
    assert controller.open_case(0)
    case = controller.state.current_case
    assert case.reviewer_decision == "corrected" and case.decision_source == "corrected"
    assert segmentation.GetAttribute(REVIEWER_ATTRIBUTE) == "corrected"
    # the heads it shows again, or another threshold, rewrite no voxel: the edited node stays the case's
    assert controller.set_kept_heads(*case.kept_heads) and controller.set_threshold(0.0)
    assert controller.state.current_case.segmentation_id == segmentation.GetID()
    assert controller.state.current_case.model_decision == "accepted"
    assert np.array_equal(segment_array(segmentation, 1), mask.astype(bool))
    # recombining keeps the edit and writes the new result beside it, with its bundle reference
    assert controller.set_kept_heads(2, 6)
    fresh = controller.state.current_case
    assert fresh.segmentation_id != segmentation.GetID()
    assert context.node(fresh.segmentation_id).GetAttribute(BUNDLE_ATTRIBUTE) == segmentation.GetAttribute(
        BUNDLE_ATTRIBUTE
    )


def test_an_engine_warning_reaches_the_gui(tmp_path, tiny_model_file):
    """The engine's CUDA out-of-memory fallback is a "warning" event: the GUI sees it, during and after.

    No GPU here, so the real child runs on the CPU and the warning line it would send is added to its stream.
    """
    from LayerEnsemblesLib.review.runs import default_engine_factory

    warning = {"event": "warning", "case": None, "message": "CUDA out of memory: continued on the CPU"}

    class WarningEngine:
        def __init__(self, **arguments):
            self.process, self.sent = default_engine_factory(**arguments), False

        def poll(self):
            events = self.process.poll()
            if not self.sent:
                self.sent, events = True, [warning, *events]
            return events

        def __getattr__(self, name):
            return getattr(self.process, name)

    context = create_scene()
    controller = ReviewController(context, bundle_folder=tmp_path, engine_factory=WarningEngine)
    events = Recorder(controller)
    try:
        controller.load_model(tiny_model_file)
        controller.segment_volume(blob_volumes(context, 1)[0])
        run_to_end(controller)
        assert any(p["message"] == warning["message"] for p in events.of("progress"))
        assert controller.state.run.message == f"Done. {warning['message']}"
        assert not events.of("error") and controller.state.current_case is not None
    finally:
        controller.close()


def test_a_crashed_child_leaves_the_scene_as_it_was_and_says_why(review, tiny_model_file):
    import os
    import signal

    context, controller, events = review
    volumes = blob_volumes(context, 3)  # each case takes seconds: the kill lands while case 2 runs
    controller.load_model(tiny_model_file)
    before = node_ids(context)
    cancel_after_first_commit(controller, lambda: os.kill(controller._run.process.pid, signal.SIGKILL))
    controller.segment_volumes(volumes)
    run_to_end(controller)
    assert node_ids(context) == before and controller.state.cases == []
    (line,) = events.of("error")
    assert line.startswith("The engine stopped: ") and line.endswith("(the scene is unchanged)")
    assert "\n" not in line and "SIGKILL" in line


def test_a_scene_volume_goes_to_the_child_as_an_uncompressed_copy_of_its_voxels(review):
    """The hand-off file is read once by the child: gzip would only cost the GUI's thread (1.5 s on a
    256 x 256 x 160 volume), so it is written raw; the voxels and the geometry are the volume's."""
    import shutil

    from LayerEnsemblesLib.review.runs import prepare_inputs
    from LayerEnsemblesLib.scene import case_input_from_volume, image_from_volume

    context, _, _ = review
    volume = blob_volumes(context, 1)[0]
    work_dir, (pending,) = prepare_inputs([case_input_from_volume(volume)])
    try:
        written = sitk.ReadImage(pending.input_file)
        header = open(pending.input_file, "rb").read(4096).split(b"\n\n")[0].decode("ascii")
        assert "encoding: raw" in header
        expected = image_from_volume(volume)
        voxels = sitk.GetArrayViewFromImage(written)
        np.testing.assert_array_equal(voxels, sitk.GetArrayViewFromImage(expected))
        assert written.GetOrigin() == pytest.approx(expected.GetOrigin())
        assert written.GetDirection() == pytest.approx(expected.GetDirection())
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
