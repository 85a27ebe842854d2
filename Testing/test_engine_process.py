"""The engine in a child process: real child Pythons, real exported models, real image files.

What the Slicer module and the web app rely on: the JSON-lines events arrive in order while the child
works, a finished case equals the in-process engine exactly, cancelling kills the child and leaves no
file behind, and every way a child can fail becomes one line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from engine_models import export_intensity_model, oblique_volume, sphere_image
from LayerEnsemblesLib.inference import Predictor
from LayerEnsemblesLib.inference.bundle import load_bundle
from LayerEnsemblesLib.review.engine_process import ENGINE_NICENESS, EngineProcess

EVENT_TIMEOUT = 240  # seconds: two shared CPU cores, and each child imports torch


def collect(process: EngineProcess, until=lambda events: False, timeout: float = EVENT_TIMEOUT) -> list[dict]:
    """Poll as a GUI timer would, until the child is done or ``until(events)`` holds."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while not process.done and not until(events):
        assert time.monotonic() < deadline, f"no end after {timeout} s: {events[-3:]}"
        events += process.poll()
        time.sleep(0.02)
    return events


def names(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


def array_of(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def test_a_child_run_streams_events_and_equals_the_in_process_engine(tmp_path, tiny_model_file):
    inputs = []
    for index, suffix in enumerate((".nii.gz", ".nrrd")):
        path = tmp_path / f"-case{index}{suffix}"  # named like an option: still an input
        sitk.WriteImage(oblique_volume(seed=index), str(path))
        inputs.append(path)
    process = EngineProcess(
        inputs,
        tiny_model_file,
        device="cpu",
        head_range=(1, None),
        threshold=0.5,
        maps=("agreement", "entropy"),
        window=(16, 32, 32),  # two windows per case: quick, and still blended
    )
    events = collect(process)
    assert process.returncode == 0
    kinds = names(events)
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("case_started") == kinds.count("case_done") == 2 and "error" not in kinds
    assert events[0]["cases"] == 2 and events[0]["device"] == "cpu" and events[0]["pid"] == process.pid
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and [e["overall"] for e in progress] == sorted(e["overall"] for e in progress)
    assert {e["case"] for e in progress} == {"-case0", "-case1"} and progress[-1]["overall"] == 1.0
    assert any(e["message"].startswith("window") for e in progress)
    assert events[-1] == {
        "event": "finished",
        "succeeded": 2,
        "failed": 0,
        "summary": str(process.output_dir / "summary.csv"),
    }

    predictor = Predictor(tiny_model_file, device="cpu", window_size=(16, 32, 32))
    for done, source in zip([e for e in events if e["event"] == "case_done"], inputs, strict=True):
        assert done["input"] == str(source)
        for name in ("segmentation", "agreement", "entropy", "heads"):
            assert os.path.dirname(done["outputs"][name]) == str(process.output_dir)
        expected = predictor.predict(
            sitk.ReadImage(str(source)), head_range=(1, 6), threshold=0.5, maps=("agreement", "entropy")
        )
        segmentation = sitk.ReadImage(done["outputs"]["segmentation"])
        assert (array_of(segmentation) == array_of(expected.segmentation)).all()
        for name in ("agreement", "entropy"):
            assert (array_of(sitk.ReadImage(done["outputs"][name])) == array_of(expected.maps[name])).all()
        report = json.loads(open(done["report"]).read())
        assert report["aula"] == json.loads(json.dumps(expected.to_report()["aula"]))
        assert (done["score"], done["decision"], done["threshold"]) == (
            expected.score,
            expected.decision,
            0.5,
        )
        loaded = load_bundle(done["bundle"])
        assert loaded.aula == expected.aula
        assert (array_of(loaded.segmentation) == array_of(expected.segmentation)).all()
    process.cleanup()
    assert not process.output_dir.exists()


def test_stdout_of_segment_progress_json_is_only_json_lines(tmp_path, tiny_model_file):
    source = tmp_path / "one.nii.gz"
    sitk.WriteImage(oblique_volume(seed=3), str(source))
    missing = tmp_path / "missing.nii.gz"
    result = run_cli(
        "segment", source, missing, "--model", tiny_model_file, "--out", tmp_path / "out", "--progress-json"
    )
    assert result.returncode == 2
    events = [json.loads(line) for line in result.stdout.splitlines()]  # every line parses
    assert names(events)[-2:] == ["case_failed", "finished"]
    failed = events[-2]
    assert failed["case"] == "missing" and failed["error"] == f"{missing}: file not found"
    assert events[-1]["succeeded"] == 1 and events[-1]["failed"] == 1


def test_cuda_out_of_memory_style_fallbacks_arrive_as_warning_events(tmp_path):
    model = export_intensity_model(tmp_path / "oom.pt", oom_above_voxels=20**3)  # export checks 20^3
    image, _ = sphere_image()
    source = tmp_path / "sphere.nii.gz"
    sitk.WriteImage(image, str(source))
    process = EngineProcess([source], model, device="cpu", window=(32, 32, 32))
    events = collect(process)
    kinds = names(events)
    warning = events[kinds.index("warning")]
    assert kinds.index("warning") < kinds.index("case_done")
    assert warning["case"] == "sphere" and "out of memory" in warning["message"]
    process.cleanup()


def test_cancel_mid_run_terminates_the_child_and_leaves_no_file(tmp_path, tiny_model_file):
    work = tmp_path / "work"
    work.mkdir()
    source = tmp_path / "case.nii.gz"
    sitk.WriteImage(oblique_volume(seed=4), str(source))
    inputs = [source]
    for index in range(1, 8):  # several cases, so the child is surely busy when it is cancelled
        copy = tmp_path / f"case{index}.nii.gz"
        copy.write_bytes(source.read_bytes())
        inputs.append(copy)
    process = EngineProcess(inputs, tiny_model_file, device="cpu", work_dir=work)
    events = collect(process, until=lambda events: "case_done" in names(events))
    assert not process.done and process.output_dir.is_dir() and any(process.output_dir.iterdir())
    pid = process.pid
    if hasattr(os, "getpriority"):  # the engine runs below the GUI's priority (ENGINE_NICENESS)
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + ENGINE_NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, pid) == expected
    process.cancel()
    assert process.done and process.cancelled and process.returncode != 0
    assert process.poll() == []  # nothing arrives after a cancel
    assert list(work.iterdir()) == []  # the temporary folder and every file in it are gone
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child no longer exists (it was reaped by cancel)
    assert "finished" not in names(events)


def test_a_bad_model_file_is_one_error_event(tmp_path):
    source = tmp_path / "case.nii.gz"
    sitk.WriteImage(oblique_volume(), str(source))
    model = tmp_path / "broken.pt"
    model.write_bytes(b"PK\x03\x04 this is not a model")
    process = EngineProcess([source], model)
    events = collect(process)
    assert names(events) == ["error"]
    message = events[0]["error"]
    assert message.startswith(str(model)) and "\n" not in message
    assert process.returncode == 2
    process.cleanup()


def test_unreadable_inputs_fail_their_case_in_one_line_and_the_run_finishes(tmp_path, tiny_model_file):
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(oblique_volume(), str(good))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    process = EngineProcess([truncated, good], tiny_model_file, device="cpu")
    events = collect(process)
    failed = [e for e in events if e["event"] == "case_failed"]
    assert len(failed) == 1 and failed[0]["case"] == "truncated" and failed[0]["index"] == 0
    assert failed[0]["error"].startswith(str(truncated)) and "\n" not in failed[0]["error"]
    assert names(events)[-2:] == ["case_done", "finished"] and events[-2]["index"] == 1
    assert process.returncode == 2 and "error" not in names(events)
    process.cleanup()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_child_that_dies_gives_one_error_line(tmp_path, tiny_model_file):
    source = tmp_path / "case.nii.gz"
    sitk.WriteImage(oblique_volume(), str(source))
    process = EngineProcess([source], tiny_model_file, device="cpu")
    collect(process, until=lambda events: "started" in names(events))
    os.kill(process.pid, signal.SIGKILL)  # as a native crash would end it
    events = collect(process)
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["returncode"] == -signal.SIGKILL
    assert errors[0]["error"] == "the engine process was stopped by SIGKILL"
    assert process.done and process.poll() == []
    process.cleanup()


@pytest.mark.skipif(sys.platform == "win32", reason="a script with a #! line stands in for Python")
def test_a_crashing_child_reports_its_last_stderr_line(tmp_path):
    script = tmp_path / "python"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nprint('loading', file=sys.stderr)\n"
        "raise SystemExit('Fatal Python error: Segmentation fault')\n"
    )
    script.chmod(0o755)
    process = EngineProcess([tmp_path / "x.nii.gz"], tmp_path / "m.pt", python_executable=script)
    events = process.wait(EVENT_TIMEOUT)
    assert events == [{"event": "error", "error": "Fatal Python error: Segmentation fault", "returncode": 1}]
    process.cleanup()


