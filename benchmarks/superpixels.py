"""A superpixel prior on the labels (issue 11, a measured variant; not in the product).

For each checkpoint of a scene (trained by ``benchmarks/centroid_features.py`` into ``--cache``, or by
``benchmarks/accuracy.py``), the projected image (the checkpoint's own standardisation and PCA) is cut
into SLIC superpixels (scikit-image; about one segment per ``area`` valid pixels, connected, invalid
pixels left out), with the spatial weight ``compactness × h``, ``h`` the median distance between
4-neighbours of the projected image (a scale read from the scene). Two ways to use the segments:

- ``vote``: every pixel of a segment takes the label most of the segment's pixels have;
- ``mean``: the label features (all scales, weighted as the centroid head weighs them) are averaged
  over the segment, and the segment takes the nearest of the checkpoint's centroids.

``head`` is the checkpoint's labels unchanged. Scores: Hungarian ACC / NMI on the labelled pixels.
Needs scikit-image (``pip install scikit-image``), which the product does not depend on.

    python benchmarks/superpixels.py --scene indian_pines --checkpoint DIR/ckpt/indian_pines-s0.ckpt
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feature_smoothing import checkpoints_of_a_scene, label_features, nearest_centroid  # noqa: E402

AREAS = (9, 25, 49)
COMPACTNESS = (0.5, 2.0)


def median_neighbour_distance(image: np.ndarray, valid: np.ndarray) -> float:
    """Median Euclidean distance between valid 4-neighbours of an (H, W, C) image."""
    distances = []
    for a, b, valid_pair in ((image[1:], image[:-1], valid[1:] & valid[:-1]),
                             (image[:, 1:], image[:, :-1], valid[:, 1:] & valid[:, :-1])):
        distances.append(np.sqrt(((a - b) ** 2).sum(-1))[valid_pair])
    return float(np.median(np.concatenate(distances)))


def segment_vote(labels: np.ndarray, segments: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """(H, W) labels replaced on valid pixels by their segment's most frequent label."""
    counts = np.zeros((segments.max() + 1, k), np.int64)
    np.add.at(counts, (segments[valid], labels[valid]), 1)
    voted = labels.copy()
    voted[valid] = counts.argmax(1)[segments[valid]]
    return voted


def segment_mean_labels(features: np.ndarray, segments: np.ndarray, valid: np.ndarray,
                        centroids: np.ndarray) -> np.ndarray:
    """(H, W) labels: the nearest centroid of each segment's mean feature (-1 on invalid pixels)."""
    ids = segments[valid]
    sums = np.zeros((ids.max() + 1, features.shape[-1]))
    np.add.at(sums, ids, features[valid])
    means = sums / np.maximum(np.bincount(ids), 1)[:, None]
    labels = np.full(valid.shape, -1)
    labels[valid] = nearest_centroid(means, centroids)[ids]
    return labels


def main() -> None:
    checkpoints, truth, store = checkpoints_of_a_scene(__doc__ or "", "/tmp/hsic-superpixels")
    from skimage.segmentation import slic

    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.evaluate import score_clustering

    for checkpoint in checkpoints:
        features, valid, centroids, projected_pixels = label_features(load_checkpoint(checkpoint), store)
        labels = np.where(valid, nearest_centroid(features, centroids), -1)
        projected = np.zeros(valid.shape + projected_pixels.shape[1:])
        projected[valid] = projected_pixels
        projected /= projected[valid].std()
        spacing = median_neighbour_distance(projected, valid)

        def score(predicted: np.ndarray, valid: np.ndarray = valid) -> tuple[float, float]:
            scores = score_clustering(np.where(valid, predicted, -1), truth, invalid_pred=-1)
            return round(scores.acc, 3), round(scores.nmi, 3)

        row = {"head": score(labels)}
        for area in AREAS:
            for compactness in COMPACTNESS:
                segments = slic(projected, n_segments=max(2, int(valid.sum()) // area), compactness=compactness * spacing,
                                channel_axis=-1, mask=valid, start_label=0, convert2lab=False)
                segments = np.where(valid, segments, 0)
                tag = f"area {area} c {compactness:g}"
                row[f"{tag} vote"] = score(segment_vote(labels, segments, valid, len(centroids)))
                row[f"{tag} mean"] = score(segment_mean_labels(features, segments, valid, centroids))
        print(checkpoint.name, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
