"""Edge-aware smoothing of the label features before the nearest centroid (issue 11, a measured variant).

For each checkpoint (trained by ``benchmarks/centroid_features.py`` into ``--cache``, or by
``benchmarks/accuracy.py``), every pixel's label features (all scales joined, weighted as the
centroid head weighs them) are replaced by a weighted mean over the (2r + 1)² window around it,
then labelled with the checkpoint's own centroids:

- ``box r``: plain mean (a fixed wider context);
- ``edge r × p``: weights ``exp(-‖f_j − f_i‖² / (p · h²))``, with ``h²`` the median squared feature
  distance between 4-neighbours of the scene (a scale read from the scene, no label). Neighbours
  unlike the centre weigh little, so the centre stays decisive at a parcel edge.

``head`` is the checkpoint's labels unchanged. Scores: Hungarian ACC / NMI on the labelled pixels.

    python benchmarks/feature_smoothing.py --checkpoint DIR/ckpt/indian_pines-s0.ckpt --scene indian_pines
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from centroid_features import stage_features  # noqa: E402
from scenes import SCENE_NAMES, build_scene  # noqa: E402

RADII = (2, 3)
WIDTHS = (1.0, 2.0, 4.0)


def window_offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def shifted(padded: np.ndarray, radius: int, dy: int, dx: int, shape: tuple[int, int]) -> np.ndarray:
    return padded[radius + dy:radius + dy + shape[0], radius + dx:radius + dx + shape[1]]


def neighbour_scale(features: np.ndarray) -> float:
    """Median squared distance between 4-neighbours of an (H, W, F) feature image."""
    rows = ((features[1:] - features[:-1]) ** 2).sum(-1).ravel()
    cols = ((features[:, 1:] - features[:, :-1]) ** 2).sum(-1).ravel()
    return float(np.median(np.concatenate([rows, cols])))


def window_mean(features: np.ndarray, valid: np.ndarray, radius: int, width: float | None) -> np.ndarray:
    """(H, W, F) → (H, W, F): mean over the window of valid neighbours, edge-aware when ``width`` is given."""
    shape = features.shape[:2]
    padded = np.pad(features, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    padded_valid = np.pad(valid, radius, mode="reflect").astype(np.float64)
    h2 = neighbour_scale(features) if width is not None else 1.0
    total, weights = np.zeros_like(features), np.zeros(shape)
    for dy, dx in window_offsets(radius):
        neighbour = shifted(padded, radius, dy, dx, shape)
        weight = shifted(padded_valid, radius, dy, dx, shape)
        if width is not None:
            weight = weight * np.exp(-((neighbour - features) ** 2).sum(-1) / (width * h2))
        total += weight[..., None] * neighbour
        weights += weight
    return total / np.maximum(weights, 1e-12)[..., None]


def label_features(checkpoint, store: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A loaded checkpoint's label features of every pixel, as its centroid head weighs them.

    Returns ``(features, valid, centroids, projected)``: float64 (H, W, F) (zero on invalid pixels),
    bool (H, W), float64 (K, F), and the projected spectra (N valid, C) the network reads.
    """
    model = checkpoint.build_model()
    head = model.centroid_head
    if head is None or not model.centroid_scales:
        raise SystemExit("the checkpoint needs a centroid head on every scale's features (the fast preset)")
    stages, valid = stage_features(model, store)
    joined = np.hstack([stages[f"L{i}"] for i in range(len(stages) - 1)]).astype(np.float64)
    image = np.zeros(valid.shape + (joined.shape[1],))
    image[valid] = (joined - head.offset.numpy()) * head.weight.numpy()
    return image, valid, head.centroids.numpy().astype(np.float64), stages["P"]


def nearest_centroid(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``centroids`` (K, F) for features (..., F)."""
    distance = (features ** 2).sum(-1)[..., None] - 2 * features @ centroids.T + (centroids ** 2).sum(-1)
    return distance.argmin(-1)


def checkpoints_of_a_scene(description: str, work: str) -> tuple[list[Path], np.ndarray, Path]:
    """The command line of a script that reads checkpoints of one development scene.

    Returns ``(checkpoints, truth, store)``: the ``--checkpoint`` paths, the scene's (H, W) ground truth
    and its store (built under ``--work``, default ``work``).
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    parser.add_argument("--scene", required=True, choices=SCENE_NAMES, help="the scene the checkpoints were trained on")
    parser.add_argument("--work", type=Path, default=Path(work), help="folder for the scene and store")
    args = parser.parse_args()
    from hsi_cluster.io.labels import read_label_map
    from hsi_cluster.train import prepare_store

    scene = build_scene(args.scene, args.work / "scenes")
    truth, _ = read_label_map(scene.truth)
    return args.checkpoint, truth, prepare_store(scene.cube, args.work / "stores")


def main() -> None:
    checkpoints, truth, store = checkpoints_of_a_scene(__doc__ or "", "/tmp/hsic-smoothing")
    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.evaluate import score_clustering

    for checkpoint in checkpoints:
        image, valid, centroids, _ = label_features(load_checkpoint(checkpoint), store)

        def score(features: np.ndarray, centroids: np.ndarray = centroids,
                  valid: np.ndarray = valid) -> tuple[float, float]:
            scores = score_clustering(np.where(valid, nearest_centroid(features, centroids), -1), truth, invalid_pred=-1)
            return round(scores.acc, 3), round(scores.nmi, 3)

        row = {"head": score(image)}
        for radius in RADII:
            row[f"box {radius}"] = score(window_mean(image, valid, radius, None))
            row |= {f"edge {radius} x {width:g}": score(window_mean(image, valid, radius, width)) for width in WIDTHS}
        print(checkpoint.name, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
