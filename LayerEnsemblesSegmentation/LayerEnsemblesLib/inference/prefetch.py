"""Reading the next case while this one computes, so a GPU does not wait for the disk in batch mode.

Torch releases the interpreter lock during its operations, so one background thread reading (and
decoding) the next file overlaps with the forward pass of the current one. The order of the items
and the values are exactly those of loading them one after the other; a loading error is raised
when that item is used, so one unreadable case fails alone, in its turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Value = TypeVar("Value")


def prefetched(
    items: Iterable[Item], load: Callable[[Item], Value], ahead: int = 1
) -> Iterator[tuple[Item, Callable[[], Value]]]:
    """Each item with a function that returns its loaded value; ``ahead`` items load in the background.

    ``ahead=0`` loads on demand, in the caller's thread (the plain sequential behaviour).
    """
    if ahead < 1:
        for item in items:
            yield item, (lambda item=item: load(item))
        return
    pending: deque[tuple[Item, Future]] = deque()
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:

        def refill() -> None:
            while len(pending) < ahead:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                pending.append((item, pool.submit(load, item)))

        refill()
        while pending:
            item, future = pending.popleft()
            refill()  # the next item starts loading before the caller works on this one
            yield item, future.result
        # a caller that stops early waits here for the at most ``ahead`` loads still running
