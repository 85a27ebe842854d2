"""The model files a benchmark run compares, all built from one network class and exported as archives.

Every method goes through the same engine (``Predictor``), so the numbers measure one code path:

* ``le``: :class:`LayerEnsembleUNet` with all its heads (10 at depth 5), every head kept.
* ``plain``: the same weights without the extra heads (:class:`FinalHeadUNet`): the network a user
  would run without Layer Ensembles, reduced to a segmentation by the same engine.
* ``plain_same``: the layer-ensemble archive restricted to its deepest head by metadata alone
  (``export_plain``): all heads are still computed, only the final one is reduced. The gap between
  ``plain`` and ``plain_same`` is the price of computing (and blending) the extra heads; the gap
  between ``plain_same`` and ``le`` is the price of reducing them.
* ``de5``: five independently initialised plain networks (``export_deep_ensemble``).
* ``mcd10``: a plain network with dropout, ten stochastic passes (``export_mc_dropout``).

Weights are random: timing does not depend on them. The exported ``patch_size`` is small because
``export_model`` checks each archive on one patch; the benchmark passes its real window explicitly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from LayerEnsemblesLib.contract import ModelMetadata, default_classes, export_model
from LayerEnsemblesLib.evaluation.baselines import export_deep_ensemble, export_mc_dropout, export_plain
from LayerEnsemblesLib.networks import LayerEnsembleUNet

CLASS_NAMES = ["background", "anterior", "posterior"]
DE_MEMBERS = 5
MC_SAMPLES = 10
MC_DROPOUT_RATE = 0.1
METHOD_KINDS = ("plain", "plain_same", "le", "de5", "mcd10")


@dataclass(frozen=True)
class NetworkSpec:
    """Architecture of the benchmarked network (the demo's by default)."""

    spatial_dims: int = 3
    depth: int = 5
    base_channels: int = 16
    num_classes: int = 3

    @property
    def key(self) -> str:
        return f"{self.spatial_dims}d_depth{self.depth}_base{self.base_channels}_k{self.num_classes}"

    @property
    def divisor(self) -> int:
        return 2 ** (self.depth - 1)

    @property
    def heads(self) -> int:
        return 2 * self.depth

    def describe(self) -> str:
        return (
            f"{self.spatial_dims}D LayerEnsembleUNet, depth {self.depth} ({self.heads} heads), "
            f"{self.base_channels} base channels, {self.num_classes} classes, instance norm, random weights"
        )


class FinalHeadUNet(LayerEnsembleUNet):
    """The layer-ensemble U-Net without its extra heads: a plain network of the same architecture."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        del self.encoder_heads, self.decoder_heads

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips: list[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return [self.final_head(self.final_block(x))]


def _network(spec: NetworkSpec, seed: int, dropout: float = 0.0, plain: bool = False) -> LayerEnsembleUNet:
    torch.manual_seed(seed)
    cls = FinalHeadUNet if plain else LayerEnsembleUNet
    return cls(
        spec.spatial_dims,
        1,
        spec.num_classes,
        depth=spec.depth,
        base_channels=spec.base_channels,
        dropout=dropout,
    ).eval()


def _metadata(spec: NetworkSpec, network: LayerEnsembleUNet, plain: bool, name: str) -> ModelMetadata:
    check = max(32, 2 * spec.divisor)  # the bottleneck needs more than one voxel for instance norm
    return ModelMetadata(
        spatial_dims=spec.spatial_dims,
        in_channels=1,
        classes=default_classes(CLASS_NAMES[: spec.num_classes]),
        head_names=["final"] if plain else list(network.head_names),
        head_strides=[1] if plain else list(network.head_strides),
        target_spacing=None,  # inputs are 1 mm already; keep the native grid, as the hippocampus demo does
        orientation=None,
        patch_size=[check] * spec.spatial_dims,
        size_divisor=[spec.divisor] * spec.spatial_dims,
        name=name,
        provenance={"benchmark": "random weights", "network": spec.describe()},
    )


def _plain_copy(spec: NetworkSpec, layer_ensemble: LayerEnsembleUNet) -> FinalHeadUNet:
    """The plain network carrying the layer ensemble's weights (final head included)."""
    plain = _network(spec, 0, plain=True)
    extra_heads = ("encoder_heads.", "decoder_heads.")
    state = {k: v for k, v in layer_ensemble.state_dict().items() if not k.startswith(extra_heads)}
    plain.load_state_dict(state)
    return plain


def build_models(spec: NetworkSpec, folder: Path, methods: tuple[str, ...] = METHOD_KINDS) -> dict[str, Path]:
    """Export the requested methods' archives into ``folder`` (reused when already there)."""
    folder = Path(folder) / spec.key
    folder.mkdir(parents=True, exist_ok=True)
    paths = {method: folder / f"{method}.pt" for method in methods}
    if all(path.is_file() for path in paths.values()):
        return paths
    layer_ensemble = _network(spec, seed=0)
    le_path = folder / "le.pt"
    if not le_path.is_file():
        export_model(
            layer_ensemble, _metadata(spec, layer_ensemble, False, "benchmark-le"), le_path, overwrite=True
        )
    plain_template = _metadata(spec, layer_ensemble, True, "benchmark-plain")
    for method, path in paths.items():
        if path.is_file():
            continue
        if method == "plain":
            export_model(
                _plain_copy(spec, layer_ensemble), copy.deepcopy(plain_template), path, overwrite=True
            )
        elif method == "plain_same":
            export_plain(le_path, path, name="benchmark-plain-same-archive", overwrite=True)
        elif method == "de5":
            members = [_network(spec, seed=100 + i, plain=True) for i in range(DE_MEMBERS)]
            export_deep_ensemble(
                members, path, metadata=copy.deepcopy(plain_template), name="benchmark-de5", overwrite=True
            )
        elif method == "mcd10":
            network = _network(spec, seed=200, dropout=MC_DROPOUT_RATE, plain=True)
            export_mc_dropout(
                network,
                path,
                samples=MC_SAMPLES,
                metadata=copy.deepcopy(plain_template),
                name="benchmark-mcd10",
                overwrite=True,
            )
    return paths


def build_models_isolated(
    spec: NetworkSpec, folder: Path, methods: tuple[str, ...] = METHOD_KINDS, timeout: float = 900
) -> dict[str, Path]:
    """:func:`build_models` in a fresh process.

    TorchScript keeps compiled types per process; after many scriptings of differently configured
    instances of the same classes, scripting the dropout network once failed in a long benchmark
    process (first with an empty message, then "Can't redefine method: forward on class UpBlock"),
    though it never failed in a fresh one. A child process per export sidesteps that state.
    """
    paths = {method: Path(folder) / spec.key / f"{method}.pt" for method in methods}
    if all(path.is_file() for path in paths.values()):
        return paths
    environment = dict(os.environ)
    package = str(Path(__file__).resolve().parents[2] / "LayerEnsemblesSegmentation")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package, environment.get("PYTHONPATH")]))
    request = json.dumps({"spec": dataclasses.asdict(spec), "folder": str(folder), "methods": list(methods)})
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), request],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        check=False,
    )
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"model export exited with {completed.returncode}")
    return paths


if __name__ == "__main__":
    order = json.loads(sys.argv[1])
    build_models(NetworkSpec(**order["spec"]), Path(order["folder"]), tuple(order["methods"]))
