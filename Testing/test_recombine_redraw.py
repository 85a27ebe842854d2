"""The review's redraw path after it was made cheaper: a kept-heads change still writes exactly the CLI's
``--heads`` result into the scene, a threshold change touches no voxel, and a reviewer's edit is still seen.

Real CLI processes (``segment --save-heads`` and ``segment --heads``), a real TorchScript model, a real
slicer-core scene driven through the review controller. No timings here: the speed is measured by
``Testing/benchmarks/bench_recombine.py`` and ``bench_webapp.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from cli_runner import run_cli
from conftest import make_tiny_model
from LayerEnsemblesLib.review.controller import ReviewController
from LayerEnsemblesLib.scene import (
    add_volume_from_image,
    create_scene,
    find_uncertain_regions,
    is_user_edited,
    segment_array,
)
from scene_support import blob_image, predictor  # noqa: F401 - predictor is a fixture
from vtk.util import numpy_support

LABELMAP = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


def _refuse_child(**_arguments):
    raise AssertionError("the review started a child process")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One image, a model, its ``segment --save-heads`` bundle and ``segment --heads 2:6``'s result."""
    folder = tmp_path_factory.mktemp("redraw")
    image_path = folder / "case.nii.gz"
    sitk.WriteImage(blob_image(shape=(18, 22, 26), seed=5), str(image_path))
    model = make_tiny_model(folder / "model.pt", seed=4)
    runs = {}
    for name, extra in (("bundle", ["--save-heads"]), ("heads", ["--heads", "2:6"])):
        out = folder / name
        result = run_cli("segment", image_path, "--model", model, "--out", out, "--quiet", *extra)
        assert result.returncode == 0, result.stderr
        runs[name] = out
    return image_path, model, runs


@pytest.fixture
def review(outputs, tmp_path):
    image_path, model, runs = outputs
    context = create_scene()
    controller = ReviewController(context, bundle_folder=tmp_path / "kept", engine_factory=_refuse_child)
    volume = add_volume_from_image(context.scene, sitk.ReadImage(str(image_path)), "case")
    assert controller.load_model(model)
    assert controller.add_from_bundle(volume, runs["bundle"] / "case_heads.pt"), controller.state.last_error
    yield context, controller
    controller.close()


def _shown(context, controller):
    case = controller.state.current_case
    result = controller._results[case.segmentation_id]
    return case, result, context.node(result.segmentation_id), context.node(result.heatmap_ids["agreement"])


def _labelmaps(segmentation) -> list:
    content = segmentation.GetSegmentation()
    return [content.GetSegment(sid).GetRepresentation(LABELMAP) for sid in content.GetSegmentIDs()]


def test_a_kept_heads_change_shows_the_clis_heads_result_bit_for_bit(review, outputs):
    context, controller = review
    _, _, runs = outputs
    assert controller.set_kept_heads(3, 6), controller.state.last_error  # 1-based 3..6 is --heads 2:6
    case, result, segmentation, heatmap = _shown(context, controller)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(runs["heads"] / "case_seg.nii.gz")))
    agreement_image = sitk.ReadImage(str(runs["heads"] / "case_agreement.nii.gz"))
    agreement = sitk.GetArrayFromImage(agreement_image)
    for value in (1, 2):
        np.testing.assert_array_equal(segment_array(segmentation, value), labels == value)
    expected = np.clip(np.float32(1.0) - agreement.astype(np.float32), 0.0, 1.0)
    assert np.array_equal(slicer.util.arrayFromVolume(heatmap), expected)  # every bit, not to a tolerance
    report = json.loads((runs["heads"] / "case_report.json").read_text(encoding="utf-8"))
    assert case.kept_heads == (3, 6) and case.score == pytest.approx(float(f"{report['score']:.6g}"), abs=0)

    # The regions read from the heatmap in place are the ones the whole map gives.
    reference = find_uncertain_regions(agreement_image)
    assert result.regions, "the tiny model's heads disagree somewhere"
    assert [(r.voxels, r.bounding_box, r.mean_disagreement, r.max_disagreement) for r in result.regions] == [
        (r.voxels, r.bounding_box, r.mean_disagreement, r.max_disagreement) for r in reference
    ]
    for found, whole in zip(result.regions, reference, strict=True):  # NIfTI keeps the grid in float32
        assert found.center_ras == pytest.approx(whole.center_ras, abs=1e-5)


