"""Checks a scene must pass before any work, shared by ``train`` and ``predict`` (headers only, no pixels).

Each raises a one-line :class:`~hsi_cluster.errors.HsiClusterError` that names the scene and says
what to do.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from operator import itemgetter
from pathlib import Path

import dask.array as da
import numpy as np
import psutil
import xarray as xr
from rasterio.crs import CRS

from hsi_cluster.errors import HsiClusterError, MetadataWarning, counted, first_line, naming_python_options
from hsi_cluster.io.metadata import WAVELENGTH_SHIFT_MAX_NM, WAVELENGTH_TOLERANCE_NM, band_tolerance, mismatched_band
from hsi_cluster.io.scene import open_scene


def check_patch_fits(scene: xr.DataArray, patch_size: int, *, whose: str = "the") -> None:
    """The scene is at least one ``patch_size × patch_size`` patch in both directions.

    Args:
        scene: an opened scene (band, y, x).
        patch_size: side p of the patch.
        whose: the words before the patch in the message ("the", "the model's").
    """
    _, height, width = scene.shape
    if height < patch_size or width < patch_size:
        raise HsiClusterError(f"{scene.attrs['source']}: the scene ({height}×{width} pixels) is smaller than "
                              f"{whose} {patch_size}×{patch_size} patch; use a larger scene")


def check_bands(scene: xr.DataArray, *, n_bands: int, wavelength: Sequence[float] | np.ndarray | None,
                reference: str, advice: str, tolerance_nm: float = WAVELENGTH_TOLERANCE_NM) -> None:
    """The scene has ``n_bands`` bands centred within ``tolerance_nm`` of ``wavelength``.

    Args:
        scene: an opened scene (band, y, x).
        n_bands: the band count it must have.
        wavelength: the band centres (nm) it must match, or None to check the count only; the
            centres are compared only where the scene carries wavelengths too.
        reference: what the scene is compared with, for the message ("the model m.ckpt", a scene).
        advice: what to do about a mismatch, ending the message.
        tolerance_nm: largest accepted difference of a band centre.
    """
    source = scene.attrs["source"]
    if scene.shape[0] != n_bands:
        raise HsiClusterError(f"{source}: has {counted(scene.shape[0], 'band')} but {reference} has {n_bands}; {advice}")
    if wavelength is None or "wavelength" not in scene.coords:
        return
    expected = np.asarray(wavelength, dtype=np.float64)
    own = scene.coords["wavelength"].values
    band = mismatched_band(own, expected, tolerance_nm=tolerance_nm)
    if band is not None and mismatched_band(own[::-1], expected, tolerance_nm=tolerance_nm) is None:
        raise HsiClusterError(f"{source}: its bands run the other way ({own[0]:.1f} → {own[-1]:.1f} nm) from those "
                              f"of {reference} ({expected[0]:.1f} → {expected[-1]:.1f} nm); write them in the same "
                              f"order (gdal_translate with -b {len(own)} … -b 1 reverses them); {advice}")
    if band is not None:
        allowed = band_tolerance(expected, tolerance_nm)[band]
        raise HsiClusterError(f"{source}: band {band + 1} is at {own[band]:.1f} nm but in {reference} at "
                              f"{expected[band]:.1f} nm ({abs(own[band] - expected[band]):.1f} nm apart, more than "
                              f"{allowed:.3g} nm, a quarter of the band spacing there within {tolerance_nm:g}–"
                              f"{max(tolerance_nm, WAVELENGTH_SHIFT_MAX_NM):g} nm); {advice}")
    shift = np.abs(own - expected)
    if shift.max() > tolerance_nm:
        moved = int(np.argmax(shift))
        warnings.warn(MetadataWarning(
            f"{source}: its band centres lie up to {shift[moved]:.1f} nm from those of {reference} (band {moved + 1}: "
            f"{own[moved]:.1f} against {expected[moved]:.1f} nm), within a quarter of the band spacing: taken as the "
            "same bands (a recalibration); a band that moved more would be refused"), stacklevel=2)


def _leave_out() -> str:
    """How to leave a scene out of a multi-scene training: the CLI's --exclude, or the list of scenes in Python."""
    return "leave it out of the list of scenes" if naming_python_options() else "leave it out with --exclude"


#: Scenes trained together whose pixel sides differ by more than this factor get a warning.
PIXEL_SIZE_RATIO_WARN = 1.5


