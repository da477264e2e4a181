"""The window means of ``benchmarks/feature_smoothing.py``: a plain mean blurs an edge, the edge-aware one keeps it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def smoothing():
    yield from load_benchmark("feature_smoothing.py", imports=("centroid_features", "scenes"))


def two_fields(noise: float = 0.05) -> np.ndarray:
    """(12, 12, 2) features: two fields split down the middle, 10 units apart, with a little noise."""
    features = np.zeros((12, 12, 2))
    features[:, 6:, 0] = 10.0
    return features + np.random.default_rng(0).normal(0, noise, features.shape)


def test_box_mean_blurs_an_edge_and_edge_aware_mean_keeps_it(smoothing) -> None:
    features = two_fields()
    valid = np.ones((12, 12), bool)
    box = smoothing.window_mean(features, valid, 2, None)
    edge = smoothing.window_mean(features, valid, 2, 1.0)
    assert 3.0 < box[5, 5, 0] < 7.0  # the plain mean mixes the two fields at the edge
    assert abs(edge[5, 5, 0]) < 0.1 and abs(edge[5, 6, 0] - 10.0) < 0.1
    assert np.abs(edge[:, :, 0] - np.round(features[:, :, 0] / 10) * 10).max() < 0.2  # no pixel pulled across


def test_invalid_pixels_carry_no_weight(smoothing) -> None:
    features = two_fields(noise=0.0)
    features[3, 3] = 1000.0
    valid = np.ones((12, 12), bool)
    valid[3, 3] = False
    box = smoothing.window_mean(features, valid, 1, None)
    assert box[3, 4, 0] == pytest.approx(0.0)
    assert smoothing.neighbour_scale(two_fields()) < 1.0  # the median neighbour distance ignores the one edge
