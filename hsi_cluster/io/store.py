"""The working store: a Zarr v3 group written by ``hsicluster ingest``.

This module is the only one that knows the layout below; everything else reads a store through
:class:`Store` (arrays, grid, statistics, haloed windows).

Layout of ``STORE.zarr/``::

    zarr.json          group; attributes["hsicluster"] holds the metadata below
    data/              (band, y, x) array, chunks (all bands, c, c), compressed
    valid/             (y, x) bool, True where the pixel is usable (finite, not nodata)
    block_stats/       (blocks_y, blocks_x, 5, band) float64 per-block summaries (see hsi_cluster.stats)

Metadata: ``format``/``version``, ``complete`` (set last), ``source`` (path, size, mtime_ns, format and
``companions``: :func:`~hsi_cluster.io.scene.scene_files_identity`), ``crs`` (WKT), ``transform``,
``georeferenced``, ``nodata``, ``chunk``, ``wavelength``/``fwhm`` (nm)/``good_band``, ``statistics``
(per-band mean, std, min, max, count over valid pixels) and ``valid_pixels``; ``scaled_from`` (the file's
stored dtype) when a band scale/offset was applied, and ``reflectance_scale_factor`` when that was an ENVI
header's reflectance scale factor (values ÷ it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from hsi_cluster.errors import SceneError
from hsi_cluster.geo import BlockGrid, Window, halo_read
from hsi_cluster.io.scene_array import GCPS, scene_array
from hsi_cluster.stats import BandStats

STORE_FORMAT = "hsicluster-store"
STORE_VERSION = 1
METADATA_KEY = "hsicluster"
BAND_COORDS = ("wavelength", "fwhm", "good_band")
#: Names of the store's arrays (see the layout above).
DATA, VALID, BLOCK_STATS = "data", "valid", "block_stats"


def read_store_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``hsicluster`` metadata of a store, or None when ``path`` is not one of ours."""
    meta_file = Path(path) / "zarr.json"
    if not meta_file.is_file():
        return None
    try:
        group_meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return None
    meta = group_meta.get("attributes", {}).get(METADATA_KEY)
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        return None
    return meta


def is_store(path: str | os.PathLike[str]) -> bool:
    """True for a directory holding an hsicluster Zarr store (complete or not)."""
    return Path(path).is_dir() and read_store_metadata(path) is not None


def is_complete_store(path: str | os.PathLike[str]) -> bool:
    """True for a store whose ingest finished."""
    meta = read_store_metadata(path) if Path(path).is_dir() else None
    return bool(meta and meta.get("complete"))


def _checked_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a complete store of this version.

    Raises:
        SceneError: not a store, of another version, or incomplete (an interrupted ingest).
    """
    meta = read_store_metadata(path)
    if meta is None:
        raise SceneError(f"{path}: not an hsicluster store; create one with 'hsicluster ingest SCENE -o {path.name}'")
    if meta.get("version") != STORE_VERSION:
        raise SceneError(f"{path}: store version {meta.get('version')} is not supported by this version "
                         f"(expects {STORE_VERSION}); re-ingest the scene")
    if not meta.get("complete"):
        raise SceneError(f"{path}: the store is incomplete (its ingest was interrupted); rerun "
                         "'hsicluster ingest' with the same arguments to finish it")
    return meta


def array_of(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group`` (a typed lookup: a group's members may be arrays or groups).

    Raises:
        TypeError: ``name`` is a group.
    """
    member = group[name]
    if not isinstance(member, zarr.Array):
        raise TypeError(f"{name} in {group.store} is a group, not an array")
    return member


