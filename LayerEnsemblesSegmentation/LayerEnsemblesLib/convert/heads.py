"""What every converter shares: a deep-supervision network seen through the model contract.

A converted network already computes one segmentation output per decoder stage; :class:`DecoderHeads`
only reorders them shallow (coarse) to deep (final), moves the input into the network's own axis
order and the outputs back (nnU-Net's transpose), and, where a head's stride differs between axes,
interpolates it inside the archive to its finest stride so that the contract's single isotropic
stride per head holds. Nothing is retrained and no weight is changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from ..contract import ModelMetadata, export_model
from ..errors import InputError
from ..members import HeadsEnsemble

HeadsFunction = Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]


class DecoderHeads(nn.Module):
    """``forward`` returns the network's decoder outputs as the contract's head list.

    ``collect`` runs ``network`` on an input in the network's axis order and returns its outputs
    shallow to deep; ``axes`` is the permutation from the engine's (z, y, x) array order to the
    network's; ``scales`` holds, per head, the per-axis factors (engine order) that bring it to its
    finest stride.
    """

    def __init__(
        self,
        network: nn.Module,
        collect: HeadsFunction,
        axes: Sequence[int] | None = None,
        scales: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.collect = collect
        self.axes = list(axes) if axes is not None else None
        self.inverse = [self.axes.index(a) for a in range(len(self.axes))] if self.axes is not None else None
        self.scales = [list(s) for s in scales] if scales is not None else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.axes is not None:
            x = x.permute(0, 1, *[2 + a for a in self.axes])
        outputs = self.collect(self.network, x)
        heads = []
        for index, output in enumerate(outputs):
            if self.inverse is not None:
                output = output.permute(0, 1, *[2 + a for a in self.inverse])
            if self.scales is not None and any(s != 1 for s in self.scales[index]):
                mode = "trilinear" if output.dim() == 5 else "bilinear"
                output = functional.interpolate(
                    output, scale_factor=tuple(self.scales[index]), mode=mode, align_corners=False
                )
            heads.append(output)
        return heads


@torch.no_grad()
def probe_strides(
    network: nn.Module, collect: HeadsFunction, probe_shape: Sequence[int], source: str
) -> list[list[int]]:
    """Each output's per-axis stride (in the network's own axis order), found by one pass on zeros."""
    network.eval()
    outputs = collect(network, torch.zeros(*probe_shape))
    strides = []
    for output in outputs:
        spatial = output.shape[2:]
        stride = [int(p // s) for p, s in zip(probe_shape[2:], spatial, strict=True)]
        if any(p != s * st for p, s, st in zip(probe_shape[2:], spatial, stride, strict=True)):
            raise InputError(
                f"{source}: an output of shape {tuple(output.shape)} is not a stride of the input"
            )
        strides.append(stride)
    if strides and any(s != 1 for s in strides[-1]):
        raise InputError(f"{source}: the final output has stride {strides[-1]}; expected full resolution")
    return strides


def isotropic_strides(strides: Sequence[Sequence[int]]) -> tuple[list[int], list[list[float]] | None]:
    """Per head the finest stride, and the per-axis factors that bring anisotropic heads to it."""
    finest = [min(s) for s in strides]
    scales = [[axis / f for axis in s] for s, f in zip(strides, finest, strict=True)]
    anisotropic = any(any(v != 1 for v in scale) for scale in scales)
    return finest, (scales if anisotropic else None)


def export_checked(
    model: nn.Module, metadata: ModelMetadata, path: str | Path, overwrite: bool, second_shape: list[int]
) -> Path:
    """Export, then check once more at another input size: a trace must not have baked in the patch."""
    try:  # converted networks often call Python-side code: traced then, and checked at two sizes
        torch.jit.script(model)
        trace = False
    except Exception:  # noqa: BLE001 - TorchScript raises many types; any of them means "trace it"
        trace = True
    written = export_model(model, metadata, path, overwrite=overwrite, trace=trace)
    archive = torch.jit.load(str(written))
    probe = torch.randn(*second_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model.eval()(probe), archive(probe)
    worst = max(float((a - e).abs().max()) for a, e in zip(actual, expected, strict=True))
    if worst > 1e-4:
        written.unlink()
        raise InputError(
            f"{path}: the exported archive is wrong at input size {second_shape[2:]} (differs by "
            f"{worst:.2e}); this network cannot be traced for sliding windows"
        )
    return written


def export_fold_ensemble(
    members: Sequence[DecoderHeads],
    template: ModelMetadata,
    path: str | Path,
    member_names: Sequence[str],
    overwrite: bool,
    second_shape: list[int],
) -> Path:
    """Several converted networks (e.g. nnU-Net's folds) as one ``deep_ensemble`` archive whose members
    keep their heads.

    ``forward`` returns each member's final head, as every deep ensemble does; ``member_heads(x, k)``
    returns member k's heads as ``template`` (one converted fold's metadata) lists them, so that the
    member view of the archive is that fold's own layer ensemble. Each member is traced alone, on the
    same input shape as a single fold's export, and the ensemble is scripted around the traces (a traced
    module keeps no exported methods).
    """
    metadata = copy.deepcopy(template)
    metadata.kind = "deep_ensemble"
    metadata.head_names = list(member_names)
    metadata.head_strides = [1] * len(members)
    metadata.members = len(members)
    metadata.skip_heads = 0
    metadata.aula_threshold = None
    if template.num_heads > 1:
        metadata.member_heads = template.num_heads
        metadata.member_head_names = list(template.head_names)
        metadata.member_head_strides = list(template.head_strides)
        metadata.member_skip_heads = template.skip_heads
    example = torch.randn(
        1, template.in_channels, *template.patch_size, generator=torch.Generator().manual_seed(0)
    )
    traced = []
    for member in members:
        member.eval()
        with torch.no_grad():
            traced.append(torch.jit.trace(member, example, check_trace=False, strict=False))
    written = export_checked(HeadsEnsemble(traced), metadata, path, overwrite, second_shape)
    archive = torch.jit.load(str(written))
    probe = torch.randn(*second_shape, generator=torch.Generator().manual_seed(2))
    for index, member in enumerate(members):
        with torch.no_grad():
            expected, actual = member(probe), archive.member_heads(probe, index)
        worst = max(float((a - e).abs().max()) for a, e in zip(actual, expected, strict=True))
        if len(actual) != len(expected) or worst > 1e-4:
            written.unlink()
            raise InputError(
                f"{path}: member {index}'s heads in the exported archive differ from its network "
                f"(by {worst:.2e} at input size {second_shape[2:]})"
            )
    return written
