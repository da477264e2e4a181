"""Writing cluster-label rasters: resumable tile store, then a Cloud-Optimised GeoTIFF.

While ``predict`` runs, finished tiles go to a Zarr store ``OUTPUT.partial.zarr`` (one chunk per
tile plus a marker file), which survives a kill. At the end the store is streamed into a tiled
GeoTIFF, copied to COG layout with nearest-neighbour overviews under a temporary name, and renamed
onto OUTPUT: the destination never holds a partial file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning

from hsi_cluster.errors import MetadataWarning, OutputError, counted, first_line
from hsi_cluster.geo import BlockGrid, pixel_aspect
from hsi_cluster.io.files import atomic_path
from hsi_cluster.io.scene_array import rasterio_gcps
from hsi_cluster.io.store import array_of

MARKERS = "_tiles_done"


def label_dtype(n_clusters: int) -> tuple[np.dtype, int]:
    """Smallest label dtype for K clusters (labels 0 … K−1) and its nodata value (the dtype's max)."""
    dtype = np.dtype(np.uint8) if n_clusters <= 254 else np.dtype(np.uint16)
    return dtype, int(np.iinfo(dtype).max)


def colour_table(n_clusters: int) -> dict[int, tuple[int, int, int, int]]:
    """Distinct RGBA colours for labels 0 … K−1 (tab20, then a golden-angle hue walk)."""
    import colorsys

    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    tab20 = colormaps["tab20"]
    assert isinstance(tab20, ListedColormap)
    tab = np.asarray(tab20.colors, dtype=np.float64)  # (20, 3) RGB in [0, 1]
    table = {}
    for label in range(n_clusters):
        if label < len(tab):
            rgb = tab[(label * 2) % 20 if label < 10 else (label - 10) * 2 + 1]
        else:
            rgb = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.65, 0.9)
        red, green, blue = (int(round(255 * c)) for c in rgb)
        table[label] = (red, green, blue, 255)
    return table


@dataclass(frozen=True)
class RasterGrid:
    """Shape and georeferencing of an output raster (``crs`` WKT and ``transform`` None when absent)."""

    height: int
    width: int
    crs: str | None
    transform: tuple[float, ...] | None
    gcps: dict[str, Any] | None = None  # without a transform: the scene's ground control points (scene_array.GCPS)


def _discarded_notice(output: Path, path: Path, existing: Any, identity: dict[str, Any]) -> str | None:
    """What a resume says when the interrupted run's finished tiles were made otherwise and are labelled again (None:
    no finished tile, or nothing to compare)."""
    markers = path / MARKERS
    finished = sum(1 for _ in markers.iterdir()) if markers.is_dir() else 0
    if not finished or not isinstance(existing, dict):
        return None
    why = {"tiles": f"--tiles {existing.get('tiles')} (pass it again to continue them)", "checkpoint": "another model",
           "confidence": "confidence " + ("on" if existing.get("confidence") else "off"), "shape": "another scene",
           "source": "another scene", "mtime_ns": "the scene's files before they changed",
           "companions": "the scene's files before they changed", "screened_bands": "other bands read as the mean",
           "gain": "--match-brightness (another gain or tilt)", "tilt": "--match-brightness (another gain or tilt)"}
    changed = list(dict.fromkeys(why[key] for key in why if existing.get(key) != identity.get(key)))
    return (f"{output}: the interrupted run's {finished} finished tiles were made with "
            f"{', '.join(changed) or 'other settings'}; they are discarded and every tile is labelled again")


