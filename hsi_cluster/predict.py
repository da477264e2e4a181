"""Labelling pixels with a trained model.

:func:`label_patches` evaluates the network patch by patch (any backbone): correct everywhere and
the reference for the tiled, fully convolutional path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import zarr
from numpy.lib.stride_tricks import sliding_window_view

from hsi_cluster.data.sampler import read_padded_window
from hsi_cluster.geo import BlockGrid
from hsi_cluster.model.sscc import SSCC

#: Label value of pixels that could not be labelled (invalid input) in in-memory results.
NO_LABEL = -1


@torch.no_grad()
def label_patches(model: SSCC, store: str | os.PathLike[str], *, patch_size: int, batch_size: int = 1024,
                  device: torch.device | str = "cpu",
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label every valid pixel of a store by evaluating the network on its centred patch.

    Args:
        model: trained network (put in eval mode here).
        store: a complete store from ``hsicluster ingest``.
        patch_size: p, as in training (reflect padding at the scene border).
        batch_size: patches per forward pass.
        device: where to run the network.
        progress: ``(blocks_done, blocks_total)`` callback.

    Returns:
        ``(labels, confidence)``: int32 (y, x) with :data:`NO_LABEL` on invalid pixels, and float32
        (y, x) maximum softmax probability (NaN on invalid pixels).
    """
    group = zarr.open_group(str(store), mode="r")
    data, valid = group["data"], group["valid"]
    _, height, width = data.shape
    grid = BlockGrid(height, width, data.chunks[1])
    halo = patch_size // 2
    labels = np.full((height, width), NO_LABEL, dtype=np.int32)
    confidence = np.full((height, width), np.nan, dtype=np.float32)
    model = model.to(device).eval()
    for done, (i, j) in enumerate(grid, start=1):
        window = grid.window(i, j)
        rows, cols = window.slices
        r, c = np.nonzero(valid[rows, cols])
        if len(r):
            padded = read_padded_window(data, rows.start, rows.stop, cols.start, cols.stop, halo)
            views = sliding_window_view(padded, (patch_size, patch_size), axis=(1, 2))
            for start in range(0, len(r), batch_size):
                rr, cc = r[start:start + batch_size], c[start:start + batch_size]
                patches = np.ascontiguousarray(views[:, rr, cc].transpose(1, 0, 2, 3), dtype=np.float32)
                label, conf = model.predict_patches(torch.from_numpy(patches).to(device))
                labels[rr + window.row, cc + window.col] = label.cpu().numpy()
                confidence[rr + window.row, cc + window.col] = conf.cpu().numpy()
        if progress:
            progress(done, len(grid))
    return labels, confidence
