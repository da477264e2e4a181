"""choose_scales: which stages the feature centroids read (``centroid_features: auto``)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from hsi_cluster.model.choose_scales import RULE, candidate_stages, choose_scales
from hsi_cluster.model.heads import CentroidHead

WIDTH = 4  # features per stage


def stem_split_features(seed: int = 0, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3 · WIDTH) stages and the (n,) truth of three groups: a large one (80 %) whose 1 × 1 stem varies
    continuously along one axis, and two small ones close to each other that the wider stages separate."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, n, p=[0.8, 0.1, 0.1])
    centres = np.array([[12.0, 0, 0, 0], [0, 4.0, 0, 0], [0, -4.0, 0, 0]])
    context = centres[truth] + rng.normal(scale=0.6, size=(n, WIDTH))
    along = rng.uniform(-16.0, 16.0, n)
    stem = np.where(truth == 0, along, 0.0)[:, None] * np.eye(WIDTH)[0] + rng.normal(scale=0.6, size=(n, WIDTH))
    return np.hstack([stem, context, context + rng.normal(scale=0.3, size=(n, WIDTH))]), truth


def test_candidates_are_every_stage_all_but_the_stem_and_the_last():
    assert candidate_stages(3) == [[0, 1, 2], [1, 2], [2]]
    assert candidate_stages(2) == [[0, 1], [1]]
    assert candidate_stages(1) == [[0]]
    with pytest.raises(ValueError, match="at least 1"):
        candidate_stages(0)


def test_a_stem_that_splits_a_large_group_is_left_out():
    features, truth = stem_split_features()
    every_stage = CentroidHead.fit(features, 3, blocks=3, n_init=4)
    # k-means on every stage cuts the large group along its stem and merges the two small ones
    assert adjusted_rand_score(truth, every_stage.assign(features)) < 0.6
    head, choice = choose_scales(features, 3, 3, seed=0, n_init=4)
    assert choice.stages == [1, 2]
    assert choice.silhouette[1] == max(choice.silhouette) > choice.silhouette[0]
    assert adjusted_rand_score(truth, head.assign(features)) > 0.99
    assert not head.weight[:WIDTH].any() and bool((head.weight[WIDTH:] > 0).all())  # the stem weighs 0
    assert head.in_features == 3 * WIDTH  # the head still reads every stage, as the model feeds it
    record = choice.to_dict()
    assert record["rule"] == RULE and record["stages"] == [1, 2]
    assert record["candidates"] == [[0, 1, 2], [1, 2], [2]] and len(record["silhouette"]) == 3


def test_stages_that_agree_keep_every_stage():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 900)
    centres = rng.normal(scale=8.0, size=(3, WIDTH))
    features = np.hstack([centres[truth] + rng.normal(scale=0.5, size=(900, WIDTH)) for _ in range(3)])
    head, choice = choose_scales(features, 3, 3, seed=0, n_init=4)
    assert choice.stages == [0, 1, 2]  # the same partition everywhere: the first candidate wins the tie
    assert adjusted_rand_score(truth, head.assign(features)) == pytest.approx(1.0)
    assert bool((head.weight > 0).all())


def test_block_weights_leave_out_stages_not_kept():
    features = np.random.default_rng(0).normal(size=(50, 6))
    _, weight = CentroidHead.block_weights(features, 3, stages=[2])
    assert not weight[:4].any() and bool((weight[4:] > 0).all())
    with pytest.raises(ValueError, match="non-empty subset"):
        CentroidHead.block_weights(features, 3, stages=[3])
    with pytest.raises(ValueError, match="non-empty subset"):
        CentroidHead.block_weights(features, 3, stages=[])


def test_as_many_pixels_as_clusters_choose_without_a_silhouette() -> None:
    """A scene of exactly K valid pixels: one pixel per cluster, where no silhouette exists (sklearn raised
    "Number of labels is 5. Valid values are 2 to n_samples - 1", and ``train -k 5`` failed after training)."""
    features = np.random.default_rng(2).normal(size=(5, 3 * WIDTH))
    head, choice = choose_scales(features, 5, 3, seed=0, n_init=2)
    assert choice.stages == [0, 1, 2] and choice.silhouette == [-1.0, -1.0, -1.0]
    assert sorted(head.assign(features).tolist()) == [0, 1, 2, 3, 4]
