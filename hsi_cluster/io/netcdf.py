"""NetCDF scenes (``.nc``; plain HDF5 ``.h5`` alike): a 3-D variable with a named band dimension, and EMIT's
swath products.

GDAL's netCDF and HDF5 drivers take the last two dimensions of a variable as rows and columns, so a cube
stored ``(downtrack, crosstrack, bands)`` (NASA EMIT) or ``(y, x, wavelength)`` would come out with
its bands on an image axis. This reader finds the band dimension by its name (``band``,
``wavelength``, ``channel``, … or the length of a ``wavelength`` variable) and returns
``(band, y, x)`` like every reader.

- Values are CF-decoded: ``_FillValue`` / ``missing_value`` become NaN (not valid), ``scale_factor``
  and ``add_offset`` are applied.
- Georeferencing: regular 1-D coordinates on the two image dimensions give the transform (a
  south-up grid is flipped to north-up); the CRS comes from the variable's CF ``grid_mapping``
  (``crs_wkt`` / ``spatial_ref``), a file-wide ``spatial_ref``, or latitude/longitude dimensions.
- Spectral metadata: ``wavelength(s)``, ``fwhm`` and ``good_wavelengths`` / ``good_band`` / ``bbl``
  variables along the band dimension, in any group.
- EMIT (L1B radiance, L2A reflectance): when the file has a geometry lookup table
  (``location/glt_x``, ``glt_y``, 1-based, 0 = no pixel, negative = filled from that pixel) and a file-wide ``geotransform``, the swath
  is orthorectified onto that map grid, as NASA's ``emit_tools`` does: each map pixel takes the
  swath pixel its GLT names, lazily, a map chunk at a time.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from rasterio.crs import CRS

from hsi_cluster.errors import MetadataWarning, SceneError, first_line
from hsi_cluster.io.metadata import unit_scale_to_nm
from hsi_cluster.io.scene_array import choose_variable, scene_array

#: File suffixes read by this module.
NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf", ".h5", ".hdf5")  # plain HDF5 too: GDAL would take its first axis for bands
#: Dimension names (lower case) that hold the bands.
BAND_DIMENSIONS = {"band", "bands", "wavelength", "wavelengths", "spectral", "spectral_band", "spectral_bands",
                   "channel", "channels", "lambda", "wl"}
_WAVELENGTH_NAMES = ("wavelength", "wavelengths", "wavelength_center", "center_wavelength")
_FWHM_NAMES = ("fwhm", "bandwidth", "fwhm_nm")
_GOOD_BAND_NAMES = ("good_wavelengths", "good_band", "good_bands", "bbl")
_LATITUDE_NAMES = {"lat", "latitude"}
_LONGITUDE_NAMES = {"lon", "long", "longitude"}
#: The CRS of latitude/longitude dimensions, as WKT like every scene's ``crs`` attribute.
_WGS84 = CRS.from_epsg(4326).to_wkt()


def open_netcdf(path: Path, var: str | None, spatial: tuple[int, int] | None) -> xr.DataArray:
    """Open the cube of a NetCDF file lazily as ``(band, y, x)`` (see the module docstring).

    Args:
        path: a NetCDF-4 (HDF5) or classic NetCDF file.
        var: the variable to read (``name`` or ``/group/name``) when the file holds several 3-D ones.
        spatial: spatial dask chunk ``(rows, cols)``, or None for chunks of a few MB.

    Raises:
        SceneError: unreadable file, no or several 3-D variables, no dimension recognisable as the bands.
    """
    from hsi_cluster.io.scene import default_chunks

    tree = _open_tree(path)
    name, cube = _pick_variable(path, tree, var)
    band_dim = _band_dimension(path, name, cube, tree)
    row_dim, col_dim = (str(dim) for dim in cube.dims if dim != band_dim)
    n_bands = cube.sizes[band_dim]
    _, chunk_rows, chunk_cols = default_chunks(n_bands, np.dtype(cube.dtype), spatial)
    # a name that is the same for each opening of the same file, variable and chunks (xarray's own is random for a
    # lazily read file): the in-memory API recognises an array from open_scene(path, var=...) by it
    cube = cube.chunk({band_dim: -1, row_dim: chunk_rows, col_dim: chunk_cols},
                      token=f"{path}-{path.stat().st_mtime_ns}-{name}-{chunk_rows}x{chunk_cols}")
    coords = _spectral_coords(tree, band_dim, n_bands)
    nodata = float("nan") if _declares_fill(cube) else None
    data = cube.transpose(band_dim, row_dim, col_dim).data
    glt = _emit_glt(path, tree) if name.count("/") == 1 else None
    crs: str | None
    transform: tuple[float, ...] | None
    if glt is not None:
        data, transform, crs = _orthorectify(path, data, *glt, spatial)
        nodata = float("nan")
        extra = {"variable": name, "orthorectified": "the file's geometry lookup table (location/glt_x, glt_y)"}
    else:
        crs = _crs(tree, cube, row_dim, col_dim)
        data, transform = _north_up(data, cube, row_dim, col_dim, located=crs is not None)
        crs = crs if transform is not None else None
        extra = {"variable": name}
    data = data.rechunk(default_chunks(n_bands, data.dtype, spatial))
    return scene_array(data, coords=coords, crs=crs, transform=transform, nodata=nodata, source=str(path),
                       fmt="HDF5" if path.suffix.lower() in (".h5", ".hdf5") else "netCDF", extra_attrs=extra)


def _open_tree(path: Path) -> xr.DataTree:
    with path.open("rb") as handle:
        magic = handle.read(4)
    # No dask yet: the cube is chunked once its band dimension is known, so that a chunk reads one
    # hyperslab of the file, however the file itself is chunked (or not at all).
    options: dict[str, Any] = {"chunks": None, "mask_and_scale": True, "decode_times": False}
    try:
        if magic[:3] == b"CDF":  # classic NetCDF: no groups
            return xr.DataTree(xr.open_dataset(path, engine="scipy", **options))
        # HDF5 variables without dimension scales get phony dimension names in order of access (the
        # default of h5netcdf ≥ 1.4, which warns unless it is asked for)
        return xr.open_datatree(path, engine="h5netcdf", phony_dims="access", **options)
    except Exception as exc:  # any backend error means the same thing here: not a NetCDF file we can read
        raise SceneError(f"{path}: not a readable NetCDF file ({first_line(exc)}); "
                         "check the file, or convert it to GeoTIFF with gdal_translate") from exc


def _pick_variable(path: Path, tree: xr.DataTree, var: str | None) -> tuple[str, xr.DataArray]:
    variables = {f"{node.path.rstrip('/')}/{key}": node.dataset[key]
                 for node in tree.subtree for key in node.dataset.data_vars}
    if var is not None:
        wanted = var if var.startswith("/") else f"/{var}"
        if wanted not in variables:
            raise SceneError(f"{path}: no variable {var!r}; it holds {', '.join(variables) or 'nothing'}")
        chosen = variables[wanted]
        if chosen.ndim != 3:
            raise SceneError(f"{path}: variable {var!r} has dimensions {chosen.dims}, but a hyperspectral cube "
                             "needs 3 (two image axes and the bands)")
        return wanted, chosen
    cubes = {name: array for name, array in variables.items() if array.ndim == 3}
    if len(cubes) == 1:
        return next(iter(cubes.items()))
    listing = ", ".join(f"{name} {dict(array.sizes)}" for name, array in cubes.items())
    if not cubes:
        raise SceneError(f"{path}: no 3-D variable (it holds {', '.join(variables) or 'nothing'}); a hyperspectral "
                         "cube needs two image axes and the bands")
    raise SceneError(f"{path}: several 3-D variables ({listing}); {choose_variable()}")


def _band_dimension(path: Path, name: str, cube: xr.DataArray, tree: xr.DataTree) -> str:
    named = [dim for dim in cube.dims if str(dim).lower() in BAND_DIMENSIONS]
    if len(named) == 1:
        return str(named[0])
    if not named:  # the one dimension a wavelength variable runs along
        along = {str(array.dims[0]) for node in tree.subtree for key, array in node.dataset.variables.items()
                 if str(key).lower() in _WAVELENGTH_NAMES and array.ndim == 1}
        matched = [dim for dim in cube.dims if dim in along]
        if len(matched) == 1:
            return str(matched[0])
    sizes = ", ".join(f"{dim} {size}" for dim, size in cube.sizes.items())
    raise SceneError(f"{path}: cannot tell which dimension of {name} ({sizes}) holds the bands; name it 'band' "
                     "(e.g. with ncrename -d OLD,band) or convert the cube to a GeoTIFF")


def _variable(tree: xr.DataTree, names: tuple[str, ...], dim: str, size: int) -> xr.DataArray | None:
    """The first 1-D variable of one of ``names`` (any case, any group) that runs along ``dim``."""
    for node in tree.subtree:
        for key, array in node.dataset.variables.items():
            if str(key).lower() in names and array.dims == (dim,) and array.size == size:
                return array
    return None


def _spectral_coords(tree: xr.DataTree, band_dim: str, n_bands: int) -> dict[str, np.ndarray]:
    coords: dict[str, np.ndarray] = {}
    wavelength = _variable(tree, _WAVELENGTH_NAMES, band_dim, n_bands)
    values = None if wavelength is None else np.asarray(wavelength.values, dtype=np.float64)
    if wavelength is not None and values is not None and np.isfinite(values).all():
        scale = unit_scale_to_nm(str(wavelength.attrs.get("units", "")), values)
        if scale is not None:
            coords["wavelength"] = values * scale
            fwhm = _variable(tree, _FWHM_NAMES, band_dim, n_bands)
            widths = None if fwhm is None else np.asarray(fwhm.values, dtype=np.float64)
            if widths is not None and np.isfinite(widths).all():
                coords["fwhm"] = widths * scale
    good = _variable(tree, _GOOD_BAND_NAMES, band_dim, n_bands)
    if good is not None:
        coords["good_band"] = np.asarray(good.values).astype(np.float64) != 0
    return coords


def _declares_fill(array: xr.DataArray) -> bool:
    return any(key in array.encoding or key in array.attrs for key in ("_FillValue", "missing_value"))


def _regular(values: np.ndarray) -> float | None:
    """The step of evenly spaced 1-D coordinates, or None."""
    if values.ndim != 1 or values.size < 2 or not np.issubdtype(values.dtype, np.number):
        return None
    steps = np.diff(values.astype(np.float64))
    step = float(steps.mean())
    return step if step != 0 and np.allclose(steps, step, rtol=1e-4, atol=0) else None


def _north_up(data: da.Array, cube: xr.DataArray, row_dim: str, col_dim: str, *,
              located: bool) -> tuple[da.Array, tuple[float, ...] | None]:
    """The grid transform from regular 1-D coordinates, flipping a south-up grid; None without them.

    Row coordinates that grow down the array are a south-up map only on a grid with a CRS (``located``);
    without one they are image rows (0.5, 1.5, … of a scene without georeferencing, as :func:`open_scene`
    gives them and xarray writes them): the cube is read as stored, without a transform."""
    if row_dim not in cube.coords or col_dim not in cube.coords:
        return data, None
    rows, cols = np.asarray(cube[row_dim].values), np.asarray(cube[col_dim].values)
    dy, dx = _regular(rows), _regular(cols)
    if dy is None or dx is None:
        return data, None
    if dy > 0 and not located:
        return data, None
    if dy > 0:  # first row southmost: flip so that row 0 is the north edge
        data, rows, dy = data[:, ::-1, :], rows[::-1], -dy
    return data, (dx, 0.0, float(cols[0]) - dx / 2, 0.0, dy, float(rows[0]) - dy / 2)


def _crs(tree: xr.DataTree, cube: xr.DataArray, row_dim: str, col_dim: str) -> str | None:
    mapping = cube.attrs.get("grid_mapping") or cube.encoding.get("grid_mapping")
    if mapping:
        for node in tree.subtree:
            if mapping in node.dataset.variables:
                attrs = node.dataset[mapping].attrs
                wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
                if wkt:
                    return str(wkt)
    wkt = tree.attrs.get("spatial_ref") or tree.attrs.get("crs_wkt")
    if wkt:
        return str(wkt)
    if str(row_dim).lower() in _LATITUDE_NAMES and str(col_dim).lower() in _LONGITUDE_NAMES:
        return _WGS84
    return None


def _emit_glt(path: Path, tree: xr.DataTree) -> tuple[xr.DataArray, xr.DataArray, tuple[float, ...], str] | None:
    """EMIT's lookup table ``(glt_x, glt_y)`` with the map grid's GDAL geotransform and CRS, if the file has them
    (with a warning when it has a ``location`` group without all four: the swath is then read as stored)."""
    if "location" not in tree.children:
        return None
    location = tree["location"].dataset
    transform, wkt = tree.attrs.get("geotransform"), tree.attrs.get("spatial_ref")
    missing = [name for name, there in (("location/glt_x", "glt_x" in location), ("location/glt_y", "glt_y" in location),
                                        ("the geotransform attribute", transform is not None),
                                        ("the spatial_ref attribute", wkt is not None)) if not there]
    if missing:
        warnings.warn(MetadataWarning(f"{path}: has a location group but not {', '.join(missing)}, so the swath "
                                      "is read as stored, without map coordinates; use the complete file to get "
                                      "a map"), stacklevel=4)
        return None
    assert transform is not None  # not missing
    return location["glt_x"], location["glt_y"], tuple(float(v) for v in np.ravel(transform)), str(wkt)


def _orthorectify(path: Path, swath: da.Array, glt_x: xr.DataArray, glt_y: xr.DataArray,
                  geotransform: tuple[float, ...], wkt: str,
                  spatial: tuple[int, int] | None) -> tuple[da.Array, tuple[float, ...], str]:
    """The swath ``(band, row, col)`` resampled onto the GLT's map grid ``(band, y, x)``, NaN where no pixel falls."""
    from hsi_cluster.io.scene import default_chunks

    # A negative entry marks a map pixel filled from its nearest swath pixel: its absolute value is that pixel.
    columns = np.abs(np.asarray(glt_x.values).astype(np.int64))
    rows = np.abs(np.asarray(glt_y.values).astype(np.int64))
    n_bands, swath_rows, swath_cols = swath.shape
    if columns.shape != rows.shape or columns.ndim != 2:
        raise SceneError(f"{path}: location/glt_x and glt_y differ in shape ({columns.shape}, {rows.shape}); "
                         "the file is damaged, download it again")
    hit = (columns > 0) & (rows > 0)
    if (columns[hit] > swath_cols).any() or (rows[hit] > swath_rows).any():
        raise SceneError(f"{path}: its geometry lookup table points outside the {swath_rows} × {swath_cols} swath; "
                         "the file is damaged, download it again")
    dtype = np.result_type(swath.dtype, np.float32)
    _, chunk_rows, chunk_cols = default_chunks(n_bands, dtype, spatial)
    blocks = []
    for r0 in range(0, rows.shape[0], chunk_rows):
        row_blocks = []
        for c0 in range(0, rows.shape[1], chunk_cols):
            window = np.s_[r0:r0 + chunk_rows, c0:c0 + chunk_cols]
            row_blocks.append(_map_block(swath, rows[window] - 1, columns[window] - 1, hit[window], dtype))
        blocks.append(row_blocks)
    x0, dx, rx, y0, ry, dy = geotransform
    return da.block(blocks), (dx, rx, x0, ry, dy, y0), wkt


def _map_block(swath: da.Array, rows: np.ndarray, columns: np.ndarray, hit: np.ndarray, dtype: np.dtype) -> da.Array:
    """One map chunk: the bounding window of the swath pixels it names, read once, then gathered."""
    shape = (swath.shape[0], *rows.shape)
    if not hit.any():
        return da.full(shape, np.nan, dtype=dtype)
    r0, r1 = int(rows[hit].min()), int(rows[hit].max()) + 1
    c0, c1 = int(columns[hit].min()), int(columns[hit].max()) + 1
    window = swath[:, r0:r1, c0:c1]
    gathered = dask.delayed(_gather)(window, rows - r0, columns - c0, hit, dtype)
    return da.from_delayed(gathered, shape=shape, dtype=dtype)


def _gather(window: np.ndarray, rows: np.ndarray, columns: np.ndarray, hit: np.ndarray, dtype: Any) -> np.ndarray:
    out = np.full((window.shape[0], *rows.shape), np.nan, dtype=dtype)
    out[:, hit] = window[:, rows[hit], columns[hit]]
    return out
