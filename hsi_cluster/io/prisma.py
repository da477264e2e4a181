"""PRISMA Level-2D scenes (``.he5``): ASI's geocoded surface reflectance, VNIR and SWIR read as one cube.

A PRISMA L2D product is an HDF-EOS5 file holding two cubes of 16-bit counts on one 30 m map grid. This
reader joins them into one ``(band, y, x)`` float32 reflectance cube, bands in ascending wavelength, lazily:
each dask chunk reads its window of both cubes with h5py, nothing more. The facts it relies on, as read in
the public readers IREA-CNR-MI/prismaread (``R/pr_convert.R``, ``pr_create_vnir.R``, ``pr_get_geoloc.R``,
``pr_setext_L2D.R``, ``pr_rastwrite_lines.R``), EnMAP-Box/enmap-box
(``enmapboxprocessing/algorithm/importprismal2dalgorithm.py`` and its older ``hubdsm`` importer) and
opengeos/HyperCoast (``hypercoast/prisma.py``):

- Cubes: ``HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/VNIR_Cube`` and ``SWIR_Cube``, stored (lines, bands,
  samples), i.e. band-interleaved by line; line 0 is the north edge and sample 0 the west edge (all three
  readers move the band axis first and georeference the result from the upper-left corner, unflipped).
- Reflectance = ``min + DN · (max − min) / 65535``, with the file's root attributes ``L2ScaleVnirMin`` /
  ``L2ScaleVnirMax`` for VNIR and ``L2ScaleSwirMin`` / ``L2ScaleSwirMax`` for SWIR (prismaread, HyperCoast,
  EnMAP-Box's older importer). A cube stored as floating point (a re-export, not ASI's product) is read as
  stored, taken as reflectance, with a warning.
- Bands: root attributes ``List_Cw_Vnir`` / ``List_Cw_Swir`` (centre wavelengths, nm) and ``List_Fwhm_Vnir`` /
  ``List_Fwhm_Swir`` give one value per band of each cube in stored order, which is *descending* wavelength
  (EnMAP-Box reverses both cubes; prismaread and HyperCoast sort): the output is sorted ascending.
  ``List_Cw_Vnir_Flags`` / ``List_Cw_Swir_Flags`` are 0 for unused bands, which carry wavelength 0 (three
  VNIR and two SWIR bands in a published dump of a file's attributes). Bands without a wavelength are left
  out, as every reader does; a band flagged 0 that has a wavelength is kept and marked bad (``good_band``
  False).
- Overlap: VNIR reaches ~970 nm and SWIR starts at ~940 nm. As prismaread's default ``join_priority =
  "SWIR"``, VNIR bands at or above the shortest SWIR wavelength are left out (some 231 bands remain).
- Grid: ``Epsg_Code`` (WGS 84 / UTM), 30 m pixels; ``Product_ULcorner_easting`` / ``_northing`` (and
  ``Product_LRcorner_*``) are the *centres* of the corner pixels, so the grid's edge lies half a pixel
  beyond them (EnMAP-Box and prismaread both pad by 15 m; HyperCoast does not, and is not followed).
- Fill: a pixel whose counts are 0 in every band of a detector lies outside the swath (EnMAP-Box marks
  pixels with 0 in all bands as no data); it reads NaN in every band. A single band at 0 is a valid
  reflectance (``min``). The per-band ``*_PIXEL_L2_ERR_MATRIX`` flags (negative or saturated values after
  atmospheric correction) are not applied, as prismaread and EnMAP-Box leave them off by default.

PRISMA L1 (radiance) and L2B/L2C (sensor geometry, located only by latitude/longitude grids) products are
refused with a message naming the level; so is an ``.he5`` file that is not PRISMA.
"""

from __future__ import annotations

import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import xarray as xr
from rasterio.crs import CRS
from rasterio.errors import CRSError

from hsi_cluster.errors import MetadataWarning, SceneError, first_line
from hsi_cluster.io.scene_array import scene_array

#: File suffixes read by this module.
PRISMA_SUFFIXES = (".he5",)
#: The swath group of the L2D hyperspectral cubes.
L2D_SWATH = "HDFEOS/SWATHS/PRS_L2D_HCO"
#: Largest stored count: reflectance = min + DN · (max − min) / DN_MAX.
DN_MAX = 65535
#: Pixel size of the L2D VNIR/SWIR grid (metres).
PIXEL_SIZE = 30.0
#: Largest block of counts (bytes, per cube) a read widens to whole HDF5 chunks and keeps for the next read.
BLOCK_CACHE_BYTES = 64 * 2**20
_DETECTORS = ("VNIR", "SWIR")
_SWATH_NAME = re.compile(r"PRS_(L[0-9][A-Z]?)_[A-Z]+")
_OTHER_LEVELS = {
    "L1": "top-of-atmosphere radiance in sensor geometry",
    "L2B": "surface radiance in sensor geometry, located only by latitude/longitude grids",
    "L2C": "surface reflectance in sensor geometry, located only by latitude/longitude grids",
}


