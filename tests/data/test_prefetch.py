"""The background prefetch: same items in the same order, errors where they are due, early close."""

from __future__ import annotations

import threading
import time

import pytest

from hsi_cluster.data.prefetch import prefetched


def test_items_come_in_order_and_complete() -> None:
    assert list(prefetched(range(10))) == list(range(10))
    assert list(prefetched(iter([]), depth=3)) == []


def test_items_are_produced_in_another_thread_ahead_of_the_caller() -> None:
    produced: list[tuple[int, str]] = []

    def source():
        for index in range(3):
            produced.append((index, threading.current_thread().name))
            yield index

    items = prefetched(source(), depth=2)
    assert next(items) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 3 and time.monotonic() < deadline:  # items 1 and 2 come without being asked
        time.sleep(0.01)
    assert [index for index, _ in produced] == [0, 1, 2]
    assert all(name.startswith("prefetch") for _, name in produced)
    assert list(items) == [1, 2]


def test_an_error_is_raised_when_its_item_is_due() -> None:
    def source():
        yield 1
        raise OSError("block 7 is corrupt")

    items = prefetched(source())
    assert next(items) == 1
    with pytest.raises(OSError, match="block 7 is corrupt"):
        next(items)


def test_closing_early_stops_the_producer() -> None:
    pulled: list[int] = []

    def source():
        for index in range(1000):
            pulled.append(index)
            yield index

    items = prefetched(source(), depth=2)
    assert next(items) == 0
    items.close()
    count = len(pulled)
    time.sleep(0.05)
    assert len(pulled) == count <= 3  # nothing produced after the close


def test_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="depth must be ≥ 1"):
        next(prefetched(range(3), depth=0))
