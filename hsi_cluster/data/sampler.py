"""Streaming patch sampler: random valid pixel-centred patches from a store, block by block.

Two layers, as in torchgeo: a *plan* that decides which centre pixels form each batch (from the
valid-pixel mask and a seeded RNG only, no scene data), and the *extraction* that reads a block of
the store (plus a halo, reflect-padded at the scene border exactly as in inference) once and cuts
all the patches the plan asks of it. Blocks are taken in a random order, in groups of near-equal
size whose centres are shuffled together (the shuffle buffer: as many blocks as ``buffer_bytes``
holds once read, and projected if a ``transform`` maps them), so a batch mixes several regions
while only a group of blocks is ever in memory. Each valid pixel is a centre once per epoch; the
last partial batch is dropped (training steps are whole batches) unless ``keep_partial`` is set
(a sample of the scene, such as the one the feature centroids are fitted on, takes every centre).

A run shorter than one pass (a sample budget on a large scene) sets ``fraction`` < 1: each epoch
then takes a seeded random share of *every* block's centres (``ceil(fraction · n)`` of its ``n``),
so every region of every scene contributes in proportion to its valid pixels, instead of all the
centres of the few blocks that come first in the order. A block is then read for about one batch,
so its read must be cheap: the share is drawn from the centres whose patches lie inside the block
(or reflect off the scene's edge into it), and the block is read without its halo, which would
decompress up to eight neighbouring chunks. With 128-pixel blocks and 5 × 5 patches that leaves
out the 2-pixel seams inside the scene (6 % of the pixels) as centres, not as context.

Several stores (scenes that agree in bands) form one plan: their blocks are numbered one after
the other and drawn in one random order, and a centre is a ``(scene, row, col)`` triple packed into
one integer, so the shuffle groups mix scenes and every scene contributes in proportion to its
valid pixels. With one store the plan, the patches and their order are those of a single scene.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from hsi_cluster.geo import PatchGeometry, Window, halo_read
from hsi_cluster.io.store import Store, pooled_band_mean

DEFAULT_BUFFER_BYTES = 128 * 2**20


@dataclass(frozen=True)
class PatchBatch:
    """One batch: patches (N, bands, p, p) in the store's dtype (or (N, C, p, p) as the sampler's
    ``transform`` maps them; a numpy array, or a page-locked tensor after :meth:`pin_memory`) and
    their centres (N,) rows/cols.

    ``scene`` (N,) is the index of the store each centre lies in (all 0 with one store).
    """

    patches: np.ndarray | torch.Tensor
    rows: np.ndarray
    cols: np.ndarray
    scene: np.ndarray | None = None

    def patch_tensor(self) -> torch.Tensor:
        """The patches as a CPU tensor (sharing memory with the array)."""
        return self.patches if isinstance(self.patches, torch.Tensor) else torch.from_numpy(self.patches)

    def pin_memory(self) -> PatchBatch:
        """This batch with its patches as a tensor in page-locked host memory, so that the copy to a
        CUDA device can overlap the computation (``DataLoader(pin_memory=True)`` calls this)."""
        return replace(self, patches=self.patch_tensor().pin_memory())


class PatchSampler(IterableDataset):
    """Batches of random valid pixel-centred patches streamed from one or several ingested stores.

    Args:
        store: path of a complete store from ``hsicluster ingest``, or a sequence of such stores
            with the same band count: one plan over all their valid pixels, so each store gives
            patches in proportion to its valid pixels.
        patch_size: odd patch side p in pixels.
        batch_size: patches per batch.
        seed: base seed; the epoch's order depends on ``(seed, epoch)`` only.
        mask: optional bool (y, x) restricting the centres (e.g. labelled pixels), combined with the
            store's valid mask (one store only).
        buffer_bytes: memory for the blocks whose centres are shuffled together.
        epoch: which epoch to produce (set with :meth:`set_epoch`).
        start_batch: skip this many batches of the epoch without reading data (to resume).
        fraction: share of each block's centres an epoch draws, in (0, 1] (a seeded random subset
            of ``ceil(fraction · n)`` of a block's ``n`` centres, new each epoch); 1: all of them.
        fill: per-band values (B,) that invalid pixels inside a patch read as; default the band
            means over the valid pixels of all the stores (:func:`~hsi_cluster.io.store.invalid_fill`),
            i.e. the spectral mean a model trained on them stores.
        transform: optional per-pixel map, (n, B) raw spectra → (n, C), applied to each block's
            pixels as the block is read (e.g.
            :meth:`~hsi_cluster.model.projection.SpectralProjection.pixel_map`): patches are then cut
            from the mapped block and come as (N, C, p, p) in its dtype.
        keep_partial: also yield the epoch's last, partial batch (every drawn centre once).

    Iterating yields :class:`PatchBatch` objects. In DataLoader workers (``batch_size=None``) each
    worker takes every n-th block of the epoch's order, so workers never duplicate a centre.
    ``store``, ``shape`` and ``grid`` describe the first store; ``stores``, ``shapes`` and ``grids``
    all of them. With several stores of different dtypes, patches come in their common dtype.
    """

    def __init__(self, store: str | Path | Sequence[str | Path], *, patch_size: int, batch_size: int, seed: int = 0,
                 mask: np.ndarray | None = None, buffer_bytes: int = DEFAULT_BUFFER_BYTES, epoch: int = 0,
                 start_batch: int = 0, fill: np.ndarray | None = None, fraction: float = 1.0,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None, keep_partial: bool = False) -> None:
        super().__init__()
        self.keep_partial = keep_partial
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)
        self.transform = transform
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch size must be a positive odd number of pixels, got {patch_size}")
        if batch_size < 1:
            raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
        stores = [store] if isinstance(store, (str, Path)) else list(store)
        if not stores:
            raise ValueError("PatchSampler needs at least one store")
        self.stores = tuple(str(s) for s in stores)
        self.store = self.stores[0]
        self.patch_size = patch_size
        self.geometry = PatchGeometry(patch_size)
        self.halo = self.geometry.halo
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self._opened = tuple(Store.open(s) for s in self.stores)
        self.shapes = tuple(s.shape for s in self._opened)
        if len({shape[0] for shape in self.shapes}) != 1:
            raise ValueError(f"stores have {[shape[0] for shape in self.shapes]} bands; pass stores with the same "
                             "band count")
        self.grids = tuple(s.grid for s in self._opened)
        self.shape, self.grid = self.shapes[0], self.grids[0]
        self.dtype = np.result_type(*(s.dtype for s in self._opened))
        self.mask = mask
        if mask is not None and len(self.stores) != 1:
            raise ValueError(f"a mask restricts the centres of one store, but {len(self.stores)} stores were given")
        if mask is not None and mask.shape != self.shape[1:]:
            raise ValueError(f"mask has shape {mask.shape} but the scene is {self.shape[1:]}; pass a (y, x) mask "
                             "of the scene's size")
        # A cached block holds what the transform makes of each pixel (C channels, its dtype), or the raw bands.
        pixel_bytes = [shape[0] * s.dtype.itemsize if transform is None else
                       transform(np.zeros((1, shape[0]), dtype=s.dtype)).nbytes
                       for shape, s in zip(self.shapes, self._opened, strict=True)]
        block_bytes = max(size * (grid.block + 2 * self.halo) ** 2 for size, grid in zip(pixel_bytes, self.grids,
                                                                                         strict=True))
        self.blocks_per_group = max(1, buffer_bytes // block_bytes)
        values = pooled_band_mean(self._opened) if fill is None else np.asarray(fill)
        self.fills = tuple(values.astype(s.dtype) for s in self._opened)
        self.fill = self.fills[0]
        # Global numbering: store s owns blocks [block_offsets[s], block_offsets[s + 1]) and centre ids
        # [pixel_offsets[s], pixel_offsets[s + 1]) (row * width + col within the store, plus the offset).
        self._block_offsets = np.cumsum([0] + [len(grid) for grid in self.grids]).astype(np.int64)
        self._pixel_offsets = np.cumsum([0] + [shape[1] * shape[2] for shape in self.shapes]).astype(np.int64)
        self._widths = np.array([shape[2] for shape in self.shapes], dtype=np.int64)
        self._block_sides = np.array([grid.block for grid in self.grids], dtype=np.int64)
        self._block_cols = np.array([grid.shape[1] for grid in self.grids], dtype=np.int64)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Produce ``epoch`` next, skipping its first ``start_batch`` batches."""
        self.epoch, self.start_batch = epoch, start_batch

    # ---------------------------------------------------------------------------- the plan
    def _block(self, block_id: int) -> tuple[int, int, int]:
        """``(store, i, j)`` of a global block id."""
        scene = int(np.searchsorted(self._block_offsets, block_id, side="right")) - 1
        i, j = divmod(block_id - int(self._block_offsets[scene]), int(self._block_cols[scene]))
        return scene, i, j

    def _centres(self, block_id: int) -> np.ndarray:
        """Global centre ids (store offset + row * width + col) of the usable centres of a block."""
        scene, i, j = self._block(block_id)
        window = self.grids[scene].window(i, j)
        rows, cols = window.slices
        usable = self._opened[scene].valid_in(window)
        if self.mask is not None:
            usable = usable & self.mask[rows, cols]
        r, c = np.nonzero(usable)
        return (r + window.row) * self.shapes[scene][2] + (c + window.col) + self._pixel_offsets[scene]

    @property
    def reads_neighbours(self) -> bool:
        """Whether blocks are read with their halo from the neighbouring chunks (full passes), or
        alone, for the centres whose patches they contain (a share of each block: ``fraction`` < 1)."""
        return self.fraction >= 1

    def _contained(self, block_id: int, centres: np.ndarray) -> np.ndarray:
        """The ``centres`` of a block whose patches read only the block's pixels."""
        scene, i, j = self._block(block_id)
        window = self.grids[scene].window(i, j)
        _, height, width = self.shapes[scene]
        rows_ok, cols_ok = self.geometry.contained(window, height=height, width=width)
        rows, cols = np.divmod(centres - self._pixel_offsets[scene], width)
        return centres[rows_ok[rows - window.row] & cols_ok[cols - window.col]]

    def _draw(self, block_id: int) -> tuple[np.ndarray, int]:
        """The centres a share is drawn from (all usable ones, or those the block contains) and its size."""
        centres = self._centres(block_id)
        if self.reads_neighbours:
            return centres, len(centres)
        share = math.ceil(self.fraction * len(centres))  # in proportion to all the block's centres
        candidates = self._contained(block_id, centres)
        return candidates, min(share, len(candidates))

    def _epoch_centres(self, block_id: int) -> np.ndarray:
        """The centres of a block this epoch draws: all, or a seeded random share of them."""
        candidates, share = self._draw(block_id)
        if self.reads_neighbours:
            return candidates
        rng = np.random.default_rng([self.seed, self.epoch, block_id, 0xB10C])
        return np.sort(rng.choice(candidates, size=share, replace=False))

    def valid_centres(self) -> int:
        """Number of usable centres (valid pixels of all stores, within the mask if any)."""
        return int(sum(len(self._centres(b)) for b in range(int(self._block_offsets[-1]))))

    def centres_per_epoch(self) -> int:
        """Centres one epoch draws (:meth:`valid_centres` when ``fraction`` is 1)."""
        return int(sum(self._draw(b)[1] for b in range(int(self._block_offsets[-1]))))

    def valid_centres_per_store(self) -> list[int]:
        """Centres per epoch of each store, in order."""
        return [int(sum(len(self._centres(b)) for b in range(int(start), int(stop))))
                for start, stop in zip(self._block_offsets[:-1], self._block_offsets[1:], strict=True)]

    def batches_per_epoch(self, shards: int = 1) -> int:
        """Batches one epoch yields (summed over ``shards`` workers): full ones, and the last partial
        one with ``keep_partial``."""
        if shards == 1:
            return (-(-self.centres_per_epoch() // self.batch_size) if self.keep_partial
                    else self.centres_per_epoch() // self.batch_size)
        return sum(sum(1 for _ in self._plan(shard, shards)) for shard in range(shards))

    def _groups(self, order: np.ndarray) -> list[np.ndarray]:
        """Block ids in ``order`` cut into shuffle groups of near-equal size, at most :attr:`blocks_per_group`
        each: no small last group, whose batches would come from a few blocks only."""
        return np.array_split(order, max(1, math.ceil(len(order) / self.blocks_per_group)))

    def _plan(self, shard: int, shards: int) -> Iterator[np.ndarray]:
        """Global centre ids of each batch of this shard, in order."""
        rng = np.random.default_rng([self.seed, self.epoch, shard, shards])
        order = np.random.default_rng([self.seed, self.epoch]).permutation(int(self._block_offsets[-1]))[shard::shards]
        pool = np.empty(0, dtype=np.int64)
        for group in self._groups(order):
            members = [self._epoch_centres(int(b)) for b in group]
            pool = np.concatenate([pool, *members])
            rng.shuffle(pool)
            n_full = len(pool) // self.batch_size
            for k in range(n_full):
                yield pool[k * self.batch_size:(k + 1) * self.batch_size]
            pool = pool[n_full * self.batch_size:]
        if self.keep_partial and len(pool):
            yield pool

    def _locate(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Store index, row, col and global block id (N,) of global centre ids."""
        scene = np.searchsorted(self._pixel_offsets, centres, side="right") - 1
        rows, cols = np.divmod(centres - self._pixel_offsets[scene], self._widths[scene])
        side = self._block_sides[scene]
        block_ids = self._block_offsets[scene] + rows // side * self._block_cols[scene] + cols // side
        return scene, rows, cols, block_ids

    # ---------------------------------------------------------------------------- extraction
    def _read(self, scene: int, window: Window) -> tuple[np.ndarray, int, int]:
        """A block's values with what it needs of a halo, channel-last (h, w, C), and the rows and cols
        of the haloed window the read lacks above and on the left (0 with :attr:`reads_neighbours`).

        Channel-last, each pixel's channels lie together, so cutting scattered patches touches a few
        cache lines per pixel instead of one per channel: 5× faster than from (C, h, w) blocks.
        """
        store = self._opened[scene]
        values = store.read_window(window, self.halo, self.fills[scene], neighbours=self.reads_neighbours)
        bands, height, width = values.shape
        pixels = values.reshape(bands, -1).T  # (h·w, B), a view
        pixels = np.ascontiguousarray(pixels if self.transform is None else self.transform(pixels))
        values = pixels.reshape(height, width, -1)
        if self.reads_neighbours:
            return values, 0, 0
        _, height, width = self.shapes[scene]
        (top, _), (left, _) = halo_read(window, self.halo, height=height, width=width)[1]
        return values, self.halo - top, self.halo - left

    def _extract(self, centres: np.ndarray,
                 cache: dict[int, tuple[np.ndarray, int, int]]) -> tuple[PatchBatch, np.ndarray]:
        scene, rows, cols, block_ids = self._locate(centres)
        p = self.patch_size
        offsets = np.arange(p)
        patches: np.ndarray | None = None
        for block_id in (int(b) for b in np.unique(block_ids)):
            s, i, j = self._block(block_id)
            window = self.grids[s].window(i, j)
            if block_id not in cache:
                cache[block_id] = self._read(s, window)
            padded, shift_rows, shift_cols = cache[block_id]
            _, padded_width, channels = padded.shape
            if patches is None:  # (N, p, p, C): as many channels as the blocks hold (transformed or not)
                patches = np.empty((len(centres), p, p, channels),
                                   dtype=self.dtype if self.transform is None else padded.dtype)
            members = np.nonzero(block_ids == block_id)[0]
            top_rows = rows[members] - window.row - shift_rows  # the patches' first row and col in ``padded``
            left_cols = cols[members] - window.col - shift_cols
            flat = (top_rows[:, None, None] + offsets[:, None]) * padded_width + left_cols[:, None, None] + offsets
            # one gather of (n, p, p) pixels from the flattened block
            patches[members] = np.take(padded.reshape(-1, channels), flat, axis=0)
        assert patches is not None  # a batch has at least one centre
        return PatchBatch(np.ascontiguousarray(patches.transpose(0, 3, 1, 2)), rows, cols, scene), block_ids

    def __iter__(self) -> Iterator[PatchBatch]:
        info = get_worker_info()
        shard, shards = (0, 1) if info is None else (info.id, info.num_workers)
        cache: dict[int, tuple[np.ndarray, int, int]] = {}
        skip = self.start_batch if shards == 1 else 0
        for index, centres in enumerate(self._plan(shard, shards)):
            if index < skip:
                continue
            batch, block_ids = self._extract(centres, cache)
            in_use = set(block_ids.tolist())
            yield batch
            # Keep only blocks that the current shuffle group may still use: the newest ones.
            if len(cache) > 2 * self.blocks_per_group:
                for block_id in list(cache)[: len(cache) - 2 * self.blocks_per_group]:
                    if block_id not in in_use:
                        del cache[block_id]


def collate_patches(batch: PatchBatch) -> dict[str, torch.Tensor]:
    """DataLoader collate for ``batch_size=None``: numpy batch → tensors."""
    scene = batch.scene if batch.scene is not None else np.zeros(len(batch.rows), dtype=np.int64)
    return {"patches": batch.patch_tensor(), "rows": torch.from_numpy(batch.rows),
            "cols": torch.from_numpy(batch.cols), "scene": torch.from_numpy(scene)}
