"""Reading 2-D label maps (cluster labels or ground truth) from rasters, ``.npy`` or ``.mat``."""

from __future__ import annotations

import math
import numbers
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from hsi_cluster.errors import HsiClusterError, MetadataWarning, SceneError, first_line, option
from hsi_cluster.geo import aligned_overlap, grid_offset, north_up_grid
from hsi_cluster.io.label_raster import RatType, RatUsage, sidecar_path
from hsi_cluster.io.metadata import parse_envi_list
from hsi_cluster.io.scene import envi_binary


def _single_2d(path: Path, arrays: dict[str, tuple[int, ...]], var: str | None) -> str:
    if var is not None:
        if var not in arrays:
            raise SceneError(f"{path}: no variable {var!r}; it holds {', '.join(arrays) or 'nothing'}")
        return var
    planes = [name for name, shape in arrays.items() if len(shape) == 2]
    if len(planes) != 1:
        listing = ", ".join(f"{n} {s}" for n, s in arrays.items()) or "no variables"
        raise SceneError(f"{path}: expected exactly one 2-D label array, found {listing}; choose with "
                         f"{option('--var', 'NAME')}")
    return planes[0]


def read_label_map(path: str | os.PathLike[str], *, var: str | None = None) -> tuple[np.ndarray, int | None]:
    """Read a label map.

    Args:
        path: single-band raster (GeoTIFF, ENVI binary or its ``.hdr``…), ``.npy`` 2-D array or MATLAB ``.mat``.
        var: variable name in a ``.mat`` file holding several 2-D arrays.

    Returns:
        ``(labels, nodata)``: integer-valued array (y, x) and the raster's nodata value (None if unset).

    Raises:
        SceneError: missing file, unreadable file, not a single 2-D map, or values that are not integer ids.
    """
    labels, nodata, _ = _read(Path(path).expanduser().absolute(), var)
    return labels, nodata


