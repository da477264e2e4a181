"""Labelling pixels with a trained model.

:func:`label_patches` evaluates the network patch by patch (any backbone): correct everywhere and
the reference for the tiled, fully convolutional path.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view

from hsi_cluster import __version__
from hsi_cluster.checkpoint import Checkpoint, load_checkpoint
from hsi_cluster.device import device_from
from hsi_cluster.geo import DEFAULT_TILE, BlockGrid, PatchGeometry, check_tile_size
from hsi_cluster.io.checks import check_bands, check_patch_fits
from hsi_cluster.io.files import check_distinct_outputs, check_output
from hsi_cluster.io.label_raster import RasterGrid, TileStore, colour_table, label_dtype, write_cog, write_quicklook
from hsi_cluster.io.label_raster import write_label_sidecar
from hsi_cluster.io.metadata import WAVELENGTH_TOLERANCE_NM
from hsi_cluster.io.scene import open_scene, scene_inputs
from hsi_cluster.io.store import Store, invalid_fill, read_haloed
from hsi_cluster.model.backbones import DenseBackbone
from hsi_cluster.model.heads import apply_per_pixel
from hsi_cluster.model.sscc import SSCC
from hsi_cluster.stats import valid_pixel_mask

#: Label value of pixels that could not be labelled (invalid input) in in-memory results.
NO_LABEL = -1


@torch.no_grad()
def label_patches(model: SSCC, store: str | os.PathLike[str], *, patch_size: int, batch_size: int = 1024,
                  device: torch.device | str = "cpu", fill: np.ndarray | None = None,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label every valid pixel of a store by evaluating the network on its centred patch.

    Args:
        model: trained network (put in eval mode here).
        store: a complete store from ``hsicluster ingest``.
        patch_size: p, as in training (reflect padding at the scene border).
        batch_size: patches per forward pass.
        device: where to run the network.
        fill: per-band values that invalid (NaN/nodata) pixels inside a patch read as; default the
            store's band means, which is what training saw when this is the training scene (for
            another scene pass the checkpoint's ``spectral["mean"]``, as the tiled path does).
        progress: ``(blocks_done, blocks_total)`` callback.

    Returns:
        ``(labels, confidence)``: int32 (y, x) with :data:`NO_LABEL` on invalid pixels, and float32
        (y, x) maximum softmax probability (NaN on invalid pixels).
    """
    opened = Store.open(store)
    _, height, width = opened.shape
    grid = opened.grid
    halo = PatchGeometry(patch_size).halo
    labels = np.full((height, width), NO_LABEL, dtype=np.int32)
    confidence = np.full((height, width), np.nan, dtype=np.float32)
    fill = invalid_fill([opened]) if fill is None else np.asarray(fill, dtype=np.float64)
    model = model.to(device).eval()
    for done, (i, j) in enumerate(grid, start=1):
        window = grid.window(i, j)
        r, c = np.nonzero(opened.valid[window.slices])
        if len(r):
            padded = opened.read_window(window, halo, fill)
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


# ------------------------------------------------------------------------------------------------
# Tiled inference: the whole scene, tile by tile, written to a georeferenced label raster.


@dataclass
class PredictResult:
    """What a finished ``predict`` reports."""

    output: Path
    confidence: Path | None
    quicklook: Path | None
    tiles: int
    tiles_resumed: int
    pixels: int
    valid_pixels: int
    seconds: float
    counts: dict[int, int]

    @property
    def megapixels_per_second(self) -> float:
        return self.pixels / 1e6 / max(self.seconds, 1e-9)


def check_scene_matches(checkpoint: Checkpoint, scene: xr.DataArray, *,
                        tolerance_nm: float = WAVELENGTH_TOLERANCE_NM) -> None:
    """Raise before any work when the scene's bands or size do not fit the model."""
    check_bands(scene, n_bands=checkpoint.in_bands, wavelength=checkpoint.wavelength,
                reference=f"the model {checkpoint.path.name}", tolerance_nm=tolerance_nm,
                advice="use a scene from the same sensor and processing, or retrain")
    check_patch_fits(scene, checkpoint.patch_size, whose="the model's")


def _head_width(model: SSCC) -> int:
    """Widest layer of the cluster head (its hidden width), to size strips of pixels."""
    return max(model.cluster_head.hidden, model.cluster_head.out_features)


