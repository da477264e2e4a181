"""progress: durations and the throttled progress lines of a log file."""

from __future__ import annotations

import io
import sys

import pytest

from hsi_cluster.cli import progress_bar
from hsi_cluster.progress import PlainProgress, duration_text


def test_duration_text() -> None:
    assert [duration_text(s) for s in (0.4, 45, 725, 11_220)] == ["0 s", "45 s", "12 min 05 s", "3 h 07 min"]


def test_plain_progress_writes_a_line_every_period_with_the_eta_of_this_runs_rate() -> None:
    """Resumed work (40 tiles done before the first update) does not shorten the ETA; a short run prints nothing."""
    now = [0.0]
    lines: list[str] = []
    progress = PlainProgress("predict", "tile", lines.append, every=30.0, clock=lambda: now[0])
    for done, at in ((41, 2.0), (50, 20.0), (60, 31.0), (70, 45.0), (80, 62.0)):
        now[0] = at
        progress(done, 100)
    assert lines == ["predict: 60/100 tiles, elapsed 31 s, ETA 1 min 02 s", "predict: 80/100 tiles, elapsed 1 min 02 s, "
                     "ETA 31 s"]
    # a batch whose cluster took 30 s to start: its ETA counts from then (it counted the start-up: 4 min 52 s for a
    # batch that ended at 40 s), its elapsed time from the command's start
    now[0] = 0.0
    started: list[str] = []
    batch = PlainProgress("batch", "scene", started.append, every=30.0, clock=lambda: now[0])
    now[0] = 30.0
    batch.start(2)  # two scenes skipped, up to date
    now[0] = 31.0
    batch(3, 10)  # one scene in 1 s: 7 to go (without start: 31 s for it, ETA 3 min 37 s)
    assert started == ["batch: 3/10 scenes, elapsed 31 s, ETA 7 s"]
    quick: list[str] = []
    short = PlainProgress("batch", "scene", quick.append, every=30.0, clock=lambda: now[0])
    short(1, 2)
    short(2, 2)
    assert quick == []



class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that tqdm draws its bar."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_says_it_is_starting_until_the_total_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the first update brings the total the bar reads ``predict: starting, 00:00`` (tqdm drew ``0tile [00:00,
    ?tile/s]``); then tqdm's own bar, with the unit as given (``s/tile``, ``tile/s``)."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar("predict", unit="tile", quiet=False) as update:
        assert "predict: starting, 00:00" in terminal.getvalue() and "0tile" not in terminal.getvalue()
        update(3, 10)
    assert "3/10 [" in terminal.getvalue() and "tile/s]" in terminal.getvalue()
