"""Produce the next items of an iterator in a background thread while the caller works on the current one.

Training reads the next batch of patches (store reads, decompression, patch cuts, pinning for CUDA)
while a step computes; prediction reads the next tile while one is labelled. The items and their
order are those of the iterator: only *when* they are produced changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()


def prefetched(items: Iterable[T], depth: int = 1) -> Generator[T, None, None]:
    """Iterate ``items``, producing up to ``depth`` items ahead in one background thread.

    An exception raised while producing an item is raised here, when that item is due. Closing the
    iterator early (``break``) cancels what has not started and waits for the item in progress.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be ≥ 1, got {depth}")
    source = iter(items)
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
    try:
        ahead: deque[Future] = deque(reader.submit(next, source, _END) for _ in range(depth))
        while True:
            item = ahead.popleft().result()
            if item is _END:
                return
            ahead.append(reader.submit(next, source, _END))
            yield item
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
