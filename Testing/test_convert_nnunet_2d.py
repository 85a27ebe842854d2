"""``layer-ensembles convert nnunet --configuration 2d`` on real 2D nnU-Net v2 models made by nnU-Net's code.

Two fixtures (Testing/fixtures/make_nnunet_fixture.py, one fold each, trained by nnU-Net on the CPU):

- ``Dataset902_LETinyAxial`` 2d (nnUNetTrainer_5epochs, validation Dice 0.999): 1.5 mm slices along z,
  1 mm in-plane, so nnU-Net's transpose is the identity and its 2D network runs on axial slices, as
  the engine runs 2D models. The converted final head is checked against nnUNetPredictor itself
  (mirroring off, step 0.5, Gaussian, CPU).
- ``Dataset901_LETiny`` 2d (nnUNetTrainer_1epoch): 1.5 mm voxels along x, so nnU-Net's transpose is
  [2, 0, 1] and its 2D network slices along x; the converter refuses it in one line.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runner import run_cli
from engine_models import error_lines

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install 'layer-ensembles[nnunet]')")

from LayerEnsemblesLib.contract import read_metadata  # noqa: E402
from LayerEnsemblesLib.convert.nnunet import (  # noqa: E402
    convert_nnunet,
)
from LayerEnsemblesLib.errors import InputError  # noqa: E402
from LayerEnsemblesLib.preprocessing import to_network_space  # noqa: E402
from nnunet_reference import nnunet_prediction, our_prediction  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nnunet_tiny"
_spec = importlib.util.spec_from_file_location(
    "make_nnunet_fixture", FIXTURES.parent / "make_nnunet_fixture.py"
)
_maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_maker)
make_case = _maker.make_case
AXIAL = FIXTURES / "Dataset902_LETinyAxial"
AXIAL_MODEL = AXIAL / "nnUNetTrainer_5epochs__nnUNetPlans__2d"
SAGITTAL = FIXTURES / "Dataset901_LETiny"
SAGITTAL_MODEL = SAGITTAL / "nnUNetTrainer_1epoch__nnUNetPlans__2d"
AXIAL_SPACING_XYZ = (1.0, 1.0, 1.5)


def _require(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"fixture missing: {folder}")


@pytest.fixture(scope="module")
def axial(tmp_path_factory) -> Path:
    _require(AXIAL_MODEL)
    return convert_nnunet(AXIAL, tmp_path_factory.mktemp("nnunet2d") / "axial.pt", configuration="2d")


def test_metadata_and_info_say_2d(axial):
    metadata = read_metadata(axial)
    assert metadata.spatial_dims == 2 and metadata.kind == "layer_ensemble"
    assert metadata.patch_size == [32, 32] and metadata.size_divisor == [8, 8]
    assert metadata.head_strides == [4, 2, 1] and metadata.skip_heads == 1
    assert metadata.target_spacing == [1.0, 1.0, None]  # the plans' in-plane spacing; slices kept
    assert "not_reproduced" not in metadata.provenance
    result = run_cli("info", axial)
    assert result.returncode == 0, result.stderr
    assert "network:        2D, slice by slice on axial (z) slices, 2 input channel(s)" in result.stdout
    assert "patch size:     [32, 32] (y, x) per slice" in result.stdout
    assert "target spacing: [1.0, 1.0] mm (x, y) in-plane; slice spacing (z) native" in result.stdout
    assert "nnU-Net configuration 2d, fold 0" in result.stdout


@pytest.mark.parametrize(
    ("shape", "spacing_xyz"),
    [
        ((24, 32, 32), AXIAL_SPACING_XYZ),
        ((24, 26, 28), AXIAL_SPACING_XYZ),
        ((24, 64, 32), AXIAL_SPACING_XYZ),
        ((24, 48, 40), AXIAL_SPACING_XYZ),
    ],
    ids=["one-window", "below-patch", "three-windows", "four-windows"],
)
def test_final_head_reproduces_nnunet_predictor(axial, shape, spacing_xyz):
    """Same tiling (in-plane size a multiple of the divisor, or below the patch): same windows per slice."""
    images, _ = make_case(100, shape, spacing_xyz)
    theirs_segmentation, theirs = nnunet_prediction(AXIAL_MODEL, ["0"], images)
    ours_segmentation, ours = our_prediction(axial, images)
    assert set(np.unique(theirs_segmentation)) == {0, 1, 2}  # every class: a model that segments
    agreement = float((ours_segmentation == theirs_segmentation).mean())
    assert agreement >= 0.995, agreement
    difference = np.abs(ours - theirs)
    if shape[1] <= 32 and shape[2] <= 32:
        # one window per slice: nnU-Net accumulates the Gaussian-weighted logits (x10) in float16, whose
        # step at 128..256 is 0.125, so confident logits move a probability by up to ~3e-3; with its
        # accumulator in float32 the two agree within 3e-6 (docs/nnunet.md)
        assert np.percentile(difference, 99.9) < 1e-3, np.percentile(difference, 99.9)
        assert difference.max() < 3e-3, difference.max()
    else:  # overlapping windows: the Gaussian's centre differs by half a voxel (see docs/nnunet.md)
        assert np.percentile(difference, 99) < 1e-3, np.percentile(difference, 99)


@pytest.mark.parametrize(
    ("shape", "spacing_xyz"),
    [((24, 50, 37), AXIAL_SPACING_XYZ), ((24, 40, 40), (0.8, 0.8, 1.5))],
    ids=["other-window-starts", "in-plane-0.8mm"],
)
def test_where_tiling_or_spacing_differs_labels_still_agree(axial, shape, spacing_xyz):
    """Window starts differ (sizes off the divisor), or both resample in-plane but differently.

    nnU-Net resamples the image with cubic splines and its probabilities back (linear) before the
    argmax; the engine resamples linearly and maps its network-space labels back by nearest neighbour,
    which moves thin boundaries most (docs/nnunet.md has the numbers).
    """
    images, _ = make_case(100, shape, spacing_xyz)
    theirs_segmentation, _ = nnunet_prediction(AXIAL_MODEL, ["0"], images)
    ours_segmentation, ours = our_prediction(axial, images)
    agreement = float((ours_segmentation == theirs_segmentation).mean())
    assert agreement >= 0.995, agreement
    assert float((ours.argmax(0) == theirs_segmentation).mean()) >= agreement  # the label resampling


def test_slices_are_resampled_in_plane_only_as_nnunet_does(axial):
    """0.8 mm pixels become the plans' 1 mm; the 24 slices of 1.5 mm stay as they are."""
    images, _ = make_case(3, (24, 40, 40), (0.8, 0.8, 1.5))
    array, geometry = to_network_space(sitk.Compose(images), read_metadata(axial))
    assert array.shape == (2, 24, 32, 32)
    assert geometry.reference.GetSpacing() == pytest.approx((1.0, 1.0, 1.5))


