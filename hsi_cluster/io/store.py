"""The working store: a Zarr v3 group written by ``hsicluster ingest``.

Layout of ``STORE.zarr/``::

    zarr.json          group; attributes["hsicluster"] holds the metadata below
    data/              (band, y, x) array, chunks (all bands, c, c), compressed
    valid/             (y, x) bool, True where the pixel is usable (finite, not nodata)
    block_stats/       (blocks_y, blocks_x, 5, band) float64 per-block summaries (see hsi_cluster.stats)

Metadata: ``format``/``version``, ``complete`` (set last), ``source`` (path, size, mtime_ns),
``crs`` (WKT), ``transform``, ``georeferenced``, ``nodata``, ``chunk``, ``wavelength``/``fwhm``
(nm)/``good_band``, ``statistics`` (per-band mean, std, min, max, count over valid pixels) and
``valid_pixels``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from hsi_cluster.errors import SceneError
from hsi_cluster.io.scene_array import scene_array

STORE_FORMAT = "hsicluster-store"
STORE_VERSION = 1
METADATA_KEY = "hsicluster"
BAND_COORDS = ("wavelength", "fwhm", "good_band")


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


def open_store(path: str | os.PathLike[str], *, chunks: tuple[int, int] | None = None) -> xr.DataArray:
    """Open a complete store lazily as ``(band, y, x)`` with the attributes of ``open_scene``.

    Extra attributes: ``statistics`` (per-band lists), ``valid_pixels``, ``chunk`` and
    ``ingested_from`` (the original source).

    Raises:
        SceneError: the store is incomplete (an interrupted ingest) or of another version.
    """
    path = Path(path).absolute()
    meta = read_store_metadata(path)
    if meta is None:
        raise SceneError(f"{path}: not an hsicluster store; create one with 'hsicluster ingest SCENE -o {path.name}'")
    if meta.get("version") != STORE_VERSION:
        raise SceneError(f"{path}: store version {meta.get('version')} is not supported by this version "
                         f"(expects {STORE_VERSION}); re-ingest the scene")
    if not meta.get("complete"):
        raise SceneError(f"{path}: the store is incomplete (its ingest was interrupted); rerun "
                         "'hsicluster ingest' with the same arguments to finish it")
    group = zarr.open_group(str(path), mode="r")
    array = group["data"]
    data = da.from_zarr(array) if chunks is None else da.from_zarr(array, chunks=(array.shape[0], *chunks))
    coords = {name: np.asarray(meta[name]) for name in BAND_COORDS if meta.get(name) is not None}
    if "good_band" in coords:
        coords["good_band"] = coords["good_band"].astype(bool)
    return scene_array(data, coords=coords, crs=meta.get("crs"),
                       transform=tuple(meta["transform"]) if meta.get("georeferenced") else None,
                       nodata=meta.get("nodata"), source=str(path), fmt="zarr",
                       extra_attrs={"statistics": meta.get("statistics"), "valid_pixels": meta.get("valid_pixels"),
                                    "chunk": meta.get("chunk"), "ingested_from": meta.get("source"),
                                    "file_block": (meta.get("chunk"), meta.get("chunk"))})


def open_valid_mask(path: str | os.PathLike[str]) -> da.Array:
    """Lazy bool ``(y, x)`` mask of usable pixels of a complete store."""
    return da.from_zarr(zarr.open_group(str(path), mode="r")["valid"])