def test_a_threshold_change_touches_no_voxel(review):
    context, controller = review
    case, result, segmentation, heatmap = _shown(context, controller)
    voxels = heatmap.GetImageData().GetPointData().GetScalars()
    before = (
        voxels.GetMTime(),
        slicer.util.arrayFromVolume(heatmap).copy(),
        [labelmap.GetMTime() for labelmap in _labelmaps(segmentation)],
        [segment_array(segmentation, value) for value in (1, 2)],
    )
    threshold = 0.0 if case.model_decision == "flagged" else 1.0
    assert controller.set_threshold(threshold), controller.state.last_error
    after_case, after_result, after_segmentation, after_heatmap = _shown(context, controller)
    assert after_case.model_decision != case.model_decision and after_case.threshold == threshold
    assert (after_segmentation, after_heatmap) == (segmentation, heatmap)
    assert voxels.GetMTime() == before[0], "the heatmap's voxels were rewritten"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(heatmap), before[1])
    assert [labelmap.GetMTime() for labelmap in _labelmaps(segmentation)] == before[2]
    for value, mask in zip((1, 2), before[3], strict=True):
        np.testing.assert_array_equal(segment_array(segmentation, value), mask)


def test_an_edit_in_place_is_seen_after_the_content_was_known(review):
    """``is_user_edited`` skips the full-volume hash while no labelmap changed; any write is still seen."""
    context, controller = review
    _, _, segmentation, _ = _shown(context, controller)
    assert not is_user_edited(segmentation)
    labelmap = _labelmaps(segmentation)[0]
    labelmap.Modified()  # touched, not changed: the hash is taken again and still matches
    assert not is_user_edited(segmentation)
    scalars = labelmap.GetPointData().GetScalars()
    array = numpy_support.vtk_to_numpy(scalars)
    array[array.size // 2] = 0 if array[array.size // 2] else 1  # one voxel flipped in place...
    scalars.Modified()  # ...as a segment editor effect writes it
    assert is_user_edited(segmentation)

    # The next kept-heads change keeps the edited node and writes the new result beside it.
    edited_id = segmentation.GetID()
    assert controller.set_kept_heads(2, 6), controller.state.last_error
    case = controller.state.current_case
    assert case.segmentation_id != edited_id and context.node(edited_id) is not None
    assert not is_user_edited(context.node(case.segmentation_id))


def test_a_released_prediction_derives_its_images_again_bit_for_bit(predictor):  # noqa: F811
    """A shown case's prediction drops its input-grid images (the scene holds them); asked again, the
    engine derives the very same voxels, and a threshold change derives nothing."""
    prediction = predictor.predict(blob_image(seed=6), maps=("agreement",))
    labels = sitk.GetArrayFromImage(prediction.segmentation)
    agreement = sitk.GetArrayFromImage(prediction.maps["agreement"])
    prediction.release_input_space()
    assert list(prediction.maps) == ["agreement"] and "agreement" in prediction.maps
    stricter = prediction.recombine(threshold=0.99)  # the same heads: a new decision on the same volumes
    assert list(stricter.maps) == ["agreement"] and stricter.head_range == prediction.head_range
    np.testing.assert_array_equal(sitk.GetArrayFromImage(prediction.segmentation), labels)
    assert np.array_equal(sitk.GetArrayFromImage(prediction.maps["agreement"]), agreement)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stricter.segmentation), labels)
    with pytest.raises(KeyError):
        stricter.release_input_space() or stricter.maps["entropy"]
