"""Which trained features the k-means centroids should read (issue 11): every variant from one training run.

For each scene (``benchmarks/scenes.py``) the ``fast`` preset is trained once (seed ``--seed``; the
checkpoint is kept in ``--cache`` and reused), then every valid pixel's features are computed in
eval mode at each stage of the dense backbone (reflect padding at the border, holes filled with the
band means): ``P`` the projected spectrum (PCA, 1 × 1), ``L0`` the 1 × 1 stem, ``L1`` the first
3 × 3 layer (3 × 3 receptive field), ``L2`` the second (5 × 5, the features the network trains).
k-means (scikit-learn, ``n_init=10``, K = class count, all valid pixels) runs on each set of
features; a set of several stages joins them after centring each and scaling it to unit mean
squared norm (equal weight per stage, as ``CentroidHead.fit(blocks=...)`` does). ``wardNx`` over-
clusters to N·K with k-means, then merges the centroids by Ward's criterion (size-weighted) down to K.
Scores: Hungarian ACC / NMI on the labelled pixels, as ``benchmarks/accuracy.py``. ``silhouette``: the
mean silhouette of the k-means partitions of every stage joined, of L1 + L2 and of L2, all measured in the
space of every stage joined on the same 5 000 pixels; ``auto_kept`` is the highest, the set that
``centroid_features: auto`` keeps (it decides on the 20 000-pixel centroid sample instead of all pixels).

    python benchmarks/centroid_features.py --scene jasper_ridge salinas_a --seed 0 --cache /tmp/cf
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes import SCENE_NAMES, build_scene  # noqa: E402

from hsi_cluster.model.choose_scales import SILHOUETTE_SAMPLE  # noqa: E402

#: Joined feature sets scored besides each stage alone (``last`` = L2, the trained features).
JOINED = {"cat_L": ["L0", "L1", "L2"], "cat_P_last": ["P", "L2"], "PL": ["P", "L0", "L1", "L2"],
          "PL0L2": ["P", "L0", "L2"], "L0L2": ["L0", "L2"], "PL1L2": ["P", "L1", "L2"], "L1L2": ["L1", "L2"]}


def stage_features(model, store: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(N, F) features of every valid pixel at each stage, and the valid mask (y, x)."""
    from hsi_cluster.io.store import Store, invalid_fill

    opened = Store.open(store)
    cube = np.asarray(opened.data[...], dtype=np.float32)
    valid = np.asarray(opened.valid[...])
    fill = invalid_fill([opened])
    cube = np.where(valid[None], cube, fill[:, None, None].astype(np.float32))
    model.eval()
    halo = model.backbone.halo
    x = torch.from_numpy(np.pad(cube, ((0, 0), (halo, halo), (halo, halo)), mode="reflect"))[None]
    with torch.no_grad():
        projected = model.project(x)
        joined = model.backbone.forward_dense_scales(projected)[0]  # (S · F, H, W), smallest field first
    height, width = valid.shape
    keep = valid.ravel()

    def pixels(t: torch.Tensor) -> np.ndarray:
        return t.reshape(t.shape[0], -1).T.numpy()[keep]

    stages = {f"L{i}": pixels(block) for i, block in enumerate(joined.split(model.backbone.out_features))}
    return {"P": pixels(projected[0, :, halo:halo + height, halo:halo + width])} | stages, valid


def equal_weight(block: np.ndarray) -> np.ndarray:
    block = block - block.mean(0)
    return block / np.sqrt((block ** 2).sum(1).mean())


def kmeans_labels(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    return KMeans(k, n_init=10, random_state=seed).fit(features).labels_


def ward_merge(features: np.ndarray, k: int, over: int, seed: int) -> np.ndarray:
    """k-means with ``over`` clusters, then Ward merges of the centroids (weighted by size) down to k."""
    fitted = KMeans(over, n_init=10, random_state=seed).fit(features)
    centres = fitted.cluster_centers_.copy()
    sizes = np.bincount(fitted.labels_, minlength=over).astype(float)
    groups = [[i] for i in range(over)]
    active = list(range(over))
    while len(active) > k:
        cost, i, j = min((sizes[a] * sizes[b] / (sizes[a] + sizes[b]) * ((centres[a] - centres[b]) ** 2).sum(), a, b)
                         for n, a in enumerate(active) for b in active[n + 1:])
        centres[i] = (sizes[i] * centres[i] + sizes[j] * centres[j]) / (sizes[i] + sizes[j])
        sizes[i] += sizes[j]
        groups[i] += groups[j]
        active.remove(j)
    lut = np.empty(over, int)
    for label, i in enumerate(active):
        lut[groups[i]] = label
    return lut[fitted.labels_]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", nargs="+", required=True, choices=SCENE_NAMES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, required=True, help="folder for scenes, stores and checkpoints")
    args = parser.parse_args()
    from hsi_cluster.baseline import standardised_pixels
    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.config import preset_config
    from hsi_cluster.evaluate import score_clustering
    from hsi_cluster.io.labels import read_label_map
    from hsi_cluster.train import prepare_store, train

    for name in args.scene:
        scene = build_scene(name, args.cache / "scenes")
        truth, _ = read_label_map(scene.truth)
        k, seed = scene.n_classes, args.seed
        store = prepare_store(scene.cube, args.cache / "stores")
        checkpoint = args.cache / "ckpt" / f"{name}-s{seed}.ckpt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        if not checkpoint.exists():
            start = time.perf_counter()
            train([store], n_clusters=k, output=checkpoint, config=preset_config("fast"), seed=seed, device="cpu",
                  overwrite=True, work_dir=args.cache / "stores", log=lambda m: None)
            print(f"{name}: trained {time.perf_counter() - start:.0f}s", flush=True)
        stages, valid = stage_features(load_checkpoint(checkpoint).build_model(), store)

        def score(labels: np.ndarray, valid: np.ndarray = valid, truth: np.ndarray = truth) -> tuple[float, float]:
            full = np.full(valid.shape, -1, np.int32)
            full[valid] = labels
            s = score_clustering(full, truth, invalid_pred=-1)
            return round(s.acc, 3), round(s.nmi, 3)

        spectra, _ = standardised_pixels(store)
        row = {"kmeans_spectra": score(kmeans_labels(spectra, k, seed)),
               "F_last": score(kmeans_labels(stages["L2"], k, seed))}
        row |= {f"F_{key}": score(kmeans_labels(stages[key], k, seed)) for key in ("P", "L0", "L1")}
        for tag, keys in JOINED.items():
            row[tag] = score(kmeans_labels(np.hstack([equal_weight(stages[q]) for q in keys]), k, seed))
        joined = np.hstack([equal_weight(stages[q]) for q in JOINED["cat_L"]])
        # centroid_features auto's referee: silhouette in the space of every stage joined, same pixels for all
        sample = np.random.default_rng(0).permutation(len(joined))[:SILHOUETTE_SAMPLE]
        partitions = {"cat_L": kmeans_labels(joined, k, seed), "L1L2": kmeans_labels(
            np.hstack([equal_weight(stages[q]) for q in JOINED["L1L2"]]), k, seed), "last": kmeans_labels(stages["L2"], k, seed)}
        row["silhouette"] = {key: round(float(silhouette_score(joined[sample], labels[sample])), 3)
                             for key, labels in partitions.items()}
        row["auto_kept"] = max(row["silhouette"], key=row["silhouette"].get)
        for over in (2, 3):
            row[f"ward{over}x_last"] = score(ward_merge(stages["L2"], k, over * k, seed))
            row[f"ward{over}x_catL"] = score(ward_merge(joined, k, over * k, seed))
        print(name, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
