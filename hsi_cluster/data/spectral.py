"""Sampling spectra from stores, for fitting the spectral projection out of core."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from hsi_cluster.io.store import Store


def sample_valid_spectra(stores: Sequence[Store], n_samples: int, *, seed: int = 0,
                         max_blocks: int = 64) -> np.ndarray:
    """Random spectra of valid pixels, read from at most ``max_blocks`` blocks per store.

    Each store gets a share of ``n_samples`` in proportion to its valid pixels (so the sample, like
    the band statistics, weighs every valid pixel alike whatever scene it lies in); within a store,
    blocks are drawn in proportion to their valid pixels, then pixels uniformly within them, so
    memory stays at a few blocks whatever the scene size.

    Returns:
        (n, B) array in the stores' common dtype, n ≤ ``n_samples`` (about, with rounding).
    """
    spectra = [cube[:, rows, cols].T for cube, _, rows, cols in _drawn_pixels(stores, n_samples, seed, max_blocks)]
    return np.concatenate(spectra) if spectra else np.empty((0, 0))


def sample_spectra_and_noise(stores: Sequence[Store], n_samples: int, band_scale: np.ndarray, *, seed: int = 0,
                             max_blocks: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The spectra of :func:`sample_valid_spectra` (the same draw), and each one's differences to its closest neighbours.

    Along each axis, the closer of a pixel's two neighbours (valid, in the same block) is the one at
    the smaller Euclidean distance over the bands scaled by ``band_scale`` (1 / std on the bands to
    compare, 0 on the others). Inside a field it differs from the pixel by noise alone; at a parcel
    edge it lies on the pixel's own side, so the differences estimate the sensor noise without
    counting edges and texture as noise (the noise statistics of the MNF projection). Taking one
    neighbour per axis, rather than the closest of all four, keeps the across-track difference, so a
    pushbroom sensor's column stripes count as noise too.

    Returns:
        ``(spectra, differences)``: (n, B) in the stores' dtype, and (2n, B) float32 pixel minus
        closer neighbour, in the stores' units (per block, the along-row differences of its pixels,
        then the along-column ones); a row is NaN where the pixel has no valid neighbour on that axis.
    """
    scale = np.asarray(band_scale, dtype=np.float32)[:, None]
    spectra, differences = [], []
    for cube, valid, rows, cols in _drawn_pixels(stores, n_samples, seed, max_blocks):
        height, width = valid.shape
        pixels = cube[:, rows, cols].astype(np.float32)
        for neighbours in (((0, 1), (0, -1)), ((1, 0), (-1, 0))):
            closest = np.full(len(rows), np.inf, np.float32)
            nearest = np.full(pixels.shape, np.nan, np.float32)
            for dy, dx in neighbours:
                r, c = rows + dy, cols + dx
                inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
                r, c = np.where(inside, r, rows), np.where(inside, c, cols)
                step = pixels - cube[:, r, c].astype(np.float32)
                distance = (np.where(scale > 0, step * scale, 0) ** 2).sum(axis=0)
                usable = inside & valid[r, c] & np.isfinite(distance)
                closer = usable & (distance < closest)
                closest[closer] = distance[closer]
                nearest[:, closer] = step[:, closer]
            differences.append(nearest.T)
        spectra.append(pixels.T.astype(cube.dtype, copy=False))
    if not spectra:
        return np.empty((0, 0)), np.empty((0, 0), np.float32)
    return np.concatenate(spectra), np.concatenate(differences)


def _drawn_pixels(stores: Sequence[Store], n_samples: int, seed: int,
                  max_blocks: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The blocks and pixels drawn (see :func:`sample_valid_spectra`): (cube (B, h, w), valid (h, w), rows, cols)."""
    rng = np.random.default_rng(seed)
    block_counts = [store.valid_counts_per_block for store in stores]
    valid_total = [int(counts.sum()) for counts in block_counts]
    everything = sum(valid_total)
    for store, counts, n_valid in zip(stores, block_counts, valid_total, strict=True):
        if n_valid == 0:
            continue
        per_store = max(1, n_samples * n_valid // everything)
        grid = store.grid
        n_blocks = min(int(max_blocks), int(np.count_nonzero(counts)))
        if n_blocks == 0:
            continue
        chosen = rng.choice(len(counts), size=n_blocks, replace=False, p=counts / counts.sum())
        weights = counts[chosen] / counts[chosen].sum()
        for block, weight in zip(chosen, weights, strict=True):
            window = grid.window(*divmod(int(block), grid.shape[1]))
            valid = store.valid_in(window)
            r, c = np.nonzero(valid)
            take = rng.choice(len(r), size=min(len(r), max(1, round(per_store * weight))), replace=False)
            yield store.read_window(window), valid, r[take], c[take]
