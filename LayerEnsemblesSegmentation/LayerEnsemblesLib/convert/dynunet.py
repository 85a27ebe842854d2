"""MONAI DynUNet state dicts as layer ensembles, without retraining.

A DynUNet built with ``deep_supervision=True`` computes ``deep_supr_num`` extra segmentation outputs
(``super_head`` convolutions) on its upper decoder stages and keeps them, at their native resolution,
in ``network.heads`` on every forward pass, in eval mode too (only in training mode does it upsample
and stack them). The archive returns those heads, coarse to fine, and the final output last.

``NET.json`` holds the constructor arguments and the preprocessing the network was trained with::

    {
      "dynunet": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "kernel_size": [...],
                  "strides": [...], "upsample_kernel_size": [...], "filters": [...],
                  "deep_supervision": true, "deep_supr_num": 2, "res_block": false},
      "labels": {"background": 0, "anterior": 1, "posterior": 2},
      "array_axes": "xyz",
      "patch_size": [64, 64, 32],
      "target_spacing": [1.0, 1.0, 1.0],
      "orientation": null,
      "normalization": {"method": "zscore"},
      "name": "my-dynunet"
    }

``array_axes`` is the order of the network's spatial axes: ``"xyz"`` for MONAI's loaders (their default
``reverse_indexing`` gives x, y, z arrays), ``"zyx"`` for SimpleITK arrays; ``patch_size`` is in that
order, ``target_spacing`` always (x, y, z) in mm. monai is imported only here, lazily.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..contract import DEFAULT_COLORS, ClassInfo, ModelMetadata, default_classes
from ..errors import InputError, first_line
from ..fileio import read_json_object
from .heads import DecoderHeads, export_checked, isotropic_strides, probe_strides

STATE_DICT_KEYS = ("state_dict", "model", "network_weights", "model_state_dict")


def read_config(path: str | Path) -> dict[str, Any]:
    config = read_json_object(path, "network description not found")
    if not isinstance(config.get("dynunet"), dict):
        raise InputError(f'{path}: no "dynunet" object with the DynUNet constructor arguments')
    arguments = config["dynunet"]
    if not arguments.get("deep_supervision") or int(arguments.get("deep_supr_num", 0)) < 1:
        raise InputError(
            f"{path}: the DynUNet has no deep supervision (deep_supervision true, deep_supr_num >= 1 "
            "needed): it has a single head, nothing to ensemble"
        )
    if "patch_size" not in config:
        raise InputError(f"{path}: patch_size (the training patch, in the network's axis order) is missing")
    if config.get("array_axes", "xyz") not in ("xyz", "zyx"):
        raise InputError(f'{path}: array_axes must be "xyz" or "zyx"')
    return config


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict (or a checkpoint dict holding one) read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling refusal becomes one line
        raise InputError(f"{path}: not loadable with weights_only=True ({first_line(error)})") from None
    if isinstance(loaded, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _dynunet_heads(network: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    final = network(x)
    supervision = list(network.heads)  # heads[0] is the finest; the contract wants coarse first
    return [*supervision[::-1], final]


def build_network(config: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> nn.Module:
    try:
        from monai.networks.nets import DynUNet
    except ModuleNotFoundError:
        raise InputError(
            "converting DynUNet models needs MONAI: pip install 'layer-ensembles[monai]'"
        ) from None
    try:
        network = DynUNet(**config["dynunet"])
    except (TypeError, ValueError, AssertionError) as error:
        raise InputError(f"{source}: DynUNet arguments rejected ({first_line(error)})") from None
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(
            f"{source}: weights do not fit the described DynUNet ({first_line(error)})"
        ) from None
    return network.eval()


def convert_dynunet(
    checkpoint: str | Path,
    config_path: str | Path,
    out: str | Path,
    overwrite: bool = False,
    name: str | None = None,
) -> Path:
    config = read_config(config_path)
    state = load_state_dict(checkpoint)
    network = build_network(config, state, str(checkpoint))
    arguments = config["dynunet"]
    spatial_dims = int(arguments["spatial_dims"])
    channels = int(arguments["in_channels"])
    patch = [int(p) for p in config["patch_size"]]
    if len(patch) != spatial_dims:
        raise InputError(f"{config_path}: patch_size must hold {spatial_dims} sizes")
    reverse = config.get("array_axes", "xyz") == "xyz"
    axes = list(range(spatial_dims))[::-1] if reverse else None  # engine (z, y, x) <-> network order
    strides = probe_strides(network, _dynunet_heads, [1, channels, *patch], str(checkpoint))
    engine_strides = [s[::-1] if reverse else s for s in strides]
    finest, scales = isotropic_strides(engine_strides)
    divisor = [1] * spatial_dims
    for stride in arguments["strides"]:
        stride = [stride] * spatial_dims if isinstance(stride, int) else list(stride)
        divisor = [d * s for d, s in zip(divisor, stride, strict=True)]
    to_engine = (lambda v: list(v)[::-1]) if reverse else list
    metadata = ModelMetadata(
        spatial_dims=spatial_dims,
        in_channels=channels,
        classes=_classes(config, int(arguments["out_channels"]), str(config_path)),
        head_names=[f"deep_supervision{i}" for i in range(len(strides) - 1, 0, -1)] + ["output"],
        head_strides=finest,
        skip_heads=0,
        target_spacing=config.get("target_spacing"),
        orientation=config.get("orientation"),
        normalization=config.get("normalization", {"method": "zscore"}),
        patch_size=to_engine(patch),
        size_divisor=to_engine(divisor),
        pad_to_patch=True,  # sliding_window_inference pads images smaller than roi_size with zeros
        pad_value=0.0,
        name=name or config.get("name", "dynunet"),
        provenance={
            "converted_from": f"MONAI DynUNet {Path(checkpoint).name} with {Path(config_path).name}",
            "library_version": __version__,
            "torch_version": torch.__version__,
            "converted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    heads = DecoderHeads(network, _dynunet_heads, axes, scales)
    batch = 2 if spatial_dims == 2 else 1
    second = [
        batch,
        channels,
        *(p + d for p, d in zip(metadata.patch_size, metadata.size_divisor, strict=True)),
    ]
    return export_checked(heads, metadata, out, overwrite, second)


def _classes(config: dict[str, Any], outputs: int, source: str) -> list[ClassInfo]:
    labels = config.get("labels")
    if labels is None:
        return default_classes(["background", *(f"class{i}" for i in range(1, outputs))])
    if not isinstance(labels, dict) or len(labels) != outputs:
        raise InputError(f"{source}: labels must name each of the {outputs} output channels (name: value)")
    ordered = sorted(labels.items(), key=lambda item: int(item[1]))
    return [
        ClassInfo(n, int(v), list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)]))
        for i, (n, v) in enumerate(ordered)
    ]
