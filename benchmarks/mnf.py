"""A noise-adjusted projection (MNF) instead of PCA (issue 11): two noise estimates compared.

The minimum noise fraction transform (Green et al. 1988; ENVI's "MNF") whitens the noise before the
principal components, so the leading components are those of highest signal-to-noise ratio rather
than of highest variance. The noise covariance is estimated without labels, on the scene's
standardised bands, from one of (``NOISE_ESTIMATES``):

- ``neighbours``: the differences of all 4-neighbour pairs (half their covariance). Every parcel
  edge and texture counts as noise;
- ``nearest``: each pixel's difference to its most similar 4-neighbour, which lies on the pixel's
  own side of an edge (the product's estimate until 2026-12-06). It hides column stripes: the most
  similar neighbour is nearly always the one in the same detector column;
- ``axes``: each pixel's differences to its more similar neighbour along each axis, so the
  across-track difference (stripes) counts. This is the estimate of the product's opt-in
  ``projection: mnf`` (there on the pixels sampled for the projection, with neighbours inside their
  block, and the MNF sought within four times as many leading principal axes as it keeps: ``--subspace 4``).

``--stripes STD`` adds an independent offset per band and column (pushbroom stripes) before the
table; ``benchmarks/scenes.py`` has striped scenes for the networks.

Two measurements:

- k-means (K = the class count, 10 restarts, two k-means seeds averaged) on every pixel of the
  standardised spectra, of their PCA scores (as many components as the ``fast`` preset keeps: 99 %
  of the variance) and of MNF scores with each noise estimate (the same count, and 8 and 16; and the
  same count sought within 1×, 2× and 4× that many principal axes);
- with ``--train``, the ``fast`` preset trained with MNF components of every pixel in place of the
  PCA ones (same count, scores in noise units), through ``benchmarks/accuracy.py``'s run. (The product's
  two projections are compared with ``benchmarks/accuracy.py --set projection=mnf`` against the default.)

    python benchmarks/mnf.py --scene indian_pines salinas_a samson jasper_ridge
    python benchmarks/mnf.py --scene jasper_ridge --stripes 0.1
    python benchmarks/mnf.py --scene indian_pines jasper_ridge --train --noise axes --subspace 4 --no-table --seeds 0
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


def _closest_differences(image: np.ndarray, steps: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(n, B) differences of each pixel of a (B, H, W) image to its most similar neighbour among ``steps``.

    Pixels with a non-finite value, or without a finite neighbour among them, are left out.
    """
    n_bands, height, width = image.shape
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1)), constant_values=np.nan)
    closest = np.full((height, width), np.inf)
    difference = np.zeros_like(image)
    for dy, dx in steps:
        step = image - padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        norm = (step ** 2).sum(axis=0)
        norm = np.where(np.isfinite(norm), norm, np.inf)
        nearer = norm < closest
        closest = np.where(nearer, norm, closest)
        difference[:, nearer] = step[:, nearer]
    return difference[:, np.isfinite(closest)].T


def nearest_neighbour_noise_covariance(image: np.ndarray) -> np.ndarray:
    """Noise covariance (B, B) of a (B, H, W) image from each pixel's difference to its most similar 4-neighbour.

    Inside a field the most similar neighbour differs from the pixel by noise; at a parcel edge it is
    the neighbour on the same side, so edges and texture weigh far less than in
    :func:`neighbour_noise_covariance` (half the covariance of the differences; pixels with a
    non-finite value, or without a finite neighbour, are left out). Keeping the closest of up to four
    differences scales the estimate down by a factor common to all bands, which leaves the MNF axes as
    they are.
    """
    kept = _closest_differences(image, ((0, 1), (0, -1), (1, 0), (-1, 0)))
    return kept.T @ kept / len(kept) / 2


def axis_nearest_noise_covariance(image: np.ndarray) -> np.ndarray:
    """Noise covariance (B, B) of a (B, H, W) image from each pixel's closest neighbour along each axis.

    Like :func:`nearest_neighbour_noise_covariance`, but with one difference per axis: the closer of
    the left and right neighbours, and the closer of the upper and lower ones (the two covariances
    averaged). Column stripes (a pushbroom detector's per-column offset in a band) differ between
    horizontal neighbours, so they count as noise here; the closest of all four is nearly always the
    neighbour in the same column, which hides them.
    """
    covariances = []
    for steps in (((0, 1), (0, -1)), ((1, 0), (-1, 0))):
        kept = _closest_differences(image, steps)
        covariances.append(kept.T @ kept / len(kept) / 2)
    return (covariances[0] + covariances[1]) / 2


#: Noise estimates ``--noise`` chooses between.
NOISE_ESTIMATES = {"neighbours": neighbour_noise_covariance, "nearest": nearest_neighbour_noise_covariance,
                   "axes": axis_nearest_noise_covariance}


