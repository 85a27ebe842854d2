"""Archive-scale ``segment``: manifests, reruns that finish what is missing, and torchrun over gloo ranks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import cli_environment, run_cli
from engine_models import error_lines
from LayerEnsemblesLib.commands.manifest import balance, read_manifest, voxel_count
from LayerEnsemblesLib.commands.sharding import FAULT_ENVIRONMENT, INCOMPLETE_EXIT_CODE
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.inference.prefetch import prefetched

SIZES = [(20, 24, 18), (36, 30, 28), (16, 16, 16), (28, 20, 24), (24, 28, 20)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Five small NIfTI volumes of different sizes, so the ranks get unequal numbers of cases."""
    folder = tmp_path_factory.mktemp("archive")
    paths = []
    for index, size in enumerate(SIZES):
        rng = np.random.default_rng(index)
        array = rng.normal(size=size[::-1]).astype(np.float32)
        array[4:12, 5:13, 4:12] += 2.0
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 1.0))
        path = folder / f"scan{index}.nii.gz"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return folder, paths


def _segment_args(model, out, *inputs, extra=()):
    return ["segment", *map(str, inputs), "--model", str(model), "--out", str(out), "--device", "cpu",
            "--maps", "agreement", "--quiet", *extra]  # fmt: skip


def _torchrun(arguments, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = cli_environment(OMP_NUM_THREADS="1")  # this checkout first, as every CLI test
    env.pop(FAULT_ENVIRONMENT, None)
    if fault:
        env[FAULT_ENVIRONMENT] = fault
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "LayerEnsemblesLib.cli", *arguments]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def _reports(out) -> dict[str, dict]:
    """Each case's report without what legitimately differs between runs (timings, device threads)."""
    reports = {}
    for path in sorted(out.glob("*_report.json")):
        report = json.loads(path.read_text())
        report.pop("timings"), report.pop("device_report", None)
        report["outputs"] = {k: os.path.basename(v) for k, v in report["outputs"].items()}  # another folder
        reports[path.name] = report
    return reports


@pytest.fixture(scope="module")
def single_run(archive, tiny_model_file, tmp_path_factory):
    _, paths = archive
    out = tmp_path_factory.mktemp("single") / "out"
    result = run_cli(*_segment_args(tiny_model_file, out, *paths, extra=["--window", "16,16,16"]))
    assert result.returncode == 0, result.stderr
    return out


# ------------------------------------------------------------------------------------------ manifests


def test_manifest_lines_and_csv_column(tmp_path, archive):
    folder, paths = archive
    listing = tmp_path / "cases.txt"
    listing.write_text(f"# tonight's scans\n{paths[0]}\n\n  {paths[1]}  \n")
    assert read_manifest(str(listing)) == paths[:2]
    table = tmp_path / "cases.csv"
    table.write_text("id,image\na,sub/x.nii.gz\nb," + str(paths[2]) + "\n")
    assert read_manifest(f"{table}:image") == [
        tmp_path / "sub" / "x.nii.gz",
        paths[2],
    ]  # relative to the file
    for spec, message in [
        (f"{table}:label", "has no column 'label' (found: id, image)"),
        (str(tmp_path / "absent.txt"), "is not a file"),
    ]:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_manifest(spec)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="lists no cases"):
        read_manifest(str(tmp_path / "empty.txt"))


def test_sizes_from_headers_and_balanced_split(archive, tmp_path):
    _, paths = archive
    assert [voxel_count(p) for p in paths] == [int(np.prod(s)) for s in SIZES]
    (tmp_path / "broken.nii.gz").write_text("not an image")
    assert voxel_count(tmp_path / "broken.nii.gz") == 0
    parts = balance([100, 10, 60, 50, 5, 0], 2)
    assert sorted(i for part in parts for i in part) == list(range(6))
    loads = [sum([100, 10, 60, 50, 5, 0][i] for i in part) for part in parts]
    assert max(loads) - min(loads) <= 10 and parts == balance([100, 10, 60, 50, 5, 0], 2)
    assert balance([3, 3, 3], 4)[3] == []  # more ranks than cases: some ranks have nothing to do


def test_cases_from_a_manifest_give_the_same_summary(archive, tiny_model_file, single_run, tmp_path):
    _, paths = archive
    table = tmp_path / "archive.csv"
    table.write_text("image,site\n" + "".join(f"{p},A\n" for p in paths))
    out = tmp_path / "out"
    result = run_cli(*_segment_args(tiny_model_file, out, extra=["--cases-from", f"{table}:image",
                                                                 "--window", "16,16,16"]))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "summary.csv").read_bytes() == (single_run / "summary.csv").read_bytes()
    result = run_cli("segment", "--model", tiny_model_file, "--out", tmp_path / "none")
    assert result.returncode == 2 and "no inputs" in result.stderr


# ------------------------------------------------------------------------------------------ reruns


