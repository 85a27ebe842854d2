"""A converted archive in the Slicer module's scene logic (slicer-core), loaded as it is.

The DynUNet converter's archive (x, y, z network inside, deep-supervision heads, anisotropic
divisor) goes through the same ``ReviewSession.process`` as the Slicer module's Apply button. The
scene logic takes single-component volumes, so the network here has one input channel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scene_support import blob_image

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.importorskip("monai", reason="MONAI is not installed")

from LayerEnsemblesLib.convert.dynunet import convert_dynunet  # noqa: E402
from LayerEnsemblesLib.scene import ReviewSession, create_scene  # noqa: E402
from LayerEnsemblesLib.scene.geometry import add_volume_from_image  # noqa: E402
from LayerEnsemblesLib.scene.runtime import model_summary  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from monai.networks.nets import DynUNet

    folder = tmp_path_factory.mktemp("dynunet1")
    arguments = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "kernel_size": [3, 3, 3],
        "strides": [1, 2, 2],
        "upsample_kernel_size": [2, 2],
        "filters": [4, 8, 16],
        "deep_supervision": True,
        "deep_supr_num": 1,
    }
    torch.manual_seed(0)
    torch.save(DynUNet(**arguments).state_dict(), folder / "net.pt")
    config = {"dynunet": arguments, "labels": {"background": 0, "blob": 1}, "patch_size": [16, 16, 8]}
    (folder / "NET.json").write_text(json.dumps(config))
    return convert_dynunet(folder / "net.pt", folder / "NET.json", folder / "model.pt", name="converted")


def test_the_module_summary_and_a_review_run_take_the_converted_file(converted):
    summary = model_summary(converted)
    assert summary["headCount"] == 2 and "converted from: MONAI DynUNet net.pt" in summary["text"]
    image = blob_image()
    context = create_scene()
    volume = add_volume_from_image(context.scene, image, "input")
    result = ReviewSession(context).process(volume, converted, device="cpu")
    heatmap = context.node(result.heatmap_ids["agreement"])
    shown = slicer.util.arrayFromVolume(heatmap)
    assert shown.shape == slicer.util.arrayFromVolume(volume).shape
    assert np.isfinite(shown).all()
