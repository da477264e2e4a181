"""Choosing the number of clusters K without labels (``hsicluster train -k auto``).

The rule is the elbow of the k-means curve, found with the *kneedle* construction (Satopää et al.,
"Finding a 'Kneedle' in a Haystack", ICDCS workshops 2011): k-means is fitted on the trained
features of the centroid sample (weighted as :meth:`CentroidHead.fit` weighs them) for every K
from 2 to ``k_max``; the mean squared distance of each pixel to its centroid (the inertia per
pixel) falls with K; both axes are scaled to [0, 1], and the chosen K is the one whose point lies
farthest below the straight line from the first candidate to the last. Past it, each extra
cluster buys less than the average over the range, so it splits groups rather than separates
them.

The choice depends on ``k_max``: the elbow of 2…20 is not that of 2…40. Choose ``k_max`` as the
most clusters you could still name on a map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``-k auto``'s default largest K.
DEFAULT_K_MAX = 20
#: The smallest ``k_max`` that leaves a choice: the elbow lies strictly inside K = 2 … k_max (both ends lie on the
#: chord), so it is one of 3 … k_max − 1, or 2 where the curve has no elbow.
K_MAX_MIN = 4
#: How the choice is recorded in the checkpoint and the docs.
RULE = "kneedle elbow of the k-means inertia per pixel over K = 2..k_max"


@dataclass(frozen=True)
class KChoice:
    """The K chosen and the curve it was read from.

    Attributes:
        k: the chosen number of clusters.
        candidates: K = 2 … k_max.
        inertia: mean squared distance to the own centroid, per candidate (weighted feature units²).
        distance: how far each candidate lies below the chord of the scaled curve (the criterion; the
            largest is chosen).
    """

    k: int
    candidates: list[int]
    inertia: list[float]
    distance: list[float]

    def to_dict(self) -> dict[str, object]:
        """Plain types for the checkpoint."""
        return {"rule": RULE, "k": self.k, "k_max": self.candidates[-1], "candidates": self.candidates,
                "inertia": self.inertia, "distance": self.distance}


def knee(values: np.ndarray) -> np.ndarray:
    """Distance below the chord of a falling curve, both axes scaled to [0, 1] (0 at the two ends).

    Args:
        values: (n,) the curve at n ≥ 2 equally spaced candidates.

    Returns:
        (n,) chord minus curve: positive where the curve sags below the line joining its ends.
    """
    span = float(values[0] - values[-1])
    if len(values) < 3 or span <= 0:
        return np.zeros(len(values))
    x = np.linspace(0.0, 1.0, len(values))
    y = (values - values[-1]) / span
    return (1.0 - x) - y


def choose_k(features: np.ndarray, k_max: int, *, seed: int = 0, n_init: int = 3) -> KChoice:
    """The elbow K of k-means on ``features`` (see the module docstring).

    Args:
        features: (N, F) features, already weighted as the centroids will see them.
        k_max: the largest candidate (≥ 2, ≤ N).
        seed: k-means seed.
        n_init: k-means restarts per candidate.

    Raises:
        ValueError: k_max < 2 or more than the feature vectors.
    """
    from sklearn.cluster import KMeans  # here: the pipeline schema reads K_MAX_MIN without loading scikit-learn

    if k_max < 2:
        raise ValueError(f"k_max must be at least 2, got {k_max}")
    if k_max > len(features):
        raise ValueError(f"k_max {k_max} is more than the {len(features)} pixels sampled")
    candidates = list(range(2, k_max + 1))
    values = features.astype(np.float64)
    inertia = np.array([KMeans(k, n_init=n_init, random_state=seed).fit(values).inertia_ / len(values)
                        for k in candidates])
    distance = knee(inertia)
    chosen = candidates[int(np.argmax(distance))] if distance.max() > 0 else candidates[0]
    return KChoice(k=chosen, candidates=candidates, inertia=[float(v) for v in inertia],
                   distance=[float(v) for v in distance])
