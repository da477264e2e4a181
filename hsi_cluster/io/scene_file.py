"""A ``(band, y, x)`` DataArray written as a GeoTIFF scene that every command reads (``hc.write_scene``).

A crop or an edited copy of a scene (``.isel``, ``.where``, a computed array) lives only in memory; ``train``
and the tiled ``predict`` read files. This writes one, keeping what :func:`~hsi_cluster.io.open_scene` gives
back: the grid (transform from the ``x``/``y`` coordinates, CRS), the nodata value, and per band the
wavelength, FWHM and good-band flag, in the GDAL band metadata its reader looks at.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from hsi_cluster.errors import ArgumentError, OutputError
from hsi_cluster.io.files import atomic_path, check_output

#: The window read and written at a time (rows, columns): a crop of a scene larger than memory is copied in pieces
#: of at most this many pixels (all bands), whatever its width.
WINDOW = (256, 1024)


def scene_grid(scene: xr.DataArray) -> tuple[Affine | None, str | None]:
    """The affine transform and CRS (WKT) of a ``(band, y, x)`` or ``(y, x)`` DataArray: from
    :func:`~hsi_cluster.io.open_scene`'s attributes, moved to the array's own ``x``/``y`` coordinates when it is a
    crop or a stride of the scene; else from rioxarray's conventions. (None, None) for an array without either."""
    if "transform" in scene.attrs:  # open_scene's attributes (crs None: not georeferenced)
        transform, crs = scene.attrs["transform"], scene.attrs.get("crs")
    else:  # another DataArray: rioxarray's conventions, if it follows them
        import rioxarray  # noqa: F401 — registers the .rio accessor

        rio_crs = scene.rio.crs
        # without x/y coordinates (open_rasterio(parse_coordinates=False)) the grid mapping's GeoTransform holds it
        grid_mapping = scene.coords.get(scene.rio.grid_mapping)
        stored = grid_mapping is not None and "GeoTransform" in grid_mapping.attrs
        transform = tuple(scene.rio.transform())[:6] if {"x", "y"} <= set(scene.coords) or stored else None
        crs = rio_crs.to_wkt() if rio_crs is not None else None
    if transform is None:
        return None, crs or None
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    coords = {dim: np.asarray(scene.coords[dim].values, float) for dim in ("y", "x") if dim in scene.coords}
    if b == 0 and d == 0 and set(coords) == {"x", "y"} and coords["x"].size and coords["y"].size:
        x, y = coords["x"], coords["y"]
        step_x, step_y = (x[1] - x[0] if x.size > 1 else a), (y[1] - y[0] if y.size > 1 else e)
        if not np.allclose([step_x, step_y, x[0], y[0]], [a, e, c + a / 2, f + e / 2], rtol=1e-9, atol=0):
            a, e, c, f = step_x, step_y, x[0] - step_x / 2, y[0] - step_y / 2  # a crop or a stride: its own grid
    return Affine(a, b, c, d, e, f), crs or None


