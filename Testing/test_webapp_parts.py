"""The web review app's parts that need no browser: page state, curve, access token, the review command's
refusals, review inputs, corrections on a real slicer-core scene, and the review file kept in step."""

from __future__ import annotations

import asyncio
import json
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli as run_checkout_cli
from LayerEnsemblesLib.contract import default_classes
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.review.inputs import review_inputs
from LayerEnsemblesLib.review.recorder import ReviewRecorder
from LayerEnsemblesLib.review.review_file import ReviewFile
from LayerEnsemblesLib.review.state import (
    DONE,
    QUEUED,
    RUNNING,
    CaseState,
    ModelInfo,
    QueuedCase,
    ReviewState,
)
from LayerEnsemblesLib.webapp.bindings import page_state, queue_rows, worklist_rows
from LayerEnsemblesLib.webapp.curve import curve_svg
from LayerEnsemblesLib.webapp.security import TOKEN_COOKIE, access_token, token_accepted, token_middleware


def review_state() -> ReviewState:
    state = ReviewState(
        model=ModelInfo("/m.pt", "hippo", 8, (3, 8), 0.913, "summary"), kept_heads=(3, 8), threshold=0.913
    )
    state.cases = [
        CaseState(
            "b", status=DONE, segmentation_id="s1", score=0.95, threshold=0.913, model_decision="accepted"
        ),
        CaseState(
            "a",
            status=DONE,
            segmentation_id="s2",
            score=0.80,
            threshold=0.913,
            model_decision="flagged",
            reviewer_decision="accepted",
            estimated_dice=0.84,
            estimated_dice_text="estimated Dice 0.84 (0.78–0.88)",
        ),
        CaseState("c", status=QUEUED),
        CaseState("d", status="failed", error="d.nii.gz: unreadable"),
    ]
    state.current = 1
    return state


def test_worklist_is_most_doubtful_first_with_who_decided():
    rows = worklist_rows(review_state())
    assert [row["name"] for row in rows] == ["a", "b", "c", "d"]  # unscored cases last
    assert [row["decision_text"] for row in rows] == [
        "accepted by reviewer",
        "accepted (model)",
        "queued",
        "failed",
    ]
    assert [row["current"] for row in rows] == [True, False, False, False]
    assert rows[0]["score_text"] == "0.800" and rows[2]["score_text"] == "—"
    assert rows[0]["quality_text"] == "0.84 (0.78–0.88)" and rows[1]["quality_text"] == "—"


def test_a_running_batch_lists_its_cases_without_a_result_with_their_progress():
    state = review_state()
    state.run.cases = [QueuedCase("e", RUNNING, 0.42, "forward pass"), QueuedCase("f")]
    assert queue_rows(state) == []  # no run going on: nothing queued
    state.run.running, state.run.progress = True, 0.3
    values = page_state(state)
    assert [(row["name"], row["status"], row["status_text"]) for row in values["le_queue"]] == [
        ("e", "segmenting", "segmenting 42%"),
        ("f", "queued", "queued"),
    ]
    assert values["le_queue"][0]["progress"] == 42.0 and values["le_progress"] == 30.0
    assert [row["name"] for row in values["le_rows"]] == ["a", "b", "c", "d"]  # cases stay as they are


def test_page_state_reflects_the_controller_state():
    values = page_state(review_state())
    assert values["le_badge_text"] == "a: AULA 0.800 · estimated Dice 0.84 (0.78–0.88) · accepted by reviewer"
    uncalibrated = review_state()
    uncalibrated.current = 0
    uncalibrated.cases[0].estimated_dice_text = "no estimated Dice (the model has no calibrated quality map)"
    assert page_state(uncalibrated)["le_badge_text"] == (
        "b: AULA 0.950 · no estimated Dice (the model has no calibrated quality map) · accepted (model)"
    )
    assert values["le_badge_decision"] == "accepted"
    assert values["le_heads"] == [3, 8] and values["le_head_count"] == 8
    assert values["le_threshold"] == 0.913 and values["le_has_result"]
    empty = page_state(ReviewState())
    assert empty["le_badge_text"] == "no case shown" and not empty["le_has_result"]


def test_curve_svg_draws_each_curve_and_escapes_the_title():
    svg = curve_svg("AULA <3.66>", {"Anterior": [0.8, 0.9, float("nan")], "union": [0.85, 0.95, 1.0]})
    assert svg.count("<polyline") == 2 and "AULA &lt;3.66&gt;" in svg
    assert curve_svg("", {}) == ""


def test_access_token_rules():
    assert access_token("127.0.0.1", False, None) is None
    assert access_token("localhost", False, "a-long-enough-token") == "a-long-enough-token"
    with pytest.raises(InputError, match="--allow-remote"):
        access_token("0.0.0.0", False, None)
    generated = access_token("0.0.0.0", True, None)
    assert len(generated) >= 24 and generated != access_token("0.0.0.0", True, None)
    with pytest.raises(InputError, match="16 characters"):
        access_token("10.0.0.5", True, "short")
    assert token_accepted("secret-token-1234", None, "secret-token-1234")
    assert not token_accepted("secret-token-1234", "wrong", None)
    assert not token_accepted("secret-token-1234", None, None)