@torch.no_grad()
def _tile_logits(model: SSCC, padded: np.ndarray, *, halo: int, patch_size: int, device: torch.device,
                 amp: bool, batch_size: int = 4096) -> torch.Tensor:
    """Cluster probabilities of the interior of a padded tile (B, H + 2h, W + 2h) → (K, H, W).

    The projection (a per-pixel linear map) is applied once to the whole tile, in row strips to
    bound memory; the dense backbone then runs fully convolutionally, the ResNet one on unfolded
    patches in batches.
    """
    n_bands, height, width = padded.shape
    projected = torch.empty((1, model.projection.out_channels, height, width), dtype=torch.float32, device=device)
    strip = max(1, (64 * 2**20) // (n_bands * width * 4))
    for start in range(0, height, strip):
        rows = torch.from_numpy(np.ascontiguousarray(padded[:, start:start + strip], dtype=np.float32))
        projected[:, :, start:start + strip] = model.project(rows.unsqueeze(0).to(device))
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        if isinstance(model.backbone, DenseBackbone):
            # channels-last (NHWC) is the layout oneDNN's convolutions run fastest in on CPUs (~1.5×).
            features = model.backbone.forward_dense(projected.contiguous(memory_format=torch.channels_last))
            # The head's hidden layer is wide (512 per pixel): run it on row strips of ~32 MB.
            rows = max(1, (32 * 2**20) // (features.shape[3] * _head_width(model) * 4))
            logits = torch.cat([apply_per_pixel(model.cluster_head, features[:, :, r:r + rows])[0]
                                for r in range(0, features.shape[2], rows)], dim=1)
        else:
            inner_h, inner_w = height - 2 * halo, width - 2 * halo
            windows = projected[0].unfold(1, patch_size, 1).unfold(2, patch_size, 1)  # view (C, h, w, p, p)
            rows = max(1, batch_size // inner_w)  # copy out only a batch of rows of patches at a time
            strips = []
            for r in range(0, inner_h, rows):
                strip = windows[:, r:r + rows].permute(1, 2, 0, 3, 4)
                batch = strip.reshape(-1, strip.shape[2], patch_size, patch_size)
                strips.append(model.forward_projected(batch).reshape(strip.shape[0], inner_w, -1))
            logits = torch.cat(strips).permute(2, 0, 1)
    return torch.softmax(logits.float(), dim=0)


def predict_scene(scene_path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str],
                  output: str | os.PathLike[str], *, tiles: int = DEFAULT_TILE, device: str = "auto",
                  confidence_path: str | os.PathLike[str] | None = None,
                  quicklook_path: str | os.PathLike[str] | None = None, overwrite: bool = False,
                  resume: bool = False, progress: Callable[[int, int], None] | None = None) -> PredictResult:
    """Label every pixel of a scene with a trained model and write a label COG.

    Args:
        scene_path: any raster :func:`~hsi_cluster.io.open_scene` reads, or a store.
        checkpoint_path: a checkpoint from ``hsicluster train``.
        output: the label GeoTIFF (COG layout, uint8/uint16, nodata = dtype max, colour table).
        tiles: tile side T in pixels; each tile is read with a halo of (patch − 1) / 2 pixels.
        device: "auto", "cpu" or "cuda" (bf16 autocast on CUDA when the model trained with amp).
        confidence_path: optional float32 raster of the winning probability (NaN = nodata).
        quicklook_path: optional PNG with a legend.
        overwrite: replace existing outputs.
        resume: continue from the finished tiles of an interrupted run.
        progress: ``(tiles_done, tiles_total)`` callback.

    Raises:
        HsiClusterError: bad checkpoint, scene/model mismatch, existing or unwritable output.
    """
    started = time.perf_counter()
    absolute = lambda path: Path(path).expanduser().absolute() if path is not None else None  # noqa: E731
    output = absolute(output)
    outputs = {"-o": output, "--confidence": absolute(confidence_path), "--quicklook": absolute(quicklook_path)}
    check_distinct_outputs(outputs)
    inputs = {**scene_inputs(absolute(scene_path)), "the model": absolute(checkpoint_path)}
    # --resume continues an interrupted run; with nothing to continue, the outputs are new ones
    replace = overwrite or (resume and TileStore.partial_path(output).is_dir())
    for path in outputs.values():
        if path is not None:
            check_output(path, replace=replace, inputs=inputs,
                         exists_hint="pass --overwrite to replace it (--resume continues only an interrupted run)")
    check_tile_size(tiles)
    checkpoint = load_checkpoint(checkpoint_path)
    scene = open_scene(scene_path)
    check_scene_matches(checkpoint, scene)
    torch_device = device_from(device)
    model = checkpoint.build_model().to(torch_device).eval()
    if isinstance(model.backbone, DenseBackbone):
        model.backbone.to(memory_format=torch.channels_last)
    amp = checkpoint.amp and torch_device.type == "cuda"
    patch_size, halo = checkpoint.patch_size, checkpoint.halo
    n_clusters = checkpoint.n_clusters
    dtype, nodata = label_dtype(n_clusters)
    _, height, width = scene.shape
    grid = BlockGrid(height, width, tiles)
    fill = checkpoint.spectral_mean
    good_band = scene.coords["good_band"].values if "good_band" in scene.coords else None
    scene_nodata = scene.attrs.get("nodata")
    digest = checkpoint.sha256()
    source = Path(scene.attrs["source"])
    identity = {"checkpoint": digest, "source": str(source), "mtime_ns": source.stat().st_mtime_ns,
                "shape": list(scene.shape), "tiles": tiles, "confidence": confidence_path is not None}
    store = TileStore.open_or_create(output, grid=grid, dtype=dtype, nodata=nodata,
                                     with_confidence=confidence_path is not None, identity=identity, resume=resume)
    todo = [(i, j) for i, j in grid if not store.is_done(i, j)]
    resumed = len(grid) - len(todo)
    data = scene.data

    def read(i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        window = grid.window(i, j)
        # np.asarray: read the (lazy, dask) window here, once, in the prefetch thread; left lazy it was
        # read again by every later use (mask, fill, each projection strip) in the compute thread.
        padded = np.asarray(read_haloed(data, window, halo))
        valid = valid_pixel_mask(padded, nodata=scene_nodata, good_band=good_band)
        if not valid.all():  # holes read as the training mean, as in training
            padded = np.where(valid[None], padded, fill.astype(padded.dtype)[:, None, None])
        return padded, valid[halo:halo + window.height, halo:halo + window.width]

    done = resumed
    if progress:
        progress(done, len(grid))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as reader:
        upcoming = reader.submit(read, *todo[0]) if todo else None
        for index, (i, j) in enumerate(todo):
            padded, valid = upcoming.result()
            if index + 1 < len(todo):  # read the next tile while this one computes
                upcoming = reader.submit(read, *todo[index + 1])
            window = grid.window(i, j)
            tile_labels = np.full((window.height, window.width), nodata, dtype=dtype)
            tile_confidence = np.full((window.height, window.width), np.nan, dtype=np.float32)
            if valid.any():
                probabilities = _tile_logits(model, padded, halo=halo, patch_size=patch_size, device=torch_device,
                                             amp=amp)
                confidence, labels = probabilities.max(dim=0)
                tile_labels[valid] = labels.cpu().numpy().astype(dtype)[valid]
                tile_confidence[valid] = confidence.cpu().numpy()[valid]
            store.write(i, j, *window.slices, tile_labels,
                        tile_confidence if confidence_path is not None else None)
            done += 1
            if progress:
                progress(done, len(grid))

    raster = RasterGrid(height, width, scene.attrs.get("crs"),
                        tuple(scene.attrs["transform"]) if scene.attrs.get("georeferenced") else None)
    tags = {"HSICLUSTER_MODEL_SHA256": digest, "HSICLUSTER_K": str(n_clusters),
            "HSICLUSTER_BACKBONE": checkpoint.backbone, "HSICLUSTER_VERSION": __version__,
            "HSICLUSTER_SOURCE": str(source)}
    labels_array = store.group["labels"]
    write_cog(labels_array, output, grid=raster, nodata=nodata, colormap=colour_table(n_clusters),
              description=f"SSCC cluster label (K={n_clusters}, model {digest})", tags=tags)
    confidence_out = None
    if confidence_path is not None:
        confidence_out = write_cog(store.group["confidence"], Path(confidence_path).expanduser().absolute(),
                                   grid=raster, nodata=float("nan"),
                                   description="maximum cluster probability", tags=tags)
    counts_array = np.zeros(n_clusters + 1, dtype=np.int64)
    step = max(1, tiles)
    for start in range(0, height, step):
        block = labels_array[start:start + step, :]
        counts_array += np.bincount(np.where(block == nodata, n_clusters, block).ravel(), minlength=n_clusters + 1)
    write_label_sidecar(output, n_clusters=n_clusters, counts=dict(enumerate(counts_array[:-1].tolist())),
                        nodata_count=int(counts_array[-1]))  # class names and counts for GIS tools
    quicklook_out = None
    if quicklook_path is not None:
        stride = max(1, max(height, width) // 1024)
        quicklook_out = write_quicklook(labels_array[::stride, ::stride], Path(quicklook_path).expanduser().absolute(),
                                        n_clusters=n_clusters, nodata=nodata,
                                        title=f"{source.name}: {n_clusters} clusters (model {digest})",
                                        counts=dict(enumerate(counts_array[:-1].tolist())),
                                        nodata_count=int(counts_array[-1]))
    store.remove()
    return PredictResult(output=output, confidence=confidence_out, quicklook=quicklook_out, tiles=len(grid),
                         tiles_resumed=resumed, pixels=height * width, valid_pixels=int(counts_array[:-1].sum()),
                         seconds=time.perf_counter() - started,
                         counts={k: int(counts_array[k]) for k in range(n_clusters)})