def test_segment_with_maps_and_aula_on_the_2d_file(axial, tmp_path):
    images, _ = make_case(7, (24, 32, 32), AXIAL_SPACING_XYZ)
    image = tmp_path / "case.nrrd"
    sitk.WriteImage(sitk.Compose(images), str(image))
    out = tmp_path / "out"
    result = run_cli("segment", image, "--model", axial, "--out", out, "--maps", "agreement,entropy")
    assert result.returncode == 0, result.stderr
    written = {p.name for p in out.rglob("*") if p.is_file()}
    assert any("agreement" in n for n in written) and any("entropy" in n for n in written), written
    segmentation = sitk.ReadImage(str(out / "case_seg.nrrd"))
    assert segmentation.GetSize() == (32, 32, 24)  # the input's grid, every slice
    assert segmentation.GetSpacing() == pytest.approx(AXIAL_SPACING_XYZ)
    report = json.loads((out / "case_report.json").read_text())
    assert report["aula"]["pair_labels"] == ["decoder2/decoder1"]  # the two kept heads, one pair
    assert 0.0 < report["aula"]["normalized"]["union"] <= 1.0


def test_2d_configuration_slicing_along_x_is_refused_in_one_line(tmp_path):
    _require(SAGITTAL_MODEL)
    with pytest.raises(InputError) as caught:
        convert_nnunet(SAGITTAL, tmp_path / "x.pt", configuration="2d")
    message = str(caught.value)
    assert "\n" not in message
    assert "2D configuration slicing along array axis 2 (transpose [2, 0, 1])" in message
    assert str(SAGITTAL_MODEL / "fold_0" / "checkpoint_final.pth") in message
    result = run_cli("convert", "nnunet", SAGITTAL, "--configuration", "2d", "--out", tmp_path / "y.pt")
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1, result.stderr
    assert not (tmp_path / "y.pt").exists()
