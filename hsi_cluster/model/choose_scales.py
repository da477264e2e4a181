"""Which scales of the receptive field the feature centroids read (``centroid_features: auto``).

The dense backbone's stages see 1 × 1, 3 × 3, 5 × 5 … pixels. Joining all of them keeps a pixel's
own spectrum decisive where its neighbours differ, but on some trainings the 1 × 1 stem carries
within-class spectral variation (brightness, row structure) that k-means then splits a large field
on, merging two others. The rule, label-free and the same on every scene:

1. k-means (K clusters, ``n_init`` restarts) on three sets of the centroid sample's features: every
   stage joined; every stage but the stem; the last stage alone. Each stage is centred and scaled to
   unit mean squared norm, as :meth:`CentroidHead.block_weights` does, and a stage left out weighs 0.
2. Each of the three partitions is scored by its mean silhouette (Rousseeuw 1987) in **one** space,
   every stage joined, on the same random subsample of pixels. k-means minimises the within-cluster
   spread, which cutting a large, elongated class in two lowers too; the silhouette instead drops
   when a cluster boundary runs through a continuous group, since pixels on both sides of the cut
   lie nearly as close to the other half as to their own.
3. The partition with the highest silhouette is kept; its centroids become the centroid head.

Measured on the development scenes (docs/accuracy.md): the rule changes nothing where joining every
stage already works and keeps the stem out on the trainings where it splits a field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import silhouette_score

from hsi_cluster.model.heads import CentroidHead

#: How the choice is recorded in the checkpoint and the docs.
RULE = "highest silhouette, in the space of every stage joined, of k-means on: every stage, every stage but the stem, the last"
#: Pixels on which the silhouettes are computed (a random subsample of the centroid sample).
SILHOUETTE_SAMPLE = 5_000


@dataclass(frozen=True)
class ScaleChoice:
    """The stages the centroids read and the scores the choice was made on.

    Attributes:
        stages: indices of the stages kept (0 = the 1 × 1 stem).
        candidates: the stage sets tried, in order.
        silhouette: mean silhouette of each candidate's partition (every stage joined; −1 … 1).
    """

    stages: list[int]
    candidates: list[list[int]]
    silhouette: list[float]

    def to_dict(self) -> dict[str, object]:
        """Plain types for the checkpoint."""
        return {"rule": RULE, "stages": self.stages, "candidates": self.candidates, "silhouette": self.silhouette}


def candidate_stages(blocks: int) -> list[list[int]]:
    """The stage sets tried for ``blocks`` stages: all, all but the stem, the last (duplicates dropped)."""
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    sets = [list(range(blocks)), list(range(1, blocks)), [blocks - 1]]
    unique: list[list[int]] = []
    for stages in sets:
        if stages and stages not in unique:
            unique.append(stages)
    return unique


def choose_scales(features: np.ndarray, n_clusters: int, blocks: int, *, seed: int = 0,
                  n_init: int = 10) -> tuple[CentroidHead, ScaleChoice]:
    """The centroid head of the best-separated partition among the stage sets (module docstring).

    Args:
        features: (N, blocks · F) features of the centroid sample, the stages joined, smallest field first.
        n_clusters: K.
        blocks: number of stages (equal blocks) the features split into.
        seed: k-means and subsample seed.
        n_init: k-means restarts per candidate.

    Returns:
        The fitted head (reads all ``blocks`` stages, with weight 0 on those left out) and the choice.
    """
    sample = np.random.default_rng(seed).permutation(len(features))[:SILHOUETTE_SAMPLE]
    referee = CentroidHead.weigh(features, blocks)[sample]  # every stage joined, the space all are scored in
    candidates = candidate_stages(blocks)
    heads, scores = [], []
    for stages in candidates:
        head = CentroidHead.fit(features, n_clusters, seed=seed, n_init=n_init, blocks=blocks, stages=stages)
        labels = head.assign(features[sample])
        # the silhouette needs 2 ≤ clusters < pixels (a scene of exactly K valid pixels has one pixel per cluster)
        scores.append(float(silhouette_score(referee, labels)) if 1 < len(np.unique(labels)) < len(labels) else -1.0)
        heads.append(head)
    best = int(np.argmax(scores))
    return heads[best], ScaleChoice(stages=candidates[best], candidates=candidates, silhouette=scores)
