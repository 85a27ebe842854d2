"""One command, many ranks: ``segment`` and ``evaluate`` under ``torchrun --nproc_per_node N [--nnodes M]``.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK. Without them a command runs as one process and
:class:`RankRun` only resolves the device. With them, the process group is the training one
(:mod:`LayerEnsemblesLib.training.distributed`: nccl with one GPU per rank, gloo on the CPU); rank 0
sizes the cases from their headers and every rank takes the share :func:`manifest.balance` gives
it; at the end the ranks' results are gathered so that rank 0 writes the one merged summary.

A rank that dies (killed, out of host memory, a node lost) cannot be waited for: the gather fails on
the survivors, or ``torchrun`` terminates them. Either way each survivor prints one line naming the
cases that have no result yet and exits non-zero; rerunning the same command skips the finished
cases and completes the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import first_line
from ..training import distributed
from .manifest import balance, voxel_count

# Fault injection for the tests only: "RANK:N" makes that rank kill itself (SIGKILL) after N cases.
FAULT_ENVIRONMENT = "LAYER_ENSEMBLES_TEST_KILL_RANK_AFTER"
INCOMPLETE_EXIT_CODE = 3
MISSING_LISTED = 20  # names printed in the one error line; the count is always given


class RunInterrupted(BaseException):
    """A rank stopped or this one was told to stop; a BaseException so per-case handlers let it through."""


class RankRun(distributed.DistributedContext):
    """This process's place in a (possibly) distributed run; the helpers are no-ops for one process."""

    @classmethod
    def start(cls, device_request: str) -> RankRun:
        """Join torchrun's process group when there is one; resolve the device (``cuda:LOCAL_RANK``)."""
        context = distributed.setup(device_request)
        return cls(**{f.name: getattr(context, f.name) for f in dataclasses.fields(context)})

    @property
    def device_request(self) -> str:
        return str(self.device)

    def split(self, paths: Sequence[Path], sizes: Callable[[Path], int] = voxel_count) -> list[int]:
        """Indices of ``paths`` this rank handles, balanced by voxel count (all of them when alone)."""
        if not self.distributed:
            return list(range(len(paths)))
        weights = [sizes(Path(p)) for p in paths] if self.is_main else None
        weights = distributed.broadcast_object(weights, self)
        return balance(weights, self.world_size)[self.rank]

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated in rank order, on every rank."""
        if not self.distributed:
            return list(items)
        import torch.distributed as dist

        holder: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(holder, list(items))
        except RuntimeError as error:  # gloo/nccl: a peer closed its connection or timed out
            raise RunInterrupted(f"another rank stopped ({first_line(error)})") from None
        return [item for part in holder for item in part]

    def finish(self) -> None:
        distributed.cleanup(self)

    def after_case(self, done: int) -> None:
        """The tests' fault-injection point: a real SIGKILL of this rank, as a crash would do."""
        spec = os.environ.get(FAULT_ENVIRONMENT, "")
        if spec and spec.split(":")[0] == str(self.rank) and done >= int(spec.split(":")[1]):
            os.kill(os.getpid(), signal.SIGKILL)

    @contextlib.contextmanager
    def guard(
        self, missing: Callable[[], list[str]], rerun: str = "rerun the same command"
    ) -> Iterator[None]:
        """Turn a stopped peer or a SIGTERM from torchrun into one line naming the missing cases.

        Exits with :data:`INCOMPLETE_EXIT_CODE`. A SIGTERM handler installed before (say, one that
        removes temporary files) still runs first.
        """
        previous = signal.getsignal(signal.SIGTERM)
        installed = False

        def stop(signum, frame) -> None:
            try:
                if callable(previous):
                    previous(signum, frame)
            finally:
                raise RunInterrupted("terminated (SIGTERM), probably because another rank failed")

        if self.distributed:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                signal.signal(signal.SIGTERM, stop)
                installed = True
        try:
            yield
        except RunInterrupted as reason:
            names = missing()
            listed = ", ".join(names[:MISSING_LISTED]) + (", ..." if len(names) > MISSING_LISTED else "")
            print(
                f"error: rank {self.rank}: the run stopped before every case finished: {reason}; "
                f"{len(names)} case(s) missing: {listed or 'none'}; {rerun} to finish them",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(INCOMPLETE_EXIT_CODE) from None
        finally:
            if installed:
                signal.signal(signal.SIGTERM, previous)
