"""The layer-ensemble U-Net: one head per block, shallow to deep, at the documented strides."""

from __future__ import annotations

import pytest
import torch
from LayerEnsemblesLib.networks import (
    LayerEnsembleUNet,
    PointwiseHead,
    count_parameters,
    in_plane_elements,
    upsample_logits,
    upsample_logits_into,
)


def test_default_depth_gives_ten_heads_ordered_shallow_to_deep():
    network = LayerEnsembleUNet(spatial_dims=3, in_channels=1, num_classes=3)
    assert len(network.heads) == 10
    assert network.head_names == [
        "encoder0",
        "encoder1",
        "encoder2",
        "encoder3",
        "encoder4",
        "decoder3",
        "decoder2",
        "decoder1",
        "decoder0",
        "final",
    ]
    assert network.head_strides == [1, 2, 4, 8, 16, 8, 4, 2, 1, 1]
    assert network.size_divisor == 16


@pytest.mark.parametrize("spatial_dims, shape", [(3, (16, 24, 32)), (2, (32, 40))])
def test_each_head_returns_class_logits_at_its_stride(spatial_dims, shape):
    torch.manual_seed(0)
    network = LayerEnsembleUNet(spatial_dims, in_channels=2, num_classes=4, depth=3, base_channels=4).eval()
    outputs = network(torch.randn(2, 2, *shape))
    assert len(outputs) == 6
    for output, stride in zip(outputs, network.head_strides, strict=True):
        assert tuple(output.shape) == (2, 4, *(s // stride for s in shape))


def test_every_head_gets_gradient_from_its_own_loss():
    torch.manual_seed(0)
    network = LayerEnsembleUNet(3, 1, 2, depth=3, base_channels=4)
    outputs = network(torch.randn(1, 1, 8, 8, 8))
    sum(o.sum() for o in outputs).backward()
    for head in network.heads:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_heads_add_a_small_fraction_of_parameters():
    # the paper: heads cost about 0.14 % of the parameters;
    # 1x1 heads on a depth-5 3D U-Net cost less than 0.5 %
    network = LayerEnsembleUNet(3, 1, 3, depth=5, base_channels=16)
    head_parameters = sum(count_parameters(h) for h in network.heads)
    assert head_parameters / count_parameters(network) < 0.005


def test_dropout_is_active_in_training_mode_only():
    torch.manual_seed(0)
    network = LayerEnsembleUNet(3, 1, 2, depth=2, base_channels=4, dropout=0.5)
    x = torch.randn(1, 1, 8, 8, 8)
    network.train()
    first, second = network(x)[-1], network(x)[-1]
    assert not torch.allclose(first, second)
    network.eval()
    assert torch.equal(network(x)[-1], network(x)[-1])


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
def test_normalisation_choices_build_and_run(norm):
    network = LayerEnsembleUNet(2, 1, 2, depth=2, base_channels=8, norm=norm).eval()
    assert len(network(torch.randn(2, 1, 8, 8))) == 4


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="spatial_dims"):
        LayerEnsembleUNet(spatial_dims=4)
    with pytest.raises(ValueError, match="depth"):
        LayerEnsembleUNet(depth=1)
    with pytest.raises(ValueError, match="normalisation"):
        LayerEnsembleUNet(norm="layer")


def test_upsample_logits_keeps_full_size_heads_untouched():
    logits = torch.randn(1, 3, 4, 6, 8)
    assert upsample_logits(logits, [4, 6, 8]) is logits


def test_upsample_logits_is_linear_with_half_pixel_centres():
    # 1D ramp [0, 2] upsampled by 2 with align_corners=False: centres at -0.25, 0.25, 0.75, 1.25 of the
    # source grid, clamped at the borders, give 0, 0.5, 1.5, 2
    logits = torch.tensor([[[[0.0, 2.0]]]])  # [B=1, K=1, H=1, W=2]
    result = upsample_logits(logits, [1, 4])
    assert torch.allclose(result, torch.tensor([[[[0.0, 0.5, 1.5, 2.0]]]]))
    volume = torch.randn(2, 3, 2, 3, 4)
    assert upsample_logits(volume, [4, 6, 8]).shape == (2, 3, 4, 6, 8)


def _block_outputs(network: LayerEnsembleUNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output, shallow to deep, computed step by step outside ``forward``."""
    features, skips = [], []
    for block in network.encoder:
        x = block(x)
        features.append(x)
        skips.append(x)
    for up, skip in zip(network.decoder, reversed(skips[:-1]), strict=True):
        x = up(x, skip)
        features.append(x)
    features.append(network.final_block(x))
    return features


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_each_head_reads_its_own_block_eager_and_scripted(spatial_dims):
    torch.manual_seed(0)
    network = LayerEnsembleUNet(spatial_dims, 1, 3, depth=4, base_channels=4).eval()
    x = torch.randn(1, 1, *[16] * spatial_dims)
    with torch.no_grad():
        expected = [head(f) for head, f in zip(network.heads, _block_outputs(network, x), strict=True)]
        for outputs in (network(x), torch.jit.script(network)(x)):
            assert len(outputs) == len(expected) == 8
            for output, reference in zip(outputs, expected, strict=True):
                assert torch.allclose(output, reference, atol=1e-6)


def test_checkpoints_with_one_flat_head_list_still_load():
    """Before the heads were split by stage, the state dict named them ``heads.0`` .. ``heads.{2D-1}``."""
    torch.manual_seed(0)
    source = LayerEnsembleUNet(3, 1, 3, depth=3, base_channels=4).eval()
    flat = {k: v for k, v in source.state_dict().items() if "_head" not in k}
    for index, head in enumerate(source.heads):
        flat.update({f"heads.{index}.{name}": value for name, value in head.state_dict().items()})
    assert len(flat) == len(source.state_dict())
    torch.manual_seed(1)
    target = LayerEnsembleUNet(3, 1, 3, depth=3, base_channels=4).eval()
    target.load_state_dict(flat)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(source(x), target(x), strict=True))


@pytest.mark.parametrize(
    "low, size",
    [
        ((1, 3, 4, 6, 5), (16, 24, 20)),
        ((2, 2, 3, 4, 5), (7, 9, 11)),
        ((1, 3, 8, 8, 8), (8, 16, 16)),
        ((5, 2, 8, 10), (32, 40)),
    ],
)
def test_engine_upsampling_into_a_buffer_equals_the_defining_one(low, size):
    """The engine's separable, buffer-reusing upsampling is the function ``upsample_logits`` defines."""
    torch.manual_seed(0)
    logits = torch.randn(low) * 5
    expected = upsample_logits(logits, list(size))
    scratch = torch.empty(in_plane_elements(low, size) + 7) if len(size) == 3 else None
    for buffer in (None, scratch):
        out = torch.full((low[0], low[1], *size), float("nan"))
        assert upsample_logits_into(logits, out, buffer) is out
        assert torch.allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spatial_dims, shape", [(2, (4, 16, 24, 20)), (3, (2, 16, 6, 8, 10))])
def test_pointwise_head_is_a_1x1_convolution(spatial_dims, shape):
    """Same initialisation, parameter layout and outputs as the convolution it replaces."""
    torch.manual_seed(0)
    head = PointwiseHead(spatial_dims, 16, 3)
    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(16, 3, 1)
    assert torch.equal(head.weight, conv.weight) and torch.equal(head.bias, conv.bias)
    assert head.state_dict().keys() == conv.state_dict().keys()
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.allclose(head(x), conv(x), atol=1e-5)
        assert torch.allclose(torch.jit.script(head)(x), conv(x), atol=1e-5)
        strided = x.transpose(-1, -2)
        assert torch.allclose(head(strided), conv(strided), atol=1e-5)


def test_larger_head_kernels_stay_convolutions():
    network = LayerEnsembleUNet(2, 1, 2, depth=2, base_channels=4, head_kernel_size=3)
    assert all(isinstance(head, torch.nn.Conv2d) for head in network.heads)
    assert all(isinstance(head, PointwiseHead) for head in LayerEnsembleUNet(2, 1, 2, depth=2).heads)
