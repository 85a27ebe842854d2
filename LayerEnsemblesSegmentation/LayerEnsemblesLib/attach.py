"""Turn any existing segmentation network into a layer ensemble by attaching heads to named layers.

Forward hooks record the outputs of the chosen layers; a small conv head maps each one to class
logits. Channels and strides are found by probing the network once with a dummy input, so the
caller names layers and nothing else. The wrapped model follows the same contract as
:class:`~LayerEnsemblesLib.networks.LayerEnsembleUNet`: ``forward`` returns the heads' logits at their
layers' resolutions, shallow to deep (the order of ``layer_names``). Hooks do not survive
``torch.jit.script``; :func:`LayerEnsemblesLib.contract.export_model` traces such models instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AttachedLayerEnsemble(nn.Module):
    """Wraps ``backbone`` and adds one head per entry of ``layer_names`` (shallow to deep)."""

    # forward hooks cannot be scripted: export traces this model (checked on two input sizes)
    export_by_tracing = True

    def __init__(
        self,
        backbone: nn.Module,
        layer_names: Sequence[str],
        num_classes: int,
        probe_shape: Sequence[int],
        head_kernel_size: int = 1,
    ) -> None:
        super().__init__()
        if not layer_names:
            raise ValueError("attach at least one layer")
        modules = dict(backbone.named_modules())
        missing = [name for name in layer_names if name not in modules]
        if missing:
            raise ValueError(f"backbone has no layer(s) {missing}; available: {sorted(modules)[:20]}...")
        self.backbone = backbone
        self.layer_names = list(layer_names)
        self.spatial_dims = len(probe_shape) - 2
        self.num_classes = num_classes
        self._captured: dict[str, torch.Tensor] = {}
        for name in self.layer_names:
            modules[name].register_forward_hook(self._make_hook(name))

        channels, self.head_strides = self._probe(probe_shape)
        conv = nn.Conv3d if self.spatial_dims == 3 else nn.Conv2d
        self.heads = nn.ModuleList(
            conv(c, num_classes, head_kernel_size, padding=head_kernel_size // 2) for c in channels
        )
        self.head_names = [name.replace(".", "_") for name in self.layer_names]
        self.in_channels = int(probe_shape[1])

    def _make_hook(self, name: str):
        def hook(_module: nn.Module, _inputs, output) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            self._captured[name] = tensor

        return hook

    @torch.no_grad()
    def _probe(self, probe_shape: Sequence[int]) -> tuple[list[int], list[int]]:
        was_training = self.backbone.training
        self.backbone.eval()
        probe = torch.zeros(*probe_shape)
        self.backbone(probe)
        self.backbone.train(was_training)
        channels, strides = [], []
        for name in self.layer_names:
            feature = self._captured[name]
            channels.append(int(feature.shape[1]))
            stride = probe_shape[2] // feature.shape[2]
            if any(probe_shape[2 + d] != feature.shape[2 + d] * stride for d in range(self.spatial_dims)):
                raise ValueError(
                    f"layer {name!r} output {tuple(feature.shape)} is not an integer stride of the input"
                )
            strides.append(int(stride))
        self._captured.clear()
        return channels, strides

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._captured.clear()
        self.backbone(x)
        outputs = [
            head(self._captured[name]) for name, head in zip(self.layer_names, self.heads, strict=True)
        ]
        self._captured.clear()
        return outputs
