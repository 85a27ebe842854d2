"""Deep-supervision loss: soft Dice + cross-entropy on every head, summed with per-head weights.

Each head's logits are brought to the label's size with :func:`networks.upsample_logits`, the same
function inference uses, so a head is trained on exactly the prediction the engine will read from
it (no downsampled labels). The weights are normalised to sum to one, so the loss reads as a
weighted mean over heads and its scale does not depend on the number of heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .networks import upsample_logits

HEAD_WEIGHT_SCHEMES = ("uniform", "linear", "last")


def resolve_head_weights(spec: str | Sequence[float], num_heads: int) -> list[float]:
    """Per-head weights, shallow to deep, normalised to sum to one.

    ``uniform`` is the paper's unweighted sum; ``linear`` grows with depth (1, 2, ..., L), which keeps
    the shallow heads from dominating the shared backbone; ``last`` trains a plain network (only the
    deepest head), the baseline a layer ensemble is compared with. A list gives explicit weights.
    """
    if isinstance(spec, str):
        if spec == "uniform":
            weights = [1.0] * num_heads
        elif spec == "linear":
            weights = [float(i + 1) for i in range(num_heads)]
        elif spec == "last":
            weights = [0.0] * (num_heads - 1) + [1.0]
        else:
            try:
                weights = [float(w) for w in spec.split(",")]
            except ValueError:
                raise InputError(
                    f"head weights {spec!r}: expected {', '.join(HEAD_WEIGHT_SCHEMES)} "
                    "or comma-separated numbers"
                ) from None
    else:
        weights = [float(w) for w in spec]
    if len(weights) != num_heads:
        raise InputError(
            f"head weights {weights}: {len(weights)} values for a network with {num_heads} heads"
        )
    if not all(math.isfinite(w) for w in weights) or min(weights) < 0 or sum(weights) <= 0:
        raise InputError(f"head weights {weights}: must be finite, non-negative, with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, pooled over the batch (stable on empty patches)."""
    num_classes = logits.shape[1]
    probabilities = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target, num_classes).movedim(-1, 1).to(probabilities.dtype)
    dims = [0, *range(2, logits.dim())]
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1 - dice[1:].mean() if num_classes > 1 else 1 - dice.mean()


class DeepSupervisionLoss(nn.Module):
    def __init__(self, weights: Sequence[float], dice_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.weights = list(weights)
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight

    def forward(
        self, outputs: Sequence[torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the weighted total and each head's unweighted loss (detached, for logging)."""
        if len(outputs) != len(self.weights):
            raise ValueError(f"{len(outputs)} head outputs but {len(self.weights)} head weights")
        size = list(target.shape[1:])
        total = outputs[0].new_zeros((), dtype=torch.float32)
        per_head = []
        for weight, logits in zip(self.weights, outputs, strict=False):
            if weight == 0:
                # keep the head in the graph (DistributedDataParallel expects a gradient for every
                # parameter) without paying for its full-resolution loss
                total = total + 0.0 * logits.float().sum()
                per_head.append(torch.full((), float("nan"), device=logits.device))
                continue
            full = upsample_logits(logits.float(), size)
            loss = self.ce_weight * F.cross_entropy(full, target) + self.dice_weight * soft_dice_loss(
                full, target
            )
            total = total + weight * loss
            per_head.append(loss.detach())
        return total, torch.stack(per_head)
