"""nnU-Net's folds as a deep ensemble whose members keep their decoder heads (`convert --folds all`).

On the committed real nnU-Net model folder (Testing/fixtures/nnunet_tiny, two folds): the member view
of fold k computes exactly what `convert --folds k` computes (heads, probabilities, AULA); the deep
ensemble's output is what it was (each fold's final head, averaged as probabilities); `info`,
`segment --member`, `evaluate` with DE=FILE and LE=FILE#member=0, and the review controller (the Slicer
module's and the web app's reader) take the file.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runner import run_cli

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install 'layer-ensembles[nnunet]')")

from LayerEnsemblesLib.contract import load_model, read_metadata  # noqa: E402
from LayerEnsemblesLib.convert.nnunet import convert_nnunet  # noqa: E402
from LayerEnsemblesLib.inference import Predictor  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODEL = FIXTURES / "nnunet_tiny" / "Dataset901_LETiny" / "nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres"
IGNORED_REPORT_KEYS = ("model", "timings", "device_report")


def _make_case():
    spec = importlib.util.spec_from_file_location("make_nnunet_fixture", FIXTURES / "make_nnunet_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_case


make_case = _make_case()


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """The folds' deep ensemble and each fold converted alone, from the same checkpoints."""
    if not MODEL.is_dir():
        pytest.skip(f"fixture missing: {MODEL}")
    folder = tmp_path_factory.mktemp("nnunet-members")
    files = {"all": convert_nnunet(MODEL, folder / "folds.pt", folds=["all"])}
    for fold in ("0", "1"):
        files[fold] = convert_nnunet(MODEL, folder / f"fold{fold}.pt", folds=[fold])
    return files


def test_the_deep_ensemble_lists_each_folds_heads(converted):
    metadata, fold = read_metadata(converted["all"]), read_metadata(converted["0"])
    assert metadata.kind == "deep_ensemble" and metadata.head_names == ["fold_0", "fold_1"]
    assert metadata.member_heads == 3 and metadata.member_head_names == fold.head_names
    assert metadata.member_head_strides == fold.head_strides == [4, 2, 1]
    assert metadata.member_skip_heads == fold.skip_heads == 1


@pytest.mark.parametrize("fold", ["0", "1"])
def test_the_member_view_of_fold_k_is_convert_folds_k(converted, fold):
    member = int(fold)
    view, view_metadata = load_model(converted["all"], member=member)
    single, single_metadata = load_model(converted[fold])
    ignored = {"name", "provenance"}
    assert {k: v for k, v in vars(view_metadata).items() if k not in ignored} == {
        k: v for k, v in vars(single_metadata).items() if k not in ignored
    }
    x = torch.randn(1, 2, 40, 32, 28, generator=torch.Generator().manual_seed(member))
    with torch.no_grad():
        ours, theirs = view(x), single(x)
    assert len(ours) == 3 and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))

    images, _ = make_case(300 + member, (40, 36, 26))  # two windows along z
    image = sitk.Compose(images)
    maps = ("agreement", "entropy", "mutual_information")
    ours = Predictor(converted["all"], device="cpu", member=member).predict(image, maps=maps)
    theirs = Predictor(converted[fold], device="cpu").predict(image, maps=maps)
    for name in ("probabilities", "segmentation"):
        a, b = sitk.GetArrayFromImage(getattr(ours, name)), sitk.GetArrayFromImage(getattr(theirs, name))
        assert np.array_equal(a, b), name
    for name in maps:
        assert np.array_equal(
            sitk.GetArrayFromImage(ours.maps[name]), sitk.GetArrayFromImage(theirs.maps[name])
        )
    reports = [p.to_report() for p in (ours, theirs)]
    for report in reports:
        for key in IGNORED_REPORT_KEYS:
            report.pop(key, None)
    assert reports[0] == reports[1]  # AULA per class, the score, the decision, the kept heads
    assert reports[0]["aula"]  # a real AULA, not an empty one


