"""Baselines as model files, so every method goes through the same engine, CLI and report.

- **Deep Ensembles** (``kind="deep_ensemble"``): one archive holding M independently trained networks;
  ``forward`` returns each member's final (full-resolution) logits, and the engine averages the
  members' softmax. M trainings, M× parameters, M passes' compute.
- **MC dropout** (``kind="mc_dropout"``): a network with dropout whose ``forward`` returns its final
  logits; the engine runs ``samples`` passes with dropout active. The archive must be *scripted*, not
  traced: a trace records the eval-mode graph, in which dropout does not exist.
- **Plain**: a layer-ensemble model restricted to its deepest head (``skip_heads = L − 1``), a
  metadata change only, so it runs through exactly the same code as the layer ensemble.

Members can be eager ``nn.Module`` networks (with a metadata template) or model files (their metadata
is the template). A network may return one tensor or the contract's list of head logits, in which
case the last (deepest) head is the member's output; that head must be at full resolution.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..contract import ModelMetadata, export_model, load_model
from ..errors import InputError, first_line
from .archive import rewrite_metadata

# metadata fields that must agree between ensemble members (the preprocessing and the label space)
SHARED_FIELDS = (
    "spatial_dims",
    "in_channels",
    "classes",
    "target_spacing",
    "orientation",
    "normalization",
    "size_divisor",
)


class DeepestHead(nn.Module):
    """A multi-head network seen as a plain one: its deepest head's logits."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)[-1]


class SingleOutput(nn.Module):
    """A network that already returns one logits tensor."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class DeepEnsemble(nn.Module):
    """``forward`` returns one logits tensor per member, as the contract's ``deep_ensemble`` kind."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        for member in self.members:
            outputs.append(member(x))
        return outputs


