"""The window means of ``benchmarks/feature_smoothing.py``: a plain mean blurs an edge, the edge-aware one keeps it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SMOOTHING_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "feature_smoothing.py"


@pytest.fixture(scope="module")
def smoothing():
    spec = importlib.util.spec_from_file_location("bench_smoothing", SMOOTHING_PY)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in ("centroid_features", "scenes"):  # imported from benchmarks/ by the module
            sys.modules.pop(name, None)


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