def check_scenes_agree(scenes: Sequence[str | os.PathLike[str]], *,
                       tolerance_nm: float = WAVELENGTH_TOLERANCE_NM, log: Callable[[str], None] | None = None) -> None:
    """Raise before any work unless all ``scenes`` have the same bands.

    Every scene is compared with the first: same band count, and band centres within
    ``tolerance_nm`` where both carry wavelengths (the tolerance ``predict`` applies to a scene
    against its model). Opening reads headers only. ``log`` is warned of what does not stop the run
    but changes what the clusters mean: pixel sizes that differ (in one CRS unit) by over
    :data:`PIXEL_SIZE_RATIO_WARN` times, and scenes without wavelengths among scenes with them.

    Raises:
        HsiClusterError: one line naming the two scenes and the difference.
    """
    if len(scenes) < 2:
        return
    problems: list[tuple[str, HsiClusterError]] = []  # (scene, why it cannot train with the others), all of them
    opened = []
    for path in scenes:
        try:
            opened.append(open_scene(path))
        except HsiClusterError as exc:
            problems.append((os.fspath(path), exc))
    if log is not None:
        for notice in _mixed_scene_notices(opened):
            log(f"warning: {notice}")
    counts = Counter(scene.shape[0] for scene in opened)  # the others are compared with the commonest band count
    common = [scene for scene in opened if counts[scene.shape[0]] == max(counts.values(), default=0)]
    reference = None  # the first scene that has wavelengths
    for scene in opened if common else []:
        first = common[0]
        try:
            check_bands(scene, n_bands=first.shape[0], wavelength=None, reference=first.attrs["source"],
                        advice=f"train together only scenes from the same sensor and processing ({_leave_out()})")
            if "wavelength" not in scene.coords:
                continue
            if reference is None:
                reference = scene
                continue
            check_bands(scene, n_bands=first.shape[0], wavelength=reference.coords["wavelength"].values,
                        reference=reference.attrs["source"], tolerance_nm=tolerance_nm,
                        advice=f"train together only scenes with the same bands ({_leave_out()}, or resample its "
                               "bands to the others')")
        except HsiClusterError as exc:
            problems.append((scene.attrs["source"], exc))
    if len(problems) == 1:
        raise problems[0][1]
    order = {os.fspath(Path(path).absolute()): index for index, path in enumerate(scenes)}
    problems.sort(key=lambda problem: order.get(os.fspath(Path(problem[0]).absolute()), len(order)))  # as given
    if problems:  # every one named at once: an archive's bad files were found one run (and one ingest) at a time
        shown = "; ".join(f"{Path(source).name}: {_reason(source, exc)}" for source, exc in problems[:MANY_SHOWN])
        more = f"; and {len(problems) - MANY_SHOWN} more" if len(problems) > MANY_SHOWN else ""
        how = "leave them out of the list of scenes" if naming_python_options() else "leave them out with --exclude"
        which = (f"none of the {len(scenes)} scenes can be used" if len(problems) == len(scenes)
                 else f"{len(problems)} of the {len(scenes)} scenes cannot train with the others")
        raise HsiClusterError(f"{which}: {shown}{more}; {how}, or fix them")


#: Scenes named in the one-line error of :func:`check_scenes_agree` (the rest are counted).
MANY_SHOWN = 5


def _reason(source: str, exc: HsiClusterError) -> str:
    """What an error says of one scene, without its path and its advice: "has 100 bands but … has 200"."""
    text = first_line(exc)
    for prefix in (f"{source}: ", f"{Path(source).absolute()}: "):
        text = text.removeprefix(prefix)
    return text.split("; ")[0]


#: GDAL decodes a compressed block whole; a raw raster whose blocks (all bands) exceed this, or whose 128-row bands
#: of full-width strips exceed twice this, no longer fit GDAL's 64 MB block cache as predict's threads read it in
#: pieces, and each piece decodes its blocks again (a 512²-tiled file of 100 int16 bands: predict 8.8× slower, 28×
#: at 2048², until such tiles were kept: :func:`kept_reads_bytes`).
SLOW_BLOCK_BYTES = 32 * 2**20

#: The most memory a tiled labelling keeps of a raster's decoded blocks (:func:`kept_reads_bytes`); less where an
#: eighth of the memory available when the labelling starts, or a quarter of a dask worker's memory limit, is less.
KEPT_READS_MAX = 2**31

