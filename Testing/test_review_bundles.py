"""Earlier results reused by the review controller, and the estimated Dice it shows for every case.

A ``segment --save-heads`` output folder is taken up with ``add_from_bundle``: no child process and no
network pass, and the case shows exactly what the CLI reported (labels, AULA, estimated Dice). Real CLI
process, real TorchScript models (with and without a quality map), real slicer-core scene.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from conftest import make_tiny_model
from LayerEnsemblesLib.fileio import read_image
from LayerEnsemblesLib.quality import NO_MAP_TEXT, QualityMap
from LayerEnsemblesLib.review.cases import BUNDLE_ATTRIBUTE
from LayerEnsemblesLib.review.controller import ReviewController
from LayerEnsemblesLib.review.recorder import ReviewRecorder
from LayerEnsemblesLib.scene import add_volume_from_image, create_scene, segment_array
from LayerEnsemblesLib.scene.heatmaps import KIND_ATTRIBUTE
from scene_support import blob_image

# Expected Dice rises with the normalised AULA over the whole range, so every defined score has an estimate.
QUALITY = QualityMap("aula_norm_union", [0.0, 1.0], [0.3, 0.9], [0.2, 0.8], [0.4, 1.0], cases=20, rows=20)


def _refuse_child(**_arguments):
    raise AssertionError("add_from_bundle started a child process")


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """Two models (one calibrated with a quality map), one image, and `segment --save-heads` of each."""
    folder = tmp_path_factory.mktemp("bundles")
    image_path = folder / "case.nii.gz"
    sitk.WriteImage(blob_image(shape=(16, 20, 24), seed=3), str(image_path))
    runs = {}
    for name, extra in (("calibrated", {"quality_map": QUALITY.to_dict()}), ("plain", {})):
        model = make_tiny_model(folder / f"{name}.pt", seed=2, **extra)
        out = folder / f"seg-{name}"
        result = run_cli("segment", image_path, "--model", model, "--out", out, "--save-heads")
        assert result.returncode == 0, result.stderr
        report = json.loads((out / "case_report.json").read_text(encoding="utf-8"))
        runs[name] = (model, out, report)
    return image_path, runs


@pytest.fixture
def review(tmp_path):
    context = create_scene()
    controller = ReviewController(context, bundle_folder=tmp_path / "kept", engine_factory=_refuse_child)
    errors: list[str] = []
    controller.subscribe("error", errors.append)
    yield context, controller, errors
    controller.close()


def _labels(context, case) -> np.ndarray:
    node = context.node(case.segmentation_id)
    return sum(value * segment_array(node, value).astype(np.uint8) for value in (1, 2))


@pytest.mark.parametrize("name", ["calibrated", "plain"])
def test_a_segment_output_is_taken_up_without_the_network(review, segmented, name):
    context, controller, errors = review
    image_path, runs = segmented
    model, _, report = runs[name]
    assert controller.load_model(model)
    volume = add_volume_from_image(context.scene, read_image(image_path), "case")
    assert controller.add_from_bundle(volume, report["bundle"]), errors
    assert errors == [] and not controller.running
    case = controller.state.current_case
    assert case is not None and case.status == "done" and case.name == "case"
    assert case.score == pytest.approx(report["score"], abs=1e-5)
    assert case.model_decision == ("accepted" if report["accepted"] else "flagged")
    segmentation = context.node(case.segmentation_id)
    assert segmentation.GetAttribute(BUNDLE_ATTRIBUTE) == case.bundle_path == report["bundle"]
    cli_labels = sitk.GetArrayFromImage(read_image(report["outputs"]["segmentation"]))
    assert np.array_equal(_labels(context, case), cli_labels)
    table = context.node(controller.worklist_table_id()).GetTable()  # the same worklist a batch fills
    cell = table.GetValueByName(0, "estimated Dice").ToString()
    assert cell == (case.estimated_dice_text.removeprefix("estimated Dice ") if name == "calibrated" else "—")
    # the estimated Dice is the CLI's, and says so when the model has no calibration
    assert case.estimated_dice_text == report["estimated_dice_text"]
    if name == "calibrated":
        assert report["estimated_dice"] is not None
        assert case.estimated_dice == pytest.approx(report["estimated_dice"]["value"], abs=1e-5)
        assert case.estimated_dice_text.startswith("estimated Dice ")
    else:
        assert case.estimated_dice is None and case.estimated_dice_text == NO_MAP_TEXT
    # recombining from that bundle works and changes the estimate honestly (map fitted on default heads)
    assert controller.set_kept_heads(2, 5), errors
    recombined = controller.state.current_case
    assert recombined.kept_heads == (2, 5) and recombined.estimated_dice is None
    if name == "calibrated":
        assert recombined.estimated_dice_text.startswith("no estimated Dice for heads 1:5")
    else:
        assert recombined.estimated_dice_text == NO_MAP_TEXT


def test_a_bad_bundle_is_one_line_and_leaves_the_scene_alone(review, segmented, tmp_path):
    context, controller, errors = review
    image_path, runs = segmented
    volume = add_volume_from_image(context.scene, read_image(image_path), "case")
    nodes = context.scene.GetNumberOfNodes()
    damaged = tmp_path / "damaged_heads.pt"
    damaged.write_bytes(b"not a bundle at all")
    assert not controller.add_from_bundle(volume, damaged)
    assert len(errors) == 1 and "damaged_heads.pt" in errors[0] and "\n" not in errors[0]
    other = add_volume_from_image(context.scene, blob_image(shape=(10, 12, 14)), "other")
    nodes = context.scene.GetNumberOfNodes()
    assert not controller.add_from_bundle(other, runs["plain"][2]["bundle"])
    assert "another image grid" in errors[-1] and "\n" not in errors[-1]
    # with a model loaded, only that model file's results are taken up (a restart with another model)
    assert controller.load_model(runs["plain"][0])
    assert not controller.add_from_bundle(volume, runs["calibrated"][2]["bundle"])
    assert "made with another model" in errors[-1] and "\n" not in errors[-1]
    assert context.scene.GetNumberOfNodes() == nodes and controller.state.cases == []


def test_the_same_model_file_elsewhere_still_recombines_the_case(review, segmented, tmp_path):
    context, controller, errors = review
    image_path, runs = segmented
    model, _, report = runs["plain"]
    copy = tmp_path / "copied.pt"
    copy.write_bytes(model.read_bytes())
    assert controller.load_model(copy)
    volume = add_volume_from_image(context.scene, read_image(image_path), "case")
    assert controller.add_from_bundle(volume, report["bundle"]), errors
    assert controller.set_kept_heads(3, 6), errors
    assert controller.state.current_case.kept_heads == (3, 6)
    assert controller.state.current_case.score != pytest.approx(report["score"])


def test_a_case_segmented_in_the_child_carries_its_estimated_dice(segmented, tmp_path):
    image_path, runs = segmented
    context = create_scene()
    controller = ReviewController(context, bundle_folder=tmp_path / "kept")
    try:
        for name, (model, _, report) in runs.items():
            assert controller.load_model(model)
            volume = add_volume_from_image(context.scene, read_image(image_path), name)
            assert controller.segment_volume(volume)
            deadline = time.monotonic() + 300
            while controller.poll():
                assert time.monotonic() < deadline, "the child process did not finish"
                time.sleep(0.05)
            case = controller.state.current_case
            assert case.name == name and case.estimated_dice_text == report["estimated_dice_text"]
            assert (case.estimated_dice is None) == (name == "plain")
    finally:
        controller.close()


def _foreground_kind(context) -> str:
    """The heatmap kind the slice views show (every view shows the same foreground)."""
    kinds = {
        context.node(composite.GetForegroundVolumeID()).GetAttribute(KIND_ATTRIBUTE)
        for composite in context.nodes_by_class("vtkMRMLSliceCompositeNode")
    }
    assert len(kinds) == 1, kinds
    return kinds.pop()


def test_a_restarted_review_shows_the_kept_heads_threshold_and_heatmap_kind_again(segmented, tmp_path):
    """What the web app does on a restart, without the browser: the review file in the same folder gives
    the case its kept heads and threshold back (so the same AULA and decision) and the review its
    heatmap kind; a correction-free case keeps the reviewer's decision."""
    image_path, runs = segmented
    model, _, report = runs["plain"]
    folder = tmp_path / "review"

    def start():
        context = create_scene()
        controller = ReviewController(context, bundle_folder=tmp_path / "kept", engine_factory=_refuse_child)
        errors: list[str] = []
        controller.subscribe("error", errors.append)
        recorder = ReviewRecorder.open(folder)
        recorder.restore_settings(controller)
        assert controller.load_model(model)
        recorder.inputs["case"] = str(image_path)
        record = recorder.get("case")
        volume = add_volume_from_image(context.scene, read_image(image_path), "case")
        assert controller.add_from_bundle(volume, record.bundle if record else report["bundle"]), errors
        return context, controller, recorder, errors

    context, controller, recorder, errors = start()
    assert recorder.sync(controller.state)
    default_heads = controller.state.current_case.kept_heads
    assert default_heads != (2, 5)
    assert controller.set_kept_heads(2, 5) and controller.set_threshold(0.42), errors
    controller.set_heatmap(kind="entropy")
    assert controller.flag(), errors
    assert recorder.sync(controller.state)
    before = controller.state.current_case
    assert _foreground_kind(context) == "entropy"
    written = json.loads((folder / "review.json").read_text(encoding="utf-8"))
    assert written["settings"] == {"heatmap_kind": "entropy"}
    assert written["cases"][0]["kept_heads"] == "2-5" and written["cases"][0]["threshold"] == 0.42
    assert "kept_heads" in (folder / "review.csv").read_text(encoding="utf-8").splitlines()[0]
    controller.close()

    context, controller, recorder, errors = start()  # the restarted server, a fresh scene
    assert controller.state.heatmap_kind == "entropy" and _foreground_kind(context) == "entropy"
    taken_up = controller.state.current_case
    assert taken_up.kept_heads == default_heads and taken_up.reviewer_decision == ""
    assert not recorder.sync(controller.state)  # the record is not overwritten before it is given back
    assert recorder.pending_resume(controller.state)
    recorder.resume(controller, context)
    assert errors == [] and recorder.errors == []
    after = controller.state.current_case
    assert (after.kept_heads, after.threshold) == ((2, 5), 0.42)
    assert (controller.state.kept_heads, controller.state.threshold) == ((2, 5), 0.42)
    assert after.score == pytest.approx(before.score, abs=1e-6) and after.score != taken_up.score
    assert (after.model_decision, after.reviewer_decision) == (before.model_decision, "flagged")
    assert _foreground_kind(context) == "entropy"
    assert not recorder.pending_resume(controller.state)
    assert not recorder.sync(controller.state)  # nothing changed: the reviewer's time is kept
    controller.close()
