"""A noise-adjusted projection (MNF) instead of PCA (issue 11, a measured variant; not in the product).

The minimum noise fraction transform (Green et al. 1988; ENVI's "MNF") whitens the noise before the
principal components, so the leading components are those of highest signal-to-noise ratio rather
than of highest variance. The noise covariance is estimated without labels from the differences of
4-neighbours (half their covariance), on the scene's standardised bands.

Two measurements:

- k-means (K = the class count, 10 restarts, two k-means seeds averaged) on every pixel of the
  standardised spectra, of their PCA scores (as many components as the ``fast`` preset keeps: 99 %
  of the variance) and of MNF scores (the same count, and 8 and 16);
- with ``--train``, the ``fast`` preset trained with the MNF components in place of the PCA ones
  (same count, scores in noise units), through ``benchmarks/accuracy.py``'s run.

    python benchmarks/mnf.py --scene indian_pines salinas_a samson jasper_ridge
    python benchmarks/mnf.py --scene indian_pines jasper_ridge --train --seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes import SCENE_NAMES, build_scene  # noqa: E402


def neighbour_noise_covariance(image: np.ndarray) -> np.ndarray:
    """Noise covariance (B, B) of a (B, H, W) image from its 4-neighbour differences (half their covariance).

    Pairs with a non-finite value are left out.
    """
    differences = []
    for a, b in ((image[:, :, 1:], image[:, :, :-1]), (image[:, 1:, :], image[:, :-1, :])):
        pairs = (a - b).reshape(image.shape[0], -1).T
        differences.append(pairs[np.isfinite(pairs).all(axis=1)])
    stacked = np.concatenate(differences)
    return stacked.T @ stacked / len(stacked) / 2


def mnf_components(pixels: np.ndarray, noise_covariance: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """MNF components (C, B) acting on centred ``pixels`` (n, B), scores in noise units, and the SNR + 1 of each.

    The components diagonalise both covariances: the noise becomes white (unit variance), then the
    components of the whitened data are sorted by decreasing variance (1 + signal-to-noise ratio).
    """
    n_bands = noise_covariance.shape[0]
    noise_var, noise_vec = np.linalg.eigh(noise_covariance + 1e-6 * np.trace(noise_covariance) / n_bands * np.eye(n_bands))
    whiten = noise_vec / np.sqrt(noise_var)  # (B, B)
    centred = pixels - pixels.mean(axis=0)
    whitened = centred @ whiten
    ratio, vectors = np.linalg.eigh(whitened.T @ whitened / len(whitened))
    order = np.argsort(ratio)[::-1][:n_components]
    return (whiten @ vectors[:, order]).T, ratio[order]


def pca_count(pixels: np.ndarray, fraction: float = 0.99) -> int:
    """Fewest principal components of ``pixels`` (n, B) whose variance reaches ``fraction`` (the preset's rule)."""
    centred = pixels - pixels.mean(axis=0)
    variances = np.sort(np.linalg.eigvalsh(centred.T @ centred / len(centred)))[::-1]
    return int(np.searchsorted(np.cumsum(variances), fraction * variances.sum()) + 1)


def kmeans_table(name: str, work: Path) -> None:
    from sklearn.cluster import KMeans

    from hsi_cluster.baseline import standardised_pixels
    from hsi_cluster.evaluate import score_clustering
    from hsi_cluster.io.labels import read_label_map
    from hsi_cluster.train import prepare_store

    scene = build_scene(name, work / "scenes")
    truth, _ = read_label_map(scene.truth)
    store = prepare_store(scene.cube, work / "stores")
    pixels, valid = standardised_pixels(store)
    image = np.full((pixels.shape[1], *valid.shape), np.nan)
    image[:, valid] = pixels.T
    count = pca_count(pixels)
    centred = pixels - pixels.mean(axis=0)
    _, pca_axes = np.linalg.eigh(centred.T @ centred / len(centred))
    pca = centred @ pca_axes[:, ::-1]
    components, snr = mnf_components(pixels, neighbour_noise_covariance(image), max(16, count))
    mnf = centred @ components.T
    print(f"== {name}: {pixels.shape[1]} bands, PCA count (99 %) {count}, MNF 1 + SNR of the first six "
          f"{np.round(snr[:6], 1).tolist()}", flush=True)

    def score(features: np.ndarray, label: str) -> None:
        results = []
        for seed in (0, 1):
            labels = np.full(valid.shape, -1)
            labels[valid] = KMeans(scene.n_classes, n_init=10, random_state=seed).fit_predict(features)
            scores = score_clustering(labels, truth, invalid_pred=-1)
            results.append((scores.acc, scores.nmi))
        acc, nmi = np.mean(results, axis=0)
        print(f"  k-means on {label:32s} ACC {acc:.3f}  NMI {nmi:.3f}", flush=True)

    score(pixels, "standardised spectra")
    score(pca[:, :count], f"PCA, {count} components")
    for n in sorted({8, 16, count}):
        score(mnf[:, :n], f"MNF, {n} components")


def train_with_mnf(names: list[str], seeds: list[int]) -> None:
    """``accuracy.py``'s run with the PCA components of every training replaced by MNF ones (same count)."""
    train_module = importlib.import_module("hsi_cluster.train")
    accuracy = importlib.import_module("accuracy")
    fit_pca_projection = train_module.fit_spectral_projection

    def fit_mnf_projection(stores, n_components, **options):  # type: ignore[no-untyped-def]
        from hsi_cluster.io import open_scene, open_valid_mask

        fit = fit_pca_projection(stores, n_components, **options)
        used = fit.screen.used
        valid = np.asarray(open_valid_mask(stores[0]).compute())
        pixels = np.asarray(open_scene(stores[0]).values, dtype=np.float64)[:, valid].T
        standardised = (pixels[:, used] - fit.mean[used]) / fit.std[used]
        image = np.full((standardised.shape[1], *valid.shape), np.nan)
        image[:, valid] = standardised.T
        components, _ = mnf_components(standardised, neighbour_noise_covariance(image), fit.components.shape[0])
        full = np.zeros_like(fit.components)
        full[:, used] = components
        return dataclasses.replace(fit, components=full.astype(np.float32))

    train_module.fit_spectral_projection = fit_mnf_projection
    args = argparse.Namespace(preset="fast", sets=[], protocol="honest", no_kmeans=True, no_sscc=False,
                              kmeans_smoothing=[1], k="classes", k_max=None, seeds=seeds)
    work = Path(tempfile.mkdtemp(prefix="hsic-mnf-"))
    for name in names:
        accuracy.run_scene(name, args, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", nargs="+", required=True, choices=SCENE_NAMES, metavar="NAME")
    parser.add_argument("--train", action="store_true", help="also train the fast preset on MNF components")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsic-mnf-"))
    for name in args.scene:
        kmeans_table(name, work)
    if args.train:
        train_with_mnf(args.scene, args.seeds)


if __name__ == "__main__":
    main()