def _costly_rereads(scene: xr.DataArray) -> bool:
    """A raw raster whose blocks are decoded whole for any piece read from them: compressed tiles over
    :data:`SLOW_BLOCK_BYTES` with all bands, or compressed strips read in chunks of whole strips."""
    if not scene.attrs.get("file_compressed") or not scene.attrs.get("file_block") or not isinstance(scene.data, da.Array):
        return False
    n_bands, _, width = scene.shape
    block_rows, block_cols = scene.attrs["file_block"]
    if block_cols >= width:
        return max(scene.data.chunks[2]) == width
    return block_rows * block_cols * n_bands * scene.dtype.itemsize > SLOW_BLOCK_BYTES


def kept_reads_bytes(scene: xr.DataArray, *, tile: int, halo: int) -> int:
    """Bytes of a raw raster's reads to keep while it is labelled in ``tile``-pixel tiles with a ``halo`` (pixels),
    row by row, so that each of its blocks is decoded once (:func:`~hsi_cluster.io.scene.reusing_reads`): the dask
    chunks read between two reads of one chunk, about three rows of chunks across the scene (fewer where it holds
    fewer; with two rows the saving halves), or for compressed strips, the chunks under two tile rows. 0 where
    reading again costs little (a store, an uncompressed file, tiles under :data:`SLOW_BLOCK_BYTES`)."""
    if not _costly_rereads(scene):
        return 0
    _, row_chunks, col_chunks = scene.data.chunks
    chunk_bytes = scene.shape[0] * max(row_chunks) * max(col_chunks) * scene.dtype.itemsize
    window_cols = math.ceil((tile + 2 * halo) / max(col_chunks)) + 1  # chunk columns one window can touch
    two_tile_rows = math.ceil((2 * tile + 2 * halo) / max(row_chunks)) + 1  # chunk rows two tile rows touch
    # A chunk is read again by the tiles of the same row or of the next: what comes between is at most what two tile
    # rows read, and on a wide scene the rest of one tile row and the start of the next, about one chunk row less.
    between = min(two_tile_rows, two_tile_rows - 1 + window_cols / len(col_chunks)) * len(col_chunks)
    return int(min(between, len(row_chunks) * len(col_chunks))) * chunk_bytes


