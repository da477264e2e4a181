"""Labelling pixels with a trained model.

:func:`label_patches` evaluates the network patch by patch (any backbone): correct everywhere and
the reference for the tiled, fully convolutional path.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view

from hsi_cluster import __version__
from hsi_cluster.checkpoint import Checkpoint, load_checkpoint
from hsi_cluster.data.augment import band_positions
from hsi_cluster.data.prefetch import prefetched
from hsi_cluster.device import device_from
from hsi_cluster.errors import MetadataWarning, SceneError, naming_python_options, number_ranges, option
from hsi_cluster.geo import DEFAULT_TILE, BlockGrid, PatchGeometry, check_tile_size, north_up
from hsi_cluster.io.checks import (
    check_bands,
    kept_reads_budget,
    kept_reads_bytes,
    pixel_size_notice,
    slow_layout_notice,
    unchecked_bands_notice,
)
from hsi_cluster.io.files import busy_output, check_distinct_outputs, check_output, exclusive_lock, output_lock_path
from hsi_cluster.io.label_raster import (
    RasterGrid,
    TileStore,
    colour_table,
    label_dtype,
    sidecar_path,
    write_cog,
    write_label_sidecar,
    write_quicklook,
)
from hsi_cluster.io.metadata import WAVELENGTH_TOLERANCE_NM
from hsi_cluster.io.scene import open_scene, reusing_reads, scene_files_identity, scene_inputs
from hsi_cluster.io.scene_array import GCPS, file_mask
from hsi_cluster.io.store import Store, invalid_fill, read_haloed
from hsi_cluster.model.projection import PixelProjection
from hsi_cluster.model.spectral_range import (
    GAIN_SUBSAMPLE,
    GAINS,
    OUTSIDE_SHARE_LIMIT,
    RANGE_QUANTILE,
    TILTS,
    RangeFit,
    SpectralRange,
    radiometric_factors,
)
from hsi_cluster.model.sscc import SSCC
from hsi_cluster.stats import (
    DROPOUT_BANDS_MAX_SHARE,
    OUTLYING_LIMIT,
    band_deviations,
    band_voids,
    spread_against,
    units_differ,
    usable_values,
    valid_pixel_mask,
    voiding_bands,
)

if TYPE_CHECKING:
    import zarr

#: Label value of pixels that could not be labelled (invalid input) in in-memory results.
NO_LABEL = -1
#: Valid pixels (from the first tiles) whose spread is compared with the training scenes' (units check).
SPREAD_SAMPLE = 1000
#: One valid pixel in this many is checked against the training range: those whose scene row r and column c give
#: (r + c // RANGE_STRIDE) mod RANGE_STRIDE = 0, runs of RANGE_STRIDE pixels that meet every row and every column of
#: the scene (whatever the tiles) and read few of a tile's cache lines; every pixel of a scene smaller than
#: RANGE_STRIDE × RANGE_SMALL_SCENE pixels.
RANGE_STRIDE = 16
RANGE_SMALL_SCENE = 4096
#: Length of a tile's training-range counts (SpectralRange.counts).
RANGE_COUNTS = 3 + len(TILTS) * len(GAINS)


def units_warning(scene: object, spread: float | None) -> str:
    """The warning for a scene whose values vary far more or less than the training scenes' (``spread``)."""
    return (f"{scene}: its values vary {spread:.3g}× as much as the model's training scenes (first valid pixels "
            "read): other units or scaling (digital numbers against reflectance?); the labels are likely meaningless. "
            "Convert the scene to the training data's units, or train on it")


