"""The Python API: what a notebook uses, a thin layer over the jobs that the CLI runs.

    import hsi_cluster as hc
    scene = hc.open_scene("scene.tif")               # lazy (band, y, x) DataArray
    model = hc.train(scene, k=6)                     # preset "fast"; config keys as keywords (steps=200)
    labels = model.predict(scene)                    # (y, x) DataArray with CRS/transform/nodata; .rio works
    model.predict(scene, output="labels.tif")        # large scenes: tiled, straight to a label COG
    hc.evaluate(labels, "gt.tif")                    # the numbers `hsicluster evaluate` prints
    model.save("m.ckpt"); hc.load_model("m.ckpt")

Training and writing go through the very functions the commands call (:func:`hsi_cluster.train.train`,
:func:`hsi_cluster.predict.predict_scene`); in-memory prediction runs the same tiles, halo, hole filling
and network as ``predict`` and returns the labels ``predict`` would write (same dtype, same nodata).
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401 — registers the .rio accessor on the DataArrays returned here
import torch
import xarray as xr

from hsi_cluster.checkpoint import Checkpoint, load_checkpoint
from hsi_cluster.config import load_config
from hsi_cluster.errors import (
    ArgumentError,
    ArgumentTypeError,
    HsiClusterError,
    SceneError,
    log_warning,
    python_names,
)
from hsi_cluster.evaluate import ClusteringScores, default_invalid_pred, score_clustering, score_label_files
from hsi_cluster.geo import check_tile_size
from hsi_cluster.io.files import atomic_path, check_output, sha256_of
from hsi_cluster.io.labels import (
    georeferenced,
    read_label_map,
    truth_class_names,
    truth_unlabelled,
    unlabelled_value,
)
from hsi_cluster.io.scene import open_scene, reusing_reads
from hsi_cluster.io.scene_file import placed, scene_grid
from hsi_cluster.model.spectral_range import RangeFit
from hsi_cluster.predict import (
    PredictResult,
    SpreadProbe,
    label_in_passes,
    label_tile,
    labelling_warnings,
    output_name_notices,
    predict_scene,
    read_tile,
    result_warnings,
    stats_length,
    tile_job,
)
from hsi_cluster.stats import units_differ

SceneLike = str | os.PathLike | xr.DataArray

__all__ = ["Model", "evaluate", "load_model", "open_scene", "train"]


def _scene_path(scene: SceneLike, *, what: str, work_dir: str | os.PathLike[str] | None = None) -> Path:
    """The file behind ``scene``: a path as given, or the file an :func:`open_scene` DataArray was read from.

    A DataArray opened with ``var=`` from a ``.mat`` or NetCDF file holding several cubes stands for that cube
    alone, which the file's path does not name: its path is then that of the cube's cached store (ingested
    once into ``work_dir``, default ``$HSICLUSTER_WORK`` or ``~/.cache/hsicluster``), which every job reads.

    Raises:
        ArgumentError: a DataArray that is not a whole scene as opened from a file (a crop, a computed array).
    """
    if isinstance(scene, (str, os.PathLike)):
        return Path(scene).expanduser().absolute()
    if isinstance(scene, xr.DataArray):
        source = scene.attrs.get("source")
        variable = scene.attrs.get("variable") if scene.attrs.get("format") in ("mat", "mat-v7.3", "netCDF", "HDF5") else None
        if source and Path(source).exists():
            # the lazy array's name is a token of the file, its reading and its chunks: any change (.where,
            # .astype, a crop, .load()) makes another array, which the file does not hold
            chunks = getattr(scene.data, "chunks", None)
            for var in dict.fromkeys((None, variable)):  # the file's only cube first: no store needed
                for spatial in (None, (chunks[1][0], chunks[2][0]) if chunks and len(chunks) == 3 else None):
                    try:
                        opened = open_scene(source, chunks=spatial, var=var)
                    except SceneError:  # several cubes and no var: that reading is not this array
                        continue
                    same = (getattr(scene.data, "name", None) == getattr(opened.data, "name", False)
                            and opened.shape == scene.shape and all(
                                name not in scene.coords
                                or np.array_equal(opened.coords[name].values, scene.coords[name].values)
                                for name in ("y", "x")))
                    if same and var is None:
                        return Path(source)
                    if same:
                        from hsi_cluster.train import default_work_dir, prepare_store

                        work = Path(work_dir).expanduser() if work_dir is not None else default_work_dir()
                        return prepare_store(source, work, var=var)
        raise ArgumentError(f"{what} needs a scene file, and this DataArray is not one as opened by open_scene() (a crop, "
                            "a changed, loaded or computed array); write it to a file first with "
                            "hc.write_scene(scene, 'crop.tif') and pass that path")
    raise ArgumentTypeError(f"{what}: expected a path or a DataArray from open_scene(), got {type(scene).__name__}; "
                            "write an array to a file first (np.save('scene.npy', cube) for a (y, x, band) cube) and "
                            "pass that path")


@dataclass
class Model:
    """A trained SSCC model: the checkpoint of ``hsicluster train``, held in memory.

    Attributes:
        checkpoint: the loaded checkpoint (weights, configuration, spectral projection).
        path: the file it was read from or last saved to; None for a model trained with ``output=None``
            and not saved yet.
        history: per-epoch losses of the training run that made it (empty for a loaded model).
    """

    checkpoint: Checkpoint
    data: bytes = field(repr=False)
    path: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Model:
        """Read a checkpoint file (safely: weights and plain data only)."""
        checkpoint = load_checkpoint(path)
        return cls(checkpoint=checkpoint, data=checkpoint.path.read_bytes(), path=checkpoint.path)

    @property
    def k(self) -> int:
        """Number of clusters K."""
        return self.checkpoint.n_clusters

    @property
    def k_choice(self) -> dict[str, Any] | None:
        """How ``k="auto"`` chose K: ``{"k", "k_max", "candidates", "inertia", "distance", "rule"}``; None for a given K."""
        return self.checkpoint.payload.get("training", {}).get("k_choice")

    @property
    def scale_choice(self) -> dict[str, Any] | None:
        """Which stages the centroids read (``centroid_features: auto``): ``{"stages", "candidates", "silhouette",
        "rule"}``, stage 0 being the 1 × 1 stem; None when the preset fixed them."""
        return self.checkpoint.payload.get("training", {}).get("scale_choice")

    @property
    def bands_left_out(self) -> dict[str, Any] | None:
        """Bands the projection does not read, 0-based, by reason: ``{"flagged", "constant", "noisy",
        "min_shared_variance"}`` (see the band screen in the docs); None for checkpoints older than the screen."""
        screen = self.checkpoint.payload["spectral"].get("band_screen")
        return dict(screen) if screen is not None else None

    @property
    def n_bands(self) -> int:
        """Bands a scene must have."""
        return self.checkpoint.in_bands

    @property
    def config(self) -> dict[str, Any]:
        """The training configuration (preset with overrides)."""
        return dict(self.checkpoint.payload["train_config"])

    @property
    def sha256(self) -> str:
        """The checkpoint file's sha256 (hex); its first 16 digits tag every label raster it writes."""
        import hashlib

        return hashlib.sha256(self.data).hexdigest()

    def __repr__(self) -> str:
        return (f"Model(k={self.k}, bands={self.n_bands}, backbone={self.checkpoint.payload['backbone']!r}, "
                f"sha256={self.sha256[:16]!r}, path={str(self.path) if self.path else None!r})")

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the checkpoint, byte for byte as trained (so its hash is unchanged), atomically.

        Raises:
            OutputError: ``path`` exists and ``overwrite`` is False, or names a folder.
        """
        path = Path(path).expanduser().absolute()
        scenes = self.checkpoint.payload.get("scenes") or []
        inputs = {f"training scene {i + 1}{suffix}": Path(scene[key])  # its own scenes: never written over
                  for i, scene in enumerate(scenes) if isinstance(scene, dict)
                  for key, suffix in (("source", ""), ("store", " (its store)")) if scene.get(key)}
        check_output(path, replace=overwrite, inputs=inputs, exists_hint="pass overwrite=True to replace it")
        with atomic_path(path) as tmp:
            tmp.write_bytes(self.data)
        self.path = path
        return path

    def _checkpoint_file(self, folder: str) -> Path:
        """A file holding this checkpoint: its own, or a copy in ``folder`` when it has none (or it changed)."""
        if self.path is not None and self.path.is_file() and sha256_of(self.path) == self.sha256:
            return self.path
        copy = Path(folder) / "model.ckpt"
        copy.write_bytes(self.data)
        return copy

    @python_names
    def predict(self, scene: SceneLike, output: str | os.PathLike[str] | None = None, *, tiles: int = 512,
                confidence: bool | str | os.PathLike[str] = False, device: str = "auto",
                quicklook: str | os.PathLike[str] | None = None, overwrite: bool = False, resume: bool = False,
                stac: bool = False, progress: bool = False,
                match_brightness: bool = False) -> xr.DataArray | xr.Dataset | PredictResult:
        """Label every pixel of ``scene``.

        Args:
            scene: a path, or a DataArray (band, y, x) such as :func:`open_scene` returns (in memory,
                any such array works; to a file, it must be a whole scene as opened).
            output: None: return the labels in memory. A path: write a label COG there through the
                tiled path of ``hsicluster predict`` (for scenes larger than memory) and return its
                :class:`~hsi_cluster.predict.PredictResult`.
            tiles: tile side in pixels (labels do not depend on it).
            confidence: in memory, True returns a Dataset with ``labels`` and ``confidence`` (the winning
                probability, NaN on nodata). With ``output``, True writes ``OUTPUT_confidence.tif`` beside
                it, or give that file's path.
            device: "auto", "cpu" or "cuda".
            quicklook: with ``output``: also write this PNG with a legend.
            overwrite: with ``output``: replace existing files.
            resume: with ``output``: continue an interrupted call (Ctrl-C, a killed kernel) from its finished
                tiles (``OUTPUT.partial.zarr``), giving the same file; without one, as a new run.
            stac: with ``output``: also write a STAC Item beside it (``OUTPUT.stac.json``, see
                :mod:`hsi_cluster.io.stac`).
            progress: show a progress bar (tiles).
            match_brightness: label a scene that fits the training spectra clearly better at another gain and
                tilt across the bands on its values (another acquisition of the ground the model knows:
                illumination, atmosphere, calibration) there, estimated without labels (``applied_gain`` and
                ``applied_tilt`` in the result or its attributes), as ``hsicluster predict --match-brightness`` does.

        Returns:
            In memory: a DataArray (y, x) of cluster ids 0 … K−1 (uint8, uint16 when K > 254) with the
            dtype's maximum as nodata on invalid pixels, the scene's ``x``/``y`` coordinates and rioxarray's
            conventions (``spatial_ref`` coordinate: ``.rio.crs``, ``.rio.transform()``, ``.rio.nodata``,
            ``.rio.to_raster()``); or a Dataset of it and ``confidence``. With ``output``: the result of
            the written file.
        """
        if output is None:
            if quicklook is not None or stac or resume:
                raise ArgumentError("quicklook=, stac= and resume= concern a written label raster; pass output= as well")
            if not isinstance(confidence, bool):
                raise ArgumentError(f"confidence={str(confidence)!r} names a file, which is written beside output=; in "
                                 "memory pass confidence=True (a Dataset of labels and confidence)")
            array = scene if isinstance(scene, xr.DataArray) else open_scene(_scene_path(scene, what="predict"))
            # messages name the model's file; one trained with output=None has none (its checkpoint's is gone)
            checkpoint = self.checkpoint if self.path is not None else replace(
                self.checkpoint, path=Path("(unsaved)"))
            labelled = label_array(checkpoint, array, tiles=tiles, device=device, confidence=bool(confidence),
                                   progress=progress, model_sha256=self.sha256, match_brightness=match_brightness)
            attrs = (labelled["labels"] if isinstance(labelled, xr.Dataset) else labelled).attrs
            fit = (RangeFit(outside_share=attrs["outside_share"], gain=attrs["matching_gain"],
                            fit_ratio=attrs["matching_fit_ratio"], tilt=attrs["matching_tilt"])
                   if "outside_share" in attrs else None)
            labels = labelled["labels"] if isinstance(labelled, xr.Dataset) else labelled
            labelled_any = bool((labels.values != labels.rio.nodata).any())  # else no match was tried: none to tell
            for notice in labelling_warnings(attrs["source"], spread=attrs.get("spread"), range_fit=fit,
                                             applied_gain=attrs["applied_gain"], applied_tilt=attrs["applied_tilt"],
                                             match_brightness=match_brightness and labelled_any):
                warnings.warn(notice, UserWarning, stacklevel=2)
            return labelled
        output = Path(output).expanduser().absolute()
        scene_path = _scene_path(scene, what="predict(output=...)")  # a var= cube's store: name the file
        source = Path(scene.attrs["source"]) if isinstance(scene, xr.DataArray) else scene_path
        confidence_path = None
        if confidence is True:
            confidence_path = output.with_name(f"{output.stem}_confidence.tif")
        elif confidence:
            confidence_path = Path(confidence)
        for notice in output_name_notices([("output=", output, "GeoTIFF"), ("confidence=", confidence_path, "GeoTIFF"),
                                           ("quicklook=", None if quicklook is None else Path(quicklook), "PNG")]):
            warnings.warn(notice, UserWarning, stacklevel=2)
        with tempfile.TemporaryDirectory(prefix="hsicluster-model-") as folder:
            checkpoint_file = self._checkpoint_file(folder)
            with _bar(progress, "predict", "tile") as update:
                result = predict_scene(scene_path, checkpoint_file, output, tiles=tiles, device=device,
                                       confidence_path=confidence_path, quicklook_path=quicklook,
                                       overwrite=overwrite, resume=resume, progress=update, stac=stac,
                                       match_brightness=match_brightness)
        for notice in result_warnings(source, result, match_brightness=match_brightness):
            warnings.warn(notice, UserWarning, stacklevel=2)
        if stac:
            from hsi_cluster.io.stac import write_label_item

            write_label_item(result.output, model_sha256=self.sha256, source=source, counts=result.counts,
                             confidence=result.confidence, quicklook=result.quicklook)
        return result


class _bar:
    """A tqdm bar driven by ``update(done, total)``, or nothing."""

    def __init__(self, enabled: bool, description: str, unit: str) -> None:
        self.enabled, self.description, self.unit = enabled, description, unit
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        def update(done: int, total: int, *_: Any) -> None:
            if self.bar is None:  # made with its total: a bar made before showed an empty "0step" line first
                self.bar = tqdm(desc=self.description, unit=self.unit, file=sys.stderr, total=total)
            elif self.bar.total != total:
                self.bar.reset(total=total)
            self.bar.n = done
            self.bar.refresh()

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def label_array(checkpoint: Checkpoint, scene: xr.DataArray, *, tiles: int = 512, device: str = "auto",
                confidence: bool = False, progress: bool = False, model_sha256: str | None = None,
                match_brightness: bool = False) -> xr.DataArray | xr.Dataset:
    """Labels of a (band, y, x) DataArray in memory, tile by tile as ``predict`` computes them.

    Same tiles with a reflect-padded halo, same valid-pixel rule (the scene's ``nodata`` in the good bands the model reads),
    holes read as the training mean, same forward: the result equals the label raster ``predict`` writes.
    See :meth:`Model.predict` for the result.
    """
    if scene.ndim != 3:
        raise ArgumentError(f"expected a (band, y, x) scene, got dims {scene.dims}")
    if set(scene.dims) != {"band", "y", "x"}:
        example = dict(zip(scene.dims, ("band", "y", "x"), strict=True))
        raise ArgumentError(f"expected a scene with dims band, y, x (as open_scene gives), got {scene.dims}; rename "
                            f"them, e.g. scene.rename({example}) if they are in that order")
    if scene.dims != ("band", "y", "x"):
        scene = scene.transpose("band", "y", "x")
    ids = scene.coords["band"].values if "band" in scene.coords else np.arange(scene.shape[0])
    if ids.dtype.kind in "iu" and np.unique(ids).size == ids.size and (np.diff(ids) < 0).any():
        scene = scene.sortby("band")  # reordered by .isel (reversed, permuted): the model reads the file's order
    if "source" not in scene.attrs:
        scene = scene.copy()
        scene.attrs["source"] = str(scene.name or "the scene")
    check_tile_size(tiles)
    job = tile_job(checkpoint, scene, tiles=tiles, device=device, digest=model_sha256)
    n_clusters, nodata = checkpoint.n_clusters, job.nodata
    last: dict[str, Any] = {}  # the labels and probabilities of the last pass

    def label_pass(job: Any, first: bool) -> tuple[np.ndarray, np.ndarray]:
        last["labels"], last["probability"], stats = _label_in_memory(job, confidence=confidence, progress=progress)
        return stats, stats

    job, fit = label_in_passes(job, label_pass, match_brightness=match_brightness)
    labels, probability = last["labels"], last["probability"]
    grid = _label_grid(scene)
    result = _like_scene(labels, scene, grid, name="labels", nodata=nodata,
                         attrs={"long_name": f"SSCC cluster label (K={n_clusters})", "n_clusters": n_clusters,
                                "model_sha256": job.digest, "source": scene.attrs["source"],
                                "units_differ": int(units_differ(job.spread)),
                                **({} if job.spread is None else {"spread": job.spread}),
                                **({} if fit is None else {"outside_share": fit.outside_share,
                                                           "matching_gain": fit.gain,
                                                           "matching_fit_ratio": fit.fit_ratio,
                                                           "matching_tilt": fit.tilt}),
                                "applied_gain": job.gain, "applied_tilt": job.tilt})
    if probability is None:
        return result
    conf = _like_scene(probability, scene, grid, name="confidence", nodata=float("nan"),
                       attrs={"long_name": "maximum cluster probability"})
    return xr.Dataset({"labels": result, "confidence": conf})


def _label_in_memory(job: Any, *, confidence: bool, progress: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Every tile of a :func:`~hsi_cluster.predict.tile_job` labelled in memory: labels (y, x), winning probabilities
    (y, x) when ``confidence``, and the tiles' summed statistics (:func:`~hsi_cluster.predict.stats_length`). The first
    pass sets the job's units probe (``spread``, ``outlying_bands``), as ``predict`` does."""
    labels = np.full(job.scene.shape[1:], job.nodata, dtype=job.dtype)
    probability = np.full(job.scene.shape[1:], np.nan, dtype=np.float32) if confidence else None
    probe = SpreadProbe(job, len(job.grid))
    stats = np.zeros(stats_length(job.scene.shape[0]), np.int64)
    with _bar(progress, "predict", "tile") as update, reusing_reads(job.scene, job.kept_reads):
        for done, (i, j) in enumerate(job.grid, start=1):
            rows, cols = job.grid.window(i, j).slices
            padded, valid, tile_stats = read_tile(job, i, j)
            stats += tile_stats
            if job.spread is None:
                probe.add(padded, valid)
                job.spread, job.outlying_bands = probe.spread, probe.outlying
            tile_labels, tile_confidence = label_tile(job, i, j, padded, valid)
            labels[rows, cols] = tile_labels
            if probability is not None:
                probability[rows, cols] = tile_confidence
            if update:
                update(done, len(job.grid))
    return labels, probability, stats


def _label_grid(scene: xr.DataArray) -> tuple[Any, str | None]:
    """The transform and CRS of labels on ``scene``'s grid (:func:`~hsi_cluster.io.scene_file.scene_grid`), worked out
    once for the labels and their confidence; no transform, with a warning, for a crop of a rotated grid."""
    transform, crs = scene_grid(scene)
    if not placed(scene, transform):  # a crop of a rotated grid: no place is better than the whole scene's
        warnings.warn(f"{scene.attrs.get('source', 'the scene')}: the labels of a crop of a rotated grid carry no "
                      "transform (its pixels have no x/y coordinates); crop the file itself to keep one", UserWarning,
                      stacklevel=4)
        transform = None
    return transform, crs


def _like_scene(values: np.ndarray, scene: xr.DataArray, grid: tuple[Any, str | None], *, name: str, nodata: float,
                attrs: dict[str, Any]) -> xr.DataArray:
    """A (y, x) DataArray on the scene's grid (:func:`_label_grid`), with rioxarray's CRS/transform/nodata
    conventions."""
    coords = {dim: scene.coords[dim].values for dim in ("y", "x") if dim in scene.coords}
    array = xr.DataArray(values, dims=("y", "x"), coords=coords, name=name, attrs=dict(attrs))
    transform, crs = grid
    if transform is not None:
        array = array.rio.write_transform(transform)
    if crs:
        array = array.rio.write_crs(crs)
    return array.rio.write_nodata(nodata, encoded=False)


def load_model(path: str | os.PathLike[str]) -> Model:
    """A model from a checkpoint file written by ``hsicluster train``, :func:`train` or :meth:`Model.save`.

    Raises:
        CheckpointError: missing file, not a checkpoint, unsafe content or another version.
    """
    return Model.from_file(path)


@python_names
def train(scenes: SceneLike | Sequence[SceneLike], k: int | str, *, preset: str = "fast", k_max: int | None = None,
          output: str | os.PathLike[str] | None = None, seed: int = 0, device: str = "auto",
          config: str | os.PathLike[str] | None = None, work_dir: str | os.PathLike[str] | None = None,
          overwrite: bool = False, resume: bool = False, progress: bool = False, verbose: bool = False,
          **overrides: Any) -> Model:
    """Train an SSCC model with ``k`` clusters, as ``hsicluster train`` does.

    Args:
        scenes: a scene (path or :func:`open_scene` DataArray), several, or glob patterns
            (``"archive/**/*.tif"``); several must have the same bands.
        k: number of clusters K ≥ 2, or "auto" to choose it without labels (the elbow of the k-means
            curve of the trained features over K = 2..k_max; ``model.k`` is the choice and
            ``model.k_choice`` its curve).
        k_max: the largest K that ``k="auto"`` considers (default 20).
        preset: "fast" (dense backbone, sized for CPUs) or "paper" (the published recipe).
        output: checkpoint path to write (with its loss curve); None keeps the model in memory only
            (:meth:`Model.save` writes it later, byte for byte).
        seed: seeds the PCA sample, the weights, the patch order and the augmentations.
        device: "auto", "cpu" or "cuda".
        config: optional YAML file of training options, applied on top of the preset.
        work_dir: cache folder for scenes ingested on the fly (default ``$HSICLUSTER_WORK`` or
            ``~/.cache/hsicluster``).
        overwrite: replace an existing ``output``. resume: continue an interrupted run of ``output``.
        progress: show a progress bar. verbose: print the training log (one line per epoch) on stderr. Its
            warnings (a scene left out, in other units or of another pixel size) are a ``UserWarning`` either way.
        **overrides: any key of :class:`hsi_cluster.config.TrainConfig`, applied last, e.g.
            ``steps=200``, ``epochs=10``, ``batch_size=256``, ``entropy_weight=0.3``.

    Returns:
        the trained model.

    Raises:
        HsiClusterError: a bad K, scene, configuration key or value, or output path (one-line message).
    """
    from hsi_cluster.train import train as run_train

    if resume and output is None:
        raise ArgumentError("resume=True continues the interrupted run of a checkpoint file; pass its path as output=")
    if isinstance(scenes, (str, os.PathLike, xr.DataArray, np.ndarray)):
        scenes = [scenes]
    paths = [scene if isinstance(scene, (str, os.PathLike)) else _scene_path(scene, what="train", work_dir=work_dir)
             for scene in scenes]
    settings = load_config(preset, Path(config) if config is not None else None, inline=overrides or None)
    log = _training_log(verbose)
    with tempfile.TemporaryDirectory(prefix="hsicluster-train-") as folder:
        target = Path(output).expanduser().absolute() if output is not None else Path(folder) / "model.ckpt"
        with _bar(progress, "train", "step") as update:
            result = run_train(list(paths), n_clusters=k, output=target, config=settings, seed=seed, device=device,
                               resume=resume, overwrite=overwrite, work_dir=work_dir, progress=update, log=log,
                               k_max=k_max)
        model = Model.from_file(result.checkpoint)
        model.history = list(result.history)
        if output is None:
            model.path = None
    return model


def _score_on_grid(labels: xr.DataArray, truth_path: str | os.PathLike[str], *, unlabelled: int | None | str,
                   var: str | None) -> ClusteringScores:
    """Georeferenced labels scored as `hsicluster evaluate` scores them written to a file: on the truth's pixel grid
    (their overlap; a south-up map against a north-up one as a map shows them)."""
    with tempfile.TemporaryDirectory(prefix="hsicluster-evaluate-") as folder:
        written = Path(folder) / "labels.tif"
        labels.rio.to_raster(written)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                scores = score_label_files(written, truth_path, unlabelled=unlabelled, var=var)
            except HsiClusterError as exc:  # the file is ours, not the user's: name the labels
                raise type(exc)(_name_labels(str(exc), written)) from exc
    for warning in caught:
        message = warning.message
        text = _name_labels(str(message), written)
        warnings.warn(type(message)(text) if isinstance(message, Warning) else text, warning.category, stacklevel=3)
    return scores


def _name_labels(text: str, written: Path) -> str:
    return text.replace(str(written), "the labels").replace(f"label raster {written.name}", "labels")


def _training_log(verbose: bool) -> Callable[[str], None]:
    """The training log for :func:`train`: its warnings (a scene left out, in other units, of another pixel size)
    as a ``UserWarning`` whatever ``verbose``; with ``verbose``, the other lines on stderr."""
    def log(message: str) -> None:
        warning = log_warning(message)
        if warning is not None:
            warnings.warn(warning, UserWarning, stacklevel=2)
        elif verbose:
            print(message, file=sys.stderr)
    return log


@python_names
def evaluate(labels: Any, ground_truth: Any, *, unlabelled: int | None | str = "auto",
             var: str | None = None) -> ClusteringScores:
    """Score cluster labels against ground truth: the numbers ``hsicluster evaluate`` prints.

    Args:
        labels: a label raster path (``predict``'s COG, or any single-band raster / ``.npy`` / ``.mat``), a
            DataArray from :meth:`Model.predict` (or its Dataset), or an array (y, x).
        ground_truth: a path or an array (y, x) of class ids, same size as ``labels``; for a georeferenced
            DataArray (the labels of a crop), a raster on the same pixel grid, scored on their overlap.
        unlabelled: ground-truth value of pixels not scored (None scores every pixel); "auto": the ground-truth
            raster's nodata value when it declares one, else 0.
        var: the variable of a MATLAB ground-truth file holding several arrays.

    Labels' nodata (the raster's, the DataArray's ``.rio.nodata``/``_FillValue``, else -1 or 255/65535 of a
    uint8/uint16 map) on labelled pixels counts as wrong, as in the CLI.

    Returns:
        :class:`~hsi_cluster.evaluate.ClusteringScores` (``.acc``, ``.nmi``, ``.kappa``, ``.ari``,
        ``.per_class``; ``.to_dict()`` is the CLI's ``--json``).
    """
    if isinstance(labels, xr.Dataset):
        labels = labels["labels"]
    if isinstance(labels, xr.DataArray) and set(labels.dims) == {"y", "x"}:
        labels = labels.transpose("y", "x")  # (x, y) order compared as it lies would score transposed maps
    if isinstance(labels, (str, os.PathLike)) and isinstance(ground_truth, (str, os.PathLike)):
        return score_label_files(labels, ground_truth, unlabelled=unlabelled, var=var)
    given = labels  # a georeferenced DataArray of a crop is scored on its overlap with the truth raster
    invalid_pred: int | None | str = "auto"
    if isinstance(labels, (str, os.PathLike)):
        labels, nodata = read_label_map(labels)
        invalid_pred = "auto" if nodata is None else nodata
    elif isinstance(labels, xr.DataArray):
        invalid_pred = default_invalid_pred(labels)
        labels = labels.values
    scored_as = 0 if unlabelled == "auto" else unlabelled_value(unlabelled)
    names: dict[int, str] = {}
    if isinstance(ground_truth, (str, os.PathLike)):
        truth_path = ground_truth
        ground_truth, _ = read_label_map(truth_path, var=var)
        if isinstance(given, xr.DataArray) and given.rio.crs is not None and (
                given.shape != ground_truth.shape or georeferenced(truth_path)):
            return _score_on_grid(given, truth_path, unlabelled=unlabelled, var=var)
        scored_as = truth_unlabelled(truth_path, unlabelled)
        names = truth_class_names(truth_path)
    elif isinstance(ground_truth, xr.DataArray):
        ground_truth = ground_truth.values
    return score_clustering(np.asarray(labels), np.asarray(ground_truth), unlabelled=scored_as,
                            invalid_pred=invalid_pred, class_names=names)
