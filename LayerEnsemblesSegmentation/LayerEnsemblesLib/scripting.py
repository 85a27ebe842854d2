"""Turning a network into a TorchScript archive, and proving the archive computes what the network does.

A model file is only as good as this check. Scripting keeps shape logic symbolic; tracing records one
run and can bake that run's shapes into the archive, so tracing is used only when the model asks for it
(``export_by_tracing = True``, e.g. hooked backbones) or the caller passes ``trace=True`` — never as a
silent fallback. The saved archive is then reloaded and compared with the eager network on the patch
size *and* on a second input of another size, where a baked-in shape shows; any non-finite output
(NaN weights give NaN - NaN, which never exceeds a tolerance) is refused. The caller's network keeps
its device and its train/eval mode.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch

from .errors import InputError, first_line

TOLERANCE = 1e-4


def check_shapes(patch_size: Sequence[int], size_divisor: Sequence[int]) -> list[list[int]]:
    """The patch size, and a second size one size divisor larger on every axis.

    Larger, not smaller: a smaller input can leave one voxel at the bottleneck, where instance norm fails.
    """
    divisors = list(size_divisor) or [1] * len(patch_size)
    return [list(patch_size), [size + divisor for size, divisor in zip(patch_size, divisors, strict=True)]]


def script_or_trace(model: torch.nn.Module, example: torch.Tensor, trace: bool, source: str):
    if trace:
        return torch.jit.trace(model, example, check_trace=False, strict=False)
    try:
        return torch.jit.script(model)
    except Exception as error:  # noqa: BLE001 - TorchScript raises many types; the reason is its message
        raise InputError(
            f"{source}: the model cannot be scripted ({first_line(error)}); models with hooks or "
            "Python-side state set `export_by_tracing = True` (checked on two input sizes) or pass trace=True"
        ) from None


def archive_bytes(
    model: torch.nn.Module,
    in_channels: int,
    shapes: Sequence[Sequence[int]],
    num_heads: int,
    extra_files: dict[str, str],
    trace: bool | None,
    source: str,
) -> bytes:
    """The checked archive's bytes; the caller's ``model`` is left in its mode and on its device."""
    trace = bool(getattr(model, "export_by_tracing", False)) if trace is None else trace
    # each submodule's own mode: a wrapper made for export (train mode by default) must not switch the
    # caller's network, which it holds, into train mode on the way out
    modes = [(module, module.training) for module in model.modules()]
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, in_channels, *shape, generator=generator).to(device) for shape in shapes]
    model.eval()
    try:
        scripted = script_or_trace(model, inputs[0], trace, source)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer, _extra_files=extra_files)
        archive = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location=device)
        with torch.no_grad():
            for example in inputs:
                _compare(model(example), archive(example), num_heads, tuple(example.shape[2:]), source)
    finally:
        for module, training in modes:
            module.training = training
    return buffer.getvalue()


def _compare(expected, actual, num_heads: int, size: tuple[int, ...], source: str) -> None:
    if len(expected) != len(actual) or len(actual) != num_heads:
        raise InputError(
            f"{source}: the model returns {len(actual)} outputs but the metadata declares {num_heads} heads"
        )
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        if not bool(torch.isfinite(e).all()):
            raise InputError(
                f"{source}: the model's output {index} holds NaN or infinite values on a {size} input "
                "(damaged or diverged weights?)"
            )
        if a.shape != e.shape:
            raise InputError(
                f"{source}: the exported model's output {index} has shape {tuple(a.shape)} on a {size} input "
                f"where the model gives {tuple(e.shape)} (a traced shape baked into the archive?)"
            )
        worst = float((a.float() - e.float()).abs().max()) if a.numel() else 0.0
        if not worst <= TOLERANCE:  # also catches NaN in the archive only
            raise InputError(
                f"{source}: the exported model differs from the eager model by {worst:.2e} on a {size} input"
            )