class Store:
    """A complete working store, opened read-only: its arrays, grid, statistics and haloed reads.

    Opening reads only metadata (no pixels), so it is cheap enough to do inside each DataLoader
    worker; a store pickles as its path and opens again on unpickling.

    Attributes:
        path: absolute path of the ``.zarr`` folder.
        metadata: the ``hsicluster`` group attributes (see the module docstring).
        data: zarr ``(band, y, x)`` array, chunks ``(band, c, c)``.
        valid: zarr bool ``(y, x)`` array, True where the pixel is usable.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self.metadata = _checked_metadata(self.path)
        group = zarr.open_group(str(self.path), mode="r")
        self._group = group
        self.data: zarr.Array = array_of(group, DATA)
        self.valid: zarr.Array = array_of(group, VALID)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        """Open the complete store at ``path``.

        Raises:
            SceneError: not a store, of another version, or incomplete.
        """
        return cls(path)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Store.__init__(self, state["path"])

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(bands, height, width)`` in pixels."""
        bands, height, width = self.data.shape
        return bands, height, width

    @property
    def dtype(self) -> np.dtype:
        """The stored values' dtype."""
        return self.data.dtype

    @property
    def grid(self) -> BlockGrid:
        """The scene cut into the storage chunks (one block per chunk)."""
        _, height, width = self.shape
        return BlockGrid(height, width, self.data.chunks[1])

    @property
    def block_stats(self) -> np.ndarray:
        """float64 ``(blocks_y, blocks_x, 5, band)``: each block's packed :class:`BandStats`."""
        return np.asarray(array_of(self._group, BLOCK_STATS)[...])

    @property
    def valid_counts_per_block(self) -> np.ndarray:
        """float64 ``(blocks,)``: valid pixels of each block, in the grid's row-major order."""
        return np.asarray(array_of(self._group, BLOCK_STATS)[..., 0, 0]).reshape(-1)

    def valid_in(self, window: Window) -> np.ndarray:
        """bool ``(height, width)`` valid mask of ``window``."""
        return np.asarray(self.valid[window.slices])

    def band_stats(self) -> BandStats:
        """Per-band statistics over all valid pixels, merged from the per-block summaries."""
        return BandStats.merge_packed(self.block_stats)

    def read_window(self, window: Window, halo: int = 0, fill: np.ndarray | None = None, *,
                    neighbours: bool = True) -> np.ndarray:
        """``(band, height + 2·halo, width + 2·halo)`` values of ``window`` and a halo around it.

        See :func:`read_haloed`; with ``fill`` (one value per band) the store's invalid pixels
        read as ``fill``, without it as stored. ``neighbours=False`` reads the window's own chunk
        alone (one decompression instead of up to nine for a block with a halo), with the halo
        only past the raster's edges.
        """
        return read_haloed(self.data, window, halo, valid=None if fill is None else self.valid, fill=fill,
                           neighbours=neighbours)


def read_haloed(data: Any, window: Window, halo: int, *, valid: Any = None,
                fill: np.ndarray | None = None, neighbours: bool = True) -> np.ndarray:
    """``window`` grown by ``halo`` pixels from a ``(band, y, x)`` array, reflect-padded past its edges.

    Parts outside the raster are filled by reflection about the first/last row/column (numpy's
    ``reflect``, i.e. the edge pixel is not repeated): how both the patches of training and the
    tiles of inference see the scene border.

    Args:
        data: ``(band, y, x)`` array-like (zarr, dask or numpy); a dask array gives a lazy result.
        window: the pixels wanted, inside the raster.
        halo: extra pixels on every side.
        valid: optional bool ``(y, x)`` mask of usable pixels; with it, invalid pixels read as
            ``fill`` (before padding), so a valid pixel beside a hole never hands NaN or the nodata
            value to the network.
        fill: one value per band (B,), cast to the data's dtype; required with ``valid``.
        neighbours: False reads ``window`` alone (one chunk for a block) and adds the halo only past
            the raster's edges, by reflecting the window (the raster's reflection where the window
            is wider than the halo); on its other sides the result stops at the window. For readers
            that cut only the patches :meth:`~hsi_cluster.geo.PatchGeometry.contained` in the window.

    Returns:
        ``(band, window.height + 2·halo, window.width + 2·halo)`` in the data's dtype; with
        ``neighbours=False``, ``(band, window.height + top + bottom, window.width + left + right)``
        with the pad widths of :func:`~hsi_cluster.geo.halo_read`.
    """
    _, height, width = data.shape
    inside, pad = halo_read(window, halo, height=height, width=width)
    if not neighbours:
        inside = window
    rows, cols = inside.slices
    values = data[:, rows, cols]
    if valid is not None:
        if fill is None:
            raise ValueError("read_haloed: pass fill (one value per band) with valid")
        usable = np.asarray(valid[rows, cols], dtype=bool)
        if not usable.all():
            values = np.where(usable[None], values, np.asarray(fill, dtype=values.dtype)[:, None, None])
    if any(any(side) for side in pad):
        if not isinstance(values, np.ndarray) and any(max(side) >= size for side, size in zip(pad, values.shape[1:],
                                                                                              strict=True)):
            values = np.asarray(values)  # dask reflects a sliver narrower than the pad into too few pixels
        values = np.pad(values, ((0, 0), *pad), mode="reflect")
    return values


