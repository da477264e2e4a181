"""choose_k: the elbow of the k-means curve (``-k auto``)."""

from __future__ import annotations

import numpy as np
import pytest

from hsi_cluster.model.choose_k import RULE, choose_k, knee


def test_knee_is_zero_at_the_ends_and_largest_at_the_bend():
    curve = np.array([10.0, 4.0, 1.0, 0.8, 0.6, 0.4])
    distance = knee(curve)
    assert distance[0] == pytest.approx(0) and distance[-1] == pytest.approx(0)
    assert int(np.argmax(distance)) == 2
    assert not knee(np.array([1.0, 1.0, 1.0])).any()  # a flat curve has no elbow


@pytest.mark.parametrize("groups", [3, 5])
def test_choose_k_finds_well_separated_groups(groups: int):
    rng = np.random.default_rng(groups)
    centres = rng.normal(scale=10.0, size=(groups, 6))
    features = centres[rng.integers(0, groups, 1500)] + rng.normal(scale=0.5, size=(1500, 6))
    choice = choose_k(features, 12, seed=0)
    assert choice.k == groups
    assert choice.candidates == list(range(2, 13)) and len(choice.inertia) == len(choice.distance) == 11
    record = choice.to_dict()
    assert record["k"] == groups and record["k_max"] == 12 and record["rule"] == RULE


def test_choose_k_refuses_a_bad_range():
    features = np.zeros((10, 2))
    with pytest.raises(ValueError, match="at least 2"):
        choose_k(features, 1)
    with pytest.raises(ValueError, match="more than the 10 pixels"):
        choose_k(features, 11)
