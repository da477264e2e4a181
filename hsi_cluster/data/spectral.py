"""Sampling spectra from stores, for fitting the spectral projection out of core."""

from __future__ import annotations

from collections.abc import Sequence

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
    rng = np.random.default_rng(seed)
    block_counts = [store.valid_counts_per_block for store in stores]
    valid_total = [int(counts.sum()) for counts in block_counts]
    everything = sum(valid_total)
    spectra = []
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
            r, c = np.nonzero(store.valid_in(window))
            take = rng.choice(len(r), size=min(len(r), max(1, round(per_store * weight))), replace=False)
            cube = store.read_window(window)
            spectra.append(cube[:, r[take], c[take]].T)
    return np.concatenate(spectra) if spectra else np.empty((0, 0))
