"""Deep ensembles whose members keep their heads, and the member view that opens one member alone.

nnU-Net's folds are a deep ensemble of layer ensembles: every fold is a deep-supervision network with
its own decoder heads. One archive holds them all (``kind: deep_ensemble``, ``member_heads`` = H):
``forward`` returns each member's final head, so the deep-ensemble reduction, MI, bundles and evaluate
read it as any deep ensemble; the exported TorchScript method ``member_heads(x, member)`` returns
member k's H heads, shallow to deep. The *member view* (``load_model(path, member=k)``) turns such an
archive into a ``layer_ensemble`` of member k that calls only that method, so the layer ensemble of one
fold costs one fold's pass and is compared with the five-fold ensemble from the same file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .contract import ModelMetadata
from .errors import InputError


class HeadsEnsemble(nn.Module):
    """The producer's side: ``forward`` gives each member's deepest head, ``member_heads`` one member's all.

    Members are networks returning their head list shallow to deep (scripted or traced modules both work:
    the ensemble itself is scripted around them, so the exported method survives).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        for member in self.members:
            heads = member(x)
            outputs.append(heads[-1])
        return outputs

    @torch.jit.export
    def member_heads(self, x: torch.Tensor, member: int) -> list[torch.Tensor]:
        for index, network in enumerate(self.members):
            if index == member:
                return network(x)
        raise RuntimeError("member " + str(member) + " is out of range")


class MemberView(nn.Module):
    """One member of a loaded archive as a layer ensemble: only that member's network runs."""

    def __init__(self, archive: torch.jit.ScriptModule, member: int) -> None:
        super().__init__()
        self.archive = archive
        self.member = member

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.archive.member_heads(x, self.member)


def member_index(metadata: ModelMetadata, member: int | str, source: str) -> int:
    """The member's position, from its index (``1``, ``"1"``) or its name (``"fold_3"``); one-line errors."""
    if metadata.kind != "deep_ensemble" or metadata.member_heads < 2:
        raise InputError(
            f"{source}: a {metadata.kind} model without member heads; a member can be opened only in a "
            "deep ensemble whose members keep their heads (e.g. `convert nnunet --folds all`)"
        )
    names = list(metadata.head_names)
    if isinstance(member, str) and member in names:
        return names.index(member)
    text = str(member).strip()
    if isinstance(member, bool) or not text.lstrip("-").isdigit():
        raise InputError(f"{source}: member {member!r} is neither an index nor one of {', '.join(names)}")
    index = int(text)
    if not 0 <= index < len(names):
        raise InputError(
            f"{source}: member {index} is out of range (the deep ensemble has {len(names)} members, "
            f"0..{len(names) - 1}: {', '.join(names)})"
        )
    return index


def member_metadata(metadata: ModelMetadata, member: int | str, source: str) -> ModelMetadata:
    """The ``layer_ensemble`` metadata of one member: its heads, the preprocessing of the whole file.

    The ensemble's calibration (AULA threshold, quality map, decision score) was fitted to the
    ensemble's scores, not to one member's heads, so the view carries none and uses the defaults.
    """
    index = member_index(metadata, member, source)
    view = copy.deepcopy(metadata)
    defaults = ModelMetadata.__dataclass_fields__
    view.kind = "layer_ensemble"
    view.head_names = list(metadata.member_head_names)
    view.head_strides = list(metadata.member_head_strides)
    view.skip_heads = metadata.member_skip_heads
    view.members = 1
    view.member_heads = 1
    view.member_head_names, view.member_head_strides, view.member_skip_heads = [], [], 0
    view.aula_threshold = None
    view.quality_map = None
    view.decision_score = defaults["decision_score"].default
    name = metadata.head_names[index]
    view.name = f"{metadata.name} [{name}]"[:200]
    view.provenance["member"] = f"{index} ({name}) of the {metadata.members} members of {metadata.name}"
    view.validate(source)
    return view


def member_view(
    archive: torch.jit.ScriptModule, view_metadata: ModelMetadata, index: int, source: str
) -> tuple[torch.jit.ScriptModule, ModelMetadata]:
    """Member ``index``'s module (a scripted :class:`MemberView`) beside its metadata, which
    :func:`member_metadata` made before the archive was loaded (a bad member is refused without it)."""
    if not hasattr(archive, "member_heads"):
        raise InputError(
            f"{source}: the metadata declares member heads but the archive has no member_heads method"
        )
    module = torch.jit.script(MemberView(archive, index))
    module.eval()
    return module, view_metadata