class TileStore:
    """Resumable store of finished label (and confidence) tiles for one output raster."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.group = zarr.open_group(str(path), mode="r+")

    @staticmethod
    def partial_path(output: Path) -> Path:
        """Where the tiles of an unfinished ``OUTPUT`` are kept: ``OUTPUT.partial.zarr``."""
        return output.with_name(output.name + ".partial.zarr")

    @classmethod
    def open_or_create(cls, output: Path, *, grid: BlockGrid, dtype: np.dtype, nodata: int, with_confidence: bool,
                       identity: dict[str, Any], resume: bool) -> TileStore:
        """Reuse ``OUTPUT.partial.zarr`` when resuming the same job, else start a fresh one."""
        path = cls.partial_path(output)
        if resume and path.is_dir():
            existing = cls.saved_identity(output)
            if existing == json.loads(json.dumps(identity)):
                store = cls(path)
                store.forget_unreadable(grid, output)
                return store
            notice = _discarded_notice(output, path, existing, identity)
            if notice is not None:
                warnings.warn(MetadataWarning(notice), stacklevel=2)
        if path.exists():
            shutil.rmtree(path)
        try:
            group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={"job": identity})
        except OSError as exc:
            raise OutputError(f"{output}: cannot write ({exc.strerror}); choose another output path") from exc
        group.create_array("labels", shape=(grid.height, grid.width), dtype=dtype, chunks=(grid.block, grid.block),
                           fill_value=nodata)
        if with_confidence:
            group.create_array("confidence", shape=(grid.height, grid.width), dtype="float32",
                               chunks=(grid.block, grid.block), fill_value=np.nan)
        (path / MARKERS).mkdir()
        return cls(path)

    @property
    def labels(self) -> zarr.Array:
        """The (y, x) label array."""
        return array_of(self.group, "labels")

    @property
    def confidence(self) -> zarr.Array:
        """The (y, x) float32 confidence array (only when created ``with_confidence``)."""
        return array_of(self.group, "confidence")

    def forget_unreadable(self, grid: BlockGrid, output: Path) -> None:
        """Unmark the finished tiles whose stored values cannot be read back (a crash of the machine can leave a
        chunk truncated behind its marker; every ``--resume`` then failed on it) or are gone (a chunk lost, which
        reads as nodata: a tile whose marker counts valid pixels cannot hold nodata alone), with a warning: they
        are labelled again."""
        unreadable = []
        nodata = self.labels.fill_value
        for i, j in grid:
            if not self.is_done(i, j):
                continue
            window = grid.window(i, j).slices
            try:
                labels = np.asarray(self.labels[window])
                confidence = np.asarray(self.confidence[window]) if "confidence" in self.group else None
                stats = self.tile_stats(i, j)
                if stats is not None and stats.ndim == 1 and stats.size > 0 and stats[0] > 0:  # valid pixels
                    lost = bool((labels == nodata).all()) or (confidence is not None and bool(np.isnan(confidence).all()))
                else:
                    lost = False
            except Exception:  # noqa: BLE001 — zarr and its codecs raise many kinds for damaged bytes
                lost = True
            if lost:
                (self.path / MARKERS / f"{i}.{j}").unlink()
                unreadable.append((i, j))
        if unreadable:
            first, more = unreadable[0], ", …" if len(unreadable) > 1 else ""
            warnings.warn(MetadataWarning(
                f"{output}: {counted(len(unreadable), 'finished tile')} of the interrupted run could not be read back or "
                f"{'were' if len(unreadable) > 1 else 'was'} lost "
                f"(tile {first[0]}, {first[1]}{more}); labelling them again"), stacklevel=3)

    def is_done(self, i: int, j: int) -> bool:
        return (self.path / MARKERS / f"{i}.{j}").exists()

    def write(self, i: int, j: int, rows: slice, cols: slice, labels: np.ndarray, confidence: np.ndarray | None,
              stats: np.ndarray | None = None) -> None:
        """Store one finished tile, then mark it done; the marker keeps ``stats`` (int64, the tile's band
        statistics that predict gathers) when given."""
        self.labels[rows, cols] = labels
        if confidence is not None and "confidence" in self.group:
            self.confidence[rows, cols] = confidence
        marker = self.path / MARKERS / f"{i}.{j}"
        if stats is None:
            marker.touch()
            return
        with atomic_path(marker) as scratch, open(scratch, "wb") as file:
            np.save(file, np.asarray(stats, np.int64))

    def tile_stats(self, i: int, j: int) -> np.ndarray | None:
        """The statistics a finished tile's marker keeps (None: none kept, as by earlier versions)."""
        marker = self.path / MARKERS / f"{i}.{j}"
        try:
            return np.load(marker) if marker.stat().st_size else None
        except (OSError, ValueError):
            return None

    def summed_stats(self, tiles: Iterable[tuple[int, int]], *, length: int) -> np.ndarray | None:
        """The sum of the first ``length`` statistics of the ``tiles``; None when a tile kept fewer (finished by an
        earlier version, which kept fewer or none)."""
        total: np.ndarray | None = None
        for i, j in tiles:
            stats = self.tile_stats(i, j)
            if stats is None or stats.ndim != 1 or len(stats) < length:
                return None
            stats = stats[:length]
            total = stats if total is None else total + stats
        return total

    @classmethod
    def saved_identity(cls, output: Path) -> dict[str, Any] | None:
        """The job an interrupted run of ``output`` recorded (None: no such run, or unreadable)."""
        try:
            job = zarr.open_group(str(cls.partial_path(output)), mode="r").attrs.get("job")
        except (FileNotFoundError, ValueError, KeyError):
            return None
        return job if isinstance(job, dict) else None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _profile(grid: RasterGrid, dtype: np.dtype, nodata: float | int, block: int) -> dict[str, Any]:
    profile: dict[str, Any] = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1,
                               "dtype": dtype.name, "nodata": nodata, "tiled": True, "blockxsize": block,
                               "blockysize": block, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    if grid.crs:
        profile["crs"] = CRS.from_wkt(grid.crs)
    if grid.transform is not None:
        profile["transform"] = Affine(*grid.transform)
    elif (gcps := rasterio_gcps(grid.gcps)) is not None:
        profile["gcps"], profile["crs"] = gcps
    return profile