def kept_reads_budget() -> int:
    """The memory :func:`kept_reads_bytes` may take now: :data:`KEPT_READS_MAX`, an eighth of the memory available,
    and in a dask worker (``batch``, whose workers share the machine) a quarter of its memory limit, the least."""
    share = min(KEPT_READS_MAX, psutil.virtual_memory().available // 8)
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):  # not in a worker
        limit = None
    return min(share, limit // 4) if limit else share


def slow_layout_notice(scene: xr.DataArray, *, kept: int = 0, tile: int = 0, halo: int = 0) -> str | None:
    """A warning for a raw raster stored in compressed blocks too large to be read tile by tile at speed (see
    :data:`SLOW_BLOCK_BYTES`); None for any other scene (a store, an uncompressed file, small blocks), and for large
    tiles when ``kept`` bytes of reads hold what ``tile``-pixel tiles with a ``halo`` read again
    (:func:`kept_reads_bytes`)."""
    if not scene.attrs.get("file_compressed") or not scene.attrs.get("file_block"):
        return None
    n_bands, _, width = scene.shape
    block_rows, block_cols = scene.attrs["file_block"]
    pixel_bytes = n_bands * scene.dtype.itemsize
    block_bytes = block_rows * block_cols * pixel_bytes
    striped = block_cols >= width and 128 * width * pixel_bytes > 2 * SLOW_BLOCK_BYTES
    if block_bytes <= SLOW_BLOCK_BYTES and not striped:
        return None
    if 0 < kept_reads_bytes(scene, tile=tile, halo=halo) <= kept:
        return None
    return (f"{scene.attrs['source']}: stored in compressed {block_rows} × {block_cols} blocks ({block_bytes / 2**20:.0f} "
            "MB with all bands), which are decoded again for each piece read: labelling it tile by tile can be several "
            "times slower; hsicluster ingest it first and predict the store (or rewrite it tiled 256 × 256: "
            "gdal_translate -co TILED=YES -co BLOCKXSIZE=256 -co BLOCKYSIZE=256)")


#: Metres per degree of latitude and, times the cosine of the latitude, of longitude (WGS 84, near enough to compare
#: pixel sizes).
_METRES_PER_DEGREE = (110_574.0, 111_320.0)


def pixel_side(scene: xr.DataArray) -> tuple[float, str] | None:
    """The side of a georeferenced scene's pixels (the square root of their area) in metres, ``(side, "metre")``,
    whatever its CRS (a geographic one's degrees at the scene's central latitude, a projected one's feet or other
    units by their factor); in its CRS's unit where that has no known length; None without a CRS."""
    if not (scene.attrs.get("georeferenced") and scene.attrs.get("crs")):
        return None
    a, b, _, d, e, f = scene.attrs["transform"]
    area = abs(a * e - b * d)
    crs = CRS.from_wkt(scene.attrs["crs"])
    if crs.is_geographic:
        height, width = scene.shape[-2:]
        latitude = np.radians(np.clip(d * width / 2 + e * height / 2 + f, -89.0, 89.0))
        return float(np.sqrt(area * _METRES_PER_DEGREE[0] * _METRES_PER_DEGREE[1] * np.cos(latitude))), "metre"
    try:
        _, factor = crs.linear_units_factor
    except Exception:  # noqa: BLE001 - pyproj/rasterio raise CRSError or others for a unit without a length
        return float(np.sqrt(area)), crs.linear_units or "unknown"
    return float(np.sqrt(area) * factor), "metre"


def pixel_size_notice(scene: xr.DataArray, trained: Sequence[tuple[float, str]], *, model: str) -> str | None:
    """A warning when ``scene``'s pixels are over :data:`PIXEL_SIZE_RATIO_WARN` times finer or coarser than every
    one of the model's training scenes' (``trained``: their :func:`pixel_side`) in the same CRS unit."""
    own = pixel_side(scene)
    sides = [side for side, unit in trained if own is not None and unit == own[1]]
    if own is None or not sides:
        return None
    side, unit = own
    nearest = min(sides, key=lambda other: abs(np.log(side / other)))
    if max(side / nearest, nearest / side) <= PIXEL_SIZE_RATIO_WARN:
        return None
    native = CRS.from_wkt(scene.attrs["crs"]).linear_units == unit  # gdalwarp -tr takes the CRS's own unit
    resample = f"gdalwarp -tr {nearest:.3g} {nearest:.3g}" if native else "gdalwarp -tr, in the scene's CRS units"
    return (f"{scene.attrs['source']}: its pixels are {side:.3g} {unit} across, those the model {model} was trained "
            f"on {nearest:.3g} {unit}: a patch spans {side / nearest:.3g}× the ground it learned, so the clusters may "
            f"not mean the same here; resample the scene ({resample}) or train on such scenes")


def unchecked_bands_notice(scene: xr.DataArray, wavelength: Sequence[float] | None, *, model: str) -> str | None:
    """A warning when a model that knows its bands' wavelengths labels a scene that carries none: only the band
    count can be checked, so another sensor's scene with as many bands, or the same bands reordered, would pass."""
    if wavelength is None or not len(wavelength) or "wavelength" in scene.coords:
        return None
    return (f"{scene.attrs['source']}: carries no wavelengths, so only its band count can be checked against the "
            f"model {model} ({min(wavelength):.0f}–{max(wavelength):.0f} nm); its bands are taken to be the model's "
            "in the same order (an ENVI header's 'wavelength' or the GeoTIFF's band metadata would let them be "
            "checked)")


def _mixed_scene_notices(opened: Sequence[xr.DataArray]) -> list[str]:
    """What :func:`check_scenes_agree` warns of (see there), as sentences."""
    notices = []
    by_unit: dict[str, list[tuple[float, str]]] = {}  # CRS linear unit -> (pixel side, scene) on georeferenced grids
    for scene in opened:
        measured = pixel_side(scene)
        if measured is not None:
            by_unit.setdefault(measured[1], []).append((measured[0], str(scene.attrs["source"])))
    for unit, sides in by_unit.items():
        (fine, fine_source), (coarse, coarse_source) = min(sides, key=itemgetter(0)), max(sides, key=itemgetter(0))
        if coarse > PIXEL_SIZE_RATIO_WARN * fine:
            notices.append(f"the scenes have different pixel sizes ({fine_source}: {fine:g} {unit}; {coarse_source}: "
                           f"{coarse:g} {unit}): a patch spans {coarse / fine:.3g}× as much ground in one as in the "
                           "other, so clusters may follow the resolution; resample them to one pixel size "
                           "(gdalwarp -tr) or train on them apart")
    without = [str(scene.attrs["source"]) for scene in opened if "wavelength" not in scene.coords]
    if without and len(without) < len(opened):
        many = len(without) > 1
        notices.append(f"{without[0]}" + (f" and {len(without) - 1} more carry" if many else " carries")
                       + f" no wavelengths, so {'their' if many else 'its'} bands cannot be checked against the "
                       "others'; they are taken to be the same bands in the same order")
    return notices