def test_the_deep_ensemble_output_is_each_folds_final_head(converted):
    ensemble, _ = load_model(converted["all"])
    folds = [load_model(converted[f])[0] for f in ("0", "1")]
    x = torch.randn(1, 2, 32, 40, 24, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        outputs = ensemble(x)
        assert len(outputs) == 2
        for output, fold in zip(outputs, folds, strict=True):
            assert torch.equal(output, fold(x)[-1])
    images, _ = make_case(7)
    image = sitk.Compose(images)
    ours = Predictor(converted["all"], device="cpu").predict(image, maps=None)
    finals = [
        Predictor(converted[f], device="cpu").predict(image, skip_heads=2, maps=None).probabilities
        for f in ("0", "1")
    ]
    mean = np.mean([sitk.GetArrayFromImage(p) for p in finals], axis=0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ours.probabilities), mean, atol=1e-5)


def test_info_and_segment_member_on_the_command_line(converted, tmp_path):
    info = run_cli("info", converted["all"])
    assert info.returncode == 0, info.stderr
    assert "members:        2 x 3 heads (decoder0, decoder1, decoder2)" in info.stdout
    images, _ = make_case(11)
    image = tmp_path / "case.nrrd"
    sitk.WriteImage(sitk.Compose(images), str(image))
    outputs = {}
    for label, arguments in (
        ("member", [converted["all"], "--member", "fold_1"]),
        ("fold", [converted["1"]]),
    ):
        result = run_cli("segment", image, "--model", *arguments, "--out", tmp_path / label, "--quiet")
        assert result.returncode == 0, result.stderr
        outputs[label] = json.loads((tmp_path / label / "case_report.json").read_text())
    assert outputs["member"]["model"]["member"] == 1
    assert outputs["member"]["model"]["kind"] == "layer_ensemble"
    assert outputs["member"]["aula"] == outputs["fold"]["aula"]
    assert outputs["member"]["score"] == outputs["fold"]["score"]


def test_evaluate_compares_the_fold_ensemble_with_one_folds_heads(converted, tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for index in range(2):
        images, label = make_case(400 + index)
        sitk.WriteImage(sitk.Compose(images), str(tmp_path / "images" / f"case{index}.nrrd"))
        sitk.WriteImage(label, str(tmp_path / "labels" / f"case{index}.nrrd"))
    out = tmp_path / "report"
    result = run_cli(
        "evaluate", "--model", f"DE={converted['all']}", "--model", f"LE={converted['all']}#member=0",
        "--images", tmp_path / "images", "--labels", tmp_path / "labels", "--device", "cpu",
        "--no-progress", "--no-cost-probe", "--out", out, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with open(out / "cases.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["method"], r["kind"]) for r in rows) == [
        ("DE", "deep_ensemble"), ("DE", "deep_ensemble"), ("LE", "layer_ensemble"), ("LE", "layer_ensemble"),
    ]  # fmt: skip
    assert all(r["aula_norm_union"] for r in rows if r["method"] == "LE")
    assert all(not r["aula_norm_union"] for r in rows if r["method"] == "DE")
    run = json.loads((out / "run.json").read_text())
    assert [(m["name"], m["member"]) for m in run["methods"]] == [("DE", None), ("LE", 0)]
    cost = json.loads((out / "cost.json").read_text())
    assert cost["DE"]["parameters"] == 2 * cost["LE"]["parameters"]  # one fold of two
    assert (cost["DE"]["forward_passes"], cost["LE"]["forward_passes"]) == (2, 1)


def test_the_review_controller_loads_the_fold_ensemble(converted):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    from LayerEnsemblesLib.review.controller import ReviewController
    from LayerEnsemblesLib.scene import create_scene

    controller = ReviewController(create_scene())
    try:
        assert controller.load_model(converted["all"])
        model = controller.state.model
        assert model.head_count == 2 and model.head_names == ("fold_0", "fold_1")
        assert "2 x 3 heads" in model.summary
    finally:
        controller.close()