def georeferenced(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a raster with a CRS (a ``.npy``/``.mat`` array, or a raster without one, is not)."""
    path = Path(path).expanduser()
    if path.suffix.lower() in (".npy", ".mat") or not path.is_file():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(envi_binary(path)) as dataset:
                return dataset.crs is not None
    except (RasterioIOError, ValueError, OSError):
        return False  # read_label_map names the problem


def read_label_pair(labels_path: str | os.PathLike[str], truth_path: str | os.PathLike[str], *,
                    var: str | None = None, unlabelled: int | None = 0) -> tuple[np.ndarray, int | None, np.ndarray]:
    """Read cluster labels and their ground truth, checked to lie on one pixel grid.

    Ground-truth pixels that are the truth raster's nodata value, or NaN in a float raster (rasterised
    vector ground truth often is), are set to ``unlabelled``, so they are not scored.

    Returns:
        ``(labels, labels_nodata, truth)``, both maps (y, x); the truth as int64.

    Raises:
        SceneError: either file unreadable (see :func:`read_label_map`), the two of different sizes, or
            both georeferenced on different grids (CRS or geotransform).
    """
    labels_path, truth_path = (Path(p).expanduser().absolute() for p in (labels_path, truth_path))
    labels, nodata, labels_grid = _read(labels_path, None)
    truth, truth_nodata, truth_grid = _read(truth_path, var, missing_ok=True)
    missing = np.isnan(truth) if truth.dtype.kind == "f" else np.zeros(truth.shape, bool)
    if truth_nodata is not None:
        missing |= truth == truth_nodata
    if missing.any() and unlabelled is None:
        raise SceneError(f"{truth_path}: {int(missing.sum())} pixels are nodata or NaN, and every pixel is to be "
                         "scored; pass the value of unlabelled pixels instead")
    truth = np.where(missing, unlabelled if unlabelled is not None else 0, truth).astype(np.int64)
    if written_by_hsicluster(truth_path) and not written_by_hsicluster(labels_path):
        raise SceneError(f"{truth_path.name} holds cluster labels written by hsicluster predict and {labels_path.name} "
                         "does not: the arguments look swapped; pass the labels first, then the ground truth "
                         f"(hsicluster evaluate {truth_path.name} {labels_path.name})")
    if labels_grid is not None and truth_grid is not None:
        # a south-up map and a north-up one of the same pixels are compared as a map shows them
        labels, labels_transform = north_up_grid(labels, labels_grid[1])
        truth, truth_transform = north_up_grid(truth, truth_grid[1])
        labels_grid, truth_grid = (labels_grid[0], labels_transform), (truth_grid[0], truth_transform)
    if labels_grid is not None and truth_grid is not None and (labels_grid != truth_grid
                                                              or labels.shape != truth.shape):
        overlap = aligned_overlap(labels_grid, labels.shape, truth_grid, truth.shape)
        if overlap is None:
            raise _grid_error(labels_path, truth_path, labels_grid, truth_grid)
        # one pixel grid, other extents (a ground truth over part of the scene, from the same corner or not)
        (label_rows, label_cols), (truth_rows, truth_cols) = overlap
        scored = np.ones(truth.shape, bool) if unlabelled is None else truth != unlabelled
        outside = int(np.count_nonzero(scored)) - int(np.count_nonzero(scored[truth_rows, truth_cols]))
        if outside:
            warnings.warn(MetadataWarning(
                f"{truth_path}: {outside} labelled pixels lie outside the label raster {labels_path.name} and "
                "are not scored"), stacklevel=2)
        labels, truth = labels[label_rows, label_cols], truth[truth_rows, truth_cols]
    if labels.shape != truth.shape:
        raise SceneError(f"{labels_path}: {labels.shape[0]}×{labels.shape[1]} pixels but the ground truth "
                         f"{truth_path.name} has {truth.shape[0]}×{truth.shape[1]}; score labels of the scene the "
                         "ground truth belongs to")
    return labels, nodata, truth


def _grid_error(labels_path: Path, truth_path: Path, labels_grid: tuple[str, tuple[float, ...]],
                truth_grid: tuple[str, tuple[float, ...]]) -> SceneError:
    """The labels and the ground truth lie on different pixel grids (another CRS, or pixels shifted or resized), or on
    one grid without a pixel in common."""
    if grid_offset(labels_grid, truth_grid) is not None:
        return SceneError(f"{labels_path}: no pixel in common with the ground truth {truth_path.name} (one pixel grid, "
                          "disjoint extents); score labels of the scene the ground truth belongs to")
    differs = (f"CRS {labels_grid[0]} vs {truth_grid[0]}" if labels_grid[0] != truth_grid[0] else
               f"same CRS, geotransform {_affine_text(labels_grid[1])} vs {_affine_text(truth_grid[1])}")
    return SceneError(f"{labels_path}: not on the pixel grid of the ground truth {truth_path.name} ({differs}); "
                      "score labels of the scene the ground truth belongs to")


def truth_nodata(truth_path: str | os.PathLike[str]) -> float | None:
    """The nodata value a ground-truth raster declares, or None (none declared, or not a raster with a header)."""
    header = _raster_header(truth_path)
    return header[0] if header is not None else None


def unlabelled_value(unlabelled: Any) -> int | None:
    """A given ``unlabelled``: a whole class value (of any number type) as an int, or None (score every pixel)."""
    if unlabelled is None:
        return None
    if isinstance(unlabelled, (numbers.Integral, float)) and not isinstance(unlabelled, bool) \
            and float(unlabelled).is_integer():
        return int(unlabelled)
    raise HsiClusterError(f"unlabelled must be a whole class value, None or 'auto', got {unlabelled!r}")


def truth_unlabelled(truth_path: str | os.PathLike[str], unlabelled: int | None | str) -> int | None:
    """The ground-truth value of unscored pixels: ``unlabelled`` as given, or for ``"auto"`` the truth raster's
    nodata value when it declares an integer one, else 0 (the benchmarks' convention)."""
    if unlabelled != "auto":
        return unlabelled_value(unlabelled)
    nodata = truth_nodata(truth_path)
    return int(nodata) if nodata is not None and float(nodata).is_integer() else 0


def truth_class_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """The class names a ground-truth raster carries, as GDAL (and so QGIS, ArcGIS, ENVI) keeps them:

    - an ENVI classification header's ``class names`` (the i-th name is class value i);
    - otherwise band 1 of GDAL's PAM sidecar ``TRUTH.aux.xml`` (a GeoTIFF's or any GDAL raster's): its raster
      attribute table (see :func:`band_class_names`), or else its category names (the i-th is class value i).

    Empty for a file without them (``.npy``, ``.mat``, a raster without either). Never fails: a ``class names``
    list whose length is not the header's ``classes`` count, or a sidecar that is not GDAL's PAM XML, gives no
    names and a :class:`~hsi_cluster.errors.MetadataWarning`. (A names list that misses some of the scored classes
    is used for those it names; :func:`~hsi_cluster.evaluate.score_clustering` warns about the others.)
    """
    if Path(path).suffix.lower() in (".npy", ".mat"):
        return {}
    binary = envi_binary(Path(path).expanduser().absolute())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(binary) as dataset:
                envi = dataset.tags(ns="ENVI") if "ENVI" in dataset.tag_namespaces() else {}
    except (RasterioIOError, ValueError, OSError):
        return {}
    names = parse_envi_list(envi.get("class_names"), keep_empty=True)
    if not names:
        return _sidecar_class_names(binary)
    classes = envi.get("classes", "").strip()
    if classes.isdigit() and int(classes) != len(names):
        warnings.warn(MetadataWarning(f"{binary}: the header's 'class names' lists {len(names)} names for {classes} "
                                      "classes, so classes are shown by number; correct the header"), stacklevel=2)
        return {}
    return {value: name for value, name in enumerate(names) if name}


def _sidecar_class_names(raster: Path) -> dict[int, str]:
    """Class names of band 1 in the GDAL PAM sidecar of ``raster`` (none without one; a warning for a bad one)."""
    sidecar = sidecar_path(raster)
    if not sidecar.is_file():
        return {}
    try:
        root = ET.parse(sidecar).getroot()
        band = next((b for b in root.findall("PAMRasterBand") if b.get("band", "").strip() == "1"), None)
        return {} if band is None else band_class_names(band)
    except (ET.ParseError, OSError, ValueError) as exc:
        reason = first_line(exc)
        warnings.warn(MetadataWarning(f"{sidecar}: class names not read, so classes are shown by number ({reason}); "
                                      "correct or remove this GDAL sidecar"), stacklevel=3)
        return {}


#: Most class values one attribute-table row (a range, or a bin) may name; wider rows are not classes.
_MAX_ROW_SPAN = 1 << 16


def band_class_names(band: ET.Element) -> dict[int, str]:
    """Class value -> name of one band in GDAL's XML (a ``PAMRasterBand`` of an ``.aux.xml``; a ``VRTRasterBand``).

    Its raster attribute table (``GDALRasterAttributeTable``) when that names classes, else its category names
    (``CategoryNames``: the i-th ``Category`` names value i). Empty names are skipped. In the table, the name is
    the column of usage Name (2), else the first string column of generic usage (as QGIS guesses); the value is
    read as GDAL's ``GetRowOfValue`` does: linear binning (``Row0Min``, ``BinSize``: row i holds
    ``Row0Min + i·BinSize`` up to the next bin), else the Min (3) and Max (4) columns, either of them being the
    MinMax (5) column when missing (a row names the integers from Min to Max), else (as ArcGIS writes) a
    numeric column named ``Value``. The first row naming a value wins.

    Raises:
        ValueError: the table's values or binning are not numbers, or it has names but no values.
    """
    table = band.find("GDALRasterAttributeTable")
    names = _table_class_names(table) if table is not None else {}
    if names:
        return names
    categories = band.find("CategoryNames")
    if categories is None:
        return {}
    listed = [(c.text or "").strip() for c in categories if c.tag == "Category"]
    return {value: name for value, name in enumerate(listed) if name}


def _table_class_names(table: ET.Element) -> dict[int, str]:
    fields = [((f.findtext("Name") or "").strip(), _int_text(f.findtext("Type"), 1), _int_text(f.findtext("Usage"), 0))
              for f in table.findall("FieldDefn")]
    usages = [usage for _, _, usage in fields]
    name_col = (usages.index(RatUsage.NAME) if RatUsage.NAME in usages else
                next((i for i, (_, kind, usage) in enumerate(fields) if kind == RatType.STRING and usage == RatUsage.GENERIC),
                     None))
    if name_col is None:
        return {}
    rows: dict[int, list[str]] = {}
    for position, row in enumerate(table.findall("Row")):
        rows.setdefault(_int_text(row.get("index"), position), [(f.text or "").strip() for f in row.findall("F")])
    binning = table.get("Row0Min"), table.get("BinSize")
    min_max = usages.index(RatUsage.MIN_MAX) if RatUsage.MIN_MAX in usages else None
    min_col = usages.index(RatUsage.MIN) if RatUsage.MIN in usages else min_max
    max_col = usages.index(RatUsage.MAX) if RatUsage.MAX in usages else min_max
    if min_col is None and max_col is None:
        min_col = max_col = next((i for i, (name, kind, _) in enumerate(fields)
                                  if name.lower() == "value" and kind != RatType.STRING), None)
    if None not in binning:
        row0, size = float(binning[0] or "nan"), float(binning[1] or "nan")
        if not (math.isfinite(row0) and math.isfinite(size) and size > 0):
            raise ValueError(f"attribute table binning Row0Min={binning[0]!r} BinSize={binning[1]!r} is not usable")
        spans = {i: (row0 + i * size, row0 + (i + 1) * size, False) for i in rows}
    elif min_col is not None or max_col is not None:
        low_col, high_col = (min_col if min_col is not None else max_col), (max_col if max_col is not None else min_col)
        spans = {i: (_number(cells, low_col), _number(cells, high_col), True) for i, cells in rows.items()}
    else:
        raise ValueError("its attribute table names classes but has no column of class values (usage MinMax)")
    names: dict[int, str] = {}
    for i in sorted(rows):
        name = rows[i][name_col] if name_col < len(rows[i]) else ""
        low, high, inclusive = spans[i]
        if not name or high - low > _MAX_ROW_SPAN:
            continue
        values = range(math.ceil(low), math.floor(high) + 1 if inclusive else math.ceil(high))
        for value in values:
            names.setdefault(value, name)
    return names


def _number(cells: list[str], column: int | None) -> float:
    """A table cell as a number (a Min, Max or MinMax column; a lone Min or Max column is both bounds)."""
    assert column is not None
    text = cells[column] if column < len(cells) else ""
    value = float(text)  # ValueError for text that is not a number
    if not math.isfinite(value):
        raise ValueError(f"attribute table value {text!r} is not a finite number")
    return value


def _int_text(text: str | None, default: int) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return default


#: Dataset tag that ``predict`` writes into every label raster (with the model hash, source, …).
LABELS_TAG = "HSICLUSTER_K"


def written_by_hsicluster(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a raster carrying the tags that ``hsicluster predict`` writes (False for ``.npy``/``.mat``
    and for anything unreadable)."""
    header = _raster_header(path)
    return header is not None and LABELS_TAG in header[1]


def labelled_source(path: str | os.PathLike[str]) -> str | None:
    """The scene a label raster that ``predict`` wrote was made from (its ``HSICLUSTER_SOURCE`` tag); None for any
    other file, or one without the tag."""
    header = _raster_header(path)
    return header[1].get("HSICLUSTER_SOURCE") if header is not None and LABELS_TAG in header[1] else None


def _raster_header(path: str | os.PathLike[str]) -> tuple[float | None, dict[str, str]] | None:
    """A raster's nodata value and dataset tags (header only), or None for ``.npy``/``.mat`` and anything
    unreadable (the reader reports those)."""
    if Path(path).suffix.lower() in (".npy", ".mat"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(envi_binary(Path(path).expanduser().absolute())) as dataset:
                return dataset.nodata, dataset.tags()
    except (RasterioIOError, ValueError, OSError):
        return None


def _affine_text(transform: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{value:g}" for value in transform) + ")"


def _netcdf_has_crs(path: Path) -> bool:
    with rasterio.open(path) as dataset:
        return dataset.crs is not None


def _read(path: Path, var: str | None, *,
          missing_ok: bool = False) -> tuple[np.ndarray, int | None, tuple[str, tuple[float, ...]] | None]:
    """A label map, its nodata value and, for a georeferenced raster, its grid (CRS string, geotransform).

    ``missing_ok``: a float map may hold NaN (missing pixels) besides its integer ids."""
    if not path.is_file():
        raise SceneError(f"{path}: no such file; check the path")
    suffix = path.suffix.lower()
    nodata, grid = None, None
    try:
        if suffix == ".npy":
            labels = np.load(path, allow_pickle=False)
        elif suffix == ".mat":
            import scipy.io

            try:
                shapes = {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(path)}
                name = _single_2d(path, shapes, var)
                labels = scipy.io.loadmat(path, variable_names=[name])[name]
            except NotImplementedError:
                import h5py

                with h5py.File(path, "r") as handle:
                    shapes = {n: tuple(reversed(d.shape)) for n, d in handle.items() if isinstance(d, h5py.Dataset)}
                    labels = handle[_single_2d(path, shapes, var)][...].T
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                # a NetCDF map without a CRS (labels saved by xarray) holds image rows: not flipped as south-up
                bottom_up = "NO" if suffix in (".nc", ".nc4") and not _netcdf_has_crs(path) else "YES"
                with rasterio.Env(GDAL_NETCDF_BOTTOMUP=bottom_up), rasterio.open(envi_binary(path)) as dataset:
                    if dataset.count != 1:
                        raise SceneError(f"{path}: has {dataset.count} bands; a label map has exactly one")
                    labels = dataset.read(1)
                    nodata = dataset.nodata
                    if dataset.crs is not None:
                        grid = (dataset.crs.to_string(), tuple(dataset.transform)[:6])
    except (RasterioIOError, ValueError, OSError) as exc:
        raise SceneError(f"{path}: cannot read a label map ({first_line(exc)}); check the file") from exc
    if labels.ndim != 2:
        raise SceneError(f"{path}: label map has shape {labels.shape}; expected a 2-D (y, x) array")
    ids = labels[~np.isnan(labels)] if missing_ok and labels.dtype.kind == "f" else labels
    if labels.dtype.kind == "f" and not np.array_equal(ids, np.round(ids)):  # NaN too, unless missing_ok
        raise SceneError(f"{path}: holds non-integer values ({labels.dtype}); a label map holds integer cluster or "
                         "class ids (a --confidence raster is not one)")
    if nodata is not None and missing_ok and math.isnan(nodata):
        nodata = None  # NaN pixels are missing already (a float truth rasterised by QGIS or GDAL declares NaN)
    if nodata is not None and not float(nodata).is_integer():
        raise SceneError(f"{path}: nodata value {nodata} is not an integer; a label map holds integer ids")
    return labels, None if nodata is None else int(nodata), grid
