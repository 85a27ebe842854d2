"""`layer-ensembles evaluate` end to end in a subprocess: two real methods on a small synthetic dataset."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from conftest import make_tiny_model
from LayerEnsemblesLib.cli import main
from LayerEnsemblesLib.evaluation import baselines, metrics
from synthetic_dataset import write_synthetic_dataset


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("evaluate", *args, timeout=600)


def _rows(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluation")
    dataset = write_synthetic_dataset(folder / "data", count=4)
    split = folder / "split.json"
    split.write_text(json.dumps({"train": ["case_000", "case_001"], "validation": ["case_002", "case_003"]}))
    # a patch as large as the images: one window per prediction keeps the test fast
    layer_ensemble = make_tiny_model(folder / "le.pt", seed=0, patch_size=[32, 32, 32])
    members = [make_tiny_model(folder / f"m{i}.pt", seed=10 + i, patch_size=[32, 32, 32]) for i in range(2)]
    deep_ensemble = baselines.export_deep_ensemble(members, folder / "de.pt")
    out = folder / "report"
    completed = _cli(
        "--model", f"LE={layer_ensemble}", "--model", f"DE={deep_ensemble}",
        "--dataset", str(dataset), "--cases", f"{split}:validation",
        "--shifts", "noise", "--severities", "3", "--device", "cpu", "--no-progress", "--out", str(out),
        "--pair-curves",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return folder, out, dataset, layer_ensemble, completed


def test_pair_curves_rebuild_the_decision_score_and_add_size_features(evaluation):
    from LayerEnsemblesLib.contract import read_metadata
    from LayerEnsemblesLib.evaluation import score_selection

    _, out, _, layer_ensemble, _ = evaluation
    rows = _rows(out / "cases.csv")
    le = [r for r in rows if r["method"] == "LE"]
    metadata = read_metadata(layer_ensemble)
    pairs = score_selection.pair_matrix(le, "union")
    assert pairs.shape == (len(le), metadata.num_heads - 1)  # every head, not only the kept ones
    rebuilt = score_selection.normalised_aula(pairs, metadata.skip_heads)
    assert rebuilt == pytest.approx([float(r["aula_norm_union"]) for r in le], abs=1e-6)
    for row in le:
        assert float(row["volume_union_ml"]) >= float(row["volume_structure1_ml"]) >= 0
        classes = [
            float(row[k]) for k in row if k.startswith("aula_norm_") and k[10:] not in ("union", "class_mean")
        ]
        assert float(row["aula_norm_class_mean"]) == pytest.approx(np.mean(classes), abs=1e-6)
    assert all(r["pair_union_0"] == "" for r in rows if r["method"] == "DE")  # layer ensembles only
    run = json.loads((out / "run.json").read_text())
    assert [m.get("decision_score") for m in run["methods"]] == ["aula_norm_union"] * 2


def test_cases_csv_has_one_row_per_method_case_and_condition(evaluation):
    _, out, *_ = evaluation
    rows = _rows(out / "cases.csv")
    keys = {(r["method"], r["case"], r["condition"]) for r in rows}
    assert len(rows) == len(keys) == 2 * 2 * 2  # methods x validation cases x (clean, noise-3)
    assert {r["case"] for r in rows} == {"case_002", "case_003"}
    assert {r["condition"] for r in rows} == {"clean", "noise-3"}
    for row in rows:
        for column in ("dice_structure1", "dice_structure2", "dice_union", "dice_mean"):
            assert 0.0 <= float(row[column]) <= 1.0
        for column in (
            "mhd_mean",
            "hd95_union",
            "nll",
            "entropy_sum",
            "mutual_information_sum",
            "variance_sum",
        ):
            assert float(row[column]) >= 0.0
        if row["method"] == "LE":
            assert 0.0 <= float(row["aula_norm_union"]) <= 1.0
            assert float(row["aula_raw_union"]) == pytest.approx(4 * float(row["aula_norm_union"]), abs=1e-6)
        else:
            assert row["kind"] == "deep_ensemble" and row["aula_norm_union"] == ""


def test_csv_metrics_match_an_independent_prediction(evaluation):
    _, out, dataset, layer_ensemble, _ = evaluation
    from LayerEnsemblesLib.inference import Predictor

    image = sitk.ReadImage(str(dataset.parent / "imagesTr" / "case_002.nii.gz"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset.parent / "labelsTr" / "case_002.nii.gz")))
    prediction = Predictor(layer_ensemble, device="cpu").predict(image, maps=("entropy",))
    segmentation = sitk.GetArrayFromImage(prediction.segmentation)
    probabilities = sitk.GetArrayFromImage(prediction.probabilities)
    (row,) = [r for r in _rows(out / "cases.csv") if (r["method"], r["case"], r["condition"]) ==
              ("LE", "case_002", "clean")]  # fmt: skip
    assert float(row["dice_structure1"]) == pytest.approx(
        metrics.dice(segmentation == 1, label == 1), abs=1e-7
    )
    assert float(row["nll"]) == pytest.approx(metrics.negative_log_likelihood(probabilities, label), rel=1e-6)
    entropy = sitk.GetArrayFromImage(prediction.maps["entropy"]).astype(np.float64).sum()
    assert float(row["entropy_sum"]) == pytest.approx(entropy, rel=1e-5)
    assert float(row["aula_norm_union"]) == pytest.approx(prediction.aula.normalized["union"], abs=1e-7)


def test_head_curve_cost_and_run_files(evaluation):
    _, out, *_ = evaluation
    heads = _rows(out / "heads.csv")
    assert {r["method"] for r in heads} == {"LE"}
    assert len(heads) == 2 * 2 * 6  # cases x conditions x (k = 0 .. 5 of 6 heads)
    assert sorted({int(r["skip_heads"]) for r in heads}) == list(range(6))
    # k = 0 keeps every head: the same prediction as the row in cases.csv
    cases = {(r["case"], r["condition"]): r for r in _rows(out / "cases.csv") if r["method"] == "LE"}
    all_heads = [row for row in heads if row["skip_heads"] == "0"]
    assert len(all_heads) == 2 * 2
    for row in all_heads:
        assert float(row["nll"]) == pytest.approx(float(cases[(row["case"], row["condition"])]["nll"]))
    cost = json.loads((out / "cost.json").read_text())
    assert cost["LE"]["forward_passes"] == 1 and cost["DE"]["forward_passes"] == 2
    assert cost["DE"]["parameters"] > cost["LE"]["parameters"]
    for name in ("LE", "DE"):
        probe = cost[name]["probe"]
        assert "error" not in probe, probe
        assert probe["seconds_warm"] > 0 and probe["peak_host_mb"] >= 0
    run = json.loads((out / "run.json").read_text())
    assert run["reference"] == "LE" and run["dice_threshold"] == 0.8


def test_report_files(evaluation):
    _, out, *_ = evaluation
    report = (out / "report.md").read_text()
    for heading in (
        "Table 1",
        "Table 2",
        "Fig. 2",
        "Fig. 3",
        "Cost",
        "Clean cases only",
        "Failure detection",
    ):
        assert heading in report
    failure_rows = [
        line for line in report.splitlines() if line.startswith("| LE | AULA (normalised) union | ")
    ]
    # Table 2 over all conditions (ρ with its case interval) and the failure-detection table have intervals;
    # Table 2 on clean cases (a p-value) and the QC table do not
    assert len(failure_rows) == 4 and sum("[" in row for row in failure_rows) == 2
    assert "| **LE** | 4 |" in report  # reference row of Table 1 over 2 cases x 2 conditions
    assert "| DE | entropy (sum) |" in report
    # the DE's metadata names an AULA decision score it has no column for: its main score stays its
    # mutual information (not the first column it has), in the paired comparison with the reference
    run = json.loads((out / "run.json").read_text())
    assert {m["name"]: m["decision_score"] for m in run["methods"]}["DE"] == "aula_norm_union"
    assert "| DE: mutual information (sum) |" in report
    for figure in ("fig2_qc.png", "fig2_qc_main.png", "fig3_heads.png", "scores_vs_dice.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({figure})" in report
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "fig2_qc.png" in html


def test_report_only_rebuilds_from_the_csv(evaluation):
    _, out, *_ = evaluation
    before = (out / "cases.csv").read_bytes()
    assert main(["evaluate", "--report-only", str(out), "--dice-threshold", "0.05"]) == 0  # in process: fast
    assert "dice_mean < 0.05" in (out / "report.md").read_text()
    assert (out / "cases.csv").read_bytes() == before


def test_existing_evaluation_is_not_overwritten(evaluation):
    folder, out, dataset, layer_ensemble, _ = evaluation
    before = (out / "cases.csv").read_bytes()
    completed = _cli("--model", f"LE={layer_ensemble}", "--dataset", str(dataset), "--out", str(out))
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "--overwrite" in completed.stderr
    assert (out / "cases.csv").read_bytes() == before


def test_bad_arguments_give_one_line_errors(evaluation, tmp_path, capsys):
    folder, _, dataset, layer_ensemble, _ = evaluation
    cases = [
        (("--model", f"LE={layer_ensemble}", "--dataset", str(dataset), "--shifts", "sparkle", "--out",
          str(tmp_path / "a")), "unknown shift"),
        (("--model", f"LE={layer_ensemble}", "--dataset", str(dataset), "--cases",
          f"{folder}/split.json:test", "--out", str(tmp_path / "b")), "no list 'test'"),
        (("--model", f"LE={layer_ensemble}", "--out", str(tmp_path / "c")), "--dataset"),
        (("--report-only", str(tmp_path)), "no cases.csv"),
    ]  # fmt: skip
    for arguments, message in cases:  # in process (the subprocess path is tested above): fast
        assert main(["evaluate", *arguments]) == 2, arguments
        stderr = capsys.readouterr().err
        assert message in stderr and stderr.strip().count("\n") == 0


def test_resume_completes_missing_rows_only(evaluation, tmp_path):
    import shutil

    _, out, dataset, *_ = evaluation
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    rows = _rows(copy / "cases.csv")
    kept = [r for r in rows if not (r["method"] == "DE" and r["case"] == "case_003")]
    with open(copy / "cases.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    run = json.loads((out / "run.json").read_text())
    models = [f"{m['name']}={m['path']}" for m in run["methods"]]
    arguments = ["evaluate", "--dataset", str(dataset), "--cases", f"{out.parent}/split.json:validation",
                 "--shifts", "noise", "--severities", "3", "--device", "cpu", "--no-progress",
                 "--no-cost-probe", "--out", str(copy), "--resume"]  # fmt: skip
    for model in models:
        arguments += ["--model", model]
    assert main(arguments) == 0
    resumed = _rows(copy / "cases.csv")
    assert len(resumed) == len(rows)
    before = {(r["method"], r["case"], r["condition"]): r for r in rows}
    for row in resumed:
        reference = before[(row["method"], row["case"], row["condition"])]
        assert float(row["dice_mean"]) == pytest.approx(float(reference["dice_mean"]), abs=1e-6)
        assert float(row["nll"]) == pytest.approx(float(reference["nll"]), rel=1e-5)
    assert len(_rows(copy / "heads.csv")) == len(_rows(out / "heads.csv"))


def _resume_arguments(out, dataset, copy, models):
    arguments = ["evaluate", "--dataset", str(dataset), "--cases", f"{out.parent}/split.json:validation",
                 "--shifts", "noise", "--severities", "3", "--device", "cpu", "--no-progress",
                 "--no-cost-probe", "--out", str(copy), "--resume"]  # fmt: skip
    for model in models:
        arguments += ["--model", model]
    return arguments


def test_resume_with_another_model_under_the_same_name_is_refused(evaluation, tmp_path, capsys):
    import shutil

    folder, out, dataset, *_ = evaluation
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    before = (copy / "cases.csv").read_bytes()
    run = json.loads((out / "run.json").read_text())
    other = make_tiny_model(tmp_path / "other.pt", seed=5, patch_size=[32, 32, 32])
    models = {m["name"]: m["path"] for m in run["methods"]}
    for swapped in ("LE", "DE"):  # either method's model replaced by another file
        arguments = _resume_arguments(
            out, dataset, copy, [f"{n}={other if n == swapped else p}" for n, p in models.items()]
        )
        assert main(arguments) == 2
        stderr = capsys.readouterr().err
        assert stderr.strip().count("\n") == 0 and f"method {swapped!r}" in stderr and "SHA-256" in stderr
        assert (copy / "cases.csv").read_bytes() == before
    # a run file from before checksums were recorded cannot vouch for its rows either
    stripped = json.loads((copy / "run.json").read_text())
    for method in stripped["methods"]:
        method.pop("sha256")
    (copy / "run.json").write_text(json.dumps(stripped))
    assert main(_resume_arguments(out, dataset, copy, [f"{n}={p}" for n, p in models.items()])) == 2
    assert "records no checksum" in capsys.readouterr().err
    assert (copy / "cases.csv").read_bytes() == before


def test_a_failing_case_is_a_row_and_the_others_are_evaluated(tmp_path, capsys):
    dataset = write_synthetic_dataset(tmp_path / "data", count=3)
    labels = tmp_path / "data" / "labelsTr"
    shifted = sitk.ReadImage(str(labels / "case_001.nii.gz"))
    shifted.SetOrigin((40.0, 0.0, 0.0))  # shifted 40 mm: same size and spacing, wrong place
    sitk.WriteImage(shifted, str(labels / "case_001.nii.gz"))
    full = sitk.GetImageFromArray(np.ones((20, 24, 22), np.uint8))  # fills the volume: surface at the border
    sitk.WriteImage(full, str(labels / "case_002.nii.gz"))
    model = make_tiny_model(tmp_path / "le.pt", seed=0, patch_size=[32, 32, 32])
    out = tmp_path / "out"
    arguments = ["evaluate", "--model", f"LE={model}", "--dataset", str(dataset), "--shifts", "noise",
                 "--severities", "1", "--device", "cpu", "--no-progress", "--no-cost-probe",
                 "--out", str(out)]  # fmt: skip
    code = main(arguments)
    stderr = capsys.readouterr().err
    assert code == 2
    rows = {(r["case"], r["condition"]): r for r in _rows(out / "cases.csv")}
    assert len(rows) == 3 * 2
    for condition in ("clean", "noise-1"):
        assert (
            "origin" in rows[("case_001", condition)]["error"]
            and rows[("case_001", condition)]["dice_mean"] == ""
        )
        assert (
            rows[("case_000", condition)]["error"] == ""
            and float(rows[("case_000", condition)]["dice_mean"]) >= 0
        )
        full_row = rows[("case_002", condition)]
        assert full_row["error"] == "" and np.isfinite(float(full_row["hd95_union"]))
    assert sum("error: case_001" in line for line in stderr.splitlines()) == 2
    assert (out / "report.md").is_file()
