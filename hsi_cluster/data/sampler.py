"""Streaming patch sampler: random valid pixel-centred patches from a store, block by block.

Two layers, as in torchgeo: a *plan* that decides which centre pixels form each batch (from the
valid-pixel mask and a seeded RNG only, no scene data), and the *extraction* that reads a block of
the store (plus a halo, reflect-padded at the scene border exactly as in inference) once and cuts
all the patches the plan asks of it. Blocks are taken in a random order, in groups whose centres
are shuffled together (the shuffle buffer), so a batch mixes several regions while only a group
of blocks is ever in memory. Each valid pixel is a centre once per epoch; the last partial batch
is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import zarr
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import IterableDataset, get_worker_info

from hsi_cluster.data.spectral import store_band_stats
from hsi_cluster.geo import BlockGrid

DEFAULT_BUFFER_BYTES = 128 * 2**20


@dataclass(frozen=True)
class PatchBatch:
    """One batch: raw patches (N, bands, p, p) in the store's dtype and their centres (N,) rows/cols."""

    patches: np.ndarray
    rows: np.ndarray
    cols: np.ndarray


def read_padded_window(data: zarr.Array, row0: int, row1: int, col0: int, col1: int, halo: int, *,
                       valid: zarr.Array | np.ndarray | None = None, fill: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[row0 - halo, row1 + halo)`` × cols likewise of a ``(band, y, x)`` array, reflect-padded.

    Parts outside the scene are filled by reflection about the first/last row/column (numpy's
    ``reflect``, i.e. the edge pixel is not repeated), as the patches of training and tiles of
    inference both see them.

    With ``valid`` (the store's (y, x) mask) and ``fill`` (one value per band, see
    :func:`invalid_fill`), invalid pixels (NaN, nodata) are replaced by ``fill`` before padding,
    so a valid pixel next to a hole never hands NaN or the nodata value to the network.
    """
    _, height, width = data.shape
    top, bottom = max(row0 - halo, 0), min(row1 + halo, height)
    left, right = max(col0 - halo, 0), min(col1 + halo, width)
    window = data[:, top:bottom, left:right]
    if valid is not None:
        if fill is None:
            raise ValueError("read_padded_window: pass fill (one value per band) with valid")
        usable = np.asarray(valid[top:bottom, left:right], dtype=bool)
        if not usable.all():
            window = np.where(usable[None], window, np.asarray(fill, dtype=window.dtype)[:, None, None])
    pads = ((0, 0), (top - (row0 - halo), row1 + halo - bottom), (left - (col0 - halo), col1 + halo - right))
    if any(p for pair in pads for p in pair):
        window = np.pad(window, pads, mode="reflect")
    return window


def invalid_fill(store: str | Path) -> np.ndarray:
    """What invalid pixels read as inside patches: the store's per-band means over valid pixels.

    The spectral projection maps the training scene's mean to zero, so a hole looks like a
    neutral pixel. Returned in the store's dtype (a plain cast, as the tiled predictor casts the
    checkpoint's mean); 0 for a band with no valid pixel.
    """
    dtype = zarr.open_group(str(store), mode="r")["data"].dtype
    mean = store_band_stats(store).mean
    return np.where(np.isfinite(mean), mean, 0.0).astype(dtype)


class PatchSampler(IterableDataset):
    """Batches of random valid pixel-centred patches streamed from an ingested store.

    Args:
        store: path of a complete store from ``hsicluster ingest``.
        patch_size: odd patch side p in pixels.
        batch_size: patches per batch.
        seed: base seed; the epoch's order depends on ``(seed, epoch)`` only.
        mask: optional bool (y, x) restricting the centres (e.g. labelled pixels), combined with the
            store's valid mask.
        buffer_bytes: memory for the blocks whose centres are shuffled together.
        epoch: which epoch to produce (set with :meth:`set_epoch`).
        start_batch: skip this many batches of the epoch without reading data (to resume).

    Iterating yields :class:`PatchBatch` objects. In DataLoader workers (``batch_size=None``) each
    worker takes every n-th block of the epoch's order, so workers never duplicate a centre.
    """

    def __init__(self, store: str | Path, *, patch_size: int, batch_size: int, seed: int = 0,
                 mask: np.ndarray | None = None, buffer_bytes: int = DEFAULT_BUFFER_BYTES, epoch: int = 0,
                 start_batch: int = 0) -> None:
        super().__init__()
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch size must be a positive odd number of pixels, got {patch_size}")
        if batch_size < 1:
            raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
        self.store = str(store)
        self.patch_size = patch_size
        self.halo = patch_size // 2
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        group = zarr.open_group(self.store, mode="r")
        self.shape = tuple(group["data"].shape)
        chunk = group["data"].chunks[1]
        self.grid = BlockGrid(self.shape[1], self.shape[2], chunk)
        self.mask = mask
        if mask is not None and mask.shape != self.shape[1:]:
            raise ValueError(f"mask has shape {mask.shape} but the scene is {self.shape[1:]}; pass a (y, x) mask "
                             "of the scene's size")
        block_bytes = self.shape[0] * (chunk + 2 * self.halo) ** 2 * group["data"].dtype.itemsize
        self.blocks_per_group = max(1, buffer_bytes // block_bytes)
        self.fill = invalid_fill(self.store)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Produce ``epoch`` next, skipping its first ``start_batch`` batches."""
        self.epoch, self.start_batch = epoch, start_batch

    # ---------------------------------------------------------------------------- the plan
    def _centres(self, valid: zarr.Array, i: int, j: int) -> np.ndarray:
        """Flat (row * width + col) indices of the usable centres of block (i, j)."""
        window = self.grid.window(i, j)
        rows, cols = window.slices
        usable = valid[rows, cols]
        if self.mask is not None:
            usable = usable & self.mask[rows, cols]
        r, c = np.nonzero(usable)
        return (r + window.row) * self.shape[2] + (c + window.col)

    def valid_centres(self) -> int:
        """Number of centres per epoch (valid pixels, within the mask if any)."""
        valid = zarr.open_group(self.store, mode="r")["valid"]
        return int(sum(len(self._centres(valid, i, j)) for i, j in self.grid))

    def batches_per_epoch(self, shards: int = 1) -> int:
        """Full batches one epoch yields (summed over ``shards`` workers)."""
        if shards == 1:
            return self.valid_centres() // self.batch_size
        return sum(sum(1 for _ in self._plan(shard, shards)) for shard in range(shards))

    def _plan(self, shard: int, shards: int) -> Iterator[np.ndarray]:
        """Flat centre indices of each batch of this shard, in order."""
        rng = np.random.default_rng([self.seed, self.epoch, shard, shards])
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.grid))[shard::shards]
        valid = zarr.open_group(self.store, mode="r")["valid"]
        _, n_cols = self.grid.shape
        pool = np.empty(0, dtype=np.int64)
        for start in range(0, len(order), self.blocks_per_group):
            members = [self._centres(valid, *divmod(int(b), n_cols)) for b in order[start:start + self.blocks_per_group]]
            pool = np.concatenate([pool, *members])
            rng.shuffle(pool)
            n_full = len(pool) // self.batch_size
            for k in range(n_full):
                yield pool[k * self.batch_size:(k + 1) * self.batch_size]
            pool = pool[n_full * self.batch_size:]

    # ---------------------------------------------------------------------------- extraction
    def _extract(self, data: zarr.Array, valid: zarr.Array, centres: np.ndarray,
                 cache: dict[int, np.ndarray]) -> PatchBatch:
        rows, cols = np.divmod(centres, self.shape[2])
        block_rows, block_cols = rows // self.grid.block, cols // self.grid.block
        block_ids = block_rows * self.grid.shape[1] + block_cols
        p = self.patch_size
        patches = np.empty((len(centres), self.shape[0], p, p), dtype=data.dtype)
        for block_id in np.unique(block_ids):
            if block_id not in cache:
                window = self.grid.window(*divmod(int(block_id), self.grid.shape[1]))
                cache[int(block_id)] = read_padded_window(data, window.row, window.row + window.height,
                                                          window.col, window.col + window.width, self.halo,
                                                          valid=valid, fill=self.fill)
            padded = cache[int(block_id)]
            members = np.nonzero(block_ids == block_id)[0]
            window = self.grid.window(*divmod(int(block_id), self.grid.shape[1]))
            local_rows, local_cols = rows[members] - window.row, cols[members] - window.col
            views = sliding_window_view(padded, (p, p), axis=(1, 2))  # (band, y, x, p, p), no copy
            patches[members] = views[:, local_rows, local_cols].transpose(1, 0, 2, 3)
        return PatchBatch(patches, rows, cols)

    def __iter__(self) -> Iterator[PatchBatch]:
        info = get_worker_info()
        shard, shards = (0, 1) if info is None else (info.id, info.num_workers)
        group = zarr.open_group(self.store, mode="r")
        data, valid = group["data"], group["valid"]
        cache: dict[int, np.ndarray] = {}
        skip = self.start_batch if shards == 1 else 0
        for index, centres in enumerate(self._plan(shard, shards)):
            if index < skip:
                continue
            batch = self._extract(data, valid, centres, cache)
            in_use = set((batch.rows // self.grid.block * self.grid.shape[1] + batch.cols // self.grid.block).tolist())
            yield batch
            # Keep only blocks that the current shuffle group may still use: the newest ones.
            if len(cache) > 2 * self.blocks_per_group:
                for block_id in list(cache)[: len(cache) - 2 * self.blocks_per_group]:
                    if block_id not in in_use:
                        del cache[block_id]


def collate_patches(batch: PatchBatch) -> dict[str, torch.Tensor]:
    """DataLoader collate for ``batch_size=None``: numpy batch → tensors."""
    return {"patches": torch.from_numpy(batch.patches), "rows": torch.from_numpy(batch.rows),
            "cols": torch.from_numpy(batch.cols)}
