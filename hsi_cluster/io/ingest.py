"""``ingest``: stream a scene into a Zarr v3 store, block by block, resumably.

The store is built under ``STORE.partial`` next to the destination and renamed to ``STORE`` only
when every block, the statistics and the metadata are written, so the destination never holds a
half-written store. Each finished block leaves a marker file holding its statistics; a rerun after
a crash or kill skips the marked blocks and produces the same store as an uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, BytesCodec

from hsi_cluster import __version__
from hsi_cluster.errors import MetadataWarning, OutputError, SceneError, counted, number_ranges, option
from hsi_cluster.geo import BlockGrid, auto_chunk_size
from hsi_cluster.io.files import atomic_path, check_output
from hsi_cluster.io.scene import MAX_TILE_READ, open_scene, scene_files_identity, scene_inputs
from hsi_cluster.io.scene_array import GCPS, file_mask
from hsi_cluster.io.store import (
    BAND_COORDS,
    BLOCK_STATS,
    DATA,
    METADATA_KEY,
    STORE_FORMAT,
    STORE_VERSION,
    VALID,
    array_of,
    is_complete_store,
    is_store,
    read_store_metadata,
)
from hsi_cluster.stats import (
    VALIDITY_RULES,
    BandStats,
    band_voids,
    usable_values,
    valid_pixel_mask,
    voiding_bands,
)

PROGRESS_DIR = "_blocks_done"
MIN_CHUNK = 16
BLOSC: dict[str, Any] = {"cname": "lz4", "clevel": 5}  # with byte shuffle: fast, ~1.7× on AVIRIS int16
COMPRESSOR = BloscCodec(**BLOSC, shuffle="shuffle")
READ_BUDGET = 48 * 2**20  # bytes read from the source in one go


def partial_path(store: Path) -> Path:
    """Where an unfinished store is built: ``STORE.partial`` beside ``STORE``."""
    return store.with_name(store.name + ".partial")


def _source_identity(scene: xr.DataArray) -> dict[str, Any]:
    """The scene's :func:`~hsi_cluster.io.scene.scene_files_identity` (its file and those read with it: an ENVI
    header, an EnMAP ``METADATA.XML``) and its ``format``, so that a resumed ingest of an edited scene or companion
    starts again."""
    return {**scene_files_identity(Path(scene.attrs["source"])), "format": scene.attrs["format"]}


def check_output_path(store: Path, *, overwrite: bool, scene: Path | None = None) -> None:
    """Fail early when ``store`` exists (without ``overwrite``), is the scene itself, or its folder is not
    writable."""
    inputs = scene_inputs(scene) if scene else {}
    check_output(store, replace=True, inputs=inputs, file_output=False)
    if store.exists() and overwrite and not is_store(store):  # --overwrite replaces a store, never anything else
        inside = [role for role, path in inputs.items() if store.resolve() in path.resolve().parents]
        what = f"it holds {inside[0]}" if inside else "it is not an hsicluster store"
        raise OutputError(f"{store}: already exists and --overwrite would delete it, but {what}; choose another path "
                          "(a new name ending in .zarr)")
    if store.exists() and not overwrite:
        what = "a complete store" if is_complete_store(store) else "something that is not a finished store"
        raise OutputError(f"{store}: already exists ({what}); pass {option('--overwrite')} to replace it or choose "
                          "another path")


def _store_metadata(scene: xr.DataArray, chunk: int, source: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": STORE_FORMAT, "version": STORE_VERSION, "validity_rules": VALIDITY_RULES, "complete": False,
        "library_version": __version__,
        "source": source, "shape": list(scene.shape), "dtype": str(scene.dtype), "chunk": chunk,
        "crs": scene.attrs.get("crs"), "transform": list(scene.attrs["transform"]),
        "georeferenced": bool(scene.attrs.get("georeferenced")), "nodata": scene.attrs.get("nodata"),
    }
    if scene.attrs.get(GCPS):
        meta[GCPS] = scene.attrs[GCPS]
    if scene.attrs.get("scaled_from"):
        meta["scaled_from"] = scene.attrs["scaled_from"]
    if scene.attrs.get("reflectance_scale_factor"):
        meta["reflectance_scale_factor"] = float(scene.attrs["reflectance_scale_factor"])
    for name in BAND_COORDS:
        if name in scene.coords:
            values = scene.coords[name].values
            meta[name] = [bool(v) for v in values] if name == "good_band" else [float(v) for v in values]
    return meta


def _same_job(existing: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    keys = ("source", "shape", "dtype", "chunk", "version", "validity_rules")
    return existing is not None and all(existing.get(k) == wanted.get(k) for k in keys)


def _create_store(path: Path, scene: xr.DataArray, chunk: int, grid: BlockGrid, meta: dict[str, Any]) -> None:
    n_bands, height, width = scene.shape
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={METADATA_KEY: meta})
    fill = np.nan if np.issubdtype(scene.dtype, np.floating) else 0
    group.create_array(DATA, shape=(n_bands, height, width), dtype=scene.dtype, chunks=(n_bands, chunk, chunk),
                       compressors=[COMPRESSOR], fill_value=fill, dimension_names=("band", "y", "x"))
    group.create_array(VALID, shape=(height, width), dtype=bool, chunks=(chunk, chunk),
                       compressors=[COMPRESSOR], fill_value=False, dimension_names=("y", "x"))
    group.create_array(BLOCK_STATS, shape=(*grid.shape, 5, n_bands), dtype="float64",
                       chunks=(1, 1, 5, n_bands), fill_value=0.0,
                       dimension_names=("block_y", "block_x", "field", "band"))
    (path / PROGRESS_DIR).mkdir()


class ChunkWriter:
    """Writes whole chunks of a store array (bytes + Blosc codecs) as files, encoded in the calling thread.

    The bytes are exactly what zarr writes for the array's codecs (little-endian bytes, then Blosc
    with the array's settings), so zarr reads them back unchanged. Encoding in the worker threads
    (Blosc releases the GIL) instead of through zarr's event loop is what lets reads, compression
    and statistics of different blocks overlap.
    """

    def __init__(self, path: Path, array: zarr.Array) -> None:
        codecs = getattr(array.metadata, "codecs", ())  # zarr v3 metadata (v2 has none: refused below)
        expected = (BytesCodec, BloscCodec)
        if len(codecs) != 2 or not all(isinstance(c, t) for c, t in zip(codecs, expected, strict=True)):
            raise ValueError(f"ChunkWriter handles bytes + blosc arrays only, got {codecs}")
        self.root = path
        self.metadata = array.metadata
        self.chunk_shape = tuple(array.chunks)
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.fill_value = array.fill_value
        self.codec = numcodecs.Blosc(**BLOSC, shuffle=numcodecs.Blosc.SHUFFLE)

    def write(self, chunk_index: tuple[int, ...], values: np.ndarray) -> None:
        """Store ``values`` (at most the chunk shape; edge chunks are padded with the fill value)."""
        if values.shape != self.chunk_shape:
            full = np.full(self.chunk_shape, self.fill_value, dtype=self.dtype)
            full[tuple(slice(0, n) for n in values.shape)] = values
            values = full
        encoded = self.codec.encode(np.ascontiguousarray(values, dtype=self.dtype))
        target = self.root / self.metadata.encode_chunk_key(chunk_index)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encoded)

    def holds(self, chunk_index: tuple[int, ...]) -> bool:
        """Whether the chunk's file is there and decodes to a whole chunk (a crash of the machine can leave a file
        truncated or empty behind its block's marker; a kill cannot, the marker comes after the file)."""
        target = self.root / self.metadata.encode_chunk_key(chunk_index)
        try:
            decoded = self.codec.decode(target.read_bytes())
        except (OSError, RuntimeError, ValueError):
            return False
        return len(memoryview(decoded).cast("B")) == math.prod(self.chunk_shape) * self.dtype.itemsize