def test_token_middleware_guards_every_request_and_sets_the_cookie():
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def scenario():
        app = web.Application(middlewares=[token_middleware("secret-token-1234")])

        async def page(_request):
            return web.Response(text="page")

        app.router.add_get("/index.html", page)
        async with TestClient(TestServer(app)) as client:
            refused = await client.get("/index.html")
            wrong = await client.get("/index.html?token=nope")
            accepted = await client.get("/index.html?token=secret-token-1234")
            cookie = accepted.cookies[TOKEN_COOKIE]
            again = await client.get("/index.html")  # the cookie jar now carries it
            return refused.status, wrong.status, accepted.status, cookie, again.status

    refused, wrong, accepted, cookie, again = asyncio.run(scenario())
    assert (refused, wrong, accepted, again) == (403, 403, 200, 200)
    assert cookie.value == "secret-token-1234" and cookie["httponly"]


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return run_checkout_cli("review", *arguments, timeout=120)


def test_review_command_refuses_a_network_host_without_the_flag_and_missing_inputs(tmp_path):
    image = tmp_path / "case.nii.gz"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkFloat32), str(image))
    remote = run_cli(str(image), "--model", "m.pt", "--host", "0.0.0.0", "--out", str(tmp_path / "o"))
    assert remote.returncode == 2 and remote.stderr.strip().count("\n") == 0
    assert "--allow-remote" in remote.stderr
    missing = run_cli(str(tmp_path / "nothing.nii.gz"), "--model", "m.pt")
    assert missing.returncode == 2 and "nothing.nii.gz: no such file or folder" in missing.stderr


def test_review_inputs_from_images_folders_and_a_segment_output(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("b.nii.gz", "a.nrrd", "a_seg.nii.gz", "a_agreement.nii.gz", "a_corrected_2.nii.gz", "n.txt"):
        (images / name).write_bytes(b"x")
    single = tmp_path / "single.mha"
    single.write_bytes(b"x")
    cases = review_inputs([images, single, images / "b.nii.gz"])
    assert [(c.name, c.image.name) for c in cases] == [
        ("a", "a.nrrd"),
        ("b", "b.nii.gz"),
        ("single", "single.mha"),
    ]

    output = tmp_path / "segmented"
    output.mkdir()
    (output / "x_heads.pt").write_bytes(b"bundle")
    (output / "x_report.json").write_text(
        json.dumps({"input": str(images / "b.nii.gz"), "bundle": "x_heads.pt"})
    )
    (output / "y_report.json").write_text(json.dumps({"input": str(single), "bundle": None}))
    from_output = review_inputs([output])
    assert [(c.name, c.image, c.bundle) for c in from_output] == [
        ("x", images / "b.nii.gz", output / "x_heads.pt"),
        ("y", single, None),
    ]
    (output / "z_report.json").write_text("{broken")
    with pytest.raises(InputError, match="z_report.json: unreadable segment report"):
        review_inputs([output])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image files"):
        review_inputs([empty])


def test_corrections_are_written_beside_never_over(tmp_path):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    from LayerEnsemblesLib.review.corrections import labels_from_segmentation, save_correction
    from LayerEnsemblesLib.scene import add_volume_from_image, create_scene, create_segmentation_node
    from LayerEnsemblesLib.scene.segmentation import write_segments
    from scene_support import blob_image

    context = create_scene()
    image = blob_image()
    volume = add_volume_from_image(context.scene, image, "case")
    classes = default_classes(["background", "anterior", "posterior"])
    segmentation = create_segmentation_node(context, volume, classes, "seg")
    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    labels[8:12, 10:14, 10:16] = 1
    labels[5:7, 5:9, 5:9] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    write_segments(segmentation, label_image, classes)

    first = save_correction(segmentation, volume, tmp_path, "case")
    second = save_correction(segmentation, volume, tmp_path, "case")
    assert (first.name, second.name) == ("case_corrected.nii.gz", "case_corrected_2.nii.gz")
    written = sitk.ReadImage(str(first))
    assert np.array_equal(sitk.GetArrayFromImage(written), labels)
    assert written.GetDirection() == pytest.approx(image.GetDirection())
    assert written.GetOrigin() == pytest.approx(image.GetOrigin())
    replaced = save_correction(segmentation, volume, tmp_path, "case", replace=first)
    assert replaced == first and not (tmp_path / "case_corrected_3.nii.gz").exists()
    assert np.array_equal(sitk.GetArrayFromImage(labels_from_segmentation(segmentation, volume)), labels)


def test_recorder_writes_on_change_and_keeps_the_time_of_the_reviewer_decision(tmp_path):
    state = review_state()
    recorder = ReviewRecorder.open(tmp_path)
    recorder.inputs = {"a": "/in/a.nii.gz"}
    assert recorder.sync(state)
    written = ReviewFile.open(tmp_path).records
    assert set(written) == {"a", "b"}  # finished cases only
    assert written["a"].input == "/in/a.nii.gz" and written["a"].reviewer_decision == "accepted"
    assert written["a"].time and not written["b"].time
    assert not recorder.sync(state)  # nothing changed, nothing written
    state.cases[0].reviewer_decision = "flagged"
    assert recorder.sync(state)
    again = ReviewFile.open(tmp_path).records
    assert again["b"].reviewer_decision == "flagged" and again["b"].time
    assert again["a"].time == written["a"].time
    recorder.note_correction("a", "/out/a_corrected.nii.gz")
    assert ReviewFile.open(tmp_path).records["a"].corrected_file == "/out/a_corrected.nii.gz"

    # A restarted server: the same folder, cases segmented again without decisions yet.
    fresh = review_state()
    for case in fresh.cases:
        case.reviewer_decision = ""
    resumed = ReviewRecorder.open(tmp_path)
    assert resumed.pending_names(fresh) == {"a", "b"}
    assert not resumed.sync(fresh)  # the recorded decisions are not wiped before they are given back
    assert ReviewFile.open(tmp_path).records["b"].reviewer_decision == "flagged"