def test_a_rerun_finishes_only_the_missing_cases(archive, tiny_model_file, single_run, tmp_path):
    import shutil

    _, paths = archive
    out = tmp_path / "out"
    shutil.copytree(single_run, out)
    (out / "summary.csv").write_text("rank,case\n1,scan0\n2,scan2\n")  # an earlier run over some of them
    (out / "scan3_report.json").unlink()  # scan3 was cut short after writing its segmentation
    (out / "scan1_seg.nii.gz").unlink()
    (out / "scan1_agreement.nii.gz").unlink()
    (out / "scan1_report.json").unlink()  # scan1 never started
    kept = (out / "scan0_report.json").stat().st_mtime_ns
    result = run_cli(*_segment_args(tiny_model_file, out, *paths, extra=["--window", "16,16,16"]))
    assert "scan3: replacing the partial outputs of an unfinished run: scan3_seg.nii.gz" in result.stderr
    assert result.returncode == 0, result.stderr
    assert (out / "scan0_report.json").stat().st_mtime_ns == kept  # finished cases are not redone
    assert (out / "summary.csv").read_bytes() == (single_run / "summary.csv").read_bytes()
    assert _reports(out) == _reports(single_run)


def test_a_summary_of_other_cases_is_not_replaced(archive, tiny_model_file, tmp_path):
    _, paths = archive
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("rank,case\n1,someone_else\n")
    result = run_cli(*_segment_args(tiny_model_file, out, *paths[:2]))
    assert result.returncode == 2 and "summary.csv: already exists" in result.stderr
    assert (out / "summary.csv").read_text() == "rank,case\n1,someone_else\n"


# ------------------------------------------------------------------------------------------ prefetching


def test_prefetching_keeps_order_values_and_errors_in_turn():
    started = [threading.Event() for _ in range(5)]
    threads: set[str] = set()

    def load(item: int) -> int:
        started[item].set()
        threads.add(threading.current_thread().name)
        if item == 2:
            raise ValueError("unreadable 2")
        return item * 10

    seen = []
    for item, value in prefetched(range(5), load, ahead=1):
        try:
            seen.append((item, value()))
        except ValueError as error:
            seen.append((item, str(error)))
        if item < 4:  # while the caller still works on this item, the next one loads
            assert started[item + 1].wait(timeout=30)
    assert seen == [(0, 0), (1, 10), (2, "unreadable 2"), (3, 30), (4, 40)]
    assert threads and all(name.startswith("prefetch") for name in threads)
    inline = [(item, value()) for item, value in prefetched([1, 3], lambda i: i + 1, ahead=0)]
    assert inline == [(1, 2), (3, 4)]


# ------------------------------------------------------------------------------------------ torchrun


def test_two_gloo_ranks_write_the_single_process_summary(archive, tiny_model_file, single_run, tmp_path):
    _, paths = archive
    out = tmp_path / "out"
    result = _torchrun(_segment_args(tiny_model_file, out, *paths, extra=["--window", "16,16,16"]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "summary.csv").read_bytes() == (single_run / "summary.csv").read_bytes()
    assert _reports(out) == _reports(single_run)


def test_a_killed_rank_names_the_missing_cases_and_a_rerun_completes(
    archive, tiny_model_file, single_run, tmp_path
):
    _, paths = archive
    out = tmp_path / "out"
    arguments = _segment_args(tiny_model_file, out, *paths, extra=["--window", "16,16,16"])
    sizes = [voxel_count(p) for p in paths]
    rank1 = [f"scan{i}" for i in balance(sizes, 2)[1]]
    assert len(rank1) >= 2
    result = _torchrun(arguments, fault="1:1")  # rank 1 is SIGKILLed after its first case
    assert result.returncode != 0
    assert f"exitcode  : {INCOMPLETE_EXIT_CODE}" in result.stderr or "exitcode  : -9" in result.stderr
    lines = [line for line in result.stderr.splitlines() if "case(s) missing" in line]
    assert lines, result.stderr[-3000:]
    assert all(name in lines[0] for name in rank1[1:]) and rank1[0] not in lines[0]
    assert not (out / "summary.csv").exists()
    assert (out / f"{rank1[0]}_report.json").is_file()

    result = _torchrun(arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "summary.csv").read_bytes() == (single_run / "summary.csv").read_bytes()
    assert _reports(out) == _reports(single_run)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_error_lines_of_a_failing_case_are_one_line(archive, tiny_model_file, tmp_path):
    _, paths = archive
    broken = tmp_path / "broken.nii.gz"
    broken.write_text("not an image")
    out = tmp_path / "out"
    result = _torchrun(_segment_args(tiny_model_file, out, paths[0], broken, paths[2]))
    assert result.returncode != 0  # exit 2 from the ranks: a failed case
    assert len([e for e in error_lines(result.stderr) if "broken.nii.gz" in e]) == 1
    rows = _rows(out / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"] and rows[-1]["case"] == "broken"
