"""From a run folder to a model file: rebuild the network, load a checkpoint, fill the metadata, export.

The metadata is built by the same function the training loop uses to preprocess its data, so the
exported file carries exactly the preprocessing the network was trained with.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..contract import DEFAULT_COLORS, ClassInfo, ModelMetadata, export_model
from ..errors import InputError, first_line
from ..networks import LayerEnsembleUNet
from .checkpointing import load_checkpoint
from .config import TrainConfig

CONFIG_FILE = "config.json"


def build_network(config: TrainConfig, num_classes: int, in_channels: int) -> LayerEnsembleUNet:
    return LayerEnsembleUNet(
        config.spatial_dims,
        in_channels,
        num_classes,
        depth=config.depth,
        base_channels=config.base_channels,
        max_channels=config.max_channels,
        norm=config.norm,
        dropout=config.dropout,
    )


def normalization_settings(config: TrainConfig) -> dict[str, Any]:
    if config.normalization == "percentile":
        return {"method": "percentile_zscore", "lower": config.percentiles[0], "upper": config.percentiles[1]}
    if config.normalization == "ct":
        return {"method": "ct_window", "center": config.ct_window[0], "width": config.ct_window[1]}
    return {"method": config.normalization}


def build_metadata(config: TrainConfig, data: dict[str, Any], network: LayerEnsembleUNet) -> ModelMetadata:
    """The model's metadata; ``data`` is the run's data summary (classes, channels, dataset name)."""
    classes = [
        ClassInfo(name, int(value), list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)]))
        for i, (name, value) in enumerate(zip(data["class_names"], data["class_values"], strict=False))
    ]
    return ModelMetadata(
        spatial_dims=config.spatial_dims,
        in_channels=int(data["in_channels"]),
        classes=classes,
        head_names=list(network.head_names),
        head_strides=list(network.head_strides),
        skip_heads=config.skip_heads,
        target_spacing=list(config.target_spacing) if isinstance(config.target_spacing, list) else None,
        orientation=config.orientation,
        normalization=normalization_settings(config),
        patch_size=list(config.patch_size) or [network.size_divisor] * config.spatial_dims,
        size_divisor=[network.size_divisor] * config.spatial_dims,
        name=config.name or data.get("name") or "model",
    )


def read_run_config(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{run_dir}: not a training run folder (no {CONFIG_FILE})")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        config, data = document["config"], document["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{path}: malformed run configuration ({error})") from None
    return TrainConfig.from_dict(config, str(path)), data


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    checkpoint: str = "best",
    overwrite: bool = False,
    skip_heads: int | None = None,
    name: str | None = None,
) -> Path:
    """Export ``best.pt`` or ``last.pt`` of a run as a TorchScript model file with full metadata."""
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise InputError(f"checkpoint {checkpoint!r}: expected best or last")
    config, data = read_run_config(run_dir)
    state = load_checkpoint(run_dir / f"{checkpoint}.pt")
    network = build_network(config, len(data["class_names"]), int(data["in_channels"]))
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as error:
        raise InputError(
            f"{run_dir / f'{checkpoint}.pt'}: weights do not fit the run's network "
            f"({first_line(error)})"
        ) from None
    metadata = build_metadata(config, data, network)
    if skip_heads is not None:
        metadata.skip_heads = skip_heads
    if name:
        metadata.name = name
    metadata.provenance = {
        "dataset": data.get("name"),
        "dataset_licence": data.get("licence"),
        "dataset_source": data.get("origin"),
        "training_cases": data.get("num_train"),
        "validation_cases": data.get("num_validation"),
        "epochs": int(state["epoch"]),
        "checkpoint": checkpoint,
        "best_epoch": state.get("best_epoch"),
        "validation": _summary(state.get("metrics") or {}),
        "head_weights": config.head_weights,
        "seed": config.seed,
        "library_version": __version__,
        "torch_version": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out = Path(out) if out else run_dir / "model.pt"
    return export_model(network, metadata, out, overwrite=overwrite)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The validation numbers worth carrying in a model file (rounded for a readable `info`)."""
    validation = metrics.get("val") or {}
    keep = {}
    for key in ("ensemble_dice", "ensemble_dice_per_class", "head_dice", "skip_heads", "cases"):
        if key in validation:
            keep[key] = _rounded(validation[key])
    return keep


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value
