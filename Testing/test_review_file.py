"""The review file and the path guard of the web review app: real files, real folders, real links."""

from __future__ import annotations

import csv
import os

import pytest
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.review.paths import AllowedRoots
from LayerEnsemblesLib.review.review_file import ReviewFile, ReviewRecord


def test_review_file_written_after_every_change_and_read_back(tmp_path):
    review = ReviewFile.open(tmp_path)
    assert review.records == {}
    review.update(ReviewRecord("case_b", "/in/case_b.nii.gz", 0.81, 0.913, "flagged"))
    review.update(
        ReviewRecord(
            "case_a", "/in/case_a.nii.gz", 0.95, 0.913, "accepted", "flagged", "2026-01-01T00:00:00+00:00"
        )
    )
    assert sorted(os.listdir(tmp_path)) == ["review.csv", "review.json"]  # no temporary left behind

    with open(tmp_path / "review.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == ["case_b", "case_a"]
    assert rows[1]["reviewer_decision"] == "flagged" and float(rows[1]["score"]) == 0.95
    assert rows[0]["reviewer_decision"] == "" and rows[0]["corrected_file"] == ""

    review.update(
        ReviewRecord(
            "case_b",
            "/in/case_b.nii.gz",
            0.81,
            0.913,
            "flagged",
            "corrected",
            "t",
            "/out/case_b_corrected.nii.gz",
        )
    )
    again = ReviewFile.open(tmp_path)
    assert list(again.records) == ["case_b", "case_a"]
    assert again.get("case_b").corrected_file == "/out/case_b_corrected.nii.gz"
    assert again.get("case_a") == review.get("case_a")


def test_damaged_review_file_is_one_clear_error(tmp_path):
    (tmp_path / "review.json").write_text("{not json")
    with pytest.raises(InputError, match="review.json: unreadable review file"):
        ReviewFile.open(tmp_path)
    (tmp_path / "review.json").write_text('{"format": "something else", "cases": []}')
    with pytest.raises(InputError, match="not a LayerEnsembles review file"):
        ReviewFile.open(tmp_path)


def test_paths_leaving_the_inputs_and_output_are_refused(tmp_path):
    inputs, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "secret"
    for folder in (inputs, out, elsewhere):
        folder.mkdir()
    single = tmp_path / "one.nii.gz"
    single.write_bytes(b"x")
    (elsewhere / "key.txt").write_text("k")
    os.symlink(elsewhere, inputs / "link")
    roots = AllowedRoots([inputs, out, single])

    assert roots.resolve("case.nii.gz", base=out) == out / "case.nii.gz"
    assert roots.resolve(str(inputs / "sub" / "x.nrrd")) == inputs / "sub" / "x.nrrd"
    assert roots.resolve(str(single)) == single
    for bad in (
        "../secret/key.txt",
        str(elsewhere / "key.txt"),
        "link/key.txt",
        "/etc/passwd",
        "",
        "a\x00b",
        str(tmp_path / "one.nii.gz.bak"),
    ):
        with pytest.raises(InputError, match="refused|not a file name"):
            roots.resolve(bad, base=inputs)
    assert not roots.contains(tmp_path)
