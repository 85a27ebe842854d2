"""The web review app end to end: the real server, the shipped demo model, real hippocampus cases, and
Debian's Chromium driven by Playwright. Checked by pixels and by the review file.

One server serves the whole module (its cases are segmented once); the last tests kill it and restart on
the same review folder, then start one with a broken model. Without Chromium the tests skip locally and
fail in CI (``CI=true``), where .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from webapp_support import (
    DEMO_MODEL,
    ReviewServer,
    assert_only_the_stroke_changed,
    browser_missing_reason,
    copy_cases,
    launch_browser,
    model_labels,
    read_review,
    state,
    view_image,
    wait_cases_done,
    wait_frame_change,
    wait_frame_stable,
    wait_until,
    wait_views,
)

CASES = ["hippocampus_006", "hippocampus_007", "hippocampus_008"]
AXIAL = 0  # the "Axial Primary" layout's large view
THREED = 1  # its 3D view (top right)
SCREENSHOTS = Path(__file__).resolve().parents[1] / "Resources" / "Screenshots"
ANTERIOR, POSTERIOR = (230, 159, 0), (86, 180, 233)  # the demo model's class colours
PROGRESS_CASES = 6  # enough for the run to last while the page connects
ESTIMATE = r"estimated Dice \d\.\d\d \(\d\.\d\d–\d\.\d\d\)"


@pytest.fixture(scope="module")
def browser_ready():
    reason = browser_missing_reason()
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def review_folder(browser_ready, hippocampus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("webapp")
    inputs = root / "inputs"
    copy_cases(hippocampus_dir, CASES, inputs)
    (inputs / "broken_case.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file")
    return root


@pytest.fixture(scope="module")
def server(review_folder):
    review = ReviewServer([review_folder / "inputs"], review_folder / "out")
    review.wait_ready()
    yield review
    review.stop()


@pytest.fixture(scope="module")
def browser(browser_ready):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_browser(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, server):
    page = browser.new_page(viewport={"width": 1500, "height": 950})
    page.goto(server.url)
    wait_views(page)
    wait_cases_done(page, len(CASES))
    wait_frame_stable(page, AXIAL)
    yield page
    page.close()


def coloured_pixels(image: np.ndarray, colour, tolerance: int = 60) -> int:
    """Pixels near a colour in hue-bearing channels (blended overlays keep their colour's direction)."""
    pixels = image.reshape(-1, 3).astype(int)
    saturated = pixels.max(axis=1) - pixels.min(axis=1) > 40  # the MRI itself is grey
    target = np.asarray(colour, dtype=float)
    direction = (pixels - pixels.mean(axis=1, keepdims=True)) @ (target - target.mean())
    return int(
        np.sum(saturated & (direction > 0) & (np.abs(pixels - target).sum(axis=1) < 3 * tolerance + 200))
    )


def rows_by_name(page) -> dict[str, dict]:
    return {row["name"]: row for row in state(page, "le_rows")}


def current_name(page) -> str:
    return next(row["name"] for row in state(page, "le_rows") if row["current"])


def press_slider(page, selector: str, key: str, times: int, thumb: int = 0) -> None:
    slider = page.locator(f"{selector} [role=slider]").nth(thumb)
    slider.focus()
    for _ in range(times):
        slider.press(key)


def settled_state(page, name: str, pause: float = 0.6):
    """A state value once it stopped changing (key presses reach the server one by one)."""
    previous = [state(page, name)]

    def settled():
        page.wait_for_timeout(pause * 1000)
        now = state(page, name)
        same, previous[0] = now == previous[0], now
        return (now,) if same else None

    return wait_until(settled, 20, 0.0, f"{name} to settle")[0]


def choose_heatmap(page, title: str) -> None:
    page.locator(".v-select").first.click()
    page.locator(".v-overlay .v-list-item", has_text=title).first.click()


def review_document(out: Path) -> dict:
    return json.loads((out / "review.json").read_text(encoding="utf-8"))


def save_screenshot(page, name: str) -> None:
    """Into Resources/Screenshots when LAYER_ENSEMBLES_SCREENSHOTS=1 (to refresh the committed ones)."""
    if os.environ.get("LAYER_ENSEMBLES_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name))


# -- 1. views, overlays, worklist ---------------------------------------------------------------------


def test_views_draw_mri_with_segmentation_and_heatmap_and_the_worklist_is_sorted(page, server):
    rows = state(page, "le_rows")
    assert [row["name"] for row in rows if row["score"] is not None] == sorted(
        (row["name"] for row in rows if row["score"] is not None),
        key=lambda n: rows_by_name(page)[n]["score"],
    )
    assert {row["name"] for row in rows} == set(CASES)
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores) and all(0.0 < s <= 1.0 for s in scores)
    # The most doubtful case is shown first, its badge carries its AULA.
    assert rows[0]["current"]
    assert f"AULA {rows[0]['score']:.3f}" in page.inner_text("#le-badge")
    assert page.locator("#le-worklist tr.le-row").count() == len(CASES)
    # The demo model is calibrated: every case has its estimated Dice, in the worklist, badge and file.
    assert re.search(rf"AULA {rows[0]['score']:.3f} · {ESTIMATE}", page.inner_text("#le-badge"))
    recorded = read_review(server.out)
    for row in rows:
        assert re.fullmatch(ESTIMATE[len("estimated Dice ") :], row["quality_text"]), row
        assert (
            row["quality_text"] in page.locator("#le-worklist tr.le-row", has_text=row["name"]).inner_text()
        )
        assert recorded[row["name"]]["estimated_dice"] == pytest.approx(
            float(row["quality_text"][:4]), abs=0.006
        )

    axial = view_image(page, AXIAL)
    assert axial.std() > 10  # the MRI, not a blank view
    assert coloured_pixels(axial, ANTERIOR) > 50 and coloured_pixels(axial, POSTERIOR) > 50
    # The heatmap is a foreground layer: hiding it (key "h") changes the picture, showing it restores it.
    page.locator("body").press("h")
    wait_until(lambda: state(page, "le_opacity") == 0.0, 10, message="heatmap hidden")
    hidden = wait_frame_change(page, AXIAL, axial)
    page.locator("body").press("h")
    wait_until(lambda: state(page, "le_opacity") > 0.0, 10, message="heatmap shown")
    shown = wait_frame_change(page, AXIAL, hidden)
    assert np.abs(shown.astype(int) - axial).mean() < np.abs(hidden.astype(int) - axial).mean()
    assert "AULA" in state(page, "le_curve_title") and page.locator("#le-curve-svg polyline").count() >= 2
    save_screenshot(page, "webapp_review.png")

    # The heatmap kind: another map is computed from the bundle (no network pass) and drawn.
    before = wait_frame_stable(page, AXIAL)
    choose_heatmap(page, "entropy")
    wait_until(lambda: state(page, "le_heatmap") == "entropy", 10, message="entropy chosen")
    wait_frame_change(page, AXIAL, before, timeout=30)
    choose_heatmap(page, "layer disagreement")
    wait_until(lambda: state(page, "le_heatmap") == "agreement", 10, message="agreement chosen again")
    wait_frame_stable(page, AXIAL)


def test_the_3d_view_shows_the_segment_surfaces_and_the_uncertain_region(page):
    """No volume rendering: the shown case's segments as surfaces in the model's colours, and its
    uncertain region (what the slice views colour) as a translucent red surface over them."""
    threed = wait_frame_stable(page, THREED).astype(int)
    assert coloured_pixels(threed, ANTERIOR) > 50 and coloured_pixels(threed, POSTERIOR) > 50
    red, green, blue = threed[..., 0], threed[..., 1], threed[..., 2]
    uncertain = (red > 100) & (green < 0.45 * red) & (blue < 0.45 * red)  # red, not the orange segment
    assert np.count_nonzero(uncertain) > 20


# -- 2. threshold -------------------------------------------------------------------------------------


def test_threshold_slider_past_the_aula_flips_the_decision(page, server):
    name = current_name(page)
    row = rows_by_name(page)[name]
    threshold = state(page, "le_threshold")
    score = row["score"]
    assert row["decision"] == ("accepted" if score >= threshold else "flagged")
    steps = int(abs(score - threshold) * 1000) + 3
    key = "ArrowRight" if score >= threshold else "ArrowLeft"
    press_slider(page, "#le-threshold", key, steps)
    flipped = "flagged" if key == "ArrowRight" else "accepted"
    new_threshold = settled_state(page, "le_threshold")
    assert (new_threshold > score) == (flipped == "flagged")
    wait_until(lambda: rows_by_name(page)[name]["decision"] == flipped, 15, message="decision flipped")
    assert flipped in page.inner_text("#le-badge")
    wait_until(
        lambda: (
            lambda r: r.get("model_decision") == flipped and abs(r.get("threshold", 0) - new_threshold) < 1e-6
        )(read_review(server.out).get(name, {})),
        10,
        message="review file updated",
    )
    # back to the calibrated threshold
    press_slider(page, "#le-threshold", "ArrowLeft" if key == "ArrowRight" else "ArrowRight", steps)
    wait_until(lambda: rows_by_name(page)[name]["decision"] != flipped, 15, message="decision restored")


# -- 3. kept heads ------------------------------------------------------------------------------------


def cli_score(image: Path, first: int, last: int, out: Path) -> float:
    """Normalised AULA of the ``segment`` command with the same kept heads (1-based inclusive)."""
    completed = run_cli(
        "segment", image, "--model", DEMO_MODEL, "--out", out, "--heads", f"{first - 1}:{last}", "--quiet",
        timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads(next(out.glob("*_report.json")).read_text())
    return float(report["score"])


def test_kept_heads_change_the_heatmap_and_the_aula_equal_to_the_cli(page, server, review_folder):
    name = current_name(page)
    before_heads = list(state(page, "le_heads"))
    before_score = rows_by_name(page)[name]["score"]
    axial = view_image(page, AXIAL)
    press_slider(page, "#le-heads", "ArrowRight", 2, thumb=0)
    wait_until(lambda: state(page, "le_heads")[0] == before_heads[0] + 2, 15, message="heads moved")
    wait_until(lambda: rows_by_name(page)[name]["score"] != before_score, 20, message="AULA recombined")
    settled_state(page, "le_rows")
    first, last = (int(v) for v in settled_state(page, "le_heads"))
    assert (first, last) == (before_heads[0] + 2, before_heads[1])
    changed = wait_frame_change(page, AXIAL, axial)
    assert np.abs(changed.astype(int) - axial).max() > 40
    shown = rows_by_name(page)[name]["score"]
    expected = cli_score(review_folder / "inputs" / f"{name}.nii.gz", first, last, review_folder / "cli")
    assert shown == float(f"{expected:.6g}")  # the scene stores the score to 6 significant digits
    assert f"{expected:.3f}" in page.inner_text("#le-badge")
    press_slider(page, "#le-heads", "ArrowLeft", 2, thumb=0)
    wait_until(
        lambda: rows_by_name(page)[name]["score"] == pytest.approx(before_score), 20, message="heads restored"
    )


# -- 5. next region, keys -----------------------------------------------------------------------------


def test_next_uncertain_region_moves_the_slice_and_keys_drive_the_review(page, server):
    offset = state(page, "le_slice_offset")
    axial = view_image(page, AXIAL)
    page.click("#le-next-region")
    wait_until(lambda: state(page, "le_slice_offset") != offset, 10, message="slice moved")
    assert "uncertain region 1 of" in page.inner_text("#le-region")
    wait_frame_change(page, AXIAL, axial)
    page.locator("body").press("r")
    wait_until(lambda: "uncertain region 2 of" in page.inner_text("#le-region"), 10, message="second region")

    first = current_name(page)
    order = [row["name"] for row in state(page, "le_rows")]
    page.locator("body").press("n")
    wait_until(lambda: current_name(page) != first, 10, message="next case")
    second = current_name(page)
    assert order.index(second) == (order.index(first) + 1) % len(order)  # the worklist's order
    page.locator("body").press("a")
    wait_until(
        lambda: rows_by_name(page)[second]["decision_text"] == "accepted by reviewer", 10, message="accepted"
    )
    assert "accepted by reviewer" in page.inner_text("#le-badge")
    page.locator("body").press("p")
    wait_until(lambda: current_name(page) == first, 10, message="previous case")
    page.locator("body").press("f")
    wait_until(
        lambda: rows_by_name(page)[first]["decision_text"] == "flagged by reviewer", 10, message="flag"
    )
    review = wait_until(
        lambda: (
            lambda r: (
                r
                if r.get(second, {}).get("reviewer_decision") == "accepted"
                and r.get(first, {}).get("reviewer_decision") == "flagged"
                else None
            )
        )(read_review(server.out)),
        10,
        message="decisions in the review file",
    )
    assert review[first]["time"] and review[second]["time"]
    assert (server.out / "review.csv").read_text().count("\n") == len(CASES) + 1


# -- 6a. an unreadable case ---------------------------------------------------------------------------


def test_an_unreadable_case_is_one_error_line_and_the_others_work(page, server):
    error = page.inner_text("#le-error")
    assert "broken_case.nii.gz" in " ".join(state(page, "le_errors"))
    assert "\n" not in error and error
    assert {row["name"] for row in state(page, "le_rows")} == set(CASES)  # the rest were segmented


# -- 4. correction, then kill and restart on the same folder ------------------------------------------


def paint_stroke(page, view: int = AXIAL) -> None:
    box = page.locator("img.image-display-area").nth(view).bounding_box()
    x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5
    page.mouse.move(x - 60, y)
    page.wait_for_timeout(300)
    page.mouse.down()
    page.wait_for_timeout(300)
    for step in range(12):
        page.mouse.move(x - 60 + 10 * step, y + 5 * step)
        page.wait_for_timeout(120)
    page.wait_for_timeout(300)
    page.mouse.up()


def labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_paint_save_correction_then_kill_and_resume(page, server, review_folder, browser):
    name = current_name(page)
    page.click("#le-correct")
    page.wait_for_selector("#le-save")
    page.click("#le-save")  # an unedited save: the model's segmentation, as a first correction file
    first = Path(
        wait_until(
            lambda: read_review(server.out).get(name, {}).get("corrected_file"),
            10,
            message="first correction saved",
        )
    )
    # Activating the editor and saving changed no voxel: the file is the model's segmentation (issue 11).
    unedited = labels(first)
    np.testing.assert_array_equal(unedited, model_labels(read_review(server.out)[name]))
    page.click("#le-correct")
    page.wait_for_selector("#le-paint")
    axial = view_image(page, AXIAL)
    paint_stroke(page)
    wait_frame_change(page, AXIAL, axial)
    wait_frame_stable(page, AXIAL)  # the stroke drawn, so applied, before the save
    page.click("#le-save")
    second = Path(
        wait_until(
            lambda: (lambda f: f if f and f != str(first) else None)(
                read_review(server.out).get(name, {}).get("corrected_file")
            ),
            10,
            message="second correction saved",
        )
    )
    assert first.is_file() and second.is_file() and second.parent == server.out
    assert second.name == f"{name}_corrected_2.nii.gz"  # never over the earlier correction
    assert_only_the_stroke_changed(unedited, labels(second))  # the stroke's voxels, no other, none lost
    assert read_review(server.out)[name]["reviewer_decision"] == "corrected"
    assert "corrected" in page.inner_text("#le-badge")
    save_screenshot(page, "webapp_correction.png")
    # Erase over the painted stroke, then undo: the views show the erase, then the painted mask again.
    page.click("#le-correct")
    page.wait_for_selector("#le-erase")
    page.click("#le-erase")
    wait_until(lambda: state(page, "le_tool") == "erase", 10, message="erase tool chosen")
    painted = wait_frame_stable(page, AXIAL)
    paint_stroke(page)
    erased = wait_frame_change(page, AXIAL, painted)
    erased = wait_frame_stable(page, AXIAL)
    assert coloured_pixels(erased, ANTERIOR) + coloured_pixels(erased, POSTERIOR) < coloured_pixels(
        painted, ANTERIOR
    ) + coloured_pixels(painted, POSTERIOR)
    page.click("#le-undo")
    wait_frame_change(page, AXIAL, erased)
    undone = wait_frame_stable(page, AXIAL)
    assert np.abs(undone.astype(int) - painted).mean() < np.abs(erased.astype(int) - painted).mean()
    # Another case gets other kept heads, and the review another heatmap kind: both come back too.
    other = next(n for n in rows_by_name(page) if n != name)
    page.locator("#le-worklist tr.le-row", has_text=other).click()
    wait_until(lambda: current_name(page) == other, 10, message="other case shown")
    first_head, last_head = state(page, "le_heads")
    score = rows_by_name(page)[other]["score"]
    press_slider(page, "#le-heads", "ArrowRight", 1, thumb=0)
    wait_until(lambda: rows_by_name(page)[other]["score"] != score, 20, message="other case recombined")
    heads = [int(v) for v in settled_state(page, "le_heads")]
    assert heads == [first_head + 1, last_head]
    choose_heatmap(page, "entropy")
    wait_until(
        lambda: (
            review_document(server.out)["settings"].get("heatmap_kind") == "entropy"
            and read_review(server.out)[other]["kept_heads"] == f"{heads[0]}-{heads[1]}"
        ),
        10,
        message="kept heads and heatmap kind in the review file",
    )
    before = read_review(server.out)

    server.kill()
    restarted = ReviewServer([review_folder / "inputs"], server.out)
    try:
        restarted.wait_ready()
        again = browser.new_page(viewport={"width": 1500, "height": 950})
        again.goto(restarted.url)
        wait_views(again)
        wait_cases_done(again, len(CASES))
        # The cases come back from the bundles the first server kept: no network pass, no child process.
        reused = f"{len(CASES)} case(s) taken from their results bundles (no network pass), 0 to segment"
        assert reused in restarted.log_tail(), restarted.log_tail()
        wait_until(
            lambda: (
                {n: r["score"] for n, r in rows_by_name(again).items()}
                == pytest.approx({n: r["score"] for n, r in before.items()}, abs=1e-5)
            ),
            60,
            message="every case's AULA as before (the other case with its kept heads)",
        )
        assert state(again, "le_heatmap") == "entropy"
        again.locator("#le-worklist tr.le-row", has_text=other).click()
        wait_until(lambda: current_name(again) == other, 10, message="other case shown again")
        assert [int(v) for v in state(again, "le_heads")] == heads
        assert f"AULA {before[other]['score']:.3f}" in again.inner_text("#le-badge")
        decided = {n: r["reviewer_decision"] for n, r in before.items() if r["reviewer_decision"]}
        wait_until(
            lambda: all(rows_by_name(again)[n]["decision"] == d for n, d in decided.items()),
            60,
            message="decisions shown again after the restart",
        )
        again.locator("#le-worklist tr.le-row", has_text=name).click()
        wait_until(lambda: str(second) in again.inner_text("#le-saved"), 10, message="correction shown")
        assert "corrected" in again.inner_text("#le-badge")
        after = read_review(server.out)
        assert {n: (r["reviewer_decision"], r["corrected_file"], r["time"]) for n, r in after.items()} == {
            n: (r["reviewer_decision"], r["corrected_file"], r["time"]) for n, r in before.items()
        }
        again.close()
    finally:
        restarted.stop()


# -- 6b. a bad model ----------------------------------------------------------------------------------


def test_a_bad_model_is_one_error_line_and_the_views_still_work_behind_a_token(browser, review_folder):
    """Also the access token on a real server: refused without it, the page and its websocket work with it."""
    bad_model = review_folder / "not_a_model.pt"
    bad_model.write_bytes(b"PK\x03\x04 definitely not a TorchScript archive")
    out = review_folder / "bad-model-out"
    inputs = review_folder / "one"
    inputs.mkdir()
    shutil.copy2(review_folder / "inputs" / f"{CASES[0]}.nii.gz", inputs)
    token = "a-test-token-for-this-review"
    review = ReviewServer([inputs], out, model=bad_model, extra=["--token", token])
    try:
        review.wait_ready(query=f"?token={token}")
        for address in (review.url, f"{review.url}index.html", f"{review.url}?token=wrong-token-0123456789"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(address, timeout=5)
            assert refused.value.code == 403
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        assert page.goto(review.url).status == 403
        page.goto(f"{review.url}?token={token}")
        wait_views(page)
        error = wait_until(lambda: page.inner_text("#le-error"), 30, message="error line")
        assert "not_a_model.pt" in error and "\n" not in error
        assert view_image(page, AXIAL).std() > 10  # the input is still shown
        assert state(page, "le_rows") == []
        page.close()
    finally:
        review.stop()


# -- a previous `segment` output folder -----------------------------------------------------------------


def test_a_segment_output_folder_is_reviewed_from_its_bundles(browser, review_folder, hippocampus_dir):
    """`review <segment output folder> <image>`: the folder's cases with the scores and estimated Dice of the
    CLI and no network pass; the other image is segmented in the child, into the same worklist."""
    inputs = review_folder / "segment-inputs"
    *images, other = copy_cases(hippocampus_dir, CASES, inputs)
    segmented = review_folder / "segmented"
    result = run_cli(
        "segment", *images, "--model", DEMO_MODEL, "--out", segmented, "--save-heads", "--maps", "none",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reports = {
        name: json.loads((segmented / f"{name}_report.json").read_text(encoding="utf-8"))
        for name in CASES[:2]
    }
    review = ReviewServer([segmented, other], review_folder / "segmented-review")
    try:
        review.wait_ready()
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.goto(review.url)
        wait_views(page)
        rows = {row["name"]: row for row in wait_cases_done(page, 3)}
        reused = "2 case(s) taken from their results bundles (no network pass), 1 to segment"
        assert reused in review.log_tail()
        assert set(rows) == set(CASES) and rows[CASES[2]]["decision"] in ("accepted", "flagged")
        assert {n: r["score"] for n, r in rows.items() if n in reports} == pytest.approx(
            {n: r["score"] for n, r in reports.items()}, abs=1e-5
        )
        page.locator("#le-worklist tr.le-row", has_text=CASES[0]).click()
        estimate = reports[CASES[0]]["estimated_dice_text"]
        assert estimate.startswith("estimated Dice ")
        wait_until(lambda: estimate in page.inner_text("#le-badge"), 10, message="reused case's estimate")
        page.close()
    finally:
        review.stop()


# -- progress while the child segments ------------------------------------------------------------------


def test_the_worklist_shows_progress_while_the_child_segments(browser, review_folder, hippocampus_dir):
    """Every case is listed from the start: queued, then segmenting with its share done, until its result
    replaces the row; the toolbar's bar shows the whole run. Checked on the page, whatever the timing."""
    names = sorted(p.name.removesuffix(".nii.gz") for p in (hippocampus_dir / "imagesTr").glob("*.nii.gz"))
    names = names[:PROGRESS_CASES]
    copy_cases(hippocampus_dir, names, review_folder / "progress-inputs")
    review = ReviewServer([review_folder / "progress-inputs"], review_folder / "progress-out")
    try:
        review.wait_ready()
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.goto(review.url)
        wait_views(page)
        seen: dict[str, set] = {"status": set(), "text": set()}

        def segmenting():
            rows, queue, running = page.evaluate(
                "() => ['le_rows', 'le_queue', 'le_running'].map(n => window.trame.state.get(n))"
            )
            assert {r["name"] for r in rows} | {q["name"] for q in queue} == set(names) or not running
            seen["status"] |= {q["status"] for q in queue}
            cells = page.locator("#le-worklist tr.le-queued[data-status=segmenting]")
            if cells.count():
                seen["text"].add(cells.first.inner_text())
            return {"queued", "segmenting"} <= seen["status"] and seen["text"]

        wait_until(segmenting, 240, 0.1, "cases shown queued and segmenting")
        assert any(re.search(r"segmenting \d+%", text) for text in seen["text"]), seen
        bar = page.locator("#le-progress")
        assert bar.is_visible() and 0.0 <= float(bar.get_attribute("aria-valuenow")) <= 100.0
        rows = wait_cases_done(page, len(names))
        assert {row["name"] for row in rows} == set(names) and state(page, "le_queue") == []
        assert page.locator("#le-worklist tr.le-queued").count() == 0 and not bar.is_visible()
        page.close()
    finally:
        review.stop()