def test_a_missing_python_is_refused_without_leaving_a_folder(tmp_path):
    with pytest.raises(OSError, match="cannot start the engine process"):
        EngineProcess(
            [tmp_path / "x.nii.gz"],
            tmp_path / "m.pt",
            python_executable=tmp_path / "no-python",
            work_dir=tmp_path,
        )
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_real_hippocampus_case_in_a_child_equals_the_in_process_engine(hippocampus_dir):
    """The shipped model on a real MRI crop: same segmentation, maps and AULA; the bundle recombines."""
    from LayerEnsemblesLib.commands.demo import DEMO_MODEL

    source = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[0]
    process = EngineProcess([source], DEMO_MODEL, device="cpu", maps=("agreement", "variance"))
    events = collect(process)
    assert process.returncode == 0, events
    done = next(e for e in events if e["event"] == "case_done")
    predictor = Predictor(DEMO_MODEL, device="cpu")
    image = sitk.ReadImage(str(source))
    expected = predictor.predict(image, maps=("agreement", "variance"))
    assert (
        array_of(sitk.ReadImage(done["outputs"]["segmentation"])) == array_of(expected.segmentation)
    ).all()
    assert (
        array_of(sitk.ReadImage(done["outputs"]["variance"])) == array_of(expected.maps["variance"])
    ).all()
    assert done["score"] == expected.score and done["decision"] == expected.decision
    loaded = load_bundle(done["bundle"])
    assert loaded.aula == expected.aula
    first, stop = expected.head_range
    other = (first + 1, stop - 1)
    fresh = predictor.predict(image, head_range=other, threshold=0.5, maps=("agreement", "variance"))
    recombined = loaded.recombine(head_range=other, threshold=0.5)
    assert (array_of(recombined.segmentation) == array_of(fresh.segmentation)).all()
    assert (array_of(recombined.maps["agreement"]) == array_of(fresh.maps["agreement"])).all()
    assert recombined.aula == fresh.aula and recombined.decision == fresh.decision
    process.cleanup()