def add_column_stripes(image: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """``image`` (B, H, W), standardised, plus an independent offset per band and column of std ``strength``.

    The offsets mimic a pushbroom sensor's uncalibrated detector elements (vertical stripes).
    """
    offsets = np.random.default_rng(seed).normal(0, strength, (image.shape[0], 1, image.shape[2]))
    return image + offsets


def mnf_components(pixels: np.ndarray, noise_covariance: np.ndarray, n_components: int,
                   subspace: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNF components (C, B) acting on centred ``pixels`` (n, B), scores in noise units, and the SNR + 1 of each.

    The components diagonalise both covariances: the noise becomes white (unit variance), then the
    components of the whitened data are sorted by decreasing variance (1 + signal-to-noise ratio).
    With ``subspace``, both are first restricted to the span of the leading ``subspace`` principal
    components, so a direction of tiny variance (a faint stripe pattern that bands outnumbering
    columns can build) cannot win on a tinier noise estimate.
    """
    centred = pixels - pixels.mean(axis=0)
    _, axes = np.linalg.eigh(centred.T @ centred / len(centred))
    basis = axes[:, ::-1][:, :subspace or pixels.shape[1]]  # (B, D)
    noise = basis.T @ noise_covariance @ basis
    n_dims = noise.shape[0]
    noise_var, noise_vec = np.linalg.eigh(noise + 1e-6 * np.trace(noise) / n_dims * np.eye(n_dims))
    whiten = basis @ (noise_vec / np.sqrt(noise_var))  # (B, D)
    whitened = centred @ whiten
    ratio, vectors = np.linalg.eigh(whitened.T @ whitened / len(whitened))
    order = np.argsort(ratio)[::-1][:n_components]
    return (whiten @ vectors[:, order]).T, ratio[order]


def pca_count(pixels: np.ndarray, fraction: float = 0.99) -> int:
    """Fewest principal components of ``pixels`` (n, B) whose variance reaches ``fraction`` (the preset's rule)."""
    centred = pixels - pixels.mean(axis=0)
    variances = np.sort(np.linalg.eigvalsh(centred.T @ centred / len(centred)))[::-1]
    return int(np.searchsorted(np.cumsum(variances), fraction * variances.sum()) + 1)


def kmeans_table(name: str, work: Path, stripes: float = 0.0, counts: list[int] | None = None) -> None:
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
    if stripes > 0:
        image = add_column_stripes(image, stripes)
        pixels = image[:, valid].T
    count = pca_count(pixels)
    centred = pixels - pixels.mean(axis=0)
    _, pca_axes = np.linalg.eigh(centred.T @ centred / len(centred))
    pca = centred @ pca_axes[:, ::-1]
    striped = f", column stripes of {stripes} band std" if stripes > 0 else ""
    print(f"== {name}: {pixels.shape[1]} bands{striped}, PCA count (99 %) {count}", flush=True)

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
    for noise, estimate in NOISE_ESTIMATES.items():
        components, snr = mnf_components(pixels, estimate(image), max(*(counts or [16]), count))
        mnf = centred @ components.T
        print(f"  MNF, noise from {noise}: 1 + SNR of the first six {np.round(snr[:6], 1).tolist()}", flush=True)
        for n in sorted({*(counts or [8, 16]), count}):
            score(mnf[:, :n], f"MNF ({noise}), {n} components")
        for multiple in (1, 2, 4):
            dims = min(multiple * count, pixels.shape[1])
            components, _ = mnf_components(pixels, estimate(image), count, dims)
            score(centred @ components.T, f"MNF ({noise}) in {dims} PCs, {count}")


def train_with_mnf(names: list[str], seeds: list[int], noise: str, subspace: int = 0) -> None:
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
        count = fit.components.shape[0]
        components, _ = mnf_components(standardised, NOISE_ESTIMATES[noise](image), count,
                                       subspace * count if subspace else None)
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
    parser.add_argument("--noise", choices=sorted(NOISE_ESTIMATES), default="neighbours",
                        help="with --train: the noise estimate of the MNF components")
    parser.add_argument("--no-table", action="store_true", help="with --train: skip the k-means table")
    parser.add_argument("--stripes", type=float, default=0.0, metavar="STD",
                        help="k-means table: add independent column stripes of STD band std to every band")
    parser.add_argument("--subspace", type=int, default=0, metavar="M",
                        help="with --train: MNF within the leading M x (PCA count) principal components (0: all bands)")
    parser.add_argument("--components", type=int, nargs="+", default=[8, 16],
                        help="k-means table: MNF component counts scored besides the PCA count")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsic-mnf-"))
    for name in [] if args.no_table else args.scene:
        kmeans_table(name, work, args.stripes, args.components)
    if args.train:
        train_with_mnf(args.scene, args.seeds, args.noise, args.subspace)


if __name__ == "__main__":
    main()
