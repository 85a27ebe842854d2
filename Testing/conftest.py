"""Shared fixtures: real exported TorchScript models and real image files, made on the fly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LayerEnsemblesSegmentation"
if str(MODULE_DIR) not in sys.path:  # the engine package also works without `pip install -e`
    sys.path.insert(0, str(MODULE_DIR))

HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "Task04_Hippocampus_dev"


@pytest.fixture(scope="session")
def hippocampus_dir() -> Path:
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"hippocampus data not found at {HIPPOCAMPUS}")
    return HIPPOCAMPUS


def make_tiny_model(
    path: Path, spatial_dims: int = 3, num_classes: int = 3, seed: int = 0, **overrides
) -> Path:
    """Export a small, untrained but real layer-ensemble model (depth 3: 6 heads)."""
    import torch
    from LayerEnsemblesLib.contract import ModelMetadata, default_classes, export_model
    from LayerEnsemblesLib.networks import LayerEnsembleUNet

    torch.manual_seed(seed)
    network = LayerEnsembleUNet(spatial_dims, 1, num_classes, depth=3, base_channels=4)
    names = ["background"] + [f"structure{i}" for i in range(1, num_classes)]
    fields = dict(
        spatial_dims=spatial_dims,
        in_channels=1,
        classes=default_classes(names),
        head_names=network.head_names,
        head_strides=network.head_strides,
        patch_size=[16] * spatial_dims,
        size_divisor=[network.size_divisor] * spatial_dims,
        target_spacing=[1.0, 1.0, 1.0],
        name="tiny-test-model",
    )
    fields.update(overrides)
    return export_model(network, ModelMetadata(**fields), path, overwrite=True)


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny3d.pt")


@pytest.fixture(scope="session")
def tiny_model_file_2d(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny2d.pt", spatial_dims=2)
