"""The converters' shared parts without nnU-Net or MONAI: head wrapping, axis order, new normalisations."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from LayerEnsemblesLib.contract import ModelMetadata, default_classes, read_metadata
from LayerEnsemblesLib.convert.heads import DecoderHeads, export_checked, isotropic_strides, probe_strides
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.inference import Predictor
from LayerEnsemblesLib.preprocessing import normalize, to_network_space
from torch import nn


class AnisotropicDecoder(nn.Module):
    """Outputs at per-axis strides (1, 2, 2) and (1, 1, 1) in its own axis order, like nnU-Net's."""

    def __init__(self) -> None:
        super().__init__()
        self.coarse = nn.Conv3d(1, 2, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.fine = nn.Conv3d(1, 2, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.fine(x), self.coarse(x)]  # full resolution first, as nnU-Net returns them


def shallow_first(network: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return list(network(x))[::-1]


def test_strides_are_probed_per_axis_and_made_isotropic():
    network = AnisotropicDecoder()
    strides = probe_strides(network, shallow_first, [1, 1, 4, 8, 8], "toy")
    assert strides == [[1, 2, 2], [1, 1, 1]]
    finest, scales = isotropic_strides(strides)
    assert finest == [1, 1]
    assert scales == [[1.0, 2.0, 2.0], [1.0, 1.0, 1.0]]
    assert isotropic_strides([[2, 2, 2], [1, 1, 1]]) == ([2, 1], None)


def test_axes_are_permuted_in_and_out_and_heads_brought_to_one_stride():
    torch.manual_seed(0)
    network = AnisotropicDecoder().eval()
    axes = [2, 0, 1]  # network axis i reads engine axis axes[i]
    engine_strides = [[s[axes.index(a)] for a in range(3)] for s in [[1, 2, 2], [1, 1, 1]]]
    finest, scales = isotropic_strides(engine_strides)
    heads = DecoderHeads(network, shallow_first, axes, scales)
    x = torch.randn(1, 1, 8, 8, 4)  # engine (z, y, x)
    coarse, fine = heads(x)
    assert fine.shape == coarse.shape == (1, 2, 8, 8, 4)
    expected = network(x.permute(0, 1, 4, 2, 3))[0].permute(0, 1, 3, 4, 2)
    assert torch.allclose(fine, expected)


def test_export_checks_a_second_input_size(tmp_path):
    network = AnisotropicDecoder().eval()
    heads = DecoderHeads(network, shallow_first, None, [[1.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    metadata = ModelMetadata(
        spatial_dims=3,
        in_channels=1,
        classes=default_classes(["background", "thing"]),
        head_names=["coarse", "fine"],
        head_strides=[1, 1],
        patch_size=[4, 8, 8],
        size_divisor=[1, 2, 2],
        normalization={"method": "none"},
    )
    path = export_checked(heads, metadata, tmp_path / "toy.pt", False, [1, 1, 6, 10, 12])
    assert read_metadata(path).head_names == ["coarse", "fine"]
    with pytest.raises(InputError, match="already exists"):
        export_checked(heads, metadata, path, False, [1, 1, 6, 10, 12])


def test_clip_zscore_uses_fixed_statistics():
    array = np.array([-1000.0, 0.0, 50.0, 3000.0], np.float32)
    settings = {"method": "clip_zscore", "lower": -100.0, "upper": 200.0, "mean": 50.0, "std": 25.0}
    assert normalize(array, settings).tolist() == [-6.0, -2.0, 0.0, 6.0]


def per_channel_metadata(**overrides) -> ModelMetadata:
    fields = dict(
        spatial_dims=3,
        in_channels=2,
        classes=default_classes(["background", "thing"]),
        head_names=["final"],
        head_strides=[1],
        patch_size=[8, 8, 8],
        size_divisor=[1, 1, 1],
        normalization={
            "method": "per_channel",
            "channels": [
                {"method": "clip_zscore", "lower": 0.0, "upper": 10.0, "mean": 5.0, "std": 5.0},
                {"method": "zscore"},
            ],
        },
    )
    fields.update(overrides)
    return ModelMetadata(**fields)


def test_per_channel_normalisation_is_applied_channel_by_channel():
    rng = np.random.default_rng(0)
    channels = [rng.uniform(-5, 15, (8, 8, 8)), rng.normal(300, 40, (8, 8, 8))]
    image = sitk.Compose([sitk.GetImageFromArray(c.astype(np.float32)) for c in channels])
    array, _ = to_network_space(image, per_channel_metadata())
    assert np.allclose(array[0], (np.clip(channels[0], 0, 10) - 5) / 5, atol=1e-5)
    assert abs(array[1].mean()) < 1e-4 and abs(array[1].std() - 1) < 1e-3


@pytest.mark.parametrize(
    "normalization, message",
    [
        ({"method": "per_channel", "channels": [{"method": "zscore"}]}, "one normalization per input"),
        ({"method": "per_channel", "channels": [{"method": "zscore"}, {"method": "gamma"}]}, "must be one"),
        ({"method": "clip_zscore", "lower": 0, "upper": 1, "mean": 0}, "needs finite numbers"),
    ],
)
def test_bad_normalisations_are_refused(normalization, message):
    with pytest.raises(InputError, match=message):
        per_channel_metadata(normalization=normalization).validate("model.pt")


def test_a_per_channel_model_segments(tmp_path):
    class TwoChannel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [self.conv(x)]

    from LayerEnsemblesLib.contract import export_model

    path = export_model(TwoChannel(), per_channel_metadata(), tmp_path / "two.pt")
    image = sitk.Compose(
        [sitk.GetImageFromArray(np.random.default_rng(i).normal(size=(8, 8, 8))) for i in (1, 2)]
    )
    prediction = Predictor(path, device="cpu").predict(image, maps=None)
    assert prediction.segmentation.GetSize() == (8, 8, 8)