class SpreadProbe:
    """The units check: the spread (:func:`~hsi_cluster.stats.spread_against`) of the first
    :data:`SPREAD_SAMPLE` valid pixels of the tiles, in the order they are labelled."""

    def __init__(self, job: _Job, n_tiles: int) -> None:
        self.job, self.left = job, n_tiles
        self.bands = np.ones(len(job.fill), bool) if job.deciding_bands is None else job.deciding_bands
        self.sample: list[np.ndarray] = []
        self.spread: float | None = None
        self.outlying: np.ndarray | None = None  # bool (B,), set with the spread: outlying_bands

    def add(self, padded: np.ndarray, valid: np.ndarray) -> None:
        """Take the valid pixels of one tile (``padded`` (B, h + 2 halo, w + 2 halo), ``valid`` (h, w))."""
        self.left -= 1
        if self.spread is not None:
            return
        rows, cols = np.nonzero(valid)  # pick the pixels first: indexing the bands of a whole tile would copy it
        step = max(1, len(rows) // SPREAD_SAMPLE)
        self.sample.append(padded[:, rows[::step] + self.job.halo, cols[::step] + self.job.halo][self.bands].T)
        gathered = sum(len(p) for p in self.sample)
        if gathered >= SPREAD_SAMPLE or (self.left <= 0 and gathered >= 2):
            pixels = np.concatenate(self.sample)
            self.spread = spread_against(pixels, self.job.checkpoint.spectral_std[self.bands])
            self.outlying = outlying_bands(pixels, self.job, self.bands)
            self.sample = []

    @property
    def units_differ(self) -> bool:
        """The scene's values vary over 100× more or less than the training scenes': other units or scaling."""
        return units_differ(self.spread)


def outlying_bands(pixels: np.ndarray, job: _Job, bands: np.ndarray) -> np.ndarray:
    """bool (B,): of the ``bands`` that decide a pixel's validity (bool (B,): good and read by the model; ``pixels``
    (n, their count) holds their values), those that lie over :data:`~hsi_cluster.stats.OUTLYING_LIMIT` training
    standard deviations from the training mean: garbage, saturated or scaled bands (:func:`screen_bands`)."""
    outlying = np.zeros(len(bands), bool)
    far = band_deviations(pixels, job.checkpoint.spectral_mean[bands], job.checkpoint.spectral_std[bands])
    outlying[np.flatnonzero(bands)[far > OUTLYING_LIMIT]] = True
    return outlying


@torch.no_grad()
def label_patches(model: SSCC, store: str | os.PathLike[str], *, patch_size: int, batch_size: int = 1024,
                  device: torch.device | str = "cpu", fill: np.ndarray | None = None,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label every valid pixel of a store by evaluating the network on its centred patch.

    Args:
        model: trained network (put in eval mode here).
        store: a complete store from ``hsicluster ingest``.
        patch_size: p, as in training (reflect padding at the scene border).
        batch_size: patches per forward pass.
        device: where to run the network.
        fill: per-band values that invalid (NaN/nodata) pixels inside a patch read as; default the
            store's band means, which is what training saw when this is the training scene (for
            another scene pass the checkpoint's ``spectral["mean"]``, as the tiled path does).
        progress: ``(blocks_done, blocks_total)`` callback.

    Returns:
        ``(labels, confidence)``: int32 (y, x) with :data:`NO_LABEL` on invalid pixels, and float32
        (y, x) maximum softmax probability (NaN on invalid pixels).
    """
    opened = Store.open(store)
    _, height, width = opened.shape
    grid = opened.grid
    halo = PatchGeometry(patch_size).halo
    labels = np.full((height, width), NO_LABEL, dtype=np.int32)
    confidence = np.full((height, width), np.nan, dtype=np.float32)
    fill = invalid_fill([opened]) if fill is None else np.asarray(fill, dtype=np.float64)
    model = model.to(device).eval()
    for done, (i, j) in enumerate(grid, start=1):
        window = grid.window(i, j)
        r, c = np.nonzero(opened.valid_in(window))
        if len(r):
            padded = opened.read_window(window, halo, fill)
            views = sliding_window_view(padded, (patch_size, patch_size), axis=(1, 2))
            for start in range(0, len(r), batch_size):
                rr, cc = r[start:start + batch_size], c[start:start + batch_size]
                patches = np.ascontiguousarray(views[:, rr, cc].transpose(1, 0, 2, 3), dtype=np.float32)
                label, conf = model.predict_patches(torch.from_numpy(patches).to(device))
                labels[rr + window.row, cc + window.col] = label.cpu().numpy()
                confidence[rr + window.row, cc + window.col] = conf.cpu().numpy()
        if progress:
            progress(done, len(grid))
    return labels, confidence


# ------------------------------------------------------------------------------------------------
# Tiled inference: the whole scene, tile by tile, written to a georeferenced label raster.


@dataclass
class PredictResult:
    """What a finished ``predict`` reports."""

    output: Path
    confidence: Path | None
    quicklook: Path | None
    tiles: int
    tiles_resumed: int
    pixels: int
    valid_pixels: int
    seconds: float
    counts: dict[int, int]
    spread: float | None = None  # the first valid pixels' spread against the training scenes' (stats.spread_against)
    range_fit: RangeFit | None = None  # how the checked pixels sit against the training range (None: not checked)
    applied_gain: float = 1.0  # the gain the scene's values were labelled at (--match-brightness)
    applied_tilt: float = 0.0  # and the tilt across its bands (the values times gain · (1 + tilt · s_b))

    @property
    def outside_share(self) -> float | None:
        """The share of the checked valid pixels outside the training spectra (None: not checked)."""
        return None if self.range_fit is None else self.range_fit.outside_share

    @property
    def matching_gain(self) -> float | None:
        """The gain on the scene's values at which they best fit the training spectra (None: not checked)."""
        return None if self.range_fit is None else self.range_fit.gain

    @property
    def matching_tilt(self) -> float | None:
        """The tilt across the bands that goes with :attr:`matching_gain` (None: not checked)."""
        return None if self.range_fit is None else self.range_fit.tilt

    @property
    def units_differ(self) -> bool:
        """The scene's values vary over 100× more or less than the training scenes': other units or scaling."""
        return units_differ(self.spread)

    @property
    def matched(self) -> bool:
        """The scene was labelled at another gain or tilt than delivered (``match_brightness``)."""
        return self.applied_gain != 1.0 or self.applied_tilt != 0.0

    @property
    def megapixels_per_second(self) -> float:
        """The rate of this run: the pixels of the tiles it labelled (not those resumed) over its time."""
        labelled = self.pixels * (self.tiles - self.tiles_resumed) / max(self.tiles, 1)
        return labelled / 1e6 / max(self.seconds, 1e-9)


#: Name endings other tools recognise for each format ``predict`` writes; the first is the one suggested.
_SUFFIXES = {"GeoTIFF": (".tif", ".tiff"), "PNG": (".png",)}


#: predict and batch: the model reads bands the scene may hold no value in.
NO_LABELLED_PIXELS = ("every pixel is nodata, NaN or fill in at least one band the model reads; check the scene's "
                      "nodata value, and whether one of those bands is empty in this scene (hsicluster ingest flags "
                      "such a band bad, and predict then reads it as the training mean); every label is nodata")


def result_warnings(scene: object, result: PredictResult, *, match_brightness: bool = False) -> list[str]:
    """What a finished labelling warns of: no pixel labelled, a scene in other units than the training scenes, or
    one whose pixels mostly lie outside the training spectra; with ``match_brightness`` (a run that asked for it),
    also when that changed nothing (:func:`match_notice`)."""
    if result.valid_pixels == 0:
        return [f"{scene}: {NO_LABELLED_PIXELS}"]
    return labelling_warnings(scene, spread=result.spread, range_fit=result.range_fit,
                              applied_gain=result.applied_gain, applied_tilt=result.applied_tilt,
                              match_brightness=match_brightness)


def labelling_warnings(scene: object, *, spread: float | None, range_fit: RangeFit | None,
                       applied_gain: float = 1.0, applied_tilt: float = 0.0,
                       match_brightness: bool = False) -> list[str]:
    """The units warning, else the training-range one (the units one says more), for a labelled scene; with
    ``applied_gain`` ≠ 1 or ``applied_tilt`` ≠ 0 (``--match-brightness``), what was done instead; with
    ``match_brightness`` and neither applied, why (:func:`match_notice`). ``range_fit`` is that of the scene as
    delivered."""
    if units_differ(spread):
        return [units_warning(scene, spread)]
    if applied_gain != 1.0 or applied_tilt != 0.0:
        tilt = f" with a tilt of {applied_tilt:+.0%} across its bands" if applied_tilt else ""
        return [f"{scene}: labelled at {applied_gain:.2f}× its values{tilt} ({_match_brightness()}): they fit the "
                f"training spectra best there ({_looks(applied_gain, applied_tilt)})"]
    notice = range_warning(scene, range_fit) if range_fit is not None else None
    if notice is None and match_brightness:
        notice = match_notice(scene, range_fit)
    return [notice] if notice is not None else []


def match_notice(scene: object, range_fit: RangeFit | None) -> str | None:
    """Why ``--match-brightness`` changed nothing for a labelled scene in the training scenes' units that no range
    warning speaks of: it fits the training spectra as delivered, or could not be checked against them."""
    if range_fit is None:
        return (f"{scene}: {_match_brightness()} changed nothing: no pixel could be checked against the training "
                "spectra (the model keeps no training range, or the run resumed tiles labelled by an earlier "
                "version); labelled as delivered")
    if range_fit.another_acquisition or range_fit.beyond_range:  # matched, or warned of
        return None
    return (f"{scene}: {_match_brightness()} changed nothing: it fits the training spectra as delivered "
            f"({range_fit.outside_share:.1%} of its checked pixels outside them); labelled as delivered")


def _match_brightness() -> str:
    """The option as the caller passes it: ``--match-brightness`` (``predict`` and ``batch``; ``match_brightness:
    true`` in a pipeline step), or ``match_brightness=True`` from Python."""
    return "match_brightness=True" if naming_python_options() else "--match-brightness"


def range_warning(scene: object, fit: RangeFit) -> str | None:
    """The warning for a scene whose pixels mostly lie outside the model's training spectra, or that fits them far
    better at another brightness (None: neither)."""
    outside = fit.outside_share > OUTSIDE_SHARE_LIMIT
    if fit.beyond_range:
        way = "over twice as bright as" if fit.gain < 1 else "under half as bright as"
        return (f"{scene}: {fit.outside_share:.0%} of its valid pixels lie outside the spectra the model was trained "
                f"on, and its values fit them best at the edge of the gains tried ({fit.gain:.2f}×): it looks {way} "
                "the training scenes (other units or scaling, other processing, or another acquisition), further "
                f"than {_match_brightness()} corrects; rescale it to the training scenes' units, or train on scenes "
                "like it")
    if not outside and not fit.another_acquisition:
        return None
    advice = ("their labels are extrapolated and may mean little. Train on scenes like this one as well (hsicluster "
              "train takes several scenes)")
    if fit.another_acquisition:
        advice += (", or, if it holds the kind of ground the model knows, label it at that brightness with "
                   f"{_match_brightness()}")
    if not fit.another_acquisition:
        return (f"{scene}: {fit.outside_share:.0%} of its valid pixels lie outside the spectra the model was trained "
                f"on (farther from every kind of training pixel than {RANGE_QUANTILE:.1%} of the training pixels): "
                f"another acquisition (illumination, atmosphere, calibration), other processing, or ground the model "
                f"never saw (clouds or snow among it: mask them out); {advice}")
    where = (f"{fit.outside_share:.0%} of its valid pixels lie outside the spectra the model was trained on, and "
             if outside else "")
    tilt = f" with a tilt of {fit.tilt:+.0%} across its bands" if fit.tilt else ""
    return (f"{scene}: {where}its values fit the training spectra best at {fit.gain:.2f}×{tilt} "
            f"({_looks(fit.gain, fit.tilt)}): another acquisition (illumination, atmosphere, calibration) or "
            f"processing of the kind of ground the model knows; {advice}")


def _looks(gain: float, tilt: float) -> str:
    """How a scene that fits the training spectra best at ``gain`` and ``tilt`` looks beside the training scenes."""
    brightness = 1 / gain  # two significant figures, three near 1 (1.05×, which two would round to 1.1×)
    looks = [f"it looks {brightness:.{3 if abs(brightness - 1) < 0.1 else 2}g}× as bright as the training scenes"
             ] if gain != 1.0 else []
    if tilt:  # the scene is about the training scenes times 1 − tilt · s: its first band up, its last down (tilt > 0)
        looks.append(f"its values run ×{1 + tilt:.2f} at its first band to ×{1 - tilt:.2f} at its last against "
                     "theirs")
    return ", ".join(looks)


def output_name_notices(files: list[tuple[str, Path | None, str]]) -> list[str]:
    """A notice per output whose name hides its format: ``files`` holds (option, path or None, "GeoTIFF" or "PNG")."""
    return [f"{path}: {option} is written as a {kind} whatever its name; name it {_SUFFIXES[kind][0]} so that other "
            "tools recognise it" for option, path, kind in files
            if path is not None and path.suffix.lower() not in _SUFFIXES[kind]]


def check_scene_matches(checkpoint: Checkpoint, scene: xr.DataArray, *,
                        tolerance_nm: float = WAVELENGTH_TOLERANCE_NM) -> None:
    """Raise before any work when the scene's bands do not fit the model. A scene of any size is labelled: one
    narrower than the patch (a sliver at a tiled archive's edge) is read with its reflection, as every scene's
    border is."""
    check_bands(scene, n_bands=checkpoint.in_bands, wavelength=checkpoint.wavelength,
                reference=f"the model {checkpoint.path.name}", tolerance_nm=tolerance_nm,
                advice="use a scene from the same sensor and processing, or retrain")


@dataclass(frozen=True)
class _Outputs:
    """The files a prediction writes (absolute paths; None: not asked for)."""

    labels: Path
    confidence: Path | None
    quicklook: Path | None
    stac: Path | None = None  # the STAC Item the caller writes beside the labels after them


def _absolute(path: str | os.PathLike[str] | None) -> Path | None:
    return Path(path).expanduser().absolute() if path is not None else None


def _check_outputs(scene_path: Path, checkpoint_path: Path, outputs: _Outputs, *, overwrite: bool,
                   resume: bool) -> None:
    """Outputs distinct, none an input, none existing unless replaced (before any work)."""
    by_option = {"-o": outputs.labels, "--confidence": outputs.confidence, "--quicklook": outputs.quicklook,
                 "-o (its class sidecar)": sidecar_path(outputs.labels), "--stac": outputs.stac}
    check_distinct_outputs(by_option)
    inputs = {**scene_inputs(scene_path), "the model": checkpoint_path}
    # --resume continues an interrupted run; with nothing to continue, the outputs are new ones
    replace = overwrite or (resume and TileStore.partial_path(outputs.labels).is_dir())
    for name, path in by_option.items():
        if path is not None:
            check_output(path, replace=replace, inputs=inputs, companion=name == "-o (its class sidecar)",
                         exists_hint=f"pass {option('--overwrite')} to replace it ({option('--resume')} continues only an "
                                     "interrupted run)")


@dataclass
class _Job:
    """Everything the tile loop and the writers need: the model, the scene, the grid and the label type."""

    checkpoint: Checkpoint
    scene: xr.DataArray
    model: SSCC
    device: torch.device
    amp: bool
    grid: BlockGrid
    dtype: np.dtype
    nodata: int
    fill: np.ndarray
    digest: str
    source: Path
    deciding_bands: np.ndarray | None = None  # bool (B,): the bands whose NaN/nodata makes a pixel invalid; None: all
    replaced_bands: np.ndarray | None = None  # bool (B,): bands flagged bad in the scene that the model reads
    screened_bands: np.ndarray | None = None  # bool (B,): of those, the ones this run's first pass flagged (screen_bands)
    spread: float | None = None  # set from the first SPREAD_SAMPLE valid pixels (stats.spread_against)
    outlying_bands: np.ndarray | None = None  # bool (B,), set with the spread (predict.outlying_bands)
    kept_reads: int = 0  # bytes of the scene's reads kept while its tiles are read (io.scene.reusing_reads)
    spectral_range: SpectralRange | None = None  # where the training spectra lie (None: an older checkpoint)
    pixel_map: PixelProjection | None = None  # the model's projection of pixels, for the training-range check
    range_stride: int = RANGE_STRIDE  # one valid pixel in this many is checked against the range (a lattice)
    gain: float = 1.0  # the scene's values are read times gain · (1 + tilt · s_b) (--match-brightness)
    tilt: float = 0.0
    delivered_fit: RangeFit | None = None  # when matched: how the scene as delivered sat against the training range

    @property
    def matched(self) -> bool:
        """The scene's values are read at another gain or tilt than delivered (``--match-brightness``)."""
        return self.gain != 1.0 or self.tilt != 0.0

    @property
    def n_clusters(self) -> int:
        return self.checkpoint.n_clusters

    @property
    def halo(self) -> int:
        return self.checkpoint.halo

    def identity(self, *, tiles: int, confidence: bool) -> dict[str, object]:
        """What an interrupted run's finished tiles must have been made with to be resumed."""
        files = scene_files_identity(self.source)
        identity: dict[str, object] = {"checkpoint": self.digest, "source": str(self.source),
                                       "mtime_ns": files["mtime_ns"], "shape": list(self.scene.shape), "tiles": tiles,
                                       "confidence": confidence}
        if "companions" in files:  # the files read with the scene (left out for a lone file, as before)
            identity["companions"] = files["companions"]
        if self.screened_bands is not None:
            identity["screened_bands"] = np.flatnonzero(self.screened_bands).tolist()
        if self.matched:  # the tilt only when there is one: a gain-only run of an earlier version resumes
            identity["gain"] = self.gain
            fit = self.delivered_fit
            identity["delivered_fit"] = None if fit is None else [fit.outside_share, fit.gain, fit.fit_ratio] + (
                [fit.tilt] if fit.tilt else [])
            if self.tilt:
                identity["tilt"] = self.tilt
        return identity


def _same_run(saved: dict[str, object], identity: dict[str, object]) -> bool:
    """Whether an interrupted run's saved identity is that of this job but for what its passes add (the bands it
    screened, the gain it matched): only then are they taken up again."""
    added = ("screened_bands", "gain", "tilt", "delivered_fit")
    return ({k: v for k, v in saved.items() if k not in added}
            == json.loads(json.dumps({k: v for k, v in identity.items() if k not in added})))


def _prepare_job(scene_path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str], *, tiles: int,
                 device: str) -> _Job:
    """Load and check the model and the scene (bands, size), pick the device and the label type."""
    return tile_job(load_checkpoint(checkpoint_path), open_scene(scene_path), tiles=tiles, device=device)


def tile_job(checkpoint: Checkpoint, scene: xr.DataArray, *, tiles: int, device: str,
             digest: str | None = None) -> _Job:
    """The tiled labelling of a (band, y, x) scene with a loaded model, after checking its bands and size.

    ``digest`` is the checkpoint's sha256 when the caller knows it (default: hashed from its file).
    """
    check_scene_matches(checkpoint, scene)
    trained = [(record["pixel_side"], record["pixel_unit"]) for record in checkpoint.payload.get("scenes", [])
               if "pixel_side" in record]
    # Large compressed file tiles are read again for each neighbour's halo: keep the reads of two tile rows.
    kept_reads = min(kept_reads_bytes(scene, tile=tiles, halo=checkpoint.halo), kept_reads_budget())
    for notice in (pixel_size_notice(scene, trained, model=checkpoint.path.name),
                   unchecked_bands_notice(scene, checkpoint.wavelength, model=checkpoint.path.name),
                   slow_layout_notice(scene, kept=kept_reads, tile=tiles, halo=checkpoint.halo)):
        if notice is not None:
            warnings.warn(MetadataWarning(notice), stacklevel=2)
    torch_device = device_from(device)
    model = checkpoint.build_model().prepare_tiled(torch_device)
    dtype, nodata = label_dtype(checkpoint.n_clusters)
    n_bands, height, width = scene.shape
    # A pixel is labelled when the good bands the model reads are usable: a band it left out (flagged,
    # empty, noise) may hold NaN or the nodata value without costing the pixel.
    flagged = ~scene.coords["good_band"].values.astype(bool) if "good_band" in scene.coords else np.zeros(n_bands, bool)
    deciding = ~flagged
    read = np.ones(n_bands, bool)
    left_out = model.projection.left_out_bands()
    if left_out is not None:
        deciding[left_out.numpy()] = False
        read[left_out.numpy()] = False
    replaced = flagged & read  # bad in this scene, read by the model: the training mean stands in for them
    if replaced.any():
        warnings.warn(MetadataWarning(
            f"{scene.attrs['source']}: flags {int(replaced.sum())} bands bad ({_band_names(scene, replaced)}) that the "
            "model reads (they were good in its training scenes); they read as the training mean in every pixel, so "
            "the labels rest on the other bands. If these bands are good here, clear their bad-band flag (ENVI bbl)"),
            stacklevel=2)
    return _Job(checkpoint=checkpoint, scene=scene, model=model, device=torch_device,
                amp=checkpoint.amp and torch_device.type == "cuda", grid=BlockGrid(height, width, tiles),
                dtype=np.dtype(dtype), nodata=nodata, fill=checkpoint.spectral_mean, digest=digest or checkpoint.sha256(),
                source=Path(scene.attrs["source"]), deciding_bands=None if deciding.all() else deciding,
                replaced_bands=replaced if replaced.any() else None, kept_reads=kept_reads,
                spectral_range=checkpoint.spectral_range, pixel_map=model.projection.pixel_map(),
                range_stride=1 if height * width < RANGE_STRIDE * RANGE_SMALL_SCENE else RANGE_STRIDE)


def _band_names(scene: xr.DataArray, bands: np.ndarray) -> str:
    """Bands (bool (B,)) named by wavelength where the scene has them, else by number (from 1); the first six."""
    indices = np.flatnonzero(bands)
    if "wavelength" in scene.coords:
        names = [f"{scene.coords['wavelength'].values[i]:.0f} nm" for i in indices[:6]]
    else:
        names = [f"band {i + 1}" for i in indices[:6]]
    return ", ".join(names) + (", …" if len(indices) > 6 else "")


def read_tile(job: _Job, i: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile ``(i, j)`` with its halo, holes filled with the training mean, its interior valid mask, and its
    :func:`tile_band_stats`."""
    window = job.grid.window(i, j)
    halo = job.halo
    scene = job.scene
    # np.asarray: read the (lazy, dask) window here, once, in the prefetch thread; left lazy it was
    # read again by every later use (mask, fill, each projection strip) in the compute thread.
    padded = np.asarray(read_haloed(scene.data, window, halo))
    valid = valid_pixel_mask(padded, nodata=scene.attrs.get("nodata"), good_band=job.deciding_bands)
    masked_by_file = file_mask(scene)
    if masked_by_file is not None:
        valid &= np.asarray(read_haloed(masked_by_file[None], window, halo))[0]
    inner = (slice(halo, halo + window.height), slice(halo, halo + window.width))
    stats = tile_band_stats(padded[:, inner[0], inner[1]], valid[inner], nodata=scene.attrs.get("nodata"),
                            deciding=job.deciding_bands)
    if job.matched:  # --match-brightness: the values as the training scenes would hold them
        padded = padded.astype(np.float32) * radiometric_factors(job.gain, job.tilt, len(padded))[:, None, None]
    if not valid.all():  # holes read as the training mean, as in training
        padded = np.where(valid[None], padded, job.fill.astype(padded.dtype)[:, None, None])
    if job.replaced_bands is not None:
        padded = padded.copy() if valid.all() else padded  # np.asarray may share a cached block's memory
        padded[job.replaced_bands] = job.fill.astype(padded.dtype)[job.replaced_bands, None, None]
    counts = range_counts(job, padded[:, halo:halo + window.height, halo:halo + window.width], valid[inner],
                          first_row=window.row, first_col=window.col)
    return padded, valid[inner], np.concatenate([stats, counts])


def range_counts(job: _Job, pixels: np.ndarray, valid: np.ndarray, *, first_row: int, first_col: int) -> np.ndarray:
    """int64 (:data:`RANGE_COUNTS`,): :meth:`~hsi_cluster.model.spectral_range.SpectralRange.counts` of the tile's valid
    pixels on the lattice of :data:`RANGE_STRIDE` (the same pixels whatever the tiles); zeros for a model without a
    range. ``pixels``: (B, h, w), holes filled; ``valid``: (h, w); ``first_row``, ``first_col``: the tile's first
    pixel in the scene."""
    rows, cols = np.nonzero(valid & _lattice(valid.shape, first_row, first_col, job.range_stride))
    if job.spectral_range is None or job.pixel_map is None or not len(rows):
        return np.zeros(RANGE_COUNTS, np.int64)
    checked = pixels[:, rows, cols].T  # (n, B)
    projected = job.pixel_map(checked)
    origin = job.pixel_map.bias  # the projection of a zero spectrum, but bands read as the mean keep the mean
    if job.replaced_bands is not None:
        spectrum = np.where(job.replaced_bands, job.fill, 0.0).astype(np.float32)
        origin = job.pixel_map(spectrum[None])[0]
    tried = (first_col + cols) % job.range_stride < max(1, job.range_stride // GAIN_SUBSAMPLE)  # 1 in 8, tile-invariant
    slope = band_positions(len(pixels)).astype(np.float32)  # the tilt's direction: the linear part of the projection of x · s_b
    if job.replaced_bands is not None:
        slope = np.where(job.replaced_bands, 0.0, slope).astype(np.float32)
    tilted = job.pixel_map(checked[tried].astype(np.float32) * slope) - job.pixel_map.bias
    return job.spectral_range.counts(projected, origin=origin, tried=tried, tilted=tilted)


def _lattice(shape: tuple[int, int], first_row: int, first_col: int, stride: int) -> np.ndarray:
    """bool (h, w): the pixels of a window at (first_row, first_col) whose scene row r and column c satisfy
    (r + c // stride) mod stride = 0 (all of them for stride 1)."""
    rows = np.arange(first_row, first_row + shape[0])[:, None]
    cols = np.arange(first_col, first_col + shape[1])[None, :]
    return (rows + cols // stride) % stride == 0


def band_stats_length(n_bands: int) -> int:
    """Length of :func:`tile_band_stats` for ``n_bands`` bands (the part :func:`screen_bands` reads)."""
    return 1 + 2 * n_bands


def stats_length(n_bands: int) -> int:
    """Length of a tile's statistics as :func:`read_tile` returns them: :func:`tile_band_stats`, then
    :func:`range_counts`."""
    return band_stats_length(n_bands) + RANGE_COUNTS


def range_fit(stats: np.ndarray | None, n_bands: int) -> RangeFit | None:
    """How the checked pixels sit against the training range, from tiles' summed statistics (None: no pixel
    checked, or statistics of an earlier version)."""
    return None if stats is None else RangeFit.from_counts(stats[band_stats_length(n_bands):])


def tile_band_stats(block: np.ndarray, valid: np.ndarray, *, nodata: float | None,
                    deciding: np.ndarray | None) -> np.ndarray:
    """int64 (1 + 2 B,): a tile's valid pixel count, the pixels each deciding band made invalid
    (:func:`~hsi_cluster.stats.band_voids`), and whether each band holds a usable value (counted only on a tile
    without a valid pixel: elsewhere 1): what :func:`screen_bands` needs, summed over the tiles."""
    count = int(valid.sum())
    voided = band_voids(block, valid, nodata=nodata, good_band=deciding)
    filled = usable_values(block, nodata=nodata).any(axis=(1, 2)) if count == 0 else np.ones(block.shape[0], bool)
    return np.concatenate([[count], voided, filled.astype(np.int64)]).astype(np.int64)


def screen_bands(job: _Job, stats: np.ndarray | None, outlying: np.ndarray | None = None) -> _Job | None:
    """The job again with bands read as the training mean, when the first pass found bands that voided most of the
    scene, as ``ingest`` flags them bad (validity rules 9 and 10; ``stats``: the sum of every tile's
    :func:`tile_band_stats`, None when some tile has none), or a few ``outlying`` bands (bool (B,), from the units
    probe: :func:`outlying_bands`; up to :data:`~hsi_cluster.stats.DROPOUT_BANDS_MAX_SHARE` of the bands read,
    among bands that fit the model; more are warned of, unless the units check speaks of them); None when it found
    none. Warns, naming them."""
    flagged = _voiding_bands(job, stats)
    read = len(job.fill) if job.deciding_bands is None else int(job.deciding_bands.sum())
    if units_differ(job.spread):
        outlying = None  # the whole scene is in other units (warned of): its bands are not to be set aside one by one
    if outlying is not None and outlying.sum() > DROPOUT_BANDS_MAX_SHARE * read:  # another scene, not a few bands
        if job.spread is not None:
            warnings.warn(MetadataWarning(
                f"{job.scene.attrs['source']}: {int(outlying.sum())} of the {read} bands the model reads lie over "
                f"{OUTLYING_LIMIT:g} training standard deviations from its training values (first valid pixels "
                "read), too many to set aside: the labels are likely meaningless. Check the scene's bands and units "
                "against the training scenes', or train on it"), stacklevel=2)
    elif outlying is not None and outlying.any():
        several = outlying.sum() > 1
        warnings.warn(MetadataWarning(
            f"{job.scene.attrs['source']}: {_numbered(job.scene, outlying)} {'lie' if several else 'lies'} over "
            f"{OUTLYING_LIMIT:g} training standard deviations from the model's training values (first valid pixels "
            "read), where the other bands fit them: garbage, saturated or in other units; "
            f"{'they read' if several else 'it reads'} as the training mean so that the other bands label the pixels "
            "(every tile is labelled again). If they hold ground here, train on this scene"), stacklevel=2)
        flagged = outlying if flagged is None else flagged | outlying
    return None if flagged is None else _bands_read_as_mean(job, flagged)


def _numbered(scene: xr.DataArray, bands: np.ndarray) -> str:
    """``band 3`` or ``bands 5–8 (950 nm, …)``: bands (bool (B,)) by number from 1, and wavelength where known."""
    numbers = np.flatnonzero(bands)
    return ("band " if len(numbers) == 1 else "bands ") + number_ranges(numbers + 1) + (
        f" ({_band_names(scene, bands)})" if "wavelength" in scene.coords else "")


def _voiding_bands(job: _Job, stats: np.ndarray | None) -> np.ndarray | None:
    """bool (B,): the bands that voided most of the scene (:func:`screen_bands`), warned of; None when none did."""
    if stats is None:
        return None
    n_bands = job.scene.shape[0]
    deciding = np.ones(n_bands, bool) if job.deciding_bands is None else job.deciding_bands
    valid_pixels, voided, filled = int(stats[0]), stats[1:n_bands + 1], stats[n_bands + 1:2 * n_bands + 1].astype(bool)
    flagged = voiding_bands(valid_pixels, voided, filled, deciding)
    if not flagged.any():
        return None
    names = _numbered(job.scene, flagged)
    dropouts = bool(filled[flagged].any())  # else the bands hold no value at all: said so
    why = (f"made {', '.join(str(int(voided[b])) for b in np.flatnonzero(flagged))} pixels invalid (NaN or "
           "nodata where most bands hold values)" if dropouts else "NaN or nodata in every pixel")
    verb = "" if dropouts else "is " if flagged.sum() == 1 else "are "
    warnings.warn(MetadataWarning(
        f"{job.scene.attrs['source']}: {names} {verb}{why}; {'they read' if flagged.sum() > 1 else 'it reads'} as the "
        "training mean so that the other bands label those pixels, as after hsicluster ingest, which flags such "
        "bands bad (every tile is labelled again)"), stacklevel=3)
    return flagged


def _bands_read_as_mean(job: _Job, flagged: np.ndarray) -> _Job:
    """The job with the bands ``flagged`` (bool (B,)) screened: no longer deciding a pixel's validity, read as the
    training mean in every pixel."""
    deciding = np.ones_like(flagged) if job.deciding_bands is None else job.deciding_bands
    replaced = flagged if job.replaced_bands is None else job.replaced_bands | flagged
    return replace(job, deciding_bands=deciding & ~flagged, replaced_bands=replaced, screened_bands=flagged)


def label_tile(job: _Job, i: int, j: int, padded: np.ndarray,
                valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (nodata outside ``valid``) and winning probabilities (NaN outside) of tile ``(i, j)``."""
    window = job.grid.window(i, j)
    tile_labels = np.full((window.height, window.width), job.nodata, dtype=job.dtype)
    tile_confidence = np.full((window.height, window.width), np.nan, dtype=np.float32)
    if valid.any():
        probabilities = job.model.tile_probabilities(padded, patch_size=job.checkpoint.patch_size, device=job.device,
                                                     amp=job.amp)
        confidence, labels = probabilities.max(dim=0)
        tile_labels[valid] = labels.cpu().numpy().astype(job.dtype)[valid]
        tile_confidence[valid] = confidence.cpu().numpy()[valid]
    return tile_labels, tile_confidence


def _label_tiles(job: _Job, store: TileStore, todo: list[tuple[int, int]], *, with_confidence: bool,
                 done: int, progress: Callable[[int, int], None] | None) -> None:
    """Label the tiles ``todo`` into ``store``, reading the next tile in a thread while one computes."""
    total = len(job.grid)
    if progress:
        progress(done, total)
    if not todo:
        return
    tiles = prefetched(read_tile(job, i, j) for i, j in todo)  # the next tile is read while this one computes
    probe = SpreadProbe(job, len(todo))
    with reusing_reads(job.scene, job.kept_reads), closing(tiles):  # the reader thread stops before the reads go
        for (i, j), (padded, valid, stats) in zip(todo, tiles, strict=True):
            if job.spread is None:
                probe.add(padded, valid)
                job.spread, job.outlying_bands = probe.spread, probe.outlying
            tile_labels, tile_confidence = label_tile(job, i, j, padded, valid)
            store.write(i, j, *job.grid.window(i, j).slices, tile_labels,
                        tile_confidence if with_confidence else None, stats=stats)
            done += 1
            if progress:
                progress(done, total)


def _count_labels(labels: zarr.Array, job: _Job, *, step: int) -> np.ndarray:
    """Pixels per cluster, then the nodata count last: (K + 1,), read ``step`` rows at a time."""
    n_clusters = job.n_clusters
    counts = np.zeros(n_clusters + 1, dtype=np.int64)
    for start in range(0, labels.shape[0], step):
        block = np.asarray(labels[start:start + step, :])
        counts += np.bincount(np.where(block == job.nodata, n_clusters, block).ravel(), minlength=n_clusters + 1)
    return counts


def _write_outputs(job: _Job, store: TileStore, outputs: _Outputs, *,
                   tiles: int) -> tuple[Path | None, Path | None, np.ndarray]:
    """The label COG, the optional confidence COG, the class sidecar and the quicklook, from the finished
    tiles; returns the confidence and quicklook paths written and the counts of :func:`_count_labels`."""
    scene, n_clusters, digest = job.scene, job.n_clusters, job.digest
    _, height, width = scene.shape
    raster = RasterGrid(height, width, scene.attrs.get("crs"),
                        tuple(scene.attrs["transform"]) if scene.attrs.get("georeferenced") else None,
                        gcps=scene.attrs.get(GCPS))
    tags = {"HSICLUSTER_MODEL_SHA256": digest, "HSICLUSTER_K": str(n_clusters),
            "HSICLUSTER_BACKBONE": job.checkpoint.backbone, "HSICLUSTER_VERSION": __version__,
            "HSICLUSTER_SOURCE": str(job.source)}
    if job.matched:
        tags["HSICLUSTER_GAIN"], tags["HSICLUSTER_TILT"] = f"{job.gain:.6g}", f"{job.tilt:.6g}"
    labels_array = store.labels
    counts = _count_labels(labels_array, job, step=max(1, tiles))
    per_cluster = dict(enumerate(counts[:-1].tolist()))
    # files of the run being replaced go first: stopped between two writes, a folder holds the old labels or the
    # new ones without some companions, never new labels beside the old model's class names or confidence
    for stale in (sidecar_path(outputs.labels), outputs.confidence, outputs.quicklook):
        if stale is not None:
            stale.unlink(missing_ok=True)
    write_cog(labels_array, outputs.labels, grid=raster, nodata=job.nodata, colormap=colour_table(n_clusters),
              description=f"SSCC cluster label (K={n_clusters}, model {digest})", tags=tags)
    confidence_out = None
    if outputs.confidence is not None:
        confidence_out = write_cog(store.confidence, outputs.confidence, grid=raster, nodata=float("nan"),
                                   description="maximum cluster probability", tags=tags)
    write_label_sidecar(outputs.labels, n_clusters=n_clusters, counts=per_cluster,
                        nodata_count=int(counts[-1]))  # class names and counts for GIS tools
    quicklook_out = None
    if outputs.quicklook is not None:
        stride = max(1, max(height, width) // 1024)
        shown = north_up(np.asarray(labels_array[::stride, ::stride]), raster.transform)  # as a map shows it
        quicklook_out = write_quicklook(shown, outputs.quicklook,
                                        n_clusters=n_clusters, nodata=job.nodata,
                                        title=f"{job.source.name}: {n_clusters} clusters (model {digest})",
                                        counts=per_cluster, nodata_count=int(counts[-1]), grid=raster)
    return confidence_out, quicklook_out, counts


def label_in_passes(job: _Job, label_pass: Callable[[_Job, bool], tuple[np.ndarray | None, np.ndarray | None]], *,
                    match_brightness: bool) -> tuple[_Job, RangeFit | None]:
    """Label a scene in as many passes as it needs (``predict`` and the in-memory path alike); returns the job of the
    last pass and how the scene as delivered sits against the training range.

    ``label_pass(job, first)`` labels every tile with ``job`` (only the first pass may resume) and returns the tiles'
    summed statistics: all of them (:func:`stats_length`; None when some tile has none) and their band part
    (:func:`band_stats_length`). After a pass, :func:`next_pass` says whether another one follows."""
    first = True
    while True:
        stats, band_stats = label_pass(job, first)
        first = False
        fit = job.delivered_fit if job.matched else range_fit(stats, job.scene.shape[0])
        following = next_pass(job, fit, band_stats, match_brightness=match_brightness)
        if following is None:
            return job, fit
        job = following


def next_pass(job: _Job, fit: RangeFit | None, band_stats: np.ndarray | None, *,
              match_brightness: bool) -> _Job | None:
    """The job of the pass after one of ``job`` that gave ``fit`` and ``band_stats``, or None when its labels stand.

    First, bands that voided most of the scene or lie far from the training values are read as the training mean
    (:func:`screen_bands`, once per run; not bands one by one when the whole scene is at another brightness); then,
    with ``match_brightness``, a scene taken for another acquisition (:attr:`RangeFit.another_acquisition`) is read at
    the gain and tilt where it fits, once."""
    if job.matched:
        return None
    if job.screened_bands is None:
        outlying = None if fit is not None and fit.whole_scene else job.outlying_bands
        screened = screen_bands(job, band_stats, outlying)
        if screened is not None:
            return screened
    if match_brightness and fit is not None and fit.another_acquisition:
        return replace(job, gain=fit.gain, tilt=fit.tilt, delivered_fit=fit)
    return None


def _label_scene(job: _Job, output: Path, *, tiles: int, with_confidence: bool, resume: bool,
                 progress: Callable[[int, int], None] | None) -> tuple[TileStore, int]:
    """Every tile of the job labelled into the tile store of ``output`` (resuming its finished ones when asked);
    returns the store and the count of tiles resumed."""
    store = TileStore.open_or_create(output, grid=job.grid, dtype=job.dtype, nodata=job.nodata,
                                     with_confidence=with_confidence,
                                     identity=job.identity(tiles=tiles, confidence=with_confidence), resume=resume)
    todo = [(i, j) for i, j in job.grid if not store.is_done(i, j)]
    try:
        _label_tiles(job, store, todo, with_confidence=with_confidence, done=len(job.grid) - len(todo),
                     progress=progress)
    except SceneError:  # the scene cannot be read: the file fixed or fetched again is another input, which
        store.remove()  # these tiles could not resume, so nothing is left behind
        raise
    return store, len(job.grid) - len(todo)


def predict_scene(scene_path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str],
                  output: str | os.PathLike[str], *, tiles: int = DEFAULT_TILE, device: str = "auto",
                  confidence_path: str | os.PathLike[str] | None = None,
                  quicklook_path: str | os.PathLike[str] | None = None, overwrite: bool = False,
                  resume: bool = False, progress: Callable[[int, int], None] | None = None,
                  stac: bool = False, match_brightness: bool = False) -> PredictResult:
    """Label every pixel of a scene with a trained model and write a label COG.

    Steps: check the outputs, prepare the job (model, scene, grid), label the tiles into a resumable
    tile store, write the rasters from it.

    Args:
        scene_path: any raster :func:`~hsi_cluster.io.open_scene` reads, or a store.
        checkpoint_path: a checkpoint from ``hsicluster train``.
        output: the label GeoTIFF (COG layout, uint8/uint16, nodata = dtype max, colour table).
        tiles: tile side T in pixels; each tile is read with a halo of (patch − 1) / 2 pixels.
        device: "auto", "cpu" or "cuda" (bf16 autocast on CUDA when the model trained with amp).
        confidence_path: optional float32 raster of the winning probability (NaN = nodata).
        quicklook_path: optional PNG with a legend.
        overwrite: replace existing outputs.
        resume: continue from the finished tiles of an interrupted run.
        progress: ``(tiles_done, tiles_total)`` callback.
        stac: the caller writes the labels' STAC Item next (:func:`~hsi_cluster.io.stac.write_label_item`): it is
            checked with the outputs (an existing one is replaced only with ``overwrite``).
        match_brightness: when the scene fits the training spectra clearly better at another gain or tilt
            (:attr:`RangeFit.another_acquisition`), label it again there (``applied_gain``, ``applied_tilt``).

    Raises:
        HsiClusterError: bad checkpoint, scene/model mismatch, existing or unwritable output.
    """
    started = time.perf_counter()
    labels = Path(output).expanduser().absolute()
    if stac:
        from hsi_cluster.io.stac import item_path  # pystac and shapely: only when asked
    outputs = _Outputs(labels=labels, confidence=_absolute(confidence_path), quicklook=_absolute(quicklook_path),
                       stac=item_path(labels) if stac else None)
    scene_file = Path(scene_path).expanduser().absolute()
    checkpoint_file = Path(checkpoint_path).expanduser().absolute()
    _check_outputs(scene_file, checkpoint_file, outputs, overwrite=overwrite, resume=resume)
    # two commands writing one output interleave their tiles and files (an all-nodata COG, exit 0): one at a time,
    # and the outputs checked again under the lock, since the other may have finished one meanwhile
    with exclusive_lock(output_lock_path(labels), busy_output(labels), remove=True):
        _check_outputs(scene_file, checkpoint_file, outputs, overwrite=overwrite, resume=resume)
        check_tile_size(tiles)
        job = _prepare_job(scene_path, checkpoint_path, tiles=tiles, device=device)
        with_confidence = outputs.confidence is not None
        saved = TileStore.saved_identity(outputs.labels) if resume else None
        if saved is not None and saved.get("screened_bands") \
                and _same_run(saved, job.identity(tiles=tiles, confidence=with_confidence)):  # its bands, its tiles
            flagged = np.zeros(job.scene.shape[0], bool)
            flagged[saved["screened_bands"]] = True
            job = _bands_read_as_mean(job, flagged)
        if saved is not None and match_brightness and isinstance(saved.get("gain"), float) \
                and _same_run(saved, job.identity(tiles=tiles, confidence=with_confidence)):  # a run at a matched gain
            delivered = saved.get("delivered_fit")
            job = replace(job, gain=saved["gain"], tilt=float(saved.get("tilt", 0.0)),
                          delivered_fit=RangeFit(*delivered) if delivered else None)
        n_bands = job.scene.shape[0]
        last: dict[str, Any] = {}  # the tile store of the last pass, and the tiles it resumed

        def label_pass(job: _Job, first: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
            last["store"], last["resumed"] = _label_scene(job, outputs.labels, tiles=tiles,
                                                          with_confidence=with_confidence, resume=resume and first,
                                                          progress=progress)
            stats = last["store"].summed_stats(job.grid, length=stats_length(n_bands))
            band_stats = (stats[:band_stats_length(n_bands)] if stats is not None  # tiles of an earlier version kept
                          else last["store"].summed_stats(job.grid, length=band_stats_length(n_bands)))  # these alone
            return stats, band_stats

        job, fit = label_in_passes(job, label_pass, match_brightness=match_brightness)
        store, resumed = last["store"], last["resumed"]
        confidence_out, quicklook_out, counts = _write_outputs(job, store, outputs, tiles=tiles)
        store.remove()
        _, height, width = job.scene.shape
        return PredictResult(output=outputs.labels, confidence=confidence_out, quicklook=quicklook_out,
                             tiles=len(job.grid), tiles_resumed=resumed, pixels=height * width,
                             valid_pixels=int(counts[:-1].sum()), seconds=time.perf_counter() - started,
                             counts={k: int(counts[k]) for k in range(job.n_clusters)}, spread=job.spread,
                             range_fit=fit, applied_gain=job.gain, applied_tilt=job.tilt)
