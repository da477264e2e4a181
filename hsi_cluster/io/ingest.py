"""``ingest``: stream a scene into a Zarr v3 store, block by block, resumably.

The store is built under ``STORE.partial`` next to the destination and renamed to ``STORE`` only
when every block, the statistics and the metadata are written, so the destination never holds a
half-written store. Each finished block leaves a marker file; a rerun after a crash or kill skips
the marked blocks and produces the same store as an uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from hsi_cluster import __version__
from hsi_cluster.data.stats import BandStats, valid_pixel_mask
from hsi_cluster.errors import OutputError, SceneError
from hsi_cluster.geo import BlockGrid, auto_chunk_size
from hsi_cluster.io.scene import open_scene
from hsi_cluster.io.store import (BAND_COORDS, METADATA_KEY, STORE_FORMAT, STORE_VERSION, is_complete_store,
                                  read_store_metadata)

PROGRESS_DIR = "_blocks_done"
MIN_CHUNK = 16
COMPRESSOR = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


def partial_path(store: Path) -> Path:
    """Where an unfinished store is built: ``STORE.partial`` beside ``STORE``."""
    return store.with_name(store.name + ".partial")


def _source_identity(scene: xr.DataArray) -> dict[str, Any]:
    source = Path(scene.attrs["source"])
    stat = source.stat()
    return {"path": str(source), "size": stat.st_size if source.is_file() else None,
            "mtime_ns": stat.st_mtime_ns, "format": scene.attrs["format"]}


def check_output_path(store: Path, *, overwrite: bool) -> None:
    """Fail early when ``store`` exists (without ``overwrite``) or its folder is not writable."""
    if store.exists() and not overwrite:
        what = "a complete store" if is_complete_store(store) else "something that is not a finished store"
        raise OutputError(f"{store}: already exists ({what}); pass --overwrite to replace it or choose another path")
    parent = store.parent
    if not parent.is_dir():
        raise OutputError(f"{store}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_EXEC if hasattr(os, "X_EXEC") else os.W_OK | os.X_OK):
        raise OutputError(f"{store}: folder {parent} is not writable; choose another output path")


def _store_metadata(scene: xr.DataArray, chunk: int, source: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": STORE_FORMAT, "version": STORE_VERSION, "complete": False, "library_version": __version__,
        "source": source, "shape": list(scene.shape), "dtype": str(scene.dtype), "chunk": chunk,
        "crs": scene.attrs.get("crs"), "transform": list(scene.attrs["transform"]),
        "georeferenced": bool(scene.attrs.get("georeferenced")), "nodata": scene.attrs.get("nodata"),
    }
    for name in BAND_COORDS:
        if name in scene.coords:
            values = scene.coords[name].values
            meta[name] = [bool(v) for v in values] if name == "good_band" else [float(v) for v in values]
    return meta


def _same_job(existing: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    keys = ("source", "shape", "dtype", "chunk", "version")
    return existing is not None and all(existing.get(k) == wanted.get(k) for k in keys)


def _create_store(path: Path, scene: xr.DataArray, chunk: int, grid: BlockGrid, meta: dict[str, Any]) -> None:
    n_bands, height, width = scene.shape
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={METADATA_KEY: meta})
    fill = np.nan if np.issubdtype(scene.dtype, np.floating) else 0
    group.create_array("data", shape=(n_bands, height, width), dtype=scene.dtype, chunks=(n_bands, chunk, chunk),
                       compressors=[COMPRESSOR], fill_value=fill, dimension_names=("band", "y", "x"))
    group.create_array("valid", shape=(height, width), dtype=bool, chunks=(chunk, chunk),
                       compressors=[COMPRESSOR], fill_value=False, dimension_names=("y", "x"))
    group.create_array("block_stats", shape=(*grid.shape, 5, n_bands), dtype="float64",
                       chunks=(1, 1, 5, n_bands), fill_value=0.0,
                       dimension_names=("block_y", "block_x", "field", "band"))
    (path / PROGRESS_DIR).mkdir()


def _marker(path: Path, i: int, j: int) -> Path:
    return path / PROGRESS_DIR / f"{i}.{j}"


def _ingest_block(scene: xr.DataArray, group: zarr.Group, grid: BlockGrid, i: int, j: int, path: Path,
                  good_band: np.ndarray | None) -> int:
    """Copy block (i, j) into the store with its mask and summary; returns its pixel count."""
    window = grid.window(i, j)
    rows, cols = window.slices
    block = np.asarray(scene.data[:, rows, cols].compute(scheduler="synchronous"))
    valid = valid_pixel_mask(block, nodata=scene.attrs.get("nodata"), good_band=good_band)
    stats = BandStats.of_block(block, valid)
    group["data"][:, rows, cols] = block
    group["valid"][rows, cols] = valid
    group["block_stats"][i, j] = stats.pack()
    _marker(path, i, j).touch()
    return window.size


def ingest(scene_path: str | os.PathLike[str], store_path: str | os.PathLike[str], *, chunk: int | None = None,
           overwrite: bool = False, var: str | None = None, workers: int | None = None,
           progress: Callable[[int, int], None] | None = None) -> Path:
    """Stream a scene into a Zarr v3 store with band statistics and a valid-pixel mask.

    Args:
        scene_path: anything :func:`hsi_cluster.io.open_scene` reads.
        store_path: destination directory (conventionally ``*.zarr``).
        chunk: spatial chunk side in pixels; default: chunks of about 8 MB.
        overwrite: replace an existing store (the old one stays until the new one is complete).
        var: variable name for MATLAB files with several cubes.
        workers: reader/compressor threads (default: CPU count, at most 4).
        progress: callback ``(blocks_done, blocks_total)`` called as blocks finish.

    Returns:
        the path of the complete store.

    Raises:
        SceneError: the scene cannot be read (the partial store is removed).
        OutputError: the destination exists (without ``overwrite``) or is not writable.
    """
    store = Path(store_path).expanduser().absolute()
    check_output_path(store, overwrite=overwrite)
    scene = open_scene(scene_path, var=var)
    n_bands, height, width = scene.shape
    chunk = chunk or auto_chunk_size(n_bands, scene.dtype.itemsize)
    if chunk < MIN_CHUNK:
        raise OutputError(f"--chunk {chunk} is too small; use at least {MIN_CHUNK} pixels")
    scene = scene.chunk({"y": chunk, "x": chunk}) if scene.data.chunks[1][0] != chunk else scene
    grid = BlockGrid(height, width, chunk)
    meta = _store_metadata(scene, chunk, _source_identity(scene))
    work = partial_path(store)
    if not _same_job(read_store_metadata(work) if work.is_dir() else None, meta):
        if work.exists():
            shutil.rmtree(work) if work.is_dir() else work.unlink()
        try:
            _create_store(work, scene, chunk, grid, meta)
        except PermissionError as exc:
            raise OutputError(f"{store}: cannot write ({exc.strerror}); choose another output path") from exc
    group = zarr.open_group(str(work), mode="r+")
    todo = [(i, j) for i, j in grid if not _marker(work, i, j).exists()]
    good_band = scene.coords["good_band"].values if "good_band" in scene.coords else None
    done = len(grid) - len(todo)
    if progress:
        progress(done, len(grid))
    n_workers = workers or min(4, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="ingest") as pool:
            pending: deque[Future[int]] = deque()
            for i, j in todo:
                pending.append(pool.submit(_ingest_block, scene, group, grid, i, j, work, good_band))
                if len(pending) >= 2 * n_workers:  # bounded: a few blocks in memory at most
                    pending.popleft().result()
                    done += 1
                    if progress:
                        progress(done, len(grid))
            while pending:
                pending.popleft().result()
                done += 1
                if progress:
                    progress(done, len(grid))
    except SceneError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _finalise(work, group, grid, meta)
    _replace(work, store)
    return store


def _finalise(work: Path, group: zarr.Group, grid: BlockGrid, meta: dict[str, Any]) -> None:
    """Merge block summaries into the statistics, then mark the store complete."""
    packed = group["block_stats"][...]
    total = BandStats.empty(packed.shape[-1])
    for i, j in grid:
        total = total.merge(BandStats.unpack(packed[i, j]))
    meta = dict(meta, statistics=total.to_attrs(), valid_pixels=int(total.count.max(initial=0)),
                complete=True, completed=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    group.attrs[METADATA_KEY] = meta
    shutil.rmtree(work / PROGRESS_DIR, ignore_errors=True)


_replace_lock = threading.Lock()


def _replace(work: Path, store: Path) -> None:
    """Move the finished store into place; an old store at ``store`` is removed only after."""
    with _replace_lock:
        old = store.with_name(store.name + ".old")
        if store.exists():
            if old.exists():
                shutil.rmtree(old)
            store.rename(old)
        work.rename(store)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
