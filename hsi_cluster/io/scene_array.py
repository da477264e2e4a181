"""The scene array every reader returns: a ``(band, y, x)`` dask array with the project's coordinates.

Shared by the file readers (:mod:`hsi_cluster.io.scene`) and the working store
(:mod:`hsi_cluster.io.store`), so neither imports the other for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from hsi_cluster.errors import naming_python_options

#: The affine transform of a raster without georeferencing (pixel coordinates).
IDENTITY_TRANSFORM = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Coordinate on ``(y, x)``: the file's own mask of usable pixels (a GDAL mask band), lazy, where it has one.
SOURCE_VALID = "source_valid"
#: Attribute of a scene without a geotransform that a GDAL raster locates by ground control points:
#: ``{"points": [[row, col, x, y, z], ...], "crs": WKT or None}`` (rows and columns in pixels, as GDAL gives them).
GCPS = "gcps"
def choose_variable() -> str:
    """How to pick one cube of a file holding several: `train` and `predict` read the store that `ingest` writes;
    from Python, the DataArray that ``open_scene(path, var=…)`` returns."""
    if not naming_python_options():
        return ("choose one with --var NAME (hsicluster ingest, info and evaluate take it: ingest it with --var, "
                "then train and predict the store)")
    return "choose one with open_scene(path, var='NAME') and pass that DataArray to train or predict"


def gcp_records(gcps: Any, crs: Any) -> dict[str, Any]:
    """rasterio's ``dataset.gcps`` (points, CRS) as the plain :data:`GCPS` attribute."""
    return {"points": [[float(g.row), float(g.col), float(g.x), float(g.y), float(g.z or 0.0)] for g in gcps],
            "crs": crs.to_wkt() if crs else None}


def rasterio_gcps(records: dict[str, Any] | None) -> tuple[list[Any], Any] | None:
    """The :data:`GCPS` attribute as rasterio's ``(points, CRS)`` for writing, or None."""
    if not records or not records.get("points"):
        return None
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    points = [GroundControlPoint(row=r, col=c, x=x, y=y, z=z) for r, c, x, y, z in records["points"]]
    return points, CRS.from_wkt(records["crs"]) if records.get("crs") else None


def scene_array(data: da.Array, *, coords: dict[str, np.ndarray] | None = None, crs: str | None = None,
                transform: tuple[float, ...] | None = None, nodata: float | None = None,
                source: str, fmt: str, extra_attrs: dict[str, Any] | None = None,
                source_valid: da.Array | None = None) -> xr.DataArray:
    """Wrap a ``(band, y, x)`` dask array with the project's coordinates and attributes.

    ``source_valid``: bool ``(y, x)``, False where the file masks a pixel out (GDAL mask band); kept
    as the :data:`SOURCE_VALID` coordinate and read with :func:`file_mask`.
    """
    n_bands, height, width = data.shape
    georeferenced = transform is not None and (crs is not None or tuple(transform) != IDENTITY_TRANSFORM)
    transform = tuple(float(v) for v in (transform or IDENTITY_TRANSFORM))
    band_coords: dict[str, Any] = {"band": np.arange(1, n_bands + 1)}
    for name, values in (coords or {}).items():
        band_coords[name] = ("band", np.asarray(values))
    a, b, c, d, e, f = transform
    if b == 0 and d == 0:
        band_coords["y"] = f + e * (np.arange(height) + 0.5)
        band_coords["x"] = c + a * (np.arange(width) + 0.5)
    attrs = {"crs": crs, "transform": transform, "georeferenced": bool(georeferenced),
             "nodata": None if nodata is None else float(nodata), "source": source, "format": fmt}
    attrs.update(extra_attrs or {})
    if source_valid is not None:
        band_coords[SOURCE_VALID] = (("y", "x"), source_valid)
    return xr.DataArray(data, dims=("band", "y", "x"), coords=band_coords, attrs=attrs,
                        name=Path(source).stem)


def file_mask(scene: xr.DataArray) -> da.Array | None:
    """The file's own bool ``(y, x)`` mask of usable pixels (lazy), or None when the file has none."""
    return scene.coords[SOURCE_VALID].data if SOURCE_VALID in scene.coords else None
