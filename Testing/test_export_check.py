"""The export check: an archive is written only when it computes what the eager network computes.

Each test exports a real network and would pass with a check that compares only on the trace input,
ignores non-finite outputs, or falls back to tracing without being asked.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from LayerEnsemblesLib.contract import ModelMetadata, default_classes, export_model, load_model
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.networks import LayerEnsembleUNet
from torch import nn


def tiny_network(seed: int = 0) -> LayerEnsembleUNet:
    torch.manual_seed(seed)
    return LayerEnsembleUNet(3, 1, 3, depth=3, base_channels=4)


def metadata_for(num_heads: int, strides: list[int], divisor: int = 4) -> ModelMetadata:
    return ModelMetadata(
        spatial_dims=3,
        in_channels=1,
        classes=default_classes(["background", "anterior", "posterior"]),
        head_names=[f"head{i}" for i in range(num_heads)],
        head_strides=strides,
        patch_size=[16, 16, 16],
        size_divisor=[divisor] * 3,
        target_spacing=[1.0, 1.0, 1.0],
        name="export-check",
    )


def unet_metadata(network: LayerEnsembleUNet) -> ModelMetadata:
    metadata = metadata_for(len(network.head_names), list(network.head_strides), network.size_divisor)
    metadata.head_names = list(network.head_names)
    return metadata


class ShapeBakingHeads(nn.Module):
    """Two heads, the second upsampled to a size read from the input as Python ints (a trace bakes them)."""

    export_by_tracing = True

    def __init__(self) -> None:
        super().__init__()
        self.full = nn.Conv3d(1, 3, 3, padding=1)
        self.coarse = nn.Conv3d(1, 3, 3, padding=1, stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = [int(s) // 2 for s in x.shape[2:]]
        coarse = F.interpolate(self.coarse(x), size=size)
        return [self.full(x), coarse]


class HookedNetwork(ShapeBakingHeads):
    """A model that cannot be scripted (a forward hook) and did not ask to be traced."""

    export_by_tracing = False

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, torch.Tensor] = {}
        self.full.register_forward_hook(lambda _m, _i, output: self.seen.__setitem__("full", output))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.full(x)
        return [self.seen["full"], self.coarse(x)]


def test_a_shape_baked_in_by_tracing_is_refused(tmp_path):
    path = tmp_path / "baked.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trace's own warnings
        with pytest.raises(InputError, match=r"output 1 has shape .*\(20, 20, 20\) input"):
            export_model(ShapeBakingHeads(), metadata_for(2, [1, 2]), path)
    assert not path.exists()


def test_nan_weights_are_refused(tmp_path):
    network = tiny_network()
    with torch.no_grad():
        network.heads[-1].weight.fill_(float("nan"))
    with pytest.raises(InputError, match="NaN or infinite"):
        export_model(network, unet_metadata(network), tmp_path / "nan.pt")
    assert not (tmp_path / "nan.pt").exists()


def test_infinite_weights_in_a_shallow_head_are_refused(tmp_path):
    network = tiny_network()
    with torch.no_grad():
        network.heads[0].bias.fill_(float("inf"))
    with pytest.raises(InputError, match="output 0 holds NaN or infinite"):
        export_model(network, unet_metadata(network), tmp_path / "inf.pt")


def test_a_model_that_cannot_be_scripted_is_not_traced_silently(tmp_path):
    with pytest.raises(InputError, match="cannot be scripted.*export_by_tracing"):
        export_model(HookedNetwork(), metadata_for(2, [1, 2]), tmp_path / "hooked.pt")
    assert not (tmp_path / "hooked.pt").exists()
    # asked for explicitly, the trace is made and checked on both sizes (this model has no baked shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_model(HookedNetwork(), metadata_for(2, [1, 2]), tmp_path / "hooked.pt", trace=True)
    module, _ = load_model(path)
    outputs = module(torch.randn(1, 1, 24, 16, 20))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 24, 16, 20), (1, 3, 12, 8, 10)]


def test_the_callers_model_keeps_its_mode_and_device(tmp_path):
    network = tiny_network().train()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    path = export_model(network, unet_metadata(network), tmp_path / "model.pt")
    assert network.training  # not switched to eval behind the caller's back
    assert all(p.device.type == "cpu" for p in network.parameters())
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    module, _ = load_model(path)
    assert not module.training
    network.eval()
    x = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        assert max(float((a - e).abs().max()) for a, e in zip(module(x), network(x), strict=True)) < 1e-4
