"""Turning networks that are not ours into layer ensembles, and exporting them through the contract."""

from __future__ import annotations

import warnings

import pytest
import torch
from LayerEnsemblesLib.attach import AttachedLayerEnsemble
from LayerEnsemblesLib.contract import ModelMetadata, default_classes, export_model, load_model
from torch import nn


class PlainEncoderDecoder(nn.Module):
    """A small 2D encoder-decoder written without any notion of heads."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.bottom = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(12, 4, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.bottom(self.down(self.stem(x)))))


def metadata_for(model: AttachedLayerEnsemble, patch: list[int], divisor: int) -> ModelMetadata:
    dims = model.spatial_dims
    return ModelMetadata(
        spatial_dims=dims,
        in_channels=model.in_channels,
        classes=default_classes(["background", "a", "b"]),
        head_names=model.head_names,
        head_strides=model.head_strides,
        patch_size=patch,
        size_divisor=[divisor] * dims,
        name="attached",
    )


def test_probing_finds_channels_and_strides_of_named_layers():
    torch.manual_seed(0)
    model = AttachedLayerEnsemble(PlainEncoderDecoder(), ["stem", "down", "bottom", "up"], 3, [1, 1, 16, 16])
    assert model.head_strides == [1, 2, 4, 1]
    assert [h.in_channels for h in model.heads] == [4, 8, 12, 4]
    x = torch.randn(2, 1, 16, 24)
    outputs = model(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 24), (2, 3, 8, 12), (2, 3, 4, 6), (2, 3, 16, 24)]
    # each head is its conv applied to exactly the hooked layer's output
    backbone = model.backbone
    bottom = backbone.bottom(backbone.down(backbone.stem(x)))
    assert torch.allclose(outputs[2], model.heads[2](bottom), atol=1e-6)


def test_unknown_layers_and_non_integer_strides_are_refused():
    with pytest.raises(ValueError, match="no layer"):
        AttachedLayerEnsemble(PlainEncoderDecoder(), ["stem", "decoder9"], 3, [1, 1, 16, 16])
    odd = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(3))
    with pytest.raises(ValueError, match="not an integer stride"):
        AttachedLayerEnsemble(odd, ["1"], 2, [1, 1, 16, 16])


def test_attached_plain_network_exports_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = AttachedLayerEnsemble(
        PlainEncoderDecoder(), ["stem", "down", "bottom", "up"], 3, [1, 1, 16, 16]
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_model(model, metadata_for(model, [16, 16], 4), tmp_path / "attached.pt")
        loaded, metadata = load_model(path)
    assert metadata.head_strides == [1, 2, 4, 1]
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        for actual, expected in zip(loaded(x), model(x), strict=True):
            assert float((actual - expected).abs().max()) < 1e-4


def test_monai_basic_unet_becomes_a_layer_ensemble_that_round_trips(tmp_path):
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    backbone = monai_nets.BasicUNet(
        spatial_dims=3, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4)
    )
    layers = ["conv_0", "down_1", "down_2", "down_3", "down_4", "upcat_4", "upcat_3", "upcat_2", "upcat_1"]
    model = AttachedLayerEnsemble(backbone, layers, num_classes=3, probe_shape=[1, 1, 32, 32, 32]).eval()
    assert model.head_strides == [1, 2, 4, 8, 16, 8, 4, 2, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_model(model, metadata_for(model, [32, 32, 32], 16), tmp_path / "monai.pt")
        loaded, metadata = load_model(path)
    assert metadata.num_heads == 9
    # also at a size other than the trace's example: the archive must follow the input
    x = torch.randn(1, 1, 32, 48, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        actual, expected = loaded(x), model(x)
    assert [tuple(a.shape) for a in actual] == [tuple(e.shape) for e in expected]
    assert max(float((a - e).abs().max()) for a, e in zip(actual, expected, strict=True)) < 1e-4
