"""``open_scene``: any supported scene file → a lazy, dask-backed ``xarray.DataArray``.

The returned array has dims ``(band, y, x)``; coordinates ``band`` (1-based), and where the file
has them ``wavelength`` / ``fwhm`` (nm) and ``good_band`` (bool) on ``band``; attributes
``crs`` (WKT or None), ``transform`` (affine ``a, b, c, d, e, f`` as floats), ``georeferenced``,
``nodata`` (or None), ``source`` (absolute path) and ``format``; and, where a GDAL raster has a
mask band of its own (an internal or ``.msk`` mask, no nodata value), the lazy bool coordinate
``source_valid`` on ``(y, x)``. Opening reads only headers.

A GDAL raster whose bands carry a scale or offset (GDAL's band SCALE/OFFSET, as a GeoTIFF stores
them; ENVI's ``data gain values`` / ``data offset values``) reads as physical values, ``value * scale
+ offset`` in floating point, as the NetCDF reader applies CF ``scale_factor`` / ``add_offset``: the
nodata test is made on the stored values first, and nodata pixels read as NaN (``nodata`` is then NaN);
the attribute ``scaled_from`` names the stored dtype.

An ENVI header's ``reflectance scale factor`` (ENVI: "the value that, when divided into your data, would
scale it from 0-1 reflectance", e.g. 10000 for int16 reflectance × 10000; GDAL keeps it in the ENVI
metadata domain only and does not apply it) is applied the same way, ``value / factor`` (attribute
``reflectance_scale_factor``), when the bands have no scale or offset. When they have one (``data gain
values`` / ``data offset values``, which ENVI defines as the calibration of the stored values, or a GDAL
scale set on the file) that one is applied and the factor is not, with a warning: both describe the
stored values, and applying the two would scale them twice.

The spectral image of a DLR EnMAP product (``…-SPECTRAL_IMAGE.TIF`` and its ENVI flavours) takes from the
product's ``METADATA.XML`` beside it (:mod:`hsi_cluster.io.enmap`) what the file itself lacks: wavelengths and
FWHM, the per-band gain and offset (applied as a band scale/offset, so ``scaled_from`` is set) and the fill
value as nodata (-32768 for L2A).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import rasterio
import xarray as xr
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from hsi_cluster.errors import MetadataWarning, SceneError, first_line, number_ranges, option
from hsi_cluster.geo import auto_chunk_size
from hsi_cluster.io.enmap import EnmapBands, is_enmap_image_name, metadata_file, read_band_metadata
from hsi_cluster.io.metadata import spectral_coords
from hsi_cluster.io.netcdf import NETCDF_SUFFIXES, open_netcdf
from hsi_cluster.io.paths import ENVI_BINARY_SUFFIXES, envi_binary_beside, existing_with_suffix
from hsi_cluster.io.prisma import PRISMA_SUFFIXES, open_prisma
from hsi_cluster.io.scene_array import GCPS, choose_variable, gcp_records, scene_array
from hsi_cluster.io.store import is_store, open_store

# GDAL's default block cache is 5 % of RAM; windows are read once each, so keep it small
# to keep memory flat. A user's own setting wins.
os.environ.setdefault("GDAL_CACHEMAX", "64")

#: A compressed file block is read whole up to this size (all bands), even over a read budget: GDAL decodes the
#: whole block to serve any window of it, so reading a 512² COG tile of 100 int16 bands (52 MB) in store chunks
#: decoded it 16 times (ingest 9× slower than with 256² tiles), and a DEFLATE strip holding the whole image was
#: decompressed from its start for every window (docs/performance.md).
MAX_TILE_READ = 256 * 2**20


class BandScaling(NamedTuple):
    """A raster's per-band ``scale`` and ``offset`` (float64 (B,)) and the ``nodata`` of its stored values;
    ``divisor``: an ENVI reflectance scale factor the values are divided by (1: none)."""

    scale: np.ndarray
    offset: np.ndarray
    nodata: float | None
    divisor: float = 1.0


class _ReadMemo:
    """A reader's last reads by window, up to ``capacity`` bytes (the least recently used dropped first),
    made one at a time: two threads decoding large compressed blocks at once evict each other's bands from
    GDAL's block cache, and each band then decodes the block again (4 threads, 512² blocks of 100 bands:
    23–38 s per read instead of 0.5 s). Kept arrays are read-only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._reads: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, ...], read: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            kept = self._reads.get(key)
            if kept is not None:
                self._reads.move_to_end(key)
                return kept
            value = read()
            value.flags.writeable = False
            if value.nbytes <= self.capacity:
                self._reads[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.capacity:
                    _, dropped = self._reads.popitem(last=False)
                    self._bytes -= dropped.nbytes
            return value


class RasterioWindowReader:
    """Array-like view of a GDAL raster as ``(band, y, x)`` that reads windows on demand.

    With ``scaling``, values read as ``stored * scale + offset`` in ``dtype`` (floating point), and
    stored values equal to ``scaling.nodata`` as NaN (as 0 for a nodata of 0, which the validity rules
    take for a gap only where half the bands hold it). Each thread keeps its own open dataset; pickling
    keeps only the path and settings, so the reader can travel to dask workers. Within
    :func:`reusing_reads`, windows read again come from memory.
    """

    def __init__(self, path: str, shape: tuple[int, int, int], dtype: np.dtype,
                 scaling: BandScaling | None = None) -> None:
        self.path = path
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self.scaling = scaling
        self._local = threading.local()
        self.memo: _ReadMemo | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype, "scaling": self.scaling}

    def __setstate__(self, state: dict[str, Any]) -> None:
        RasterioWindowReader.__init__(self, state["path"], state["shape"], state["dtype"], state.get("scaling"))

    def _dataset(self) -> rasterio.io.DatasetReader:
        dataset = getattr(self._local, "dataset", None)
        if dataset is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                dataset = rasterio.open(self.path)
            self._local.dataset = dataset
        return dataset

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        bands, rows, cols = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        if bands[2] != 1 or rows[2] != 1 or cols[2] != 1:
            raise IndexError("RasterioWindowReader supports unit-step slices only")
        span = (bands[0], bands[1], rows[0], rows[1], cols[0], cols[1])
        if min(bands[1] - bands[0], rows[1] - rows[0], cols[1] - cols[0]) <= 0:
            return np.empty((max(bands[1] - bands[0], 0), max(rows[1] - rows[0], 0), max(cols[1] - cols[0], 0)),
                            self.dtype)
        if self.memo is not None:
            return self.memo.get(span, lambda: self._read(*span))
        return self._read(*span)

    def _read(self, band0: int, band1: int, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Bands ``band0:band1`` of rows ``row0:row1``, cols ``col0:col1``, scaled."""
        window = rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0)
        try:
            stored = self._dataset().read(list(range(band0 + 1, band1 + 1)), window=window)
        except RasterioIOError as exc:
            raise SceneError(f"{self.path}: cannot read rows {row0}–{row1}, cols {col0}–{col1} "
                             f"({first_line(exc)}); the file is truncated or corrupt — re-export or "
                             "re-download it") from exc
        return stored if self.scaling is None else _apply_scaling(stored, self.scaling, slice(band0, band1), self.dtype)


@contextmanager
def reusing_reads(scene: xr.DataArray, capacity: int) -> Iterator[None]:
    """Within, the GDAL readers behind ``scene`` (an :func:`open_scene` array) keep their last reads, up to
    ``capacity`` bytes, and read one window at a time (:class:`_ReadMemo`); nothing changes for other scenes
    or a ``capacity`` of 0. For tiled labelling of a raster in large compressed blocks, which reads each
    block again for every neighbouring tile's halo."""
    graph = scene.data.__dask_graph__() if capacity > 0 and isinstance(scene.data, da.Array) else {}
    readers = [value for value in graph.values()
               if isinstance(value, RasterioWindowReader) and not isinstance(value, RasterioMaskReader)]
    for reader in readers:
        reader.memo = _ReadMemo(capacity)
    try:
        yield
    finally:
        for reader in readers:
            reader.memo = None


def _apply_scaling(stored: np.ndarray, scaling: BandScaling, bands: slice, dtype: np.dtype) -> np.ndarray:
    """``stored * scale + offset`` (or ``stored / divisor``) of the bands ``bands`` in ``dtype``; stored nodata
    (tested before scaling) → NaN, or 0 for a nodata of 0 (a stored 0 in a few bands is ground: clipped dark
    reflectance; :func:`~hsi_cluster.stats.valid_pixel_mask` decides per pixel)."""
    values = stored.astype(dtype)
    if scaling.divisor != 1:  # a division, not × 1/factor: 1234 / 10000 is then the nearest float to 0.1234
        values /= np.asarray(scaling.divisor, dtype=dtype)
    else:
        values *= scaling.scale[bands].astype(dtype)[:, None, None]
        values += scaling.offset[bands].astype(dtype)[:, None, None]
    if scaling.nodata is not None and not np.isnan(scaling.nodata):
        values[stored == scaling.nodata] = 0 if scaling.nodata == 0 else np.nan
    return values


def _reflectance_scale_factor(dataset: rasterio.io.DatasetReader) -> str | None:
    """The text of an ENVI header's ``reflectance scale factor`` (GDAL's ENVI domain, keys as written with
    ``_`` for spaces), or None."""
    if "ENVI" not in dataset.tag_namespaces():
        return None
    tags = {key.lower().replace(" ", "_"): value for key, value in dataset.tags(ns="ENVI").items()}
    text = tags.get("reflectance_scale_factor", "").strip().strip("{}").strip()
    return text or None


def _band_scaling(dataset: rasterio.io.DatasetReader, path: Path, *, nodata: float | None,
                  product: EnmapBands | None = None) -> BandScaling | None:
    """The bands' scale and offset (GDAL band SCALE/OFFSET, ENVI data gain/offset values; else the gain and offset
    of an EnMAP product's ``METADATA.XML``), else an ENVI reflectance scale factor (module docstring), or None when
    the values read as stored. ``nodata``: the stored value of pixels without data."""
    scale = np.array([1.0 if v is None else v for v in dataset.scales], dtype=np.float64)
    offset = np.array([0.0 if v is None else v for v in dataset.offsets], dtype=np.float64)
    source = "data gain values / data offset values, or GDAL's scale"
    if (scale == 1).all() and (offset == 0).all() and product is not None and product.gain is not None:
        scale, offset = product.gain.copy(), np.asarray(product.offset, np.float64).copy()
        source = f"{product.path.name}'s GainOfBand / OffsetOfBand"
    factor_text = _reflectance_scale_factor(dataset)
    if (scale == 1).all() and (offset == 0).all():
        if factor_text is None:
            return None
        try:
            factor = float(factor_text)
        except ValueError:
            factor = float("nan")
        if not np.isfinite(factor) or factor <= 0:
            raise SceneError(f"{path}: the ENVI header's reflectance scale factor is {factor_text!r}, which would "
                             "void the values; set it to the number the reflectance was multiplied by (such as "
                             "10000) or delete that line of the header")
        return None if factor == 1 else BandScaling(scale, offset, nodata, divisor=factor)
    if factor_text is not None:
        warnings.warn(MetadataWarning(f"{path}: the ENVI header's reflectance scale factor {factor_text} is not "
                                      f"applied: the bands' scale/offset ({source}) is, and applying both would "
                                      "scale the values twice"),
                      stacklevel=2)
    bad = np.flatnonzero(~np.isfinite(scale) | (scale == 0) | ~np.isfinite(offset))
    if bad.size:
        band = int(bad[0])
        raise SceneError(f"{path}: band {band + 1} has scale {scale[band]:g} and offset {offset[band]:g}, which "
                         "would void its values; fix or remove the scale/offset metadata (gdal_edit.py -scale / "
                         "-offset, or the ENVI header's data gain values / data offset values)")
    return BandScaling(scale, offset, nodata)


class RasterioMaskReader(RasterioWindowReader):
    """Array-like bool ``(y, x)`` view of a GDAL raster's mask band (True: usable), read by window."""

    def __init__(self, path: str, shape: tuple[int, int]) -> None:
        super().__init__(path, (1, *shape), np.dtype(bool))
        self.shape = tuple(shape)  # type: ignore[assignment]
        self.ndim = 2

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        RasterioMaskReader.__init__(self, state["path"], state["shape"])

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:  # type: ignore[override]
        rows, cols = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        window = rasterio.windows.Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])
        if rows[2] != 1 or cols[2] != 1:
            raise IndexError("RasterioMaskReader supports unit-step slices only")
        if window.width <= 0 or window.height <= 0:
            return np.empty((max(window.height, 0), max(window.width, 0)), bool)
        try:
            return self._dataset().dataset_mask(window=window) != 0
        except RasterioIOError as exc:
            raise SceneError(f"{self.path}: cannot read the mask band at rows {rows[0]}–{rows[1]}, cols "
                             f"{cols[0]}–{cols[1]} ({first_line(exc)}); the file is truncated or corrupt — "
                             "re-export or re-download it") from exc