def write_scene(scene: xr.DataArray, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a ``(band, y, x)`` DataArray as a tiled, compressed GeoTIFF that ``train``, ``predict`` and
    :func:`~hsi_cluster.io.open_scene` read, and return its path.

    Args:
        scene: a scene as :func:`~hsi_cluster.io.open_scene` returns it, a crop or edited copy of one, or any
            ``(band, y, x)`` DataArray (rioxarray's conventions give its grid). Read in windows of
            :data:`WINDOW` pixels, so a lazy scene larger than memory is written without loading it.
        path: the GeoTIFF to write (never left partial: written beside it, then renamed).
        overwrite: replace an existing file.

    Raises:
        ArgumentError: not a ``(band, y, x)`` array, or one without pixels.
        OutputError: ``path`` exists (without ``overwrite``), is a folder or cannot be written.
    """
    if not isinstance(scene, xr.DataArray) or set(scene.dims) != {"band", "y", "x"}:
        dims = scene.dims if isinstance(scene, xr.DataArray) else type(scene).__name__
        raise ArgumentError(f"write_scene needs a (band, y, x) DataArray such as open_scene returns, got {dims}")
    scene = scene.transpose("band", "y", "x")
    n_bands, height, width = scene.shape
    if not n_bands * height * width:
        raise ArgumentError(f"write_scene: the array has no pixels (shape {scene.shape})")
    for name in ("x", "y", "wavelength", "fwhm"):
        if name in scene.coords and np.asarray(scene.coords[name].values).dtype.kind not in "iuf":
            raise ArgumentError(f"write_scene: the {name} coordinate is not numeric "
                                f"({np.asarray(scene.coords[name].values).dtype}); give it numbers or drop it")
    target = Path(path).expanduser().absolute()
    check_output(target, replace=overwrite)
    transform, crs = scene_grid(scene)
    if not placed(scene, transform):
        raise ArgumentError("write_scene: a crop or stride of a rotated grid cannot be placed (its pixels carry no x/y "
                            "coordinates); crop the file itself instead, e.g. gdal_translate -srcwin")
    nodata = _nodata(scene)
    dtype = _file_dtype(np.dtype(scene.dtype), nodata)
    profile: dict[str, Any] = {
        "driver": "GTiff", "count": n_bands, "height": height, "width": width, "dtype": dtype.name,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "interleave": "pixel" if n_bands <= 16 else "band", "BIGTIFF": "IF_SAFER",
    }
    if transform is not None and scene.attrs.get("georeferenced", True):  # a pixel grid stays one
        profile["transform"] = transform
    if crs:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    try:
        with atomic_path(target, suffix=".tmp.tif") as scratch, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a scene without a grid is written without one
            with rasterio.open(scratch, "w", **profile) as out:
                for band, tags in enumerate(_band_tags(scene), start=1):
                    if tags:
                        out.update_tags(band, **tags)
                for row in range(0, height, WINDOW[0]):
                    for col in range(0, width, WINDOW[1]):
                        piece = np.asarray(scene[:, row:row + WINDOW[0], col:col + WINDOW[1]].values)
                        out.write(piece.astype(dtype, copy=False),
                                  window=rasterio.windows.Window(col, row, piece.shape[2], piece.shape[1]))
    except OSError as exc:
        raise OutputError(f"{target}: cannot be written ({exc.strerror or exc})") from exc
    except rasterio.errors.RasterioIOError as exc:
        raise OutputError(f"{target}: cannot be written ({exc})") from exc
    return target


def _file_dtype(dtype: np.dtype, nodata: float | None) -> np.dtype:
    """The GeoTIFF type for an array of ``dtype``: its own, or float32 for what GeoTIFF lacks (bool, float16, complex)
    and for integers that cannot hold ``nodata``."""
    if dtype == np.dtype(bool) or dtype.kind not in "iuf" or dtype.itemsize > 8 or dtype == np.dtype(np.float16):
        return np.dtype(np.float32)
    if nodata is not None and dtype.kind in "iu" and not (
            float(nodata).is_integer() and np.iinfo(dtype).min <= nodata <= np.iinfo(dtype).max):
        return np.dtype(np.float32)
    return dtype


def placed(scene: xr.DataArray, transform: Affine | None) -> bool:
    """Whether :func:`scene_grid`'s ``transform`` places ``scene``: a rotated grid gives no x/y coordinates, so only
    the whole scene it was opened from keeps its transform (a crop of it would be put at the scene's place)."""
    return transform is None or not (transform.b or transform.d) or _whole_scene(scene)


def _whole_scene(scene: xr.DataArray) -> bool:
    """Whether ``scene`` has the size of the file it was opened from."""
    source = scene.attrs.get("source")
    if not source or not Path(source).exists():
        return False
    from hsi_cluster.io.scene import open_scene

    return open_scene(source).shape[1:] == scene.shape[1:]


def _nodata(scene: xr.DataArray) -> float | None:
    """The scene's nodata value: open_scene's ``nodata`` attribute, else rioxarray's (None: NaN or none)."""
    value = scene.attrs.get("nodata")
    if value is None and "transform" not in scene.attrs:
        import rioxarray  # noqa: F401 — registers the .rio accessor

        value = scene.rio.nodata if scene.rio.nodata is not None else scene.rio.encoded_nodata
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return float(value)


def _band_tags(scene: xr.DataArray) -> list[dict[str, str]]:
    """Per band, the GDAL metadata that :func:`~hsi_cluster.io.metadata.spectral_coords` reads back: wavelength and
    FWHM in nm, and the good-band flag."""
    tags: list[dict[str, str]] = [{} for _ in range(scene.shape[0])]
    for name in ("wavelength", "fwhm"):
        if name in scene.coords:
            for band, value in enumerate(np.asarray(scene.coords[name].values, float)):
                if np.isfinite(value):
                    tags[band][name] = f"{value:g}"
                    tags[band]["wavelength_units"] = "nm"
    if "good_band" in scene.coords:
        for band, good in enumerate(np.asarray(scene.coords["good_band"].values, bool)):
            tags[band]["good_band"] = "1" if good else "0"
    return tags