class DropoutSampler(nn.Module):
    """``forward`` returns ``[logits]`` of one dropout network, as the contract's ``mc_dropout`` kind."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.network(x)]


def _as_single_output(network: nn.Module, probe: torch.Tensor, source: str) -> nn.Module:
    """Wrap ``network`` so that it returns its full-resolution final logits as one tensor."""
    was_training = network.training
    network.eval()
    with torch.no_grad():
        output = network(probe)
    network.train(was_training)
    wrapped = DeepestHead(network) if isinstance(output, (list, tuple)) else SingleOutput(network)
    final = output[-1] if isinstance(output, (list, tuple)) else output
    if tuple(final.shape[2:]) != tuple(probe.shape[2:]):
        raise InputError(
            f"{source}: the final output {tuple(final.shape)} is not at the input resolution "
            f"{tuple(probe.shape)}; baselines need a full-resolution final head"
        )
    return wrapped


def _load_member(path: str | Path) -> tuple[nn.Module, ModelMetadata]:
    module, metadata = load_model(path)
    if metadata.kind != "layer_ensemble":
        raise InputError(
            f"{path}: a {metadata.kind} model cannot be an ensemble member; give single networks"
        )
    if metadata.head_strides[-1] != 1:
        raise InputError(
            f"{path}: the deepest head has stride {metadata.head_strides[-1]}; members need a "
            "full-resolution final head"
        )
    return module, metadata


def _networks_and_template(
    networks: Sequence[nn.Module | str | Path], metadata: ModelMetadata | None
) -> tuple[list[nn.Module], ModelMetadata]:
    modules, templates = [], []
    for network in networks:
        if isinstance(network, (str, Path)):
            module, member_metadata = _load_member(network)
            modules.append(module)
            templates.append((str(network), member_metadata))
        else:
            modules.append(network)
    if metadata is None:
        if not templates:
            raise InputError(
                "baseline export: pass a metadata template for networks that are not model files"
            )
        metadata = templates[0][1]
    for source, member_metadata in templates:
        for name in SHARED_FIELDS:
            if getattr(member_metadata, name) != getattr(metadata, name):
                raise InputError(
                    f"{source}: {name} differs from the other members "
                    f"({getattr(member_metadata, name)!r} vs {getattr(metadata, name)!r})"
                )
    probe = torch.zeros(1, metadata.in_channels, *metadata.patch_size)
    wrapped = [_as_single_output(m, probe, str(n)) for m, n in zip(modules, networks, strict=True)]
    return wrapped, copy.deepcopy(metadata)


def _baseline_metadata(
    template: ModelMetadata, kind: str, head_names: list[str], name: str, provenance: dict
) -> ModelMetadata:
    metadata = copy.deepcopy(template)
    metadata.kind = kind
    metadata.head_names = head_names
    metadata.head_strides = [1] * len(head_names)
    metadata.skip_heads = 0
    metadata.aula_threshold = None
    metadata.name = name
    metadata.provenance = provenance
    return metadata


def export_deep_ensemble(
    members: Sequence[nn.Module | str | Path],
    path: str | Path,
    metadata: ModelMetadata | None = None,
    name: str = "deep-ensemble",
    overwrite: bool = False,
) -> Path:
    """Write a ``deep_ensemble`` model file from M networks or M model files (M ≥ 2)."""
    if len(members) < 2:
        raise InputError(f"{path}: a deep ensemble needs at least two members, got {len(members)}")
    networks, template = _networks_and_template(members, metadata)
    provenance = {
        "baseline": "deep_ensemble",
        "members": [str(m) if isinstance(m, (str, Path)) else type(m).__name__ for m in members],
    }
    member_provenance = [load_model(m)[1].provenance for m in members if isinstance(m, (str, Path))]
    if member_provenance:
        provenance["member_provenance"] = member_provenance
    exported = _baseline_metadata(
        template, "deep_ensemble", [f"member{i}" for i in range(len(networks))], name, provenance
    )
    exported.members = len(networks)
    return export_model(DeepEnsemble(networks), exported, path, overwrite=overwrite)


def has_dropout(network: nn.Module) -> bool:
    """Whether ``network`` (eager or TorchScript) contains a dropout layer with a non-zero rate."""
    for module in network.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if (
            isinstance(module, torch.jit.ScriptModule)
            and "Dropout" in getattr(module, "original_name", "")
            and float(getattr(module, "p", 1.0)) > 0
        ):
            return True
    return False


def export_mc_dropout(
    network: nn.Module | str | Path,
    path: str | Path,
    samples: int = 10,
    metadata: ModelMetadata | None = None,
    name: str = "mc-dropout",
    overwrite: bool = False,
) -> Path:
    """Write an ``mc_dropout`` model file from a network (or model file) trained with dropout."""
    if samples < 2:
        raise InputError(f"{path}: MC dropout needs at least 2 samples, got {samples}")
    (wrapped,), template = _networks_and_template([network], metadata)
    if not has_dropout(wrapped):
        raise InputError(
            f"{network if isinstance(network, (str, Path)) else 'network'}: no dropout layer; "
            "MC dropout needs a network trained with dropout (train with --dropout)"
        )
    sampler = DropoutSampler(wrapped)
    try:  # scripting keeps dropout in the graph; export_model would fall back to a trace, which drops it
        torch.jit.script(sampler)
    except Exception as error:
        raise InputError(
            f"{path}: the dropout network cannot be scripted ({first_line(error)}); "
            "a traced archive would lose its dropout"
        ) from None
    provenance = {
        "baseline": "mc_dropout",
        "network": str(network) if isinstance(network, (str, Path)) else type(network).__name__,
        "network_provenance": template.provenance,
    }
    exported = _baseline_metadata(template, "mc_dropout", ["final"], name, provenance)
    exported.samples = int(samples)
    return export_model(sampler, exported, path, overwrite=overwrite)


def export_plain(
    layer_ensemble: str | Path, path: str | Path, name: str | None = None, overwrite: bool = False
) -> Path:
    """Write the plain baseline: the same archive, restricted to its deepest head."""

    def update(metadata: ModelMetadata) -> None:
        if metadata.kind != "layer_ensemble":
            raise InputError(
                f"{layer_ensemble}: plain baselines are made from layer-ensemble models, not {metadata.kind}"
            )
        metadata.skip_heads = metadata.num_heads - 1
        metadata.aula_threshold = None
        metadata.name = name or f"{metadata.name}-plain"
        metadata.provenance = {**metadata.provenance, "baseline": "plain (deepest head only)"}

    destination, _ = rewrite_metadata(layer_ensemble, path, update, overwrite=overwrite)
    return destination
