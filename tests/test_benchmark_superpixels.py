"""The segment read-outs of ``benchmarks/superpixels.py``: a vote per segment and the nearest centroid of its mean."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def superpixels():
    yield from load_benchmark("superpixels.py", imports=("centroid_features", "feature_smoothing", "scenes"))


def test_segment_vote_gives_each_segment_its_majority_and_leaves_invalid_pixels(superpixels) -> None:
    labels = np.array([[0, 0, 1, 2],
                       [0, 1, 2, 2],
                       [-1, 1, 2, 0]])
    segments = np.array([[0, 0, 1, 1],
                         [0, 0, 1, 1],
                         [0, 0, 1, 1]])
    valid = labels >= 0
    voted = superpixels.segment_vote(labels, segments, valid, 3)
    np.testing.assert_array_equal(voted, [[0, 0, 2, 2], [0, 0, 2, 2], [-1, 0, 2, 2]])


def test_segment_mean_takes_the_centroid_nearest_to_the_mean_feature(superpixels) -> None:
    """Segment 0 holds features 0 and 4 (mean 2: nearest centroid 1.5), segment 1 holds 9 and 11."""
    features = np.array([[[0.0], [4.0], [9.0], [11.0]]])
    segments = np.array([[0, 0, 1, 1]])
    valid = np.array([[True, True, True, True]])
    centroids = np.array([[0.0], [1.5], [10.0]])
    labels = superpixels.segment_mean_labels(features, segments, valid, centroids)
    np.testing.assert_array_equal(labels, [[1, 1, 2, 2]])
    np.testing.assert_array_equal(superpixels.nearest_centroid(features, centroids), [[0, 1, 2, 2]])


def test_median_neighbour_distance_counts_valid_pairs_only(superpixels) -> None:
    image = np.array([[[0.0], [1.0], [100.0]]])
    assert superpixels.median_neighbour_distance(image, np.array([[True, True, False]])) == 1.0
