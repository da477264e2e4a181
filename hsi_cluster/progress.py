"""Progress for logs: durations as people read them, and throttled progress lines where no bar is drawn."""

from __future__ import annotations

import time
from collections.abc import Callable


def duration_text(seconds: float) -> str:
    """``45 s``, ``12 min 05 s``, ``3 h 07 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class PlainProgress:
    """``update(done, total)`` → a line ``"predict: 120/480 tiles, elapsed 2 min 10 s, ETA 6 min 30 s"`` once
    ``every`` seconds have passed since the start or the last line, for a log file where a progress bar is not
    drawn (a run shorter than that prints none: its command's summary follows).

    The rate counts the work done since the first update (less one unit), so units resumed or skipped
    before it do not shorten the ETA.
    """

    def __init__(self, description: str, unit: str, write: Callable[[str], None], *, every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.unit, self.write, self.every, self.clock = description, unit, write, every, clock
        self.started = clock()
        self.rate_from = self.started  # when the work the rate counts began (see start)
        self.first_done: int | None = None
        self.last_line = self.started

    def start(self, done: int) -> None:
        """The work begins now, ``done`` units already done: the rate (the ETA) counts from here, leaving out what
        came before (a batch's cluster starting); the elapsed time still counts from the start."""
        self.rate_from, self.first_done = self.clock(), done

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.first_done is None:
            self.first_done = max(done - 1, 0)
        if now - self.last_line < self.every:
            return
        self.last_line = now
        elapsed = now - self.started
        counted = done - self.first_done
        eta = (f", ETA {duration_text((now - self.rate_from) / counted * (total - done))}"
               if counted > 0 and done < total else "")
        self.write(f"{self.description}: {done}/{total} {self.unit}s, elapsed {duration_text(elapsed)}{eta}")
