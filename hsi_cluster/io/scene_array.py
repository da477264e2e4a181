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

#: The affine transform of a raster without georeferencing (pixel coordinates).
IDENTITY_TRANSFORM = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def scene_array(data: da.Array, *, coords: dict[str, np.ndarray] | None = None, crs: str | None = None,
                transform: tuple[float, ...] | None = None, nodata: float | None = None,
                source: str, fmt: str, extra_attrs: dict[str, Any] | None = None) -> xr.DataArray:
    """Wrap a ``(band, y, x)`` dask array with the project's coordinates and attributes."""
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
    return xr.DataArray(data, dims=("band", "y", "x"), coords=band_coords, attrs=attrs,
                        name=Path(source).stem)