def write_cog(array: zarr.Array, output: Path, *, grid: RasterGrid, nodata: float | int,
              colormap: dict[int, tuple[int, int, int, int]] | None = None, description: str = "",
              tags: dict[str, str] | None = None, block: int = 512) -> Path:
    """Stream a (y, x) Zarr array into a COG at ``output`` (temporary names, then rename)."""
    dtype = np.dtype(array.dtype)
    block = 256 if min(grid.height, grid.width) < 512 else block
    staging = output.with_name(f".{output.name}.staging.tif")
    final_tmp = output.with_name(f".{output.name}.cog.tmp")
    # the COG driver builds the overviews in a temporary file of its own beside the copy
    temporary = [staging, final_tmp, final_tmp.with_name(final_tmp.name + ".ovr.tmp")]
    for leftover in temporary:  # a killed run's: GDAL would read a half-written one before writing over it
        leftover.unlink(missing_ok=True)
    try:
        with warnings.catch_warnings(), rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(staging, "w", **_profile(grid, dtype, nodata, block)) as dst:
                for rows_start in range(0, grid.height, block):
                    rows = slice(rows_start, min(rows_start + block, grid.height))
                    dst.write(array[rows, :], 1, window=((rows.start, rows.stop), (0, grid.width)))
                if colormap:
                    dst.write_colormap(1, colormap)
                    dst.colorinterp = [ColorInterp.palette]
                dst.set_band_description(1, description)
                dst.update_tags(**(tags or {}))
            rasterio.shutil.copy(staging, final_tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=block,
                                 OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER")
            # libtiff reports a failed write (a full disk) to GDAL's log, and the copy returns: read it back
            _check_written(final_tmp, array, block)
        os.replace(final_tmp, output)
    except (rasterio.errors.RasterioError, CPLE_BaseError, _Unreadable) as exc:
        needed = grid.height * grid.width * dtype.itemsize
        if shutil.disk_usage(output.parent).free < max(needed, 2**20):  # the likely cause: the CLI says so
            raise OSError(errno.ENOSPC, "No space left on device", str(output)) from exc
        raise OutputError(f"{output}: cannot write the raster ({first_line(exc)})") from exc
    finally:
        for leftover in temporary:
            leftover.unlink(missing_ok=True)
    return output


class _Unreadable(Exception):
    """A raster just written does not read back as written."""


def _check_written(path: Path, array: zarr.Array, block: int) -> None:
    """Raise :class:`_Unreadable` unless the raster at ``path`` holds ``array``, read a strip of rows at a time."""
    with rasterio.open(path) as written:
        for rows_start in range(0, written.height, block):
            rows = slice(rows_start, min(rows_start + block, written.height))
            if not np.array_equal(written.read(1, window=((rows.start, rows.stop), (0, written.width))),
                                  array[rows, :], equal_nan=np.dtype(array.dtype).kind == "f"):
                raise _Unreadable(f"rows {rows.start}–{rows.stop} do not read back as written")


#: Colour of nodata pixels in a quicklook: a light grey, apart from the white page and the cluster colours.
NODATA_COLOUR = (0.91, 0.91, 0.91)
#: Most clusters a quicklook legend lists (the largest ones); the rest share one "more clusters" entry.
LEGEND_MAX = 60
#: Legend entries per column.
LEGEND_ROWS = 20


def share_text(count: int, total: int) -> str:
    """A pixel count as a percentage of ``total`` for a legend: "12.4 %", "<0.1 %"."""
    share = 100 * count / max(total, 1)
    return "<0.1 %" if 0 < share < 0.05 else f"{share:.1f} %"


class RatType:
    """GDAL raster attribute table field types (gdal.h ``GDALRATFieldType``)."""

    INTEGER, REAL, STRING = 0, 1, 2


class RatUsage:
    """GDAL raster attribute table field usages (gdal.h ``GDALRATFieldUsage``)."""

    GENERIC, PIXEL_COUNT, NAME, MIN, MAX, MIN_MAX, RED, GREEN, BLUE, ALPHA = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9


def sidecar_path(output: Path) -> Path:
    """GDAL's auxiliary metadata file of a raster: ``OUTPUT.aux.xml``."""
    return output.with_name(output.name + ".aux.xml")


def class_name(label: int, count: int, labelled: int) -> str:
    """How a cluster is named in legends and GIS tools: "cluster 3 (12.4 %)", its share of the ``labelled`` pixels
    (nodata left out: on a swath with a wide collar every cluster read 0.0 % of the scene)."""
    return f"cluster {label} ({share_text(count, labelled)})"


def count_labels(dataset: rasterio.io.DatasetReader, n_clusters: int, nodata: int) -> tuple[dict[int, int], int]:
    """Pixels per cluster 0 … K−1 and nodata pixels of an open label raster, read a block at a time."""
    counts = np.zeros(max(n_clusters, nodata) + 2, dtype=np.int64)
    for _, window in dataset.block_windows(1):
        counts += np.bincount(dataset.read(1, window=window).ravel(), minlength=counts.size)[:counts.size]
    return {k: int(counts[k]) for k in range(n_clusters)}, int(counts[nodata])


def write_label_sidecar(output: Path, *, n_clusters: int, counts: Mapping[int, int], nodata_count: int) -> Path:
    """Write the class names and pixel counts of a label raster where GDAL (and so QGIS, ArcGIS, gdalinfo)
    read them: a PAM sidecar ``OUTPUT.aux.xml`` holding the band's category names ("cluster 3 (12.4 %)" for
    label 3) and a thematic raster attribute table (Value, Count, Name, Percent, Red, Green, Blue, Alpha; one
    row per cluster, empty ones included). rasterio cannot write either, and GeoTIFF keeps both in this
    sidecar anyway; the band metadata item ``CLUSTER_PIXELS`` (JSON of the counts) also reaches rasterio's
    ``tags(1)``. Written atomically after the raster.
    """
    import xml.etree.ElementTree as ET

    labelled = sum(int(counts.get(k, 0)) for k in range(n_clusters))
    colours = colour_table(n_clusters)
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    metadata = ET.SubElement(band, "Metadata")
    ET.SubElement(metadata, "MDI", key="CLUSTER_PIXELS").text = json.dumps(
        {str(k): int(counts.get(k, 0)) for k in range(n_clusters)}, separators=(",", ":"))
    ET.SubElement(metadata, "MDI", key="NODATA_PIXELS").text = str(int(nodata_count))
    names = ET.SubElement(band, "CategoryNames")
    for k in range(n_clusters):
        ET.SubElement(names, "Category").text = class_name(k, int(counts.get(k, 0)), labelled)
    table = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    fields = [("Value", RatType.INTEGER, RatUsage.MIN_MAX), ("Count", RatType.INTEGER, RatUsage.PIXEL_COUNT),
              ("Name", RatType.STRING, RatUsage.NAME), ("Percent", RatType.REAL, RatUsage.GENERIC),
              ("Red", RatType.INTEGER, RatUsage.RED), ("Green", RatType.INTEGER, RatUsage.GREEN),
              ("Blue", RatType.INTEGER, RatUsage.BLUE), ("Alpha", RatType.INTEGER, RatUsage.ALPHA)]
    for index, (name, kind, usage) in enumerate(fields):
        field = ET.SubElement(table, "FieldDefn", index=str(index))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for k in range(n_clusters):
        count = int(counts.get(k, 0))
        row = ET.SubElement(table, "Row", index=str(k))
        values = [k, count, class_name(k, count, labelled), round(100 * count / max(labelled, 1), 4), *colours[k]]
        for value in values:
            ET.SubElement(row, "F").text = str(value)
    ET.indent(root)
    path = sidecar_path(output)
    with atomic_path(path) as scratch:
        ET.ElementTree(root).write(scratch, encoding="utf-8", xml_declaration=False)
    return path


def write_quicklook(labels: np.ndarray, path: Path, *, n_clusters: int, nodata: int, title: str,
                    counts: Mapping[int, int] | None = None, nodata_count: int | None = None,
                    grid: RasterGrid | None = None) -> Path:
    """A PNG of a (decimated) label map with a legend of the clusters present and their pixel shares.

    The legend lists only clusters with pixels, each as "cluster K (12.4 %)" (share of the labelled pixels),
    and a "nodata" entry (share of the scene) when there are nodata pixels, which are drawn light grey.

    Args:
        labels: (y, x) labels, possibly decimated.
        path: the PNG to write (atomically).
        n_clusters: K (the colours are those of the label raster's colour table).
        nodata: the label of nodata pixels.
        title: the figure title.
        counts: pixels per cluster in the full-resolution map (default: counted in ``labels``).
        nodata_count: nodata pixels in the full-resolution map (default: counted in ``labels``).
        grid: the full-resolution map's grid: its pixels are drawn with the ground's proportions (non-square or
            degree pixels); square without it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if counts is None:
        present, found = np.unique(labels[labels != nodata], return_counts=True)
        counts = {int(k): int(n) for k, n in zip(present, found, strict=True)}
    if nodata_count is None:
        nodata_count = int(np.count_nonzero(labels == nodata))
    labelled = sum(counts.values())
    total = labelled + nodata_count
    table = colour_table(n_clusters)
    colours = [(r / 255, g / 255, b / 255, a / 255) for r, g, b, a in (table[k] for k in range(n_clusters))]
    cmap = ListedColormap(colours).with_extremes(bad=NODATA_COLOUR)
    shown = np.ma.masked_equal(labels, nodata)
    height, width = labels.shape
    aspect = 1.0 if grid is None else pixel_aspect(
        grid.transform, height=grid.height, geographic=bool(grid.crs) and CRS.from_user_input(grid.crs).is_geographic)
    drawn_height = min(max(7 * height * aspect / max(width, 1), 1.0), 14.0)  # inches, within reason
    fig, ax = plt.subplots(figsize=(7, drawn_height + 0.5), dpi=110)
    try:
        ax.imshow(shown, cmap=cmap, vmin=-0.5, vmax=n_clusters - 0.5, interpolation="nearest", aspect=aspect)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        non_empty = [k for k in sorted(counts) if counts[k] > 0]
        listed = set(sorted(non_empty, key=lambda k: -counts[k])[:LEGEND_MAX])
        handles = [Patch(facecolor=colours[k], label=class_name(k, counts[k], labelled))
                   for k in non_empty if k in listed]
        rest = [k for k in non_empty if k not in listed]
        if rest:
            handles.append(Patch(facecolor="none", edgecolor="none", label=f"{len(rest)} more clusters "
                                 f"({share_text(sum(counts[k] for k in rest), labelled)})"))
        if nodata_count:
            handles.append(Patch(facecolor=NODATA_COLOUR, edgecolor="0.6", linewidth=0.5,
                                 label=f"nodata ({share_text(nodata_count, total)})"))
        if handles:
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
                      ncol=-(-len(handles) // LEGEND_ROWS))
        with atomic_path(path, ".tmp.png") as scratch:
            fig.savefig(scratch, bbox_inches="tight")  # the legend sits outside the axes: no tight_layout
    finally:
        plt.close(fig)
    return path
