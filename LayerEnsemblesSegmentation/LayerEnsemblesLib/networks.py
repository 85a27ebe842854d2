"""Layer-ensemble U-Net: one network whose every block carries a segmentation head.

The heads return logits at their own block's resolution. Upsampling to the input size happens in
exactly one place, :func:`upsample_logits`, which both the training loss and the inference engine
call. Keeping the model output at native resolution lets the engine stream over heads (one
full-resolution tensor at a time) and keep the low-resolution logits for recombination instead of L
full-resolution copies. See ``docs/model-contract.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def _transposed_conv(spatial_dims: int) -> type[nn.Module]:
    return nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d


def _norm(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    if kind == "instance":
        return (nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d)(channels, affine=True)
    if kind == "batch":
        return (nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d)(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}; expected instance, batch, group or none")


def _dropout(spatial_dims: int, rate: float) -> nn.Module:
    if rate <= 0:
        return nn.Identity()
    return (nn.Dropout3d if spatial_dims == 3 else nn.Dropout2d)(rate)


class ConvBlock(nn.Sequential):
    """Two conv-norm-LeakyReLU layers; the first one may downsample with its stride."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, stride: int, norm: str, dropout: float
    ) -> None:
        conv = _conv(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=norm == "none"),
            _norm(norm, spatial_dims, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
            _dropout(spatial_dims, dropout),
            conv(out_channels, out_channels, 3, stride=1, padding=1, bias=norm == "none"),
            _norm(norm, spatial_dims, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UpBlock(nn.Module):
    """Transposed-conv upsampling by two, concatenation with the skip, then a ConvBlock."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.up = _transposed_conv(spatial_dims)(in_channels, out_channels, 2, stride=2)
        self.conv = ConvBlock(spatial_dims, out_channels + skip_channels, out_channels, 1, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class PointwiseHead(nn.Module):
    """A 1x1 (x1) convolution computed as one batched matrix product over the voxels.

    Same parameters (names, shapes, initialisation) and values as ``nn.Conv2d``/``nn.Conv3d`` with
    kernel size 1. On the CPU, oneDNN's 2D 1x1 convolution to a few output channels is slow: 0.35 s
    against 0.05 s for this product on a 16 x 16 x 512² batch (one thread), which made every
    full-resolution head of a 2D model cost about 2.5 % of the whole forward pass. 3D is unchanged.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        reference = _conv(spatial_dims)(in_channels, out_channels, 1)  # its initialisation, exactly
        self.weight = nn.Parameter(reference.weight.detach().clone())
        self.bias = nn.Parameter(reference.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        weight = self.weight.flatten(1)  # [K, C]
        flat = torch.baddbmm(
            self.bias[None, :, None].expand(batch, -1, 1),
            weight[None].expand(batch, -1, -1),
            x.flatten(2),
        )  # [B, K, voxels]
        return flat.view([batch, weight.shape[0]] + list(x.shape[2:]))


class LayerEnsembleUNet(nn.Module):
    """U-Net with a head on each of its ``2 * depth`` blocks (10 for the default depth 5).

    Encoder blocks run at strides 1, 2, ..., 2**(depth-1) (the last is the bottleneck); ``depth - 1``
    decoder blocks upsample back to stride 1 and a final full-resolution decoder block refines the
    result, so the heads are ordered shallow to deep along the path the signal takes. Inputs must be
    divisible by :attr:`size_divisor` along every spatial axis.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 5,
        base_channels: int = 16,
        max_channels: int = 256,
        norm: str = "instance",
        dropout: float = 0.0,
        head_kernel_size: int = 1,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.size_divisor = 2 ** (depth - 1)
        channels = [min(base_channels * 2**level, max_channels) for level in range(depth)]

        self.encoder = nn.ModuleList(
            ConvBlock(
                spatial_dims,
                in_channels if level == 0 else channels[level - 1],
                channels[level],
                1 if level == 0 else 2,
                norm,
                dropout,
            )
            for level in range(depth)
        )
        self.decoder = nn.ModuleList(
            UpBlock(spatial_dims, channels[level + 1], channels[level], channels[level], norm, dropout)
            for level in reversed(range(depth - 1))
        )
        self.final_block = ConvBlock(spatial_dims, channels[0], channels[0], 1, norm, dropout)

        conv = _conv(spatial_dims)

        def head(in_channels: int) -> nn.Module:
            if head_kernel_size == 1:
                return PointwiseHead(spatial_dims, in_channels, num_classes)
            return conv(in_channels, num_classes, head_kernel_size, padding=head_kernel_size // 2)

        # Three containers in forward order, so that forward can apply every head right after its block
        # (TorchScript unrolls a zip of module lists but cannot index one with a loop variable).
        self.encoder_heads = nn.ModuleList(head(channels[level]) for level in range(depth))
        self.decoder_heads = nn.ModuleList(head(channels[level]) for level in reversed(range(depth - 1)))
        self.final_head = head(channels[0])
        self._register_load_state_dict_pre_hook(_rename_flat_head_keys)
        self.head_names = (
            [f"encoder{level}" for level in range(depth)]
            + [f"decoder{level}" for level in reversed(range(depth - 1))]
            + ["final"]
        )
        self.head_strides = (
            [2**level for level in range(depth)] + [2**level for level in reversed(range(depth - 1))] + [1]
        )

    __jit_unused_properties__ = ["heads"]

    @property
    def heads(self) -> list[nn.Module]:
        """Every head, shallow to deep (the order of the outputs)."""
        return [*self.encoder_heads, *self.decoder_heads, self.final_head]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Each head runs as soon as its block has, and each skip is dropped once the decoder has used
        # it, so no block output outlives its use: the network holds no more feature maps than a plain
        # U-Net does, which keeps the layer ensemble's peak memory close to a plain forward's.
        outputs: list[torch.Tensor] = []
        skips: list[torch.Tensor] = []
        for block, head in zip(self.encoder, self.encoder_heads):  # noqa: B905 - TorchScript has no strict=
            x = block(x)
            outputs.append(head(x))
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for up, head in zip(self.decoder, self.decoder_heads):  # noqa: B905
            x = up(x, skips.pop())
            outputs.append(head(x))
        outputs.append(self.final_head(self.final_block(x)))
        return outputs


def _rename_flat_head_keys(state_dict: dict, prefix: str, *args) -> None:
    """Read checkpoints written before the heads were split by stage (one ``heads`` list, in order)."""
    flat = prefix + "heads."
    indices = {int(key[len(flat) :].split(".", 1)[0]) for key in state_dict if key.startswith(flat)}
    if not indices:
        return
    depth = (max(indices) + 1) // 2
    for key in [key for key in state_dict if key.startswith(flat)]:
        index, rest = key[len(flat) :].split(".", 1)
        index = int(index)
        if index < depth:
            name = f"encoder_heads.{index}.{rest}"
        elif index < 2 * depth - 1:
            name = f"decoder_heads.{index - depth}.{rest}"
        else:
            name = f"final_head.{rest}"
        state_dict[prefix + name] = state_dict.pop(key)


def upsample_logits(logits: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Bring one head's logits to ``size``: the single place where head upsampling is defined.

    Linear interpolation with ``align_corners=False`` (the paper's bilinear choice, extended to 3D).
    A head already at ``size`` is returned as is, so full-resolution heads cost nothing.
    """
    if list(logits.shape[2:]) == list(size):
        return logits
    mode = "trilinear" if logits.dim() == 5 else "bilinear"
    return F.interpolate(logits, size=size, mode=mode, align_corners=False)


def upsample_logits_into(
    logits: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`upsample_logits` written into ``out`` (shape [B, K, *size]), for the inference engine.

    The engine upsamples one head after another at full resolution, so two things matter on the CPU:

    - Writing into one reused buffer: a fresh full-resolution tensor per head costs as much in page
      faults as the interpolation itself. ``F.interpolate`` has no ``out=``, so this calls the ATen
      kernels it dispatches to.
    - Trilinear interpolation is separable: bilinear in-plane, then linear along z, is the same
      function and about twice as fast as the 8-tap trilinear kernel (2.0-3.1x at 160 x 192 x 160,
      one thread). The second step is a bilinear pass whose second axis keeps its size, i.e. weights
      exactly 1 and 0. Values agree with :func:`upsample_logits` to float rounding (tested).

    ``scratch``, a flat float buffer of at least :func:`in_plane_elements` values, holds the in-plane
    result (a temporary is allocated without it).
    """
    size = list(out.shape[2:])
    if list(logits.shape[2:]) == size:
        return out.copy_(logits)
    if logits.dim() == 4:
        return torch.ops.aten.upsample_bilinear2d.out(logits, size, False, None, None, out=out)
    batch, classes, depth, height, width = logits.shape
    planes = in_plane_elements(logits.shape, size)
    if scratch is None or scratch.numel() < planes:
        scratch = torch.empty(planes, dtype=out.dtype, device=out.device)
    in_plane = scratch[:planes].view(batch * classes * depth, 1, size[1], size[2])
    flat = logits.reshape(batch * classes * depth, 1, height, width)
    torch.ops.aten.upsample_bilinear2d.out(flat, size[1:], False, None, None, out=in_plane)
    rows = size[1] * size[2]
    along_z = out.view(batch * classes, 1, size[0], rows)
    torch.ops.aten.upsample_bilinear2d.out(
        in_plane.view(batch * classes, 1, depth, rows), [size[0], rows], False, None, None, out=along_z
    )
    return out


def in_plane_elements(shape: Sequence[int], size: Sequence[int]) -> int:
    """Scratch size :func:`upsample_logits_into` needs for 3D logits of ``shape`` going to ``size``."""
    return int(shape[0]) * int(shape[1]) * int(shape[2]) * int(size[-2]) * int(size[-1])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