def _has_mask_band(dataset: rasterio.io.DatasetReader) -> bool:
    """True when every band shares a real mask band (GDAL's per-dataset mask), not a nodata value or alpha."""
    return all(MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags and MaskFlags.all_valid not in flags
               for flags in dataset.mask_flag_enums)


class NpyWindowReader:
    """Array-like view of a ``.npy`` file that memory-maps it on first use.

    ``dask.array.from_array`` copies objects that have a ``copy`` method (for a memmap: the whole
    file, into memory); this view has none, and pickles as its path.
    """

    def __init__(self, path: str | os.PathLike[str], shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = str(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        NpyWindowReader.__init__(self, state["path"], state["shape"], state["dtype"])

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return np.array(self._array[key])


def default_chunks(n_bands: int, dtype: np.dtype, spatial: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """Dask chunking ``(all bands, rows, cols)``: ``spatial`` if given, else square chunks of a few MB."""
    if spatial is not None:
        return (n_bands, *spatial)
    side = auto_chunk_size(n_bands, np.dtype(dtype).itemsize)
    return (n_bands, side, side)


def _file_chunks(shape: tuple[int, int, int], dtype: np.dtype, block: tuple[int, int], *,
                 compressed: bool) -> tuple[int, int, int]:
    """Dask chunking of a GDAL raster of ``shape`` stored in ``block``s (rows, cols): :func:`default_chunks` aligned
    with the file's tiles; for compressed strips, which decode whole, chunks of whole strips as large as a square
    chunk (or one strip, up to :data:`MAX_TILE_READ`), so that a strip is decoded once per chunk read, not again
    for each chunk across."""
    n_bands, _, width = shape
    _, rows, cols = default_chunks(n_bands, dtype)
    block_rows, block_cols = block
    if block_rows > 1 and block_cols < width:  # tiled
        return n_bands, max(block_rows, rows // block_rows * block_rows), max(block_cols, cols // block_cols * block_cols)
    if compressed and block_rows * width * n_bands * np.dtype(dtype).itemsize <= MAX_TILE_READ:
        return n_bands, max(block_rows, rows * cols // width // block_rows * block_rows), width
    return n_bands, rows, cols


def _check_cube(shape: tuple[int, ...], path: Path, what: str = "array", band_axis: int = -1) -> None:
    if len(shape) != 3:
        raise SceneError(f"{path}: the {what} has {len(shape)} dimension(s) {tuple(shape)}, but a "
                         "hyperspectral cube needs 3 (y, x, band); pass a 3-D image")
    if min(shape) == 0:
        raise SceneError(f"{path}: the {what} is empty (shape {tuple(shape)}); pass a non-empty scene")
    _check_band_count(shape[band_axis], path)


def _check_band_count(n_bands: int, path: Path) -> None:
    if n_bands < 2:
        raise SceneError(f"{path}: has a single band, i.e. a 2-D image; hyperspectral clustering needs a cube "
                         "with several bands")


def _open_npy(path: Path, spatial: tuple[int, int] | None) -> xr.DataArray:
    try:
        cube = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SceneError(f"{path}: not a readable .npy array ({first_line(exc)}); check the file") from exc
    _check_cube(cube.shape, path)
    n_bands, rows, cols = default_chunks(cube.shape[2], cube.dtype, spatial)
    # Not the memmap itself: dask copies array-likes (reading the whole file) and hashes them.
    data = da.from_array(NpyWindowReader(path, cube.shape, cube.dtype), chunks=(rows, cols, n_bands),
                         name=f"npy-{path}-{path.stat().st_mtime_ns}-{rows}x{cols}").transpose(2, 0, 1)
    return scene_array(data, source=str(path), fmt="npy", nodata=None)


def _open_mat(path: Path, var: str | None, spatial: tuple[int, int] | None) -> xr.DataArray:
    import scipy.io

    try:
        variables = scipy.io.whosmat(path)
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        return _open_mat_hdf5(path, var, spatial)
    except (ValueError, OSError, TypeError) as exc:
        raise SceneError(f"{path}: not a readable MATLAB file ({first_line(exc)}); check the file") from exc
    name = _pick_mat_variable(path, [(n, shape) for n, shape, _ in variables], var)
    cube = scipy.io.loadmat(path, variable_names=[name])[name]
    _check_cube(cube.shape, path, f"variable {name!r}")
    data = da.from_array(np.ascontiguousarray(cube.transpose(2, 0, 1)),
                         chunks=default_chunks(cube.shape[2], cube.dtype, spatial))
    return scene_array(data, source=str(path), fmt="mat", extra_attrs={"variable": name})


def _open_mat_hdf5(path: Path, var: str | None, spatial: tuple[int, int] | None) -> xr.DataArray:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise SceneError(f"{path}: not a readable MATLAB v7.3 file ({first_line(exc)}); check the file") from exc
    datasets = [(n, tuple(reversed(d.shape))) for n, d in handle.items() if isinstance(d, h5py.Dataset)]
    name = _pick_mat_variable(path, datasets, var)
    dataset = handle[name]
    # MATLAB stores column-major: an array (y, x, band) appears in HDF5 as (band, x, y).
    _check_cube(dataset.shape, path, f"variable {name!r}", band_axis=0)
    n_bands = dataset.shape[0]
    _, rows, cols = default_chunks(n_bands, dataset.dtype, spatial)
    data = da.from_array(dataset, chunks=(n_bands, cols, rows), lock=True).transpose(0, 2, 1)
    return scene_array(data, source=str(path), fmt="mat-v7.3", extra_attrs={"variable": name})


def _pick_mat_variable(path: Path, variables: list[tuple[str, tuple[int, ...]]], var: str | None) -> str:
    if var is not None:
        names = [n for n, _ in variables]
        if var not in names:
            raise SceneError(f"{path}: no variable {var!r}; it holds {', '.join(names) or 'nothing'}")
        return var
    cubes = [n for n, shape in variables if len(shape) == 3]
    if len(cubes) == 1:
        return cubes[0]
    if not cubes:
        listing = ", ".join(f"{n} {tuple(s)}" for n, s in variables) or "no variables"
        raise SceneError(f"{path}: no 3-D array among its variables ({listing}); a hyperspectral cube "
                         "needs (y, x, band)")
    listing = ", ".join(f"{n} {tuple(s)}" for n, s in variables if n in cubes)
    raise SceneError(f"{path}: several 3-D arrays ({listing}); {choose_variable()}")


def envi_binary(path: Path) -> Path:
    """The ENVI binary for ``path`` (which may name the ``.hdr`` or the binary)."""
    if path.suffix.lower() != ".hdr":
        return path
    binary, others = envi_binary_beside(path)
    if binary is not None:
        return binary
    found = f"; beside it: {', '.join(o.name for o in others)}" if others else ""
    raise SceneError(f"{path}: ENVI header without its data file (looked for "
                     f"{', '.join(path.with_suffix(s).name for s in ENVI_BINARY_SUFFIXES)}{found}); pass the binary "
                     "itself, or put it next to the header")


def scene_inputs(path: Path, role: str = "the scene") -> dict[str, Path]:
    """The files a scene is read from, by role: ``path`` itself and, for ENVI, its companion (the binary of a
    header, the header of a binary) and, for an EnMAP spectral image, its product's ``METADATA.XML``. An output
    must never replace one of them, and a cached ingest of the scene is stale when one of them changes."""
    try:
        companion = envi_binary(path) if path.suffix.lower() == ".hdr" else _envi_header(path)
    except SceneError:
        companion = None
    inputs = {role: path}
    if companion is not None:
        inputs[f"{role}'s ENVI companion file"] = companion
    product_metadata = metadata_file(path)
    if product_metadata is not None:
        inputs[f"{role}'s EnMAP METADATA.XML"] = product_metadata
    return inputs


def scene_files(path: Path) -> list[Path]:
    """Every file a scene is read from, ``path`` first: the files of :func:`scene_inputs` (a folder, a Zarr store,
    is read from itself alone). What a cache, a resume or a skipped rerun of work on the scene must watch."""
    if not path.is_file():
        return [path]
    return [path, *(file for file in scene_inputs(path).values() if file != path)]


def scene_files_identity(path: Path) -> dict[str, Any]:
    """Whether a scene's files changed, as a JSON record to keep and compare with a later one (``==``).

    ``path``, ``size`` (None for a folder) and ``mtime_ns`` of the scene's own file and, under ``companions``, a
    list of the same for each other file of :func:`scene_files` (an ENVI header or binary, an EnMAP
    ``METADATA.XML``): a key left out for a lone file, whose record is then what versions that watched the scene's
    own file alone wrote. Every record that tells whether a scene changed (a store's ``source``, a checkpoint's
    scenes, a batch manifest, a resumable prediction) is this record or a part of it, companions included.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    def stamp(file: Path) -> dict[str, Any]:
        stat = file.stat()
        return {"path": str(file), "size": stat.st_size if file.is_file() else None, "mtime_ns": stat.st_mtime_ns}

    own, *others = scene_files(path)
    identity = stamp(own)
    companions = []
    for file in others:
        try:
            companions.append(stamp(file))
        except FileNotFoundError:  # removed since it was listed: the scene reads without it
            continue
    if companions:
        identity["companions"] = companions
    return identity


def _envi_header(binary: Path) -> Path | None:
    for candidate in (existing_with_suffix(binary, ".hdr"), Path(f"{binary}.hdr"), Path(f"{binary}.HDR")):
        if candidate is not None and candidate != binary and candidate.is_file():
            return candidate
    return None


def _check_envi_size(dataset: rasterio.io.DatasetReader, binary: Path) -> None:
    """The header's layout agrees with the data file: a known interleave, and as many bytes as it describes."""
    envi = dataset.tags(ns="ENVI")
    interleave = envi.get("interleave", "bsq").strip().lower()
    if interleave not in ("bsq", "bil", "bip"):  # GDAL reads anything else as bsq
        raise SceneError(f"{binary}: its ENVI header gives interleave = {interleave}, which is none of bsq, bil, bip; "
                         "fix the header")
    try:
        offset = int(envi.get("header_offset", "0"))
    except ValueError:
        offset = 0
    expected = offset + dataset.count * dataset.height * dataset.width * np.dtype(dataset.dtypes[0]).itemsize
    actual = binary.stat().st_size
    described = f"{dataset.height}×{dataset.width}×{dataset.count} {dataset.dtypes[0]} ({expected} bytes)"
    if actual < expected:
        raise SceneError(f"{binary}: ENVI data file is truncated: {actual} bytes, but the header describes "
                         f"{described}; re-export the scene or fix the header")
    itemsize = np.dtype(dataset.dtypes[0]).itemsize
    if actual - expected >= dataset.width * itemsize:  # a line or more left over: the cube would read shifted
        plane = dataset.height * dataset.width * itemsize
        fits = f" ({(actual - offset) // plane} bands would fit)" if (actual - offset) % plane == 0 else ""
        raise SceneError(f"{binary}: ENVI data file holds {actual} bytes, more than the header describes: "
                         f"{described}{fits}; its samples, lines, bands, data type or header offset is wrong, and "
                         "the cube would read shifted; fix the header")


def _check_no_alpha(dataset: rasterio.io.DatasetReader, path: Path) -> None:
    """Refuse a raster with an alpha band: it would be read as one more spectral band, its transparent pixels
    labelled (GDAL makes alpha a mask only for 2- or 4-band rasters)."""
    alpha = [i for i, colour in enumerate(dataset.colorinterp, start=1) if colour == ColorInterp.alpha]
    if alpha and dataset.count > 1:
        which = ("band " if len(alpha) == 1 else "bands ") + number_ranges(alpha)
        raise SceneError(f"{path}: {which} of {dataset.count} is an alpha band, not a spectral one; write the "
                         f"spectral bands with it as a mask (gdal_translate -b 1 … -mask {alpha[0]}) or with a nodata "
                         "value, and read that")


def _one_nodata(dataset: rasterio.io.DatasetReader, path: Path) -> float | None:
    """The nodata value the bands declare (the bands that declare none share it), refused when they differ."""
    bands_of: dict[Any, list[int]] = {}  # one key for every NaN, which compares unequal to itself
    for band, value in enumerate(dataset.nodatavals, start=1):
        if value is not None:
            bands_of.setdefault("nan" if math.isnan(value) else value, []).append(band)
    if len(bands_of) > 1:
        listing = "; ".join(f"{float(value):g} in bands {number_ranges(bands)}" for value, bands in bands_of.items())
        raise SceneError(f"{path}: its bands declare different nodata values ({listing}); only one is used for the "
                         "whole scene, so write the scene with one nodata value and read that")
    return next((dataset.nodatavals[bands[0] - 1] for bands in bands_of.values()), None)


def _envi_nodata(dataset: rasterio.io.DatasetReader, path: Path, nodata: float | None) -> float | None:
    """GDAL reads an ENVI ``data ignore value`` that is not a number as 0: that is no nodata value (with a warning)."""
    text = dataset.tags(ns="ENVI").get("data_ignore_value")
    if text is None:
        return nodata
    try:
        float(text)
    except ValueError:
        warnings.warn(MetadataWarning(f"{path}: its header's data ignore value {text.strip()!r} is not a number, so the "
                                      "scene has no nodata value; correct the header"), stacklevel=3)
        return None
    return nodata


def _enmap_bands(binary: Path, n_bands: int) -> EnmapBands | None:
    """The band metadata of the EnMAP product whose spectral image is ``binary``, or None (not one, no XML)."""
    xml = metadata_file(binary)
    if xml is None and is_enmap_image_name(binary) and binary.name.upper().startswith("ENMAP"):
        warnings.warn(MetadataWarning(
            f"{binary}: is named as an EnMAP spectral image, but its product's METADATA.XML is not beside it, so its "
            "gain/offset, fill value and band centres are not applied; keep the product's files together"),
            stacklevel=3)
    return None if xml is None else read_band_metadata(xml, n_bands, image=binary)


def _holds(dtype: np.dtype, value: float | None) -> bool:
    """Whether ``dtype`` can store ``value`` (a fill value that it cannot hold marks no pixel)."""
    if value is None:
        return False
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    return True


def _starts_with_envi(header: Path) -> bool:
    """Whether an ENVI header begins with its ``ENVI`` line, without which GDAL does not read it as one."""
    try:
        with header.open("rb") as text:
            return text.read(64).lstrip(b"\xef\xbb\xbf").lstrip().upper().startswith(b"ENVI")
    except OSError:
        return True  # unreadable: the other hint stands


def _open_gdal(path: Path, spatial: tuple[int, int] | None) -> xr.DataArray:
    binary = envi_binary(path)
    header = _envi_header(binary)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(binary)
    except RasterioIOError as exc:
        hint = ("the ENVI header is malformed or does not match the data; check samples, lines, bands, "
                "data type and interleave" if header is not None or path.suffix.lower() == ".hdr"
                else "it is not a raster GDAL can read, or it is corrupt")
        if header is not None and not _starts_with_envi(header):
            hint = f"the ENVI header {header.name} must begin with a line that reads ENVI; add it"
        raise SceneError(f"{path}: cannot open ({first_line(exc)}); {hint}") from exc
    with dataset:
        if dataset.count == 0 and dataset.subdatasets:
            listing = ", ".join(dataset.subdatasets[:4]) + (" ..." if len(dataset.subdatasets) > 4 else "")
            raise SceneError(f"{path}: a container of {len(dataset.subdatasets)} subdatasets ({listing}), not one "
                             "image; write the cube you want to a GeoTIFF (gdal_translate SUBDATASET cube.tif) and "
                             "pass that")
        shape = (dataset.count, dataset.height, dataset.width)
        if min(shape) == 0:
            raise SceneError(f"{path}: the raster is empty (bands, rows, cols = {shape}); pass a non-empty scene")
        _check_band_count(shape[0], path)
        _check_no_alpha(dataset, path)
        if len(set(dataset.dtypes)) != 1:
            raise SceneError(f"{path}: bands have different data types {sorted(set(dataset.dtypes))}; "
                             "convert to one type first (gdal_translate -ot Float32)")
        if dataset.driver == "ENVI":
            _check_envi_size(dataset, binary)
        dtype = np.dtype(dataset.dtypes[0])
        product = _enmap_bands(binary, dataset.count)
        nodata = _one_nodata(dataset, path)
        if dataset.driver == "ENVI":
            nodata = _envi_nodata(dataset, path, nodata)
        if nodata is None and product is not None and _holds(dtype, product.fill):
            nodata = product.fill
        scaling = _band_scaling(dataset, path, nodata=nodata, product=product)
        coords = spectral_coords(
            dataset.count, dataset.tags(),
            dataset.tags(ns="ENVI") if "ENVI" in dataset.tag_namespaces() else {},
            [dataset.tags(i) for i in dataset.indexes],
            [dataset.tags(i, ns="IMAGERY") for i in dataset.indexes], source=str(path),
            descriptions=list(dataset.descriptions),
            fallback=None if product is None else {"wavelength": product.wavelength, "fwhm": product.fwhm})
        crs = dataset.crs.to_wkt() if dataset.crs else None
        if crs is not None and dataset.transform.is_identity and not dataset.gcps[0]:
            warnings.warn(MetadataWarning(
                f"{path}: has a CRS ({dataset.crs.to_string()}) but no geotransform, so it is read without "
                "georeferencing (1-unit pixels at the CRS's origin would be placed off the map); set the "
                "geotransform (gdal_edit.py -a_ullr ULX ULY LRX LRY) to georeference the labels"), stacklevel=2)
            crs = None
        has_transform = crs is not None or not dataset.transform.is_identity
        transform = tuple(dataset.transform)[:6] if has_transform else None
        gcps, gcp_crs = dataset.gcps if not has_transform else ([], None)
        driver = dataset.driver
        block_rows, block_cols = dataset.block_shapes[0]
        masked = _has_mask_band(dataset)
        compressed = dataset.compression is not None
    extra: dict[str, Any] = {"file_block": (block_rows, block_cols), "file_compressed": compressed}
    if gcps:  # a raw (L1) scene located by ground control points: carried to the labels as they are
        extra[GCPS] = gcp_records(gcps, gcp_crs)
    if scaling is not None:  # physical values in floating point; stored nodata reads as NaN (0 stays 0)
        extra["scaled_from"] = str(dtype)
        if scaling.divisor != 1:
            extra["reflectance_scale_factor"] = scaling.divisor
        dtype = np.result_type(dtype, np.float32)
        nodata = None if nodata is None else 0.0 if nodata == 0 else float("nan")
    reader = RasterioWindowReader(str(binary), shape, dtype, scaling)
    chunks = default_chunks(shape[0], dtype, spatial) if spatial else _file_chunks(shape, dtype, (block_rows, block_cols),
                                                                                  compressed=compressed)
    # The chunking is part of the name: views of one file with other chunks must not share keys.
    name = f"{binary}-{binary.stat().st_mtime_ns}-{chunks[1]}x{chunks[2]}"
    if scaling is not None:  # a scale edited in a sidecar (.aux.xml) leaves the file's mtime as it was
        name += "-" + hashlib.sha256(scaling.scale.tobytes() + scaling.offset.tobytes()
                                     + np.float64(scaling.divisor).tobytes()).hexdigest()[:12]
    data = da.from_array(reader, chunks=tuple(chunks), asarray=False, fancy=False, name=f"scene-{name}")
    source_valid = None
    if masked:
        source_valid = da.from_array(RasterioMaskReader(str(binary), shape[1:]), chunks=tuple(chunks[1:]),
                                     asarray=False, fancy=False, name=f"mask-{name}")
    return scene_array(data, coords=coords, crs=crs, transform=transform, nodata=nodata,
                       source=str(binary), fmt=driver, extra_attrs=extra, source_valid=source_valid)


def open_scene(path: str | os.PathLike[str], *, var: str | None = None,
               chunks: tuple[int, int] | None = None) -> xr.DataArray:
    """Open a hyperspectral scene lazily as ``(band, y, x)``.

    Args:
        path: a GDAL raster (GeoTIFF, COG, VRT, ENVI binary or its ``.hdr``, …; an EnMAP product's
            ``SPECTRAL_IMAGE`` with its ``METADATA.XML``: see :mod:`hsi_cluster.io.enmap`), a Zarr store made
            by ``hsicluster ingest``, a ``.npy`` cube (y, x, band), a MATLAB ``.mat`` file or a NetCDF
            file (``.nc``, EMIT's included, or a plain HDF5 ``.h5``: see :mod:`hsi_cluster.io.netcdf`) or a PRISMA L2D ``.he5``
            product (see :mod:`hsi_cluster.io.prisma`).
        var: the variable to use in a ``.mat``, NetCDF or HDF5 file holding several 3-D arrays.
        chunks: spatial dask chunk ``(rows, cols)``; default: the file's tiles or chunks of a few MB.

    Returns:
        lazy DataArray; see the module docstring for its coordinates and attributes.

    Raises:
        SceneError: the path is missing, unreadable, or not a 3-D cube.
    """
    if chunks is not None and (not isinstance(chunks, (tuple, list)) or len(chunks) != 2 or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in chunks)):
        raise ValueError(f"chunks must be (rows, cols), two whole numbers ≥ 1, got {chunks!r}")
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise SceneError(f"{path}: no such file or directory; check the path")

    if is_store(path):
        return open_store(path, chunks=chunks)
    if path.is_dir():
        raise SceneError(f"{path}: is a folder, not a scene or a store made by 'hsicluster ingest'; for the scenes in "
                         f"it pass a quoted pattern, '{path}/*.tif' or '{path}/**/*.tif'")
    if not os.access(path, os.R_OK):
        raise SceneError(f"{path}: permission denied; make the file readable")
    suffix = path.suffix.lower()
    if var is not None and suffix != ".mat" and suffix not in NETCDF_SUFFIXES:
        raise SceneError(f"{path}: {option('--var', var)} names a variable of a MATLAB .mat, NetCDF or HDF5 file, and "
                         f"this is none; leave {option('--var')} out")
    if suffix == ".npy":
        return _open_npy(path, chunks)
    if suffix == ".mat":
        return _open_mat(path, var, chunks)
    if suffix in NETCDF_SUFFIXES:
        return open_netcdf(path, var, chunks)
    if suffix in PRISMA_SUFFIXES:
        return open_prisma(path, chunks)
    return _open_gdal(path, chunks)