@dataclass(frozen=True)
class DetectorBands:
    """The bands read from one detector's cube.

    ``dataset``: the cube's HDF5 path; ``keep``: indices on its stored band axis, in stored order;
    ``fill_test``: bool over ``keep``, the bands whose counts all 0 mark a fill pixel; ``low`` / ``high``:
    the reflectance of counts 0 and :data:`DN_MAX`; ``chunks``: the cube's HDF5 chunk ``(lines, samples)``,
    None when it is stored contiguously; ``n_stored``: its stored band count.
    """

    dataset: str
    keep: np.ndarray
    fill_test: np.ndarray
    low: float
    high: float
    chunks: tuple[int, int] | None = None
    n_stored: int = 0


class PrismaWindowReader:
    """Array-like ``(band, y, x)`` float32 reflectance view of a PRISMA L2D file, read a window at a time.

    Each read opens the file, reads the window ``[rows, :, cols]`` of each detector's cube, keeps the
    ``detectors``' bands, scales them, puts them in ``order`` (ascending wavelength) and sets fill pixels
    to NaN. A chunked (compressed) cube is read in whole HDF5 chunks: the window is widened to the chunks it
    touches (up to :data:`BLOCK_CACHE_BYTES`) and that block of counts is kept for the next window, so that
    the windows of one strip of a line-chunked file decompress each chunk once, not once per window. It
    holds no open file, so it pickles to dask workers as its settings.
    """

    def __init__(self, path: str, shape: tuple[int, int, int], detectors: tuple[DetectorBands, ...],
                 order: np.ndarray) -> None:
        self.path = path
        self.shape = shape
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self.detectors = detectors
        self.order = order
        self._lock = threading.Lock()
        self._blocks: dict[str, tuple[tuple[int, int, int, int], np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["_blocks"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._blocks = {}

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        bands, rows, cols = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        if bands[2] != 1 or rows[2] != 1 or cols[2] != 1:
            raise IndexError("PrismaWindowReader supports unit-step slices only")
        height, width = max(rows[1] - rows[0], 0), max(cols[1] - cols[0], 0)
        if bands[1] <= bands[0] or height == 0 or width == 0:
            return np.empty((max(bands[1] - bands[0], 0), height, width), self.dtype)
        parts, fill = [], np.zeros((height, width), bool)
        try:
            windows = self._read_counts(rows[0], rows[1], cols[0], cols[1])
        except (OSError, KeyError, ValueError) as exc:
            raise SceneError(f"{self.path}: cannot read rows {rows[0]}–{rows[1]}, cols {cols[0]}–{cols[1]} "
                             f"({first_line(exc)}); the file is truncated or corrupt — download it again") from exc
        for detector, window in zip(self.detectors, windows, strict=True):
            counts = window[:, detector.keep, :].transpose(1, 0, 2)
            if detector.fill_test.any():
                fill |= (counts[detector.fill_test] == 0).all(axis=0)
            step = np.float32((detector.high - detector.low) / DN_MAX)  # float32 throughout: no float64 block
            parts.append(counts.astype(self.dtype) * step + np.float32(detector.low))
        cube = np.concatenate(parts)[self.order[bands[0]:bands[1]]]
        cube[:, fill] = np.nan
        return cube

    def _read_counts(self, row0: int, row1: int, col0: int, col1: int) -> list[np.ndarray]:
        """Each detector's stored counts ``[row0:row1, :, col0:col1]`` (lines, bands, samples), from the kept
        block of whole HDF5 chunks where it holds them, else read (widened to whole chunks, and kept, where the
        cube is chunked)."""
        out: list[np.ndarray | None] = [None] * len(self.detectors)
        with self._lock:  # a window read by another thread is served from its block, not decompressed again
            todo: list[tuple[int, tuple[int, int, int, int]]] = []
            for index, detector in enumerate(self.detectors):
                span = self._span(detector, row0, row1, col0, col1)
                kept = self._blocks.get(detector.dataset)
                if kept is not None and _contains(kept[0], span):
                    out[index] = _cut(kept, row0, row1, col0, col1)
                else:
                    todo.append((index, span))
            if todo:
                with h5py.File(self.path, "r") as handle:
                    for index, span in todo:
                        detector = self.detectors[index]
                        block = np.asarray(handle[detector.dataset][span[0]:span[1], :, span[2]:span[3]])
                        if span != (row0, row1, col0, col1):
                            self._blocks[detector.dataset] = (span, block)
                        out[index] = _cut((span, block), row0, row1, col0, col1)
        return [window for window in out if window is not None]

    def _span(self, detector: DetectorBands, row0: int, row1: int, col0: int,
              col1: int) -> tuple[int, int, int, int]:
        """The window widened to the whole HDF5 chunks it touches, where the cube is chunked and that block
        stays under :data:`BLOCK_CACHE_BYTES`; else the window itself."""
        if detector.chunks is None:
            return row0, row1, col0, col1
        (chunk_rows, chunk_cols), (_, lines, samples) = detector.chunks, self.shape
        span = (row0 // chunk_rows * chunk_rows, min(lines, -(-row1 // chunk_rows) * chunk_rows),
                col0 // chunk_cols * chunk_cols, min(samples, -(-col1 // chunk_cols) * chunk_cols))
        size = (span[1] - span[0]) * (span[3] - span[2]) * detector.n_stored * 2
        return span if size <= BLOCK_CACHE_BYTES else (row0, row1, col0, col1)


def _contains(outer: tuple[int, int, int, int], inner: tuple[int, int, int, int]) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1] and outer[2] <= inner[2] and inner[3] <= outer[3]


def _cut(kept: tuple[tuple[int, int, int, int], np.ndarray], row0: int, row1: int, col0: int,
         col1: int) -> np.ndarray:
    """The window ``[row0:row1, :, col0:col1]`` of a block of counts read at ``kept[0]``."""
    (top, _, left, _), block = kept
    return block[row0 - top:row1 - top, :, col0 - left:col1 - left]


def open_prisma(path: Path, spatial: tuple[int, int] | None) -> xr.DataArray:
    """Open a PRISMA L2D ``.he5`` file lazily as ``(band, y, x)`` reflectance (see the module docstring).

    Args:
        path: a PRISMA L2D product (``PRS_L2D_STD_….he5``).
        spatial: spatial dask chunk ``(rows, cols)``, or None for chunks of a few MB.

    Raises:
        SceneError: not an HDF5 file, not PRISMA, a PRISMA product of another level, or incomplete metadata.
    """
    from hsi_cluster.io.scene import default_chunks

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise SceneError(f"{path}: not a readable HDF5 file ({first_line(exc)}); the file is truncated or "
                         "corrupt — download it again") from exc
    try:
        with handle:
            _check_level(path, handle)
            lines, samples, detectors, wavelength, fwhm, good = _read_layout(path, handle)
            crs, transform = _grid(path, handle.attrs, lines, samples)
            file_chunks = handle[detectors[0].dataset].chunks
            stored = handle[detectors[0].dataset].dtype
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise SceneError(f"{path}: cannot read its PRISMA metadata ({first_line(exc)}); the file is truncated or "
                         "corrupt — download it again") from exc
    # the file's layout, for readers that follow it: ingest reads strips of a line-interleaved or line-chunked cube
    file_block = (1, samples) if file_chunks is None else (file_chunks[0], file_chunks[2])
    order = np.argsort(wavelength, kind="stable")
    n_bands = order.size
    if n_bands < 2:
        raise SceneError(f"{path}: only {n_bands} band of VNIR_Cube and SWIR_Cube has a wavelength; hyperspectral "
                         "clustering needs several — the file's metadata is damaged, download it again")
    coords: dict[str, np.ndarray] = {"wavelength": wavelength[order], "good_band": good[order]}
    if fwhm is not None:
        coords["fwhm"] = fwhm[order]
    shape = (n_bands, lines, samples)
    chunks = _chunks(default_chunks(n_bands, np.dtype(np.float32), spatial), file_chunks, spatial, samples)
    reader = PrismaWindowReader(str(path), shape, detectors, order)
    name = f"prisma-{path}-{path.stat().st_mtime_ns}-{chunks[1]}x{chunks[2]}"
    data = da.from_array(reader, chunks=chunks, asarray=False, fancy=False, name=name)
    return scene_array(data, coords=coords, crs=crs, transform=transform, nodata=float("nan"), source=str(path),
                       fmt="PRISMA-L2D", extra_attrs={"scaled_from": str(stored) if stored.kind in "ui" else None,
                                                      "file_block": file_block,
                                                      "variable": f"{L2D_SWATH}/Data Fields/VNIR_Cube + SWIR_Cube"})


def _check_level(path: Path, handle: h5py.File) -> None:
    """Refuse anything but a PRISMA L2D product, naming what the file is and what to do."""
    if L2D_SWATH in handle:
        return
    swaths = handle.get("HDFEOS/SWATHS")
    names = sorted(swaths.keys()) if isinstance(swaths, h5py.Group) else []
    levels = sorted({match.group(1) for name in names if (match := _SWATH_NAME.fullmatch(name))})
    if not levels:
        raise SceneError(f"{path}: not a PRISMA L2D product (no {L2D_SWATH} group); hsicluster reads .he5 files of "
                         "PRISMA L2D only — convert other HDF-EOS5 files to a GeoTIFF (gdal_translate) and pass that")
    level = levels[0]
    what = _OTHER_LEVELS.get(level, "not the geocoded reflectance")
    raise SceneError(f"{path}: a PRISMA {level} product ({what}); hsicluster reads PRISMA L2D (geocoded surface "
                     "reflectance, PRS_L2D_*.he5) — order the L2D product of this acquisition from ASI's PRISMA "
                     "portal")


def _read_layout(path: Path, handle: h5py.File) -> tuple[int, int, tuple[DetectorBands, ...], np.ndarray,
                                                         np.ndarray | None, np.ndarray]:
    """Both cubes' shape, the bands kept from each, and the kept bands' wavelength, FWHM and good flag
    (concatenated VNIR then SWIR, stored order)."""
    attrs = handle.attrs
    per_detector: list[dict[str, Any]] = []
    floats: list[str] = []
    for name in _DETECTORS:
        dataset_path = f"{L2D_SWATH}/Data Fields/{name}_Cube"
        if dataset_path not in handle:
            raise SceneError(f"{path}: PRISMA L2D file without {dataset_path}; the file is incomplete — download it "
                             "again")
        shape = handle[dataset_path].shape
        if len(shape) != 3 or min(shape) == 0:
            raise SceneError(f"{path}: {dataset_path} has shape {tuple(shape)}, not (lines, bands, samples); the file "
                             "is damaged — download it again")
        title = name.title()
        centre = _required_floats(path, attrs, f"List_Cw_{title}", shape[1])
        width = _float_list(path, attrs, f"List_Fwhm_{title}", shape[1], required=False)
        flags = _float_list(path, attrs, f"List_Cw_{title}_Flags", shape[1], required=False)
        if handle[dataset_path].dtype.kind == "f":  # a re-export that holds reflectance, not ASI's 16-bit counts
            floats.append(f"{name}_Cube ({handle[dataset_path].dtype})")
            low, high = 0.0, float(DN_MAX)  # the identity: counts · (high − low) / DN_MAX + low
        else:
            low, high = (float(_required_floats(path, attrs, f"L2Scale{title}{end}", 1)[0]) for end in ("Min", "Max"))
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise SceneError(f"{path}: L2Scale{title}Min/Max = {low:g}/{high:g} cannot scale counts to reflectance; "
                             "the file's metadata is damaged — download it again")
        used = np.ones(shape[1], bool) if flags is None else flags != 0
        per_detector.append({"dataset": dataset_path, "shape": shape, "centre": centre, "width": width,
                             "used": used, "low": low, "high": high})
    if floats:
        warnings.warn(MetadataWarning(
            f"{path}: {' and '.join(floats)} hold{'s' if len(floats) == 1 else ''} floating-point values, not the "
            "16-bit counts of an ASI product, so they are read as stored (taken as reflectance; the L2Scale "
            "attributes are not applied)"), stacklevel=4)
    vnir, swir = per_detector
    if vnir["shape"][0::2] != swir["shape"][0::2]:
        raise SceneError(f"{path}: VNIR_Cube {tuple(vnir['shape'])} and SWIR_Cube {tuple(swir['shape'])} differ in "
                         "lines or samples; the file is damaged — download it again")
    swir_used = swir["centre"][swir["used"] & (swir["centre"] > 0)]
    vnir["below"] = vnir["centre"] < swir_used.min() if swir_used.size else np.ones_like(vnir["used"])
    swir["below"] = np.ones_like(swir["used"])
    detectors: list[DetectorBands] = []
    wavelength: list[np.ndarray] = []
    fwhm: list[np.ndarray | None] = []
    good: list[np.ndarray] = []
    for entry in per_detector:
        keep = np.flatnonzero((entry["centre"] > 0) & entry["below"])
        if keep.size == 0:
            continue
        chunks = handle[entry["dataset"]].chunks
        detectors.append(DetectorBands(entry["dataset"], keep, entry["used"][keep], entry["low"], entry["high"],
                                       None if chunks is None else (chunks[0], chunks[2]), entry["shape"][1]))
        wavelength.append(entry["centre"][keep])
        fwhm.append(None if entry["width"] is None else entry["width"][keep])
        good.append(entry["used"][keep])
    if not detectors:
        raise SceneError(f"{path}: no band of VNIR_Cube or SWIR_Cube has a wavelength (List_Cw_Vnir, List_Cw_Swir are "
                         "all 0); the file's metadata is damaged — download it again")
    widths = None if any(w is None for w in fwhm) else np.concatenate([w for w in fwhm if w is not None])
    return (int(vnir["shape"][0]), int(vnir["shape"][2]), tuple(detectors), np.concatenate(wavelength), widths,
            np.concatenate(good))


def _required_floats(path: Path, attrs: h5py.AttributeManager, name: str, size: int) -> np.ndarray:
    """Root attribute ``name`` as ``size`` floats; SceneError when absent or of another length."""
    values = _float_list(path, attrs, name, size, required=True)
    assert values is not None  # required: absent or malformed raised
    return values


def _float_list(path: Path, attrs: h5py.AttributeManager, name: str, size: int, *,
                required: bool = True) -> np.ndarray | None:
    """Root attribute ``name`` as ``size`` floats; None (with a warning where it is malformed) when optional."""
    if name not in attrs:
        if required:
            raise SceneError(f"{path}: PRISMA L2D file without its root attribute {name}; the file is incomplete — "
                             "download it again")
        return None
    value = attrs[name]
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    values = np.asarray(value.split() if isinstance(value, str) else value).astype(np.float64).ravel()
    if values.size == size:
        return values
    message = f"{path}: the root attribute {name} holds {values.size} values for {size}"
    if required:
        raise SceneError(f"{message}; the file's metadata is damaged — download it again")
    warnings.warn(MetadataWarning(f"{message}, so it is not used"), stacklevel=3)
    return None


def _grid(path: Path, attrs: h5py.AttributeManager, lines: int,
          samples: int) -> tuple[str | None, tuple[float, ...] | None]:
    """The CRS (WKT) and north-up transform of the 30 m grid whose corner pixels are centred on the
    ``Product_ULcorner_*`` / ``Product_LRcorner_*`` coordinates; (None, None) with a warning without them."""
    keys = ("Epsg_Code", "Product_ULcorner_easting", "Product_ULcorner_northing", "Product_LRcorner_easting",
            "Product_LRcorner_northing")
    missing = [key for key in keys if key not in attrs]
    crs = None
    if not missing:
        epsg, ul_x, ul_y, lr_x, lr_y = (float(np.ravel(attrs[key])[0]) for key in keys)
        try:
            crs = CRS.from_epsg(int(epsg)).to_wkt()
        except (CRSError, ValueError, OverflowError) as exc:
            missing = [f"a usable Epsg_Code ({first_line(exc)})"]
    if missing or crs is None:
        warnings.warn(MetadataWarning(f"{path}: PRISMA L2D file without {', '.join(missing)}; read without "
                                      "georeferencing"), stacklevel=3)
        return None, None
    half = PIXEL_SIZE / 2
    expected = (ul_x + PIXEL_SIZE * (samples - 1), ul_y - PIXEL_SIZE * (lines - 1))
    if abs(lr_x - expected[0]) > half or abs(lr_y - expected[1]) > half:
        warnings.warn(MetadataWarning(
            f"{path}: the lower-right corner ({lr_x:.1f}, {lr_y:.1f}) is not where a {lines} × {samples} grid of "
            f"{PIXEL_SIZE:g} m pixels from the upper-left corner ends ({expected[0]:.1f}, {expected[1]:.1f}); the "
            "upper-left corner and 30 m pixels are used"), stacklevel=3)
    return crs, (PIXEL_SIZE, 0.0, ul_x - half, 0.0, -PIXEL_SIZE, ul_y + half)


def _chunks(default: tuple[int, int, int], file_chunks: tuple[int, ...] | None, spatial: tuple[int, int] | None,
            samples: int) -> tuple[int, int, int]:
    """Dask chunks of all bands; without ``spatial``, whole multiples of the cube's HDF5 chunks, so that no
    stored chunk is decompressed for several dask chunks (keeping about the default area)."""
    n_bands, rows, cols = default
    if spatial is not None or file_chunks is None:
        return default
    chunk_rows, _, chunk_cols = file_chunks
    aligned_cols = min(samples, max(chunk_cols, cols // chunk_cols * chunk_cols))
    aligned_rows = max(chunk_rows, rows * cols // aligned_cols // chunk_rows * chunk_rows)
    return n_bands, aligned_rows, aligned_cols


