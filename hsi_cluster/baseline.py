"""The k-means baseline: scikit-learn KMeans on per-band standardised spectra.

The reference every SSCC score is compared with (README accuracy table, ``benchmarks/accuracy.py``,
the pipelines' ``report`` step): all valid pixels are standardised band by band, clustered with
``KMeans(k, n_init=10)``, and the labels are scored like any clustering. The whole scene is read
into memory (float64), which suits benchmark-sized scenes, not archive-sized ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from hsi_cluster.evaluate import ClusteringScores, score_clustering

#: Label of pixels k-means did not cluster (invalid input pixels).
NO_LABEL = -1


def valid_pixels(scene: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The valid pixels of a scene as they are (bands flagged bad in its metadata left out), and the valid mask.

    Args:
        scene: a store from ``hsicluster ingest`` (its valid mask is used) or any raster
            :func:`~hsi_cluster.io.open_scene` reads (valid: finite and not nodata in every good band).

    Returns:
        ``(pixels, valid)``: float64 (n_valid, B_good) and bool (y, x).
    """
    from hsi_cluster.io import is_complete_store, open_scene, open_valid_mask
    from hsi_cluster.stats import valid_pixel_mask

    opened = open_scene(scene)
    cube = opened.values.astype(np.float64)
    good_band = opened.coords["good_band"].values.astype(bool) if "good_band" in opened.coords else None
    if is_complete_store(scene):
        valid = np.asarray(open_valid_mask(scene).compute())
    else:
        valid = valid_pixel_mask(cube, nodata=opened.attrs.get("nodata"), good_band=good_band)
    if good_band is not None:
        cube = cube[good_band]
    return cube.reshape(cube.shape[0], -1).T[valid.ravel()], valid


def standardised_pixels(scene: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The valid pixels of a scene, standardised band by band, and the valid mask.

    Args:
        scene: see :func:`valid_pixels`.

    Returns:
        ``(pixels, valid)``: float64 (n_valid, B) and bool (y, x).
    """
    pixels, valid = valid_pixels(scene)
    return (pixels - pixels.mean(0)) / (pixels.std(0) + 1e-12), valid


def kmeans_labels(scene: str | os.PathLike[str], n_clusters: int, *, seed: int = 0, n_init: int = 10,
                  prepared: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Cluster the valid pixels of a scene with k-means on per-band standardised spectra.

    Args:
        scene: see :func:`standardised_pixels`.
        n_clusters: k.
        seed: ``random_state`` of KMeans.
        n_init: KMeans restarts (the best inertia wins).
        prepared: :func:`standardised_pixels` of ``scene`` already computed (several seeds read
            the scene once).

    Returns:
        int64 labels (y, x), :data:`NO_LABEL` on invalid pixels.
    """
    from sklearn.cluster import KMeans

    standardised, valid = prepared if prepared is not None else standardised_pixels(scene)
    labels = np.full(valid.size, NO_LABEL, dtype=np.int64)
    labels[valid.ravel()] = KMeans(n_clusters, n_init=n_init, random_state=seed).fit_predict(standardised)
    return labels.reshape(valid.shape)


def kmeans_transfer(fit_scenes: Sequence[str | os.PathLike[str]], apply_scenes: Sequence[str | os.PathLike[str]],
                    n_clusters: int, *, seed: int = 0, n_init: int = 10) -> list[np.ndarray]:
    """k-means fitted on some scenes and applied to others: the baseline of the archive workflow.

    The valid pixels of ``fit_scenes`` are pooled and standardised band by band with their own mean
    and standard deviation; k-means is fitted on them. Each scene of ``apply_scenes`` is standardised
    with the same (fit scenes') statistics and its pixels take the nearest centroid, so a label
    means the same thing in every scene.

    Args:
        fit_scenes: scenes whose pixels fit the statistics and the centroids (see :func:`valid_pixels`).
        apply_scenes: scenes to label; all scenes must have the same bands.
        n_clusters: k.
        seed: ``random_state`` of KMeans.
        n_init: KMeans restarts (the best inertia wins).

    Returns:
        one int64 label map (y, x) per scene of ``apply_scenes``, :data:`NO_LABEL` on invalid pixels.

    Raises:
        ValueError: no fit scenes, or scenes whose band counts differ.
    """
    from sklearn.cluster import KMeans

    if not fit_scenes:
        raise ValueError("kmeans_transfer needs at least one scene to fit on")
    pooled = np.concatenate([valid_pixels(scene)[0] for scene in fit_scenes])
    mean, std = pooled.mean(0), pooled.std(0) + 1e-12
    model = KMeans(n_clusters, n_init=n_init, random_state=seed).fit((pooled - mean) / std)
    maps = []
    for scene in apply_scenes:
        pixels, valid = valid_pixels(scene)
        if pixels.shape[1] != len(mean):
            raise ValueError(f"{scene}: {pixels.shape[1]} bands, but the fit scenes have {len(mean)}")
        labels = np.full(valid.size, NO_LABEL, dtype=np.int64)
        labels[valid.ravel()] = model.predict((pixels - mean) / std)
        maps.append(labels.reshape(valid.shape))
    return maps


def kmeans_baseline(scene: str | os.PathLike[str], truth: np.ndarray, n_clusters: int, *, seed: int = 0,
                    n_init: int = 10, unlabelled: int | None = 0,
                    prepared: tuple[np.ndarray, np.ndarray] | None = None) -> ClusteringScores:
    """Scores of :func:`kmeans_labels` against a ground-truth map (labelled pixels only)."""
    labels = kmeans_labels(scene, n_clusters, seed=seed, n_init=n_init, prepared=prepared)
    return score_clustering(labels, truth, unlabelled=unlabelled, invalid_pred=NO_LABEL)
