"""Process-group helpers so one training loop runs alone or under ``torchrun --nproc_per_node N``.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single process and
every helper here is a no-op. CPU runs use the gloo backend, CUDA runs nccl with one GPU per rank.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import devices


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(request: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; under torchrun each rank takes the GPU of its local rank."""
    request = (request or "auto").lower()
    if request in ("auto", "cuda") and torch.cuda.is_available():
        request = f"cuda:{local_rank}"
    return devices.resolve_device(request)


def setup(device_request: str) -> DistributedContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request, local_rank)
    context = DistributedContext(rank, world_size, local_rank, device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # rank 0 validates alone while the others wait at a barrier: allow long validations
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(hours=2),
        )
        context.initialised = True
    return context


def cleanup(context: DistributedContext) -> None:
    """Free DDP's objects while the group and the interpreter are alive, then destroy the group.

    A DDP reducer left in a reference cycle is otherwise destroyed at interpreter shutdown, after the
    group, and gloo's worker threads then abort the process (seen once as SIGABRT on rank 1).
    """
    if context.initialised and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def barrier(context: DistributedContext) -> None:
    if context.distributed:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if not context.distributed:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / context.world_size


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True on every rank when ``flag`` is True on any rank.

    A rank that stops on its own (a diverging loss) would leave the others blocked in the next
    all-reduce until the collective timeout; deciding together lets every rank stop with the same error.
    """
    if not context.distributed:
        return flag
    value = torch.tensor(1.0 if flag else 0.0, device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_object(value, context: DistributedContext):
    """Send rank 0's ``value`` to every rank (e.g. whether to stop, or an error to raise everywhere)."""
    if not context.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
