"""The archive benchmark's other acquisition (``benchmarks/generalisation.py --shift``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def generalisation():
    yield from load_benchmark("generalisation.py", imports=("_common",))


def test_shift_changes_the_unseen_quadrants_only(generalisation) -> None:
    part = np.full((3, 4, 5), 4000, dtype=np.uint16)  # (y, x, band)
    for name in generalisation.SEEN:
        assert generalisation.shift_radiometry(part, name) is part
    ne = generalisation.shift_radiometry(part, "ne")
    sw = generalisation.shift_radiometry(part, "sw")
    assert ne.dtype == np.uint16 and ne.shape == part.shape
    # NE: brightness 0.85 times 1 + 0.05 sin(2 pi t) over the band position t in [0, 1].
    expected = np.rint(4000 * 0.85 * (1 + 0.05 * np.sin(2 * np.pi * np.arange(5) / 4)))
    np.testing.assert_array_equal(ne[1, 2], expected)
    # SW: brighter (1.12), 5 % less at the first band, 5 % more at the last; every pixel alike.
    assert sw[0, 0, 0] == round(4000 * 1.12 * 0.95) and sw[0, 0, -1] == round(4000 * 1.12 * 1.05)
    assert (sw == sw[0, 0]).all()


def test_shift_clips_to_the_integer_range(generalisation) -> None:
    part = np.full((1, 1, 3), 65000, dtype=np.uint16)
    assert generalisation.shift_radiometry(part, "sw").max() == 65535