def pooled_band_stats(stores: Sequence[Store]) -> BandStats:
    """Per-band statistics over the valid pixels of all ``stores`` (merged in order)."""
    total = stores[0].band_stats()
    for store in stores[1:]:
        total = total.merge(store.band_stats())
    return total


def pooled_band_mean(stores: Sequence[Store]) -> np.ndarray:
    """float64 (B,) per-band mean over the valid pixels of all ``stores`` (0 where a band has none)."""
    mean = pooled_band_stats(stores).mean
    return np.where(np.isfinite(mean), mean, 0.0)


def invalid_fill(stores: Sequence[Store]) -> np.ndarray:
    """What invalid pixels read as inside patches: the per-band means over all valid pixels.

    The spectral projection maps the training mean to zero, so a hole looks like a neutral pixel.
    For several stores this is the pooled mean over all their valid pixels (the spectral mean a
    model trained on them stores). (B,) in the first store's dtype (a plain cast, as the tiled
    predictor casts the checkpoint's mean); 0 for a band with no valid pixel.
    """
    return pooled_band_mean(stores).astype(stores[0].dtype)


def open_store(path: str | os.PathLike[str], *, chunks: tuple[int, int] | None = None) -> xr.DataArray:
    """Open a complete store lazily as ``(band, y, x)`` with the attributes of ``open_scene``.

    Extra attributes: ``statistics`` (per-band lists), ``valid_pixels``, ``chunk`` and
    ``ingested_from`` (the original source).

    Raises:
        SceneError: the store is incomplete (an interrupted ingest) or of another version.
    """
    store = Store.open(path)
    meta, array = store.metadata, store.data
    data = da.from_zarr(array) if chunks is None else da.from_zarr(array, chunks=(array.shape[0], *chunks))
    coords = {name: np.asarray(meta[name]) for name in BAND_COORDS if meta.get(name) is not None}
    if "good_band" in coords:
        coords["good_band"] = coords["good_band"].astype(bool)
    return scene_array(data, coords=coords, crs=meta.get("crs"),
                       transform=tuple(meta["transform"]) if meta.get("georeferenced") else None,
                       nodata=meta.get("nodata"), source=str(store.path), fmt="zarr",
                       extra_attrs={"statistics": meta.get("statistics"), "valid_pixels": meta.get("valid_pixels"),
                                    "chunk": meta.get("chunk"), "ingested_from": meta.get("source"),
                                    "empty_bands": meta.get("empty_bands"), "voiding_bands": meta.get("voiding_bands"),
                                    "scaled_from": meta.get("scaled_from"),
                                    "reflectance_scale_factor": meta.get("reflectance_scale_factor"),
                                    "file_block": (meta.get("chunk"), meta.get("chunk")),
                                    **({GCPS: meta[GCPS]} if meta.get(GCPS) else {})})


def open_valid_mask(path: str | os.PathLike[str]) -> da.Array:
    """Lazy bool ``(y, x)`` mask of usable pixels of a complete store."""
    return da.from_zarr(Store.open(path).valid)
