"""``layer-ensembles convert dynunet`` on a real MONAI DynUNet state dict (Testing/fixtures/dynunet_tiny).

The fixture was trained briefly with deep supervision by Testing/fixtures/make_dynunet_fixture.py on
the nnU-Net fixture's synthetic cases; faithfulness is checked against MONAI's own
``sliding_window_inference`` on the same normalised array.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runner import run_cli
from engine_models import error_lines
from test_convert_nnunet import make_case

pytest.importorskip("monai", reason="MONAI is not installed (pip install 'layer-ensembles[monai]')")

from LayerEnsemblesLib.contract import read_metadata  # noqa: E402
from LayerEnsemblesLib.convert.dynunet import convert_dynunet, load_state_dict  # noqa: E402
from LayerEnsemblesLib.errors import InputError  # noqa: E402
from LayerEnsemblesLib.inference import Predictor  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dynunet_tiny"
CHECKPOINT = FIXTURE / "dynunet.pt"
CONFIG = FIXTURE / "NET.json"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert_dynunet(CHECKPOINT, CONFIG, tmp_path_factory.mktemp("dynunet") / "dynunet.pt")


def test_metadata_and_heads(converted):
    metadata = read_metadata(converted)
    assert metadata.head_names == ["deep_supervision2", "deep_supervision1", "output"]
    assert metadata.head_strides == [4, 2, 1]
    assert metadata.patch_size == [32, 32, 24]  # NET.json's (x, y, z) patch in the engine's (z, y, x)
    assert [c.value for c in metadata.classes] == [0, 1, 2]
    result = run_cli("info", converted)
    assert result.returncode == 0 and "MONAI DynUNet dynunet.pt" in result.stdout


def monai_prediction(images: list[sitk.Image]) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's sliding_window_inference on the z-scored x, y, z array; softmax back in (z, y, x).

    Also returns where MONAI's Gaussian is clamped (at 1e-3 of its peak, ours is not) in some window
    covering the voxel: there, at the volume's corners, the two blend the windows differently.
    """
    from monai.data.utils import dense_patch_slices
    from monai.inferers import sliding_window_inference
    from monai.inferers.utils import _get_scan_interval, compute_importance_map
    from monai.networks.nets import DynUNet

    config = json.loads(CONFIG.read_text())
    network = DynUNet(**config["dynunet"])
    network.load_state_dict(load_state_dict(CHECKPOINT))
    network.eval()
    channels = []
    for image in images:
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        channels.append(((array - array.mean()) / array.std()).transpose(2, 1, 0))
    volume = torch.from_numpy(np.stack(channels))[None]
    with torch.no_grad():
        logits = sliding_window_inference(
            volume, config["patch_size"], 1, network, overlap=0.5, mode="gaussian", sigma_scale=0.125
        )
    weights = compute_importance_map(config["patch_size"], mode="gaussian", sigma_scale=0.125).numpy()
    size = volume.shape[2:]
    padded = [max(s, p) for s, p in zip(size, config["patch_size"], strict=True)]  # MONAI pads to roi_size
    interval = _get_scan_interval(padded, config["patch_size"], 3, (0.5,) * 3)
    clamped = np.zeros(padded, bool)
    for window in dense_patch_slices(padded, config["patch_size"], interval):
        clamped[window] |= weights <= weights.min() * (1 + 1e-6)
    crop = tuple(slice((p - s) // 2, (p - s) // 2 + s) for p, s in zip(padded, size, strict=True))
    return torch.softmax(logits[0], 0).numpy().transpose(0, 3, 2, 1), clamped[crop].transpose(2, 1, 0)


@pytest.mark.parametrize(
    "shape", [(32, 32, 24), (64, 32, 24), (26, 28, 18)], ids=["one-window", "three-windows", "below-patch"]
)
def test_final_head_reproduces_sliding_window_inference(converted, shape):
    images, _ = make_case(100, shape)
    theirs, clamped = monai_prediction(images)
    predictor = Predictor(converted, device="cpu")
    prediction = predictor.predict(sitk.Compose(images), skip_heads=2, maps=None)
    ours = np.moveaxis(sitk.GetArrayFromImage(prediction.probabilities), -1, 0)
    segmentation = sitk.GetArrayFromImage(prediction.segmentation)
    assert len(np.unique(segmentation)) == 3
    assert float((segmentation == theirs.argmax(0)).mean()) >= 0.995
    difference = np.abs(ours - theirs).max(0)
    assert difference[~clamped].max() < 1e-3, difference[~clamped].max()
    assert (~clamped).mean() > 0.3  # MONAI clamps ~58% of a 3D window: the rest is compared


def test_bad_input_is_one_line(tmp_path):
    config = json.loads(CONFIG.read_text())
    config["dynunet"]["deep_supervision"] = False
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(config))
    with pytest.raises(InputError, match="no deep supervision"):
        convert_dynunet(CHECKPOINT, flat, tmp_path / "a.pt")
    config = json.loads(CONFIG.read_text())
    config["dynunet"]["filters"] = [8, 16, 32, 64]
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps(config))
    with pytest.raises(InputError, match="weights do not fit"):
        convert_dynunet(CHECKPOINT, wider, tmp_path / "b.pt")
    pickled = tmp_path / "pickled.pt"
    torch.save({"network": torch.nn.Identity()}, pickled)
    result = run_cli("convert", "dynunet", pickled, "--config", CONFIG, "--out", tmp_path / "c.pt")
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1
    assert "weights_only" in result.stderr