def _marker(path: Path, i: int, j: int) -> Path:
    return path / PROGRESS_DIR / f"{i}.{j}"


def _lone_marker(path: Path, i: int, j: int) -> Path:
    """Block (i, j)'s :func:`~hsi_cluster.stats.band_voids`, written before its marker."""
    return path / PROGRESS_DIR / f"{i}.{j}.lone"


def read_unit_shape(scene: xr.DataArray, chunk: int, *, budget_bytes: int = READ_BUDGET) -> tuple[int, int]:
    """How many store chunks ``(rows, cols)`` to read from the source at once.

    Reads follow the file's layout: whole tiles of a tiled file, long strips of a striped (line-
    interleaved) one, so that no file block is read twice; a read stays under ``budget_bytes``, but for a file
    tile larger than that, read whole up to :data:`MAX_TILE_READ`.
    """
    n_bands, height, width = scene.shape
    chunk_bytes = n_bands * chunk * chunk * scene.dtype.itemsize
    most = max(1, budget_bytes // chunk_bytes)
    block_rows, block_cols = scene.attrs.get("file_block") or (chunk, chunk)
    if block_rows < chunk and block_cols >= width:  # scanline or strip layout
        return 1, min(-(-width // chunk), most)
    if block_rows % chunk == 0 and block_cols % chunk == 0:
        rows, cols = block_rows // chunk, block_cols // chunk
        if rows * cols <= most or rows * cols * chunk_bytes <= MAX_TILE_READ:
            return rows, cols
    return 1, 1


def _ingest_unit(scene: xr.DataArray, writers: dict[str, ChunkWriter], grid: BlockGrid,
                 blocks: list[tuple[int, int]], path: Path, good_band: np.ndarray | None) -> int:
    """Copy the blocks ``blocks`` (a rectangle of store chunks) with their masks and summaries.

    A block's marker, written last and atomically, holds its packed :class:`BandStats`.
    Returns the number of blocks written.
    """
    first, last = grid.window(*blocks[0]), grid.window(*blocks[-1])
    row0, col0 = first.row, first.col
    rows = slice(row0, last.row + last.height)
    cols = slice(col0, last.col + last.width)
    unit = np.asarray(scene.data[:, rows, cols].compute(scheduler="synchronous"))
    valid = valid_pixel_mask(unit, nodata=scene.attrs.get("nodata"), good_band=good_band)
    masked_by_file = file_mask(scene)
    if masked_by_file is not None:
        valid &= np.asarray(masked_by_file[rows, cols].compute(scheduler="synchronous"))
    summaries = {}
    for i, j in blocks:
        window = grid.window(i, j)
        local = (slice(window.row - row0, window.row - row0 + window.height),
                 slice(window.col - col0, window.col - col0 + window.width))
        block = unit[:, local[0], local[1]]
        writers[DATA].write((0, i, j), block)
        writers[VALID].write((i, j), valid[local])
        summaries[i, j] = BandStats.of_block(block, valid[local]).pack()
        with atomic_path(_lone_marker(path, i, j)) as scratch, open(scratch, "wb") as file:
            np.save(file, band_voids(block, valid[local], nodata=scene.attrs.get("nodata"), good_band=good_band))
    for (i, j), packed in summaries.items():
        marker = _marker(path, i, j)
        with atomic_path(marker) as scratch, open(scratch, "wb") as file:
            np.save(file, packed)
    return len(blocks)


def ingest(scene_path: str | os.PathLike[str], store_path: str | os.PathLike[str], *, chunk: int | None = None,
           overwrite: bool = False, var: str | None = None, workers: int | None = None,
           progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Stream a scene into a Zarr v3 store with band statistics and a valid-pixel mask.

    Args:
        scene_path: anything :func:`hsi_cluster.io.open_scene` reads.
        store_path: destination directory (conventionally ``*.zarr``).
        chunk: spatial chunk side in pixels; default: chunks of about 8 MB.
        overwrite: replace an existing store (the old one stays until the new one is complete).
        var: variable name for MATLAB files with several cubes.
        workers: reader/compressor threads (default: 2, or 1 on a single core).
        progress: callback ``(blocks_done, blocks_total)`` called as blocks finish.
        log: told of finished blocks of an interrupted run that could not be read back (ingested again).

    Returns:
        the path of the complete store.

    Raises:
        SceneError: the scene cannot be read (the partial store is removed).
        OutputError: the destination exists (without ``overwrite``) or is not writable.
    """
    store = Path(store_path).expanduser().absolute()
    check_output_path(store, overwrite=overwrite, scene=Path(scene_path).expanduser().absolute())
    scene = open_scene(scene_path, var=var)
    n_bands, height, width = scene.shape
    if not chunk:
        chunk = auto_chunk_size(n_bands, scene.dtype.itemsize)
    elif chunk < MIN_CHUNK:
        raise OutputError(f"{option('--chunk', chunk)} is too small; use at least {MIN_CHUNK} pixels")
    else:  # a block larger than the scene would only hold padding: the power of two that covers it
        chunk = min(chunk, max(MIN_CHUNK, 1 << (max(height, width) - 1).bit_length()))
    unit_rows, unit_cols = read_unit_shape(scene, chunk)
    scene = open_scene(scene_path, var=var, chunks=(unit_rows * chunk, unit_cols * chunk))  # one read per unit
    grid = BlockGrid(height, width, chunk)
    meta = _store_metadata(scene, chunk, _source_identity(scene))
    work = partial_path(store)
    existing = read_store_metadata(work) if work.is_dir() else None
    # A leftover is resumable only if it was fully created (its progress folder is made last) or
    # already finished (killed between marking it complete and the rename below).
    finished = bool(existing and existing.get("complete"))
    if not (_same_job(existing, meta) and (finished or (work / PROGRESS_DIR).is_dir())):
        finished = False
        if work.exists():
            shutil.rmtree(work) if work.is_dir() else work.unlink()
        try:
            _create_store(work, scene, chunk, grid, meta)
        except PermissionError as exc:
            raise OutputError(f"{store}: cannot write ({exc.strerror}); choose another output path") from exc
    if finished:
        _replace(work, store)
        return store
    group = zarr.open_group(str(work), mode="r+")
    writers = {name: ChunkWriter(work / name, array_of(group, name)) for name in (DATA, VALID)}
    good_band = scene.coords["good_band"].values if "good_band" in scene.coords else None
    n_block_rows, n_block_cols = grid.shape
    units = [[(i, j) for i in range(i0, min(i0 + unit_rows, n_block_rows))
              for j in range(j0, min(j0 + unit_cols, n_block_cols))]
             for i0 in range(0, n_block_rows, unit_rows) for j0 in range(0, n_block_cols, unit_cols)]
    damaged = [(i, j) for i, j in grid if _marker(work, i, j).exists()
               and not (writers[DATA].holds((0, i, j)) and writers[VALID].holds((i, j)))]
    for i, j in damaged:  # its data is labelled again, and said so
        _marker(work, i, j).unlink()
    if damaged and log is not None:
        log(f"warning: {counted(len(damaged), 'block')} of the interrupted ingest could not be read back "
            f"(block {damaged[0][0]}, {damaged[0][1]}{', …' if len(damaged) > 1 else ''}); ingesting them again")
    todo = [unit for unit in units if not all(_marker(work, i, j).exists() for i, j in unit)]
    done = len(grid) - sum(len(unit) for unit in todo)
    if progress:
        progress(done, len(grid))
    n_workers = workers or min(2, os.cpu_count() or 1)  # more threads buy no speed, only memory
    try:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="ingest") as pool:
            pending: deque[Future[int]] = deque()
            for unit in todo:
                pending.append(pool.submit(_ingest_unit, scene, writers, grid, unit, work, good_band))
                while len(pending) > n_workers or (pending and unit is todo[-1]):
                    done += pending.popleft().result()  # bounded: a few reads in memory at most
                    if progress:
                        progress(done, len(grid))
    except SceneError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    meta = _drop_empty_bands(work, group, grid, meta, nodata=scene.attrs.get("nodata"), good_band=good_band)
    _finalise(work, group, grid, meta)
    _replace(work, store)
    return store


def _drop_empty_bands(work: Path, group: zarr.Group, grid: BlockGrid, meta: dict[str, Any], *,
                      nodata: float | None, good_band: np.ndarray | None) -> dict[str, Any]:
    """Flag bad the bands that void most of the scene, so that the other bands' pixels stay valid.

    Two kinds (:func:`~hsi_cluster.stats.voiding_bands`): a band NaN or nodata in every pixel (a dead detector
    row, a band a delivery fills but does not flag), when no pixel is valid (listed in ``empty_bands``); and
    dropout bands, NaN or nodata in pixels the other bands hold (a detector's dropout over part of the swath,
    bands with scattered gaps: listed in ``voiding_bands``, band → pixels it voided). The valid mask and block
    summaries are then made again from the store without them. Costs nothing on a scene without such a band; a killed rerun starts over from the
    store (a flag file in the progress folder marks the rerun).
    """
    data, valid = array_of(group, DATA), array_of(group, VALID)
    flagged_good = np.ones(data.shape[0], bool) if good_band is None else np.asarray(good_band, bool)
    # (a block of a run resumed from an older version has no such file: it counts none)
    voided = np.sum([np.load(path) if (path := _lone_marker(work, i, j)).exists() else np.zeros(data.shape[0], np.int64)
                     for i, j in grid], axis=0)
    redone = {kind: work / PROGRESS_DIR / f"{kind}.npy" for kind in ("empty_bands", "voiding_bands")}
    kind = next((k for k, path in redone.items() if path.exists()), None)
    if kind is not None:
        good = np.load(redone[kind])
    else:
        valid_pixels = int(sum(np.load(_marker(work, i, j))[0].max(initial=0) for i, j in grid))
        filled = np.ones(data.shape[0], bool)
        if not valid_pixels:
            filled[:] = False
            for i, j in grid:
                rows, cols = grid.window(i, j).slices
                filled |= usable_values(np.asarray(data[:, rows, cols]), nodata=nodata).any(axis=(1, 2))
        flagged = voiding_bands(valid_pixels, voided, filled, flagged_good)
        kind = "voiding_bands" if filled[flagged].any() else "empty_bands"  # bands with no value: said so
        good = flagged_good & ~flagged
        if not good.any() or (good == flagged_good).all():
            return meta  # nothing to gain: every band is empty, or none is
        with atomic_path(redone[kind]) as scratch, open(scratch, "wb") as file:
            np.save(file, good)
    for i, j in grid:
        rows, cols = grid.window(i, j).slices
        block = np.asarray(data[:, rows, cols])
        mask = valid_pixel_mask(block, nodata=nodata, good_band=good)
        valid[rows, cols] = mask
        with atomic_path(_marker(work, i, j)) as scratch, open(scratch, "wb") as file:
            np.save(file, BandStats.of_block(block, mask).pack())
    dropped = np.flatnonzero(flagged_good & ~good)
    which = ("band " if len(dropped) == 1 else "bands ") + number_ranges(dropped + 1)
    source = meta["source"]["path"]
    if kind == "empty_bands":
        warnings.warn(MetadataWarning(f"{source}: {which} {'is' if len(dropped) == 1 else 'are'} NaN or nodata in "
                                      "every pixel; flagged bad so that the other bands' pixels stay valid"),
                      stacklevel=3)
        return dict(meta, good_band=good.tolist(), empty_bands=dropped.tolist())
    counts = ", ".join(f"{voided[b]}" for b in dropped)
    warnings.warn(MetadataWarning(
        f"{source}: {which} made {counts} pixels invalid (NaN or nodata where most bands hold values); flagged bad "
        "so that those pixels stay valid"), stacklevel=3)
    return dict(meta, good_band=good.tolist(), voiding_bands={str(b): int(voided[b]) for b in dropped})


def _finalise(work: Path, group: zarr.Group, grid: BlockGrid, meta: dict[str, Any]) -> None:
    """Gather the block summaries from their markers, merge them, then mark the store complete."""
    packed = np.stack([np.stack([np.load(_marker(work, i, j)) for j in range(grid.shape[1])])
                       for i in range(grid.shape[0])])
    array_of(group, BLOCK_STATS)[...] = packed
    total = BandStats.merge_packed(packed)
    meta = dict(meta, statistics=total.to_attrs(), valid_pixels=int(total.count.max(initial=0)),
                complete=True, completed=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    group.attrs[METADATA_KEY] = meta
    shutil.rmtree(work / PROGRESS_DIR, ignore_errors=True)


def _replace(work: Path, store: Path) -> None:
    """Move the finished store into place; an old store at ``store`` is removed only after."""
    old = store.with_name(store.name + ".old")
    if store.exists():
        if old.exists():
            shutil.rmtree(old)
        store.rename(old)
    work.rename(store)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
