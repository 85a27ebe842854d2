"""``layer-ensembles convert nnunet`` on a real nnU-Net v2 model folder made by nnU-Net's own code.

The fixture (Testing/fixtures/nnunet_tiny, made by Testing/fixtures/make_nnunet_fixture.py) is two
folds of nnUNetTrainer_1epoch on a synthetic two-channel dataset (CT + MRI normalisation, 1.5 mm x
voxels so nnU-Net transposes the axes). Faithfulness is checked against nnUNetPredictor itself.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runner import run_cli
from engine_models import error_lines

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install 'layer-ensembles[nnunet]')")

from LayerEnsemblesLib.cli import main as cli_main  # noqa: E402
from LayerEnsemblesLib.contract import read_metadata  # noqa: E402
from LayerEnsemblesLib.convert.nnunet import (  # noqa: E402
    convert_nnunet,
    load_checkpoint,
)
from LayerEnsemblesLib.errors import InputError  # noqa: E402
from LayerEnsemblesLib.inference import Predictor  # noqa: E402
from nnunet_reference import nnunet_prediction, our_prediction  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DATASET = FIXTURES / "nnunet_tiny" / "Dataset901_LETiny"
MODEL = DATASET / "nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_nnunet_fixture", FIXTURES / "make_nnunet_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_case = _fixture_module().make_case


@pytest.fixture(scope="module")
def fold0(tmp_path_factory) -> Path:
    if not MODEL.is_dir():
        pytest.skip(f"fixture missing: {MODEL}")
    return convert_nnunet(DATASET, tmp_path_factory.mktemp("nnunet") / "fold0.pt", configuration="3d_fullres")


def test_metadata_reproduces_the_plans(fold0):
    metadata = read_metadata(fold0)
    assert metadata.kind == "layer_ensemble"
    assert [(c.name, c.value) for c in metadata.classes] == [("background", 0), ("shell", 1), ("core", 2)]
    assert metadata.head_strides == [4, 2, 1]  # every decoder output, coarse to fine
    assert metadata.skip_heads == 1  # nnU-Net trains its coarsest output with weight 0
    assert metadata.target_spacing == [1.5, 1.0, 1.0]  # plans' spacing, back in (x, y, z)
    assert metadata.patch_size == [32, 32, 24]  # plans' [24, 32, 32] in nnU-Net's transposed order
    assert metadata.size_divisor == [8, 8, 4]
    plans = json.loads((MODEL / "plans.json").read_text())
    ct = plans["foreground_intensity_properties_per_channel"]["0"]
    assert metadata.normalization == {
        "method": "per_channel",
        "channels": [
            {
                "method": "clip_zscore",
                "lower": ct["percentile_00_5"],
                "upper": ct["percentile_99_5"],
                "mean": ct["mean"],
                "std": ct["std"],
            },
            {"method": "zscore"},
        ],
    }
    assert metadata.provenance["converted_from"].startswith("nnU-Net configuration 3d_fullres, fold 0")


def test_info_says_where_the_model_came_from(fold0):
    result = run_cli("info", fold0)
    assert result.returncode == 0, result.stderr
    assert "nnU-Net configuration 3d_fullres, fold 0" in result.stdout
    assert "nnUNetTrainer_1epoch" in result.stdout


@pytest.mark.parametrize(
    "shape", [(32, 32, 24), (64, 32, 24), (26, 28, 18)], ids=["one-window", "three-windows", "below-patch"]
)
def test_final_head_reproduces_nnunet_predictor(fold0, shape):
    images, _ = make_case(100, shape)
    theirs_segmentation, theirs = nnunet_prediction(MODEL, ["0"], images)
    ours_segmentation, ours = our_prediction(fold0, images)
    agreement = float((ours_segmentation == theirs_segmentation).mean())
    assert agreement >= 0.995, agreement
    assert len(np.unique(theirs_segmentation)) >= 2  # a real segmentation, not a constant
    difference = np.abs(ours - theirs)
    if shape != (64, 32, 24):  # one window: only rounding differs (nnU-Net keeps logits in float16)
        assert difference.max() < 1e-3, difference.max()
    else:  # the same three windows; nnU-Net's Gaussian is centred half a voxel off (see docs/nnunet.md)
        assert np.percentile(difference, 99) < 1e-3, np.percentile(difference, 99)


def test_checkpoint_loads_with_weights_only_and_a_numpy_allow_list():
    checkpoint = load_checkpoint(MODEL / "fold_0" / "checkpoint_final.pth")
    assert checkpoint["trainer_name"] == "nnUNetTrainer_1epoch"
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["network_weights"].values())


def test_segment_on_the_converted_file_writes_maps_and_aula(fold0, tmp_path):
    images, _ = make_case(7)
    image = tmp_path / "case.nrrd"
    sitk.WriteImage(sitk.Compose(images), str(image))
    result = run_cli(
        "segment", image, "--model", fold0, "--out", tmp_path / "out", "--maps", "agreement,entropy"
    )
    assert result.returncode == 0, result.stderr
    written = {p.name for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert any("agreement" in n for n in written) and any("entropy" in n for n in written), written
    assert any(n.endswith(".json") for n in written), written


def test_all_folds_become_a_deep_ensemble(tmp_path):
    if not MODEL.is_dir():
        pytest.skip(f"fixture missing: {MODEL}")
    path = convert_nnunet(MODEL, tmp_path / "folds.pt", folds=["all"])
    metadata = read_metadata(path)
    assert metadata.kind == "deep_ensemble" and metadata.members == 2
    assert metadata.head_names == ["fold_0", "fold_1"]
    assert "folds 0, 1" in metadata.provenance["converted_from"]
    images, _ = make_case(100)
    theirs_segmentation, _ = nnunet_prediction(MODEL, ["0", "1"], images)
    predictor = Predictor(path, device="cpu")
    ours = sitk.GetArrayFromImage(predictor.predict(sitk.Compose(images), maps=None).segmentation)
    # nnU-Net averages the folds' logits, the engine their probabilities: nearly the same labels
    assert float((ours == theirs_segmentation).mean()) >= 0.99


def _copy_model(tmp_path: Path) -> Path:
    if not MODEL.is_dir():
        pytest.skip(f"fixture missing: {MODEL}")
    copy = tmp_path / DATASET.name / MODEL.name
    shutil.copytree(MODEL, copy)
    return copy


def _error(*arguments) -> str:
    with pytest.raises(InputError) as caught:
        convert_nnunet(*arguments[:2], **arguments[2] if len(arguments) > 2 else {})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_input_is_one_line_each(tmp_path):
    out = tmp_path / "out.pt"
    assert "not an nnU-Net model folder" in _error(tmp_path, out)
    assert "fold 3 is missing" in _error(MODEL, out, {"folds": ["3"]})
    assert "configuration '3d_lowres' was not trained" in _error(DATASET, out, {"configuration": "3d_lowres"})

    unknown = _copy_model(tmp_path / "trainer")
    checkpoint = torch.load(unknown / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainerNobodyWrote"
    torch.save(checkpoint, unknown / "fold_0" / "checkpoint_final.pth")
    assert "unknown nnU-Net trainer 'nnUNetTrainerNobodyWrote'" in _error(unknown, out)

    architecture = _copy_model(tmp_path / "architecture")
    plans = json.loads((architecture / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "mypackage.MyNet"
    (architecture / "plans.json").write_text(json.dumps(plans))
    assert "cannot build the network" in _error(architecture, out)

    regions = _copy_model(tmp_path / "regions")
    dataset = json.loads((regions / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    dataset["regions_class_order"] = [1, 2]
    (regions / "dataset.json").write_text(json.dumps(dataset))
    assert "region-based model" in _error(regions, out)

    cascade_root = tmp_path / "cascade" / DATASET.name
    cascade = cascade_root / "nnUNetTrainer_1epoch__nnUNetPlans__3d_cascade_fullres"
    shutil.copytree(MODEL, cascade)
    plans = json.loads((cascade / "plans.json").read_text())
    plans["configurations"]["3d_cascade_fullres"] = {
        "inherits_from": "3d_fullres",
        "previous_stage": "3d_lowres",
    }
    (cascade / "plans.json").write_text(json.dumps(plans))
    assert "cascade configuration" in _error(cascade_root, out, {"configuration": "3d_cascade_fullres"})


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    code = cli_main(["convert", "nnunet", str(tmp_path), "--out", str(tmp_path / "x.pt")])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    result = run_cli("convert", "nnunet", DATASET, "--configuration", "3d_lowres", "--out", tmp_path / "y.pt")
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1


def test_best_checkpoint_of_another_fold(tmp_path):
    if not MODEL.is_dir():
        pytest.skip(f"fixture missing: {MODEL}")
    path = convert_nnunet(MODEL, tmp_path / "best.pt", folds=["fold_0"], checkpoint="best")
    provenance = read_metadata(path).provenance
    assert provenance["checkpoint"] == "checkpoint_best.pth" and provenance["fold"] == "0"
    with pytest.raises(InputError, match="no checkpoint_best.pth"):
        convert_nnunet(MODEL, tmp_path / "best1.pt", folds=["1"], checkpoint="best")
