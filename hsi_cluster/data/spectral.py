"""Fitting the spectral projection (band standardisation + PCA) out of core from a store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from hsi_cluster.geo import BlockGrid
from hsi_cluster.model.projection import fit_pca
from hsi_cluster.stats import BandStats


@dataclass(frozen=True)
class SpectralFit:
    """Per-band ``mean``/``std`` (B,) float64 and PCA ``components`` (C, B) float32."""

    mean: np.ndarray
    std: np.ndarray
    components: np.ndarray


def store_band_stats(store: str | Path) -> BandStats:
    """Merged per-band statistics of a store, from its per-block summaries."""
    packed = zarr.open_group(str(store), mode="r")["block_stats"][...]
    total = BandStats.empty(packed.shape[-1])
    for row in packed.reshape(-1, *packed.shape[-2:]):
        total = total.merge(BandStats.unpack(row))
    return total


def sample_valid_spectra(stores: list[str | Path], n_samples: int, *, seed: int = 0,
                         max_blocks: int = 64) -> np.ndarray:
    """Random spectra of valid pixels, read from at most ``max_blocks`` blocks per store.

    Each store gets a share of ``n_samples`` in proportion to its valid pixels (so the sample, like
    the band statistics, weighs every valid pixel alike whatever scene it lies in); within a store,
    blocks are drawn in proportion to their valid pixels, then pixels uniformly within them, so
    memory stays at a few blocks whatever the scene size.

    Returns:
        (n, B) array in the stores' common dtype, n ≤ ``n_samples`` (about, with rounding).
    """
    rng = np.random.default_rng(seed)
    groups = [zarr.open_group(str(store), mode="r") for store in stores]
    block_counts = [group["block_stats"][..., 0, 0].reshape(-1) for group in groups]  # valid pixels per block
    valid_total = [int(counts.sum()) for counts in block_counts]
    everything = sum(valid_total)
    spectra = []
    for group, counts, n_valid in zip(groups, block_counts, valid_total):
        if n_valid == 0:
            continue
        per_store = max(1, n_samples * n_valid // everything)
        data, valid = group["data"], group["valid"]
        grid = BlockGrid(data.shape[1], data.shape[2], data.chunks[1])
        n_blocks = int(min(max_blocks, np.count_nonzero(counts)))
        if n_blocks == 0:
            continue
        chosen = rng.choice(len(counts), size=n_blocks, replace=False, p=counts / counts.sum())
        weights = counts[chosen] / counts[chosen].sum()
        for block, weight in zip(chosen, weights):
            window = grid.window(*divmod(int(block), grid.shape[1]))
            rows, cols = window.slices
            r, c = np.nonzero(valid[rows, cols])
            take = rng.choice(len(r), size=min(len(r), max(1, round(per_store * weight))), replace=False)
            cube = data[:, rows, cols]
            spectra.append(cube[:, r[take], c[take]].T)
    return np.concatenate(spectra) if spectra else np.empty((0, 0))


def fit_spectral_projection(stores: list[str | Path], n_components: int | float, *, n_samples: int = 100_000,
                            seed: int = 0) -> SpectralFit:
    """Band statistics over all valid pixels and PCA on a random sample of them.

    Constant bands (std 0) get std 1 so they contribute nothing rather than dividing by zero.
    """
    total = BandStats.empty(0)
    for store in stores:
        stats = store_band_stats(store)
        total = stats if total.count.size == 0 else total.merge(stats)
    std = total.std
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    mean = np.where(np.isfinite(total.mean), total.mean, 0.0)
    spectra = sample_valid_spectra(stores, n_samples, seed=seed)
    components = fit_pca(spectra, n_components, mean, std)
    return SpectralFit(mean=mean, std=std, components=components)
