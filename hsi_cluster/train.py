"""Training SSCC on one or more scenes: the loop, periodic checkpoints, resume, loss curve.

Data flow per step: projected patches (N, C, p, p) from :class:`~hsi_cluster.data.sampler.PatchSampler`,
which applies the frozen spectral projection to each block it reads (per pixel, so equal to projecting
the patches, at a fraction of the cost of cutting B raw bands) → device → two augmented views → the twin
network → cluster probabilities (N, K) → SSCC loss (+ optional cluster-balance term) → Adam step.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsi_cluster.checkpoint import Checkpoint, CheckpointError, load_checkpoint, make_payload, save_checkpoint
from hsi_cluster.config import TrainConfig
from hsi_cluster.data.augment import AugmentConfig, Augmenter, RadiometricBasis, two_views
from hsi_cluster.data.prefetch import prefetched
from hsi_cluster.data.sampler import PatchSampler
from hsi_cluster.data.spectral import sample_spectra_and_noise, sample_valid_spectra
from hsi_cluster.device import device_from
from hsi_cluster.errors import HsiClusterError, OutputError, Terminated, counted, option, whole_number
from hsi_cluster.io import ingest, is_complete_store, open_scene
from hsi_cluster.io.checks import check_patch_fits, check_scenes_agree, pixel_side
from hsi_cluster.io.files import atomic_path, busy_output, check_output, exclusive_lock, output_lock_path
from hsi_cluster.io.paths import expand_scene_paths
from hsi_cluster.io.scene import scene_files_identity, scene_inputs
from hsi_cluster.io.store import Store, pooled_band_stats
from hsi_cluster.model.backbones import DenseBackbone
from hsi_cluster.model.choose_k import DEFAULT_K_MAX, K_MAX_MIN, RULE, choose_k
from hsi_cluster.model.choose_restart import choose_restart
from hsi_cluster.model.choose_scales import choose_scales
from hsi_cluster.model.heads import TINY_CLUSTER_SHARE, CentroidHead, probs
from hsi_cluster.model.losses import SSCCLoss
from hsi_cluster.model.losses.entropy import ClusterEntropyLoss
from hsi_cluster.model.projection import SpectralFit, SpectralProjection, fit_spectral, fit_spectral_mnf
from hsi_cluster.model.spectral_range import RANGE_SAMPLES, SpectralRange
from hsi_cluster.model.sscc import SSCC
from hsi_cluster.progress import duration_text
from hsi_cluster.stats import SCENES_SPREAD_LIMIT, VALIDITY_RULES, likely_fill, spread_ratios

ProgressFn = Callable[[int, int, dict[str, float]], None]
LogFn = Callable[[str], None]


def default_work_dir() -> Path:
    """Cache folder for stores ingested on the fly: ``$HSICLUSTER_WORK`` or ``~/.cache/hsicluster``."""
    return Path(os.environ.get("HSICLUSTER_WORK", Path.home() / ".cache" / "hsicluster"))


def prepare_store(scene: str | os.PathLike[str], work_dir: Path, *, var: str | None = None,
                  log: LogFn | None = None) -> Path:
    """A complete store for ``scene``: the scene itself if it is one, else a cached ingest of it.

    The cache name depends on the path, size and modification time of the source and of the files read with it
    (:func:`~hsi_cluster.io.scene.scene_files_identity`: an ENVI header, an EnMAP product's ``METADATA.XML``) and on
    ``var`` (the cube of a ``.mat`` or NetCDF file holding several), so an edited scene is ingested again and an
    unchanged one is reused, unless its store was made under other rules of validity
    (:data:`~hsi_cluster.stats.VALIDITY_RULES`).
    """
    path = Path(scene).expanduser().absolute()
    if is_complete_store(path):
        return path
    opened = open_scene(path, var=var)  # fails early with a clear message for bad input
    source = Path(opened.attrs["source"])
    files = scene_files_identity(source)
    identity = "|".join(f"{file['path']}|{file['size']}|{file['mtime_ns']}"
                        for file in [files, *files.get("companions", [])])
    if var is not None:
        identity += f"|var={var}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]  # a lone file keeps the key of older versions
    store = work_dir / f"{source.stem}-{key}.zarr"
    if is_complete_store(store) and Store.open(store).metadata.get("validity_rules") == VALIDITY_RULES:
        return store  # else made by a version with other validity rules: ingested again below
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{work_dir}: cannot create the cache folder for ingested scenes ({exc.strerror}); pass "
                          "--work with a writable folder (or set HSICLUSTER_WORK)") from exc
    if not os.access(work_dir, os.W_OK | os.X_OK):
        raise OutputError(f"{work_dir}: the cache folder for ingested scenes is not writable; pass --work with a "
                          "writable folder (or set HSICLUSTER_WORK)")
    if log:
        log(f"ingesting {path} into {store}")
    return ingest(path, store, overwrite=True, var=var, log=log)


def fit_spectral_projection(stores: Sequence[str | os.PathLike[str]], n_components: int | float, *,
                            n_samples: int = 100_000, seed: int = 0, log: LogFn | None = None,
                            projection: str = "pca") -> SpectralFit:
    """Band statistics over all valid pixels of ``stores``, the band screen and PCA on a random sample of them
    (kept as the fit's ``sample``).

    ``projection`` "mnf" fits MNF components instead, with the noise of the same sampled pixels (each
    one's differences to its closer neighbour along each axis, see :func:`sample_spectra_and_noise`).

    A band flagged bad in the metadata of any store is left out. ``log`` is told of a store whose values
    vary :data:`~hsi_cluster.stats.SCENES_SPREAD_LIMIT` times or more (or less) than the others' (other
    units), and when many sampled pixels hold one value in every band (an undeclared fill of a scene
    with few bands).
    """
    opened = [Store.open(store) for store in stores]
    spectra = sample_valid_spectra(opened, n_samples, seed=seed)
    ratios = spread_ratios([store.band_stats().std for store in opened])
    odd = [(store, ratio) for store, ratio in zip(opened, ratios, strict=True)
           if not 1 / SCENES_SPREAD_LIMIT < ratio < SCENES_SPREAD_LIMIT]
    advice = ("other units or scaling (digital numbers against reflectance, percent against fractions?); the "
              "clusters will mostly separate the scenes. Convert the scenes to one unit, or train on them apart")
    if log is not None and len(opened) == 2 and odd:  # a pair: neither is the odd one
        log(f"warning: {_source_of(opened[0])} and {_source_of(opened[1])}: their values vary "
            f"{max(ratios[0], ratios[1]):.3g}× apart: {advice}")
    elif log is not None:
        for store, ratio in odd:
            log(f"warning: {_source_of(store)}: its values vary {ratio:.3g}× as much as the other training scenes': "
                f"{advice}")
    flags = [np.asarray(store.metadata["good_band"], bool) for store in opened if store.metadata.get("good_band")]
    good_band = np.logical_and.reduce(flags) if flags else None
    fill = likely_fill(spectra) if good_band is None or good_band.any() else None  # no band: fit_spectral says so
    if fill is not None and log is not None:
        value, share = fill
        log(f"warning: {share:.1%} of the valid pixels hold {value:g} in every band; if that is a fill value, "
            f"declare it as the scene's nodata (rio edit-info --nodata {value:g} SCENE) and train again")
    try:
        fit = fit_spectral(pooled_band_stats(opened), spectra, n_components, good_band=good_band)
        if projection == "mnf":  # the closer neighbour is judged on the bands the projection reads
            spectra, noise = sample_spectra_and_noise(opened, n_samples, np.where(fit.screen.used, 1 / fit.std, 0), seed=seed)
            fit = fit_spectral_mnf(fit, spectra, noise)
        return replace(fit, sample=spectra)
    except ValueError as exc:  # no band varies, or too few for the components: a property of the scenes
        sources = ", ".join(_source_of(store) for store in opened)
        raise HsiClusterError(f"{sources}: {exc}; check that the file holds the image you meant") from exc


def _source_of(store: Store) -> str:
    """The file a store was ingested from (the store itself when it does not say)."""
    return str((store.metadata.get("source") or {}).get("path", store.path))


@dataclass
class TrainResult:
    """What a finished run reports."""

    checkpoint: Path
    loss_curve: Path | None
    steps: int
    epochs: int
    seconds: float
    samples_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)
    already_finished: bool = False  # --resume of a finished run of this length: nothing trained or written
    samples: int = 0  # patches drawn over the whole run (resumed parts included)
    budget: int | None = None  # the sample budget that set (or, capped, bounded) the length; None: epochs or steps
    total_steps: int = 0  # the run's length in steps
    k_choice: dict[str, Any] | None = None  # -k auto: the K chosen and its curve (as in the checkpoint)
    stores: list[Path] = field(default_factory=list)  # the stores trained on
    restart_choice: dict[str, Any] | None = None  # restarts > 1: the seeds, their agreement, the one kept


@dataclass(frozen=True)
class RunLength:
    """How long a run is, derived from the config and the scenes' usable centres.

    Attributes:
        contrastive_steps: steps of the contrastive phase.
        rule: what decided it: "steps", "samples" (the budget), "epochs (cap)" (a budget capped at
            ``epochs`` passes) or "epochs".
        fraction: share of each block's centres one pass draws (< 1 when the run is shorter than
            one pass, see :class:`~hsi_cluster.data.sampler.PatchSampler`).
    """

    contrastive_steps: int
    rule: str
    fraction: float


def run_length(config: TrainConfig, centres: int, per_pass: int | None = None) -> RunLength:
    """The contrastive steps of a run on ``centres`` usable centres, and what decided them.

    ``steps`` wins; else a ``samples`` budget (whole batches) capped at ``epochs`` passes if set;
    else ``epochs`` passes. A run shorter than one pass draws that share of every block.
    ``per_pass``: batches in one full pass (default ``centres // batch_size``; fewer with
    DataLoader workers, which each drop a partial batch).
    """
    per_pass = centres // config.batch_size if per_pass is None else per_pass
    if config.steps is not None:
        steps, rule = config.steps, "steps"
    elif config.samples is not None:
        steps, rule = config.samples // config.batch_size, "samples"
        if config.epochs is not None and config.epochs * per_pass < steps:
            steps, rule = config.epochs * per_pass, "epochs (cap)"
    else:
        steps, rule = (config.epochs or 0) * per_pass, "epochs"
    fraction = steps * config.batch_size / centres if 0 < steps < per_pass else 1.0
    return RunLength(steps, rule, fraction)


def lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of the step after ``step`` steps of a ``total_steps`` run.

    Multiplied by ``lr_gamma`` each time another ``lr_step_fraction`` of the run is done (the drops
    fall on whole steps; computed as StepLR does, one multiplication per drop).
    """
    lr = config.lr
    for _ in range(step // lr_drop_interval(config, total_steps)):
        lr *= config.lr_gamma
    return lr


def lr_drop_interval(config: TrainConfig, total_steps: int) -> int:
    """Steps between two learning-rate drops: ``lr_step_fraction`` of the run, rounded to a step."""
    return max(1, round(config.lr_step_fraction * total_steps))


def _scene_identity(store: Path) -> dict[str, Any]:
    scene = open_scene(store)
    origin = scene.attrs.get("ingested_from") or {}
    identity = {"store": str(store), "source": origin.get("path"), "size": origin.get("size"),
                "mtime_ns": origin.get("mtime_ns"), "shape": list(scene.shape), "dtype": str(scene.dtype)}
    if origin.get("companions"):  # the files read with it (scene_files_identity); left out for a lone file
        identity["companions"] = origin["companions"]
    side = pixel_side(scene)
    if side is not None:  # predict warns of a scene of other pixel sizes
        identity["pixel_side"], identity["pixel_unit"] = side
    return identity


def _check_scene_shape(scene_path: Path, config: TrainConfig, *, alone: bool) -> str | None:
    """Checks of the band count and size, from the header: before a large raster is ingested for nothing.

    Returns None, or for a scene smaller than one patch among others (a sliver at an archive's edge) the warning
    that it is left out; ``alone`` (the run's only scene), that is an error.
    """
    scene = open_scene(scene_path)
    n_bands = scene.shape[0]
    name = scene.attrs["source"]
    if isinstance(config.n_components, int) and n_bands < config.n_components:
        raise HsiClusterError(f"{name}: has {n_bands} bands, fewer than the {config.n_components} PCA components; "
                              f"set n_components ≤ {n_bands} in a --config file")
    patch = config.patch_geometry().patch_size
    _, height, width = scene.shape
    if not alone and min(height, width) < patch:
        return (f"warning: {name}: the scene ({height}×{width} pixels) is smaller than the {patch}×{patch} patch; left "
                "out of the training")
    check_patch_fits(scene, patch)
    return None


def _check_scene(store: Path) -> tuple[str, int, list[float] | None]:
    """Checks of an ingested scene's pixels; returns the file it came from, its valid pixel count and its
    wavelengths (or None)."""
    scene = open_scene(store)
    source = scene.attrs["ingested_from"]["path"]
    valid = int(scene.attrs.get("valid_pixels") or 0)
    wavelength = scene.coords["wavelength"].values.tolist() if "wavelength" in scene.coords else None
    return source, valid, wavelength


def _check_scenes(stores: list[Path], config: TrainConfig, n_clusters: int, *,
                  flag: str = "-k") -> list[float] | None:
    """Checks of every scene and of their valid pixels together; returns the wavelengths to record."""
    checked = [_check_scene(store) for store in stores]
    valid = sum(count for _, count, _ in checked)
    if n_clusters > valid:
        raise HsiClusterError(f"{option(flag, n_clusters)} is larger than the number of valid pixels ({valid}); "
                              "choose fewer clusters")
    if valid < config.batch_size:  # the sampler drops a partial batch: no step could run, whatever the length
        where = f"{checked[0][0]}: only" if len(stores) == 1 else f"the {len(stores)} scenes have only"
        raise HsiClusterError(f"{where} {valid} valid pixels (not nodata, NaN or one value in every band), fewer "
                              f"than one batch of {config.batch_size}; lower {option('--batch-size')}")
    sampled = min(valid, config.centroid_samples)
    if config.assignment == "centroids" and n_clusters > sampled:
        raise HsiClusterError(f"{option(flag, n_clusters)} is more than the {sampled} pixels the cluster centroids are "
                              f"fitted on (centroid_samples of the {valid} valid pixels); choose fewer clusters or "
                              "raise centroid_samples")
    return next((wavelength for _, _, wavelength in checked if wavelength is not None), None)


def _scene_mismatch(saved: list[dict[str, Any]], current: list[dict[str, Any]]) -> str | None:
    """How the training scenes of a checkpoint differ from this run's (None when they agree).

    A scene is the same file (path), unchanged since training (size and modification time, and those of the files
    read with it: an ENVI header, an EnMAP ``METADATA.XML``) and of the same shape.
    """
    key = lambda s: (s["shape"], s["source"], s["size"], s.get("mtime_ns"), s.get("companions"))  # noqa: E731
    if [key(s) for s in saved] == [key(s) for s in current]:
        return None
    if len(saved) != len(current):
        return (f"was trained on {len(saved)} scene{'s' * (len(saved) != 1)}, not {len(current)}; pass the same "
                "scenes in the same order")
    index = next(i for i, (a, b) in enumerate(zip(saved, current, strict=True)) if key(a) != key(b))
    which = f"scene {index + 1} " if len(saved) > 1 else ""
    if saved[index]["source"] == current[index]["source"]:
        return (f"{which}{current[index]['source']} was modified after training began or reads differently (its size, "
                "modification time or shape, or those of a file read with it, differ); restore it")
    return (f"{which}was trained on {saved[index]['source']}, not on {current[index]['source']}; "
            f"pass the same scene{'s in the same order' if len(saved) > 1 else ''}")


def partial_checkpoint_path(output: Path) -> Path:
    """Where periodic checkpoints of an unfinished run go: ``OUTPUT.partial``."""
    return output.with_name(output.name + ".partial")


#: Config keys that set the length of a run, with the option that sets each.
LENGTH_KEYS = {"samples": "--samples", "epochs": "--epochs", "steps": "--steps"}


#: Config keys added after checkpoints were first written, with the value that older checkpoints trained with.
KEYS_ADDED_LATER: dict[str, Any] = {"projection": "pca"}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Config keys that must agree for a resume (not the length of the run); a key added later takes its old value."""
    return {k: v for k, v in {**KEYS_ADDED_LATER, **config}.items() if k not in (*LENGTH_KEYS, "workers")}


def _length_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first length setting of an unfinished run that this run changes, said as an error (None: same)."""
    for key, flag in LENGTH_KEYS.items():
        if saved.get(key) != current.get(key):
            return (f"was started with {key} {saved.get(key)}, not {current.get(key)}; the learning-rate schedule "
                    f"is defined on the run's length, so pass the same {option(flag)} (or the same config) or start "
                    f"without {option('--resume')}")
    return None


def train(scenes: list[str | os.PathLike[str]], *, n_clusters: int | str, output: str | os.PathLike[str],
          config: TrainConfig, seed: int = 0, device: str = "auto", resume: bool = False, overwrite: bool = False,
          work_dir: str | os.PathLike[str] | None = None, checkpoint_every: int = 100,
          mask: np.ndarray | None = None, progress: ProgressFn | None = None, log: LogFn | None = None,
          stop_after_steps: int | None = None, k_max: int | None = None) -> TrainResult:
    """Train an SSCC model and write its checkpoint.

    With ``config.restarts`` R > 1, R networks are trained (seeds ``seed``, ``seed`` + 1000, …, each
    checkpointed to ``OUTPUT.restartN.ckpt`` while it trains, so ``resume`` continues where a run
    stopped), each labels the same sample of training pixels, and the one whose labels agree most with
    the others' is written to OUTPUT (:mod:`hsi_cluster.model.choose_restart`); the seeds, their
    agreement and the choice are recorded in it.

    Args:
        scenes: rasters (ingested on the fly into ``work_dir``), stores, or glob patterns of them
            (``archive/**/*.tif``); several must agree in band count and wavelengths (within 1 nm).
            Patches are drawn from all scenes in proportion to their valid pixels, and the band
            statistics and PCA are fitted on all of them.
        n_clusters: K ≥ 2, or "auto": the network trains with ``k_max`` clusters and K is the elbow of the
            k-means curve of its features (see :mod:`hsi_cluster.model.choose_k`), fitted with the
            centroids at the end; the choice and the curve are recorded in the checkpoint.
        output: checkpoint path; periodic checkpoints go to ``OUTPUT.partial`` until the end.
        config: the training configuration.
        seed: seeds the PCA sample, the initial weights, the patch order and the augmentations.
        device: "auto", "cpu" or "cuda".
        resume: continue from ``OUTPUT.partial`` (or a finished OUTPUT, to train longer).
        overwrite: replace an existing OUTPUT.
        work_dir: cache for stores made from rasters.
        checkpoint_every: steps between periodic checkpoints (and at every epoch end).
        mask: optional bool (y, x) restricting training centres (single scene only).
        progress: ``(step, total_steps, metrics)`` callback per step.
        log: receives one line per epoch and notices.
        stop_after_steps: stop (as if killed) after this many steps, leaving the partial
            checkpoint — for tests of resume.
        k_max: the largest K that ``n_clusters="auto"`` considers (default
            :data:`~hsi_cluster.model.choose_k.DEFAULT_K_MAX`).

    Raises:
        HsiClusterError: bad K, scene, config, output path or resume source; a pattern that matches
            nothing; scenes whose bands disagree.
    """
    # whole numbers of any integer type (numpy's from a notebook sweep); the checkpoint keeps plain ints
    seed = whole_number(seed, "seed")
    k_max = None if k_max is None else whole_number(k_max, option("--k-max"))
    n_clusters = n_clusters if isinstance(n_clusters, str) else whole_number(
        n_clusters, option("-k"), hint="a whole number of clusters or 'auto'")
    options: dict[str, Any] = {"n_clusters": n_clusters, "config": config, "device": device, "work_dir": work_dir,
                               "checkpoint_every": checkpoint_every, "mask": mask, "log": log,
                               "stop_after_steps": stop_after_steps, "k_max": k_max}
    path = Path(output).expanduser().absolute()
    # two trainings of one output would write each other's periodic checkpoints: one at a time (a folder that cannot
    # take the lock file is refused by the output checks)
    writable = path.parent.is_dir() and os.access(path.parent, os.W_OK | os.X_OK)
    with exclusive_lock(output_lock_path(path), busy_output(path), remove=True) if writable else nullcontext():
        _check_interrupted_runs(path, config, resume=resume, overwrite=overwrite)
        if config.restarts > 1:
            return _train_restarts(scenes, path, seed=seed, resume=resume, overwrite=overwrite, progress=progress,
                                   **options)
        return _train_one(scenes, output=output, seed=seed, resume=resume, overwrite=overwrite, progress=progress,
                          **options)


def _start_again() -> str:
    """What a refused ``--resume`` offers instead: a new run, which must replace the interrupted one's steps."""
    return f"start again with {option('--overwrite')} instead of {option('--resume')}"


def _check_interrupted_runs(output: Path, config: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start afresh over the periodic checkpoints of an interrupted run of ``output`` (they would be
    overwritten by the new run's) unless ``overwrite``; with it they are removed now, so a later ``--resume``
    cannot continue the old run."""
    if resume:
        return
    restarts = [restart_checkpoint_path(output, r) for r in range(config.restarts)] if config.restarts > 1 else []
    unfinished = [path for path in [output, *restarts] if partial_checkpoint_path(path).exists()] + [
        path for path in restarts if path.exists()]
    if not unfinished:
        return
    if not overwrite:
        first = unfinished[0]
        kept = partial_checkpoint_path(first) if partial_checkpoint_path(first).exists() else first
        raise HsiClusterError(f"{kept}: an interrupted run of {output.name} kept its steps there; pass "
                              f"{option('--resume')} to continue it, or {option('--overwrite')} to start again and "
                              "discard it")
    for path in unfinished:
        partial_checkpoint_path(path).unlink(missing_ok=True)
        if path in restarts:
            path.unlink(missing_ok=True)


#: Seed step between restarts: restart r of a run of seed s trains with seed s + r · RESTART_SEED_STEP.
RESTART_SEED_STEP = 1000


def restart_checkpoint_path(output: Path, restart: int) -> Path:
    """Where restart ``restart`` (0-based) of a run writing ``output`` keeps its checkpoint until the choice."""
    return output.with_name(f"{output.stem}.restart{restart + 1}{output.suffix}")


def _train_restarts(scenes: list[str | os.PathLike[str]], output: Path, *, seed: int, resume: bool, overwrite: bool,
                    progress: ProgressFn | None, **options: Any) -> TrainResult:
    """Train ``config.restarts`` networks and write the one that agrees most with the others to ``output``."""
    config: TrainConfig = options["config"]
    log: LogFn = options["log"] or (lambda message: None)
    count = config.restarts
    seeds = [seed + r * RESTART_SEED_STEP for r in range(count)]
    paths = [restart_checkpoint_path(output, r) for r in range(count)]
    if resume and output.exists() and not any(p.exists() or partial_checkpoint_path(p).exists() for p in paths):
        raise HsiClusterError(f"--resume: {output.name} was chosen among {count} restarts, which are gone; it cannot "
                              "be trained further: train again without --resume")
    _scene_paths(scenes, output=output, mask=options["mask"], replace=overwrite or resume)  # checks before any work
    results: list[TrainResult] = []
    for r, (path, restart_seed) in enumerate(zip(paths, seeds, strict=True)):
        log(f"restart {r + 1} of {count} (seed {restart_seed})")
        again = resume and (path.exists() or partial_checkpoint_path(path).exists())

        def step_of_all(step: int, total: int, metrics: dict[str, float], r: int = r) -> None:
            assert progress is not None
            progress(r * total + step, count * total, metrics)

        results.append(_train_one(scenes, output=path, seed=restart_seed, resume=again, overwrite=True,
                                  progress=step_of_all if progress is not None else None, **options))
    models = [load_checkpoint(result.checkpoint) for result in results]
    labels = restart_labels([checkpoint.build_model() for checkpoint in models], results[0].stores, config=config,
                            seed=seed, mask=options["mask"], device=device_from(options["device"]))
    choice = choose_restart(labels)
    for r, agreement in enumerate(choice.to_dict()["mean_agreement"]):  # as recorded, so the summary line agrees
        log(f"  restart {r + 1} (seed {seeds[r]}): mean agreement with the others {agreement:.3f} (NMI of their labels)"
            + ("  <- kept" if r == choice.chosen else ""))
    payload = dict(models[choice.chosen].payload)
    payload["training"] = {**payload["training"], "restarts": {"seeds": seeds, **choice.to_dict()}}
    save_checkpoint(payload, output)
    kept = results[choice.chosen]
    curve = None
    if kept.loss_curve is not None:
        curve = kept.loss_curve.replace(output.with_suffix(".loss.png"))
    for result, path in zip(results, paths, strict=True):
        path.unlink(missing_ok=True)
        if result.loss_curve is not None:
            result.loss_curve.unlink(missing_ok=True)
    return replace(kept, checkpoint=output, loss_curve=curve, seconds=sum(r.seconds for r in results),
                   restart_choice=payload["training"]["restarts"])


@torch.no_grad()
def restart_labels(models: list[SSCC], stores: Sequence[Path], *, config: TrainConfig, seed: int,
                   mask: np.ndarray | None, device: torch.device) -> list[np.ndarray]:
    """Each model's labels (N,) of the same random sample of training pixels (as :func:`centroid_sample` draws them)."""
    sampler = centroid_sampler(stores, config=config, seed=seed, mask=mask)
    labels: list[list[np.ndarray]] = [[] for _ in models]
    for model in models:
        model.to(device)
    drawn = 0
    for batch in sampler:
        patches = batch.patch_tensor().to(device)
        for model, out in zip(models, labels, strict=True):
            out.append(model.predict_patches(patches)[0].cpu().numpy())
        drawn += len(patches)
        if drawn >= config.centroid_samples:
            break
    return [np.concatenate(out)[:config.centroid_samples] for out in labels]


def _train_one(scenes: list[str | os.PathLike[str]], *, n_clusters: int | str, output: str | os.PathLike[str],
               config: TrainConfig, seed: int, device: str, resume: bool, overwrite: bool,
               work_dir: str | os.PathLike[str] | None, checkpoint_every: int, mask: np.ndarray | None,
               progress: ProgressFn | None, log: LogFn | None, stop_after_steps: int | None,
               k_max: int | None) -> TrainResult:
    """One training run (see :func:`train`)."""
    output = Path(output).expanduser().absolute()
    partial = partial_checkpoint_path(output)
    head_clusters, k_max = _cluster_count(n_clusters, k_max, config)
    paths = _scene_paths(scenes, output=output, mask=mask, replace=overwrite or resume)
    if resume and not partial.exists() and not output.exists():  # refused before the scenes are ingested
        raise _nothing_to_resume(output, partial)
    torch_device = device_from(device)
    log = log or (lambda message: None)
    work = Path(work_dir) if work_dir else default_work_dir()
    stores, wavelength, identity = _ready_stores(paths, config, head_clusters, work, log,
                                                 flag="--k-max" if k_max else "-k")
    resume_from = _resume_source(output, partial, identity, config, head_clusters, seed, k_max) if resume else None
    run = _build(stores, identity, wavelength, config=config, n_clusters=head_clusters, seed=seed, mask=mask,
                 device=torch_device, resume_from=resume_from, log=log)
    run.k_max = k_max
    resumed = _resume(run, resume_from, output, log) if resume_from is not None else _LoopState()
    if isinstance(resumed, TrainResult):
        return resumed
    state = resumed
    _log_length(run, log)
    state.started = time.perf_counter()
    state.step_at_start = state.step
    hooks = _Hooks(partial=partial, checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps,
                   progress=progress, log=log)
    run.model.train()
    with _stop_at_a_step_on_ctrl_c(hooks):
        while state.step < run.total_steps and state.epoch < run.epochs:
            _train_epoch(run, state, hooks)
    return _finish(run, state, output, partial, log)


def _cluster_count(n_clusters: int | str, k_max: int | None, config: TrainConfig) -> tuple[int, int | None]:
    """The cluster head's K and, for ``-k auto``, the largest K considered (else None), checked."""
    if n_clusters == "auto":
        if config.assignment != "centroids":
            raise HsiClusterError("-k auto chooses K for the feature centroids; it needs assignment: centroids "
                                  f"(the fast preset), not {config.assignment!r}")
        k_max = DEFAULT_K_MAX if k_max is None else k_max
        if k_max < K_MAX_MIN:
            raise HsiClusterError(f"{option('--k-max')} must be at least {K_MAX_MIN}, got {k_max}: "
                                  f"{option('-k', 'auto')} chooses the elbow inside the curve K = 2..k_max, between 3 "
                                  f"and k_max - 1; for 2 or 3 clusters pass {option('-k', 2)} or {option('-k', 3)}")
        return k_max, k_max
    if k_max is not None:
        raise HsiClusterError(f"{option('--k-max')} only applies to {option('-k', 'auto')}; drop it or pass "
                              f"{option('-k', 'auto')} instead of {option('-k', n_clusters)}")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int):
        raise HsiClusterError(f"{option('-k')} must be a whole number of clusters or 'auto', got {n_clusters!r}")
    if n_clusters < 2:
        raise HsiClusterError(f"{option('-k')} must be at least 2 clusters, got {n_clusters}")
    return n_clusters, None


def _scene_paths(scenes: list[str | os.PathLike[str]] | str | os.PathLike[str], *, output: Path,
                 mask: np.ndarray | None, replace: bool) -> list[Path]:
    """The scene files of a run (patterns expanded), after the checks of the mask and the output path."""
    if isinstance(scenes, (str, os.PathLike)):
        scenes = [scenes]
    if len(scenes) != 1 and mask is not None:
        raise HsiClusterError("a training mask needs exactly one scene")
    paths = expand_scene_paths(scenes)
    inputs = {role: file for i, path in enumerate(paths)
              for role, file in scene_inputs(path, "the scene" if len(paths) == 1 else f"scene {i + 1}").items()}
    check_output(output, replace=replace, inputs=inputs,
                 exists_hint=f"pass {option('--overwrite')} to replace it or {option('--resume')} to train it further")
    if not paths:
        raise HsiClusterError("no scene to train on; pass at least one scene")
    if len(paths) != 1 and mask is not None:
        raise HsiClusterError("a training mask needs exactly one scene")
    return paths


def _ready_stores(paths: list[Path], config: TrainConfig, n_clusters: int, work: Path,
                  log: LogFn, *, flag: str = "-k") -> tuple[list[Path], list[float] | None, list[dict[str, Any]]]:
    """Checked stores of the scenes (ingested into ``work`` when needed), their wavelengths and identities."""
    check_scenes_agree(paths, log=log)  # before ingesting anything
    too_small = {path: notice for path in paths
                 for notice in [_check_scene_shape(path, config, alone=len(paths) == 1)] if notice is not None}
    if len(too_small) == len(paths):
        raise HsiClusterError(f"every scene is smaller than the {config.patch_geometry().patch_size}×"
                              f"{config.patch_geometry().patch_size} patch (the first: {paths[0]}); nothing to train on")
    for notice in too_small.values():
        log(notice)
    stores = [prepare_store(path, work, log=log) for path in paths if path not in too_small]
    empty = [store for store in stores if not int(Store.open(store).metadata.get("valid_pixels") or 0)]
    if len(empty) == len(stores):
        where = _source_of(Store.open(stores[0])) if len(stores) == 1 else f"all {len(stores)} scenes"
        raise HsiClusterError(f"{where}: every pixel is nodata, NaN or fill (one value in every band); nothing to "
                              "train on (check the nodata value)")
    for store in empty:  # a tile of an archive outside the swath: the others train
        log(f"warning: {_source_of(Store.open(store))}: every pixel is nodata, NaN or fill (one value in every band); "
            "left out of the training")
    stores = [store for store in stores if store not in empty]
    wavelength = _check_scenes(stores, config, n_clusters, flag=flag)
    identity = [_scene_identity(s) for s in stores]
    return stores, wavelength, identity


def _nothing_to_resume(output: Path, partial: Path) -> HsiClusterError:
    """The error of a ``--resume`` with no checkpoint to continue."""
    return HsiClusterError(f"{option('--resume')}: nothing to resume, neither {partial.name} nor {output.name} exists "
                           f"in {output.parent} (a run stopped before its first periodic checkpoint leaves none); run "
                           f"it without {option('--resume')}")


def _resume_source(output: Path, partial: Path, identity: list[dict[str, Any]], config: TrainConfig,
                   n_clusters: int, seed: int, k_max: int | None = None) -> Checkpoint:
    """The checkpoint that ``--resume`` continues (``OUTPUT.partial``, else OUTPUT), checked against this run."""
    source = partial if partial.exists() else output if output.exists() else None
    if source is None:
        raise _nothing_to_resume(output, partial)
    resume_from = load_checkpoint(source)
    saved = resume_from.payload
    mismatch = _scene_mismatch(saved["scenes"], identity)
    if mismatch:
        raise CheckpointError(f"{option('--resume')}: {source.name} {mismatch}, or {_start_again()}")
    if "lr_step_fraction" not in saved["train_config"]:
        raise CheckpointError(f"{option('--resume')}: {source.name} was made by an older hsicluster, whose learning-rate "
                              f"schedule was counted in epochs; {_start_again()}")
    if _comparable(saved["train_config"]) != _comparable(config.to_dict()):  # before the length: a preset sets it too
        raise CheckpointError(f"{option('--resume')}: {source.name} was made with another configuration (--preset, --config or "
                              f"a training option); pass the same options or {_start_again()}")
    if not resume_from.complete:
        changed = _length_mismatch(saved["train_config"], config.to_dict())
        if changed:
            raise CheckpointError(f"{option('--resume')}: {source.name} {changed}")
    saved_auto = saved["training"].get("k_auto")
    if (saved_auto is None) != (k_max is None):
        fixed = saved["model_config"]["n_clusters"]
        raise CheckpointError(f"{option('--resume')}: {source.name} was trained with "
                              + (f"{option('-k', 'auto')} {option('--k-max', saved_auto['k_max'])}; pass those" if saved_auto
                                 else f"{option('-k', fixed)}; {option('-k', 'auto')} cannot continue it (pass "
                                 f"{option('-k', fixed)})")
                              + f", or {_start_again()}")
    head_clusters = saved["model_config"].get("head_clusters", saved["model_config"]["n_clusters"])
    if head_clusters != n_clusters or saved["training"].get("seed") != seed:
        raise CheckpointError(f"{option('--resume')}: {source.name} was made with another K or seed ({head_clusters} clusters, seed "
                              f"{saved['training'].get('seed')}); pass the same options or {_start_again()}")
    return resume_from


@dataclass
class _Run:
    """What a run trains with: its scenes, model, optimizer, loss, sampler and length (see :func:`_build`)."""

    config: TrainConfig
    seed: int
    n_clusters: int
    mask: np.ndarray | None
    device: torch.device
    stores: list[Path]
    identity: list[dict[str, Any]]
    wavelength: list[float] | None
    spectral: dict[str, Any]
    model: SSCC
    optimizer: torch.optim.Adam
    criterion: SSCCLoss
    balance: ClusterEntropyLoss
    augmenter: Augmenter
    generator: torch.Generator
    sampler: PatchSampler
    centres: int
    length: RunLength
    steps_per_epoch: int
    total_steps: int
    epochs: int
    drop_every: int
    budget: int | None  # the sample budget that applied, if any
    use_amp: bool
    log_every: int  # progress lines inside passes longer than 5 % of the run
    k_max: int | None = None  # -k auto: the largest K considered (the cluster head trains with it)
    k_choice: dict[str, Any] | None = None  # -k auto: the K chosen at the end and its curve
    scale_choice: dict[str, Any] | None = None  # centroid_features auto: the stages kept and their silhouettes
    centroid_outliers: int | None = None  # pixels of tiny clusters the final k-means left out (CentroidHead.fit)


@dataclass
class _LoopState:
    """Where the training loop is: counters, loss history, samples drawn and timing."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)  # losses of the unfinished epoch so far
    elapsed_before: float = 0.0  # seconds of the resumed run's earlier parts
    samples_before: int = 0  # samples drawn by the resumed run's earlier parts
    samples_seen: int = 0  # samples drawn by this process
    step_at_start: int = 0
    started: float = 0.0  # perf_counter when this process's loop began


@dataclass
class _Hooks:
    """The caller's side of the loop: where partial checkpoints go and when, callbacks, a stop for tests, and
    ``interrupted``: the exception of the Ctrl-C (KeyboardInterrupt) or SIGTERM (Terminated) received, None before;
    the loop stops after the step under way, writing the partial checkpoint, and raises it."""

    partial: Path
    checkpoint_every: int
    stop_after_steps: int | None
    progress: ProgressFn | None
    log: LogFn
    interrupted: type[KeyboardInterrupt] | None = None


@contextmanager
def _stop_at_a_step_on_ctrl_c(hooks: _Hooks) -> Iterator[None]:
    """The first Ctrl-C (SIGINT) or SIGTERM (a scheduler's time limit) asks the loop to stop after the step under
    way, so the partial checkpoint holds every finished step and ``--resume`` continues exactly; a second one
    interrupts at once. Main thread only
    (Python handles signals there); elsewhere Ctrl-C stays Python's KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum: int, frame: Any) -> None:
        hooks.interrupted = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        for restored, handler in previous.items():  # a second signal does not wait for the step
            signal.signal(restored, handler)

    for signum in previous:
        signal.signal(signum, request_stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _spectral(stores: list[Path], config: TrainConfig, seed: int, resume_from: Checkpoint | None,
              log: LogFn) -> dict[str, Any]:
    """The frozen spectral projection: the resumed checkpoint's, else fitted on the scenes."""
    if resume_from is not None:
        spectral: dict[str, Any] = resume_from.payload["spectral"]
        return spectral
    on = stores[0].name if len(stores) == 1 else f"{len(stores)} scenes"
    fit = fit_spectral_projection(stores, config.n_components, n_samples=config.pca_samples, seed=seed, log=log,
                                  projection=config.projection)
    kept = ""
    if isinstance(config.n_components, float):
        kept = f" ({'as many as PCA needs for ' if config.projection == 'mnf' else ''}{config.n_components * 100:g} % " \
               "of the variance)"
    log(f"spectral projection fitted on {on}: {fit.screen.summary()}; {fit.components.shape[0]} "
        f"{config.projection.upper()} components{kept}")
    return {"mean": torch.from_numpy(fit.mean), "std": torch.from_numpy(fit.std),
            "components": torch.from_numpy(fit.components), "band_screen": fit.screen.to_record(),
            **training_range(fit, config.augment, seed=seed).to_record()}


def training_range(fit: SpectralFit, augment: AugmentConfig, *, seed: int = 0) -> SpectralRange:
    """Where the training spectra lie in the projected space (:mod:`hsi_cluster.model.spectral_range`), from up to
    :data:`~hsi_cluster.model.spectral_range.RANGE_SAMPLES` of the pixels the projection was fitted on; with the
    radiometric augmentation (``brightness``, ``spectral_tilt``), each under gains drawn as training draws them, so
    that the scenes the model was trained to take for the same ground lie inside."""
    if fit.sample is None:
        raise ValueError("the spectral fit keeps no sample of its pixels")
    rng = np.random.default_rng(seed)
    spectra = fit.sample[rng.permutation(len(fit.sample))[:RANGE_SAMPLES]].astype(np.float32)
    if augment.radiometric:
        spectra = spectra * augment.raw_gains(len(spectra), spectra.shape[1], rng)
    projection = SpectralProjection(fit.mean, fit.std, fit.components).pixel_map()
    return SpectralRange.fit(projection(spectra), seed=seed)


def _build(stores: list[Path], identity: list[dict[str, Any]], wavelength: list[float] | None, *,
           config: TrainConfig, n_clusters: int, seed: int, mask: np.ndarray | None, device: torch.device,
           resume_from: Checkpoint | None, log: LogFn) -> _Run:
    """Seed, spectral projection, model, optimizer, losses, augmenter, generator, sampler and the run's length."""
    torch.manual_seed(seed)
    spectral = _spectral(stores, config, seed, resume_from, log)
    model = SSCC.build(spectral["mean"].numpy(), spectral["std"].numpy(), spectral["components"].numpy(),
                       n_clusters=n_clusters, backbone=config.backbone, backbone_kwargs=config.backbone_kwargs,
                       head_hidden=config.head_hidden, instance_dim=config.instance_dim)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    criterion = SSCCLoss(instance_weight=config.instance_weight, cluster_weight=config.cluster_weight,
                         temperature=config.temperature, offdiag_weight=config.offdiag_weight)
    balance = ClusterEntropyLoss()
    radiometry = (RadiometricBasis.from_projection(spectral["mean"], spectral["std"], spectral["components"],
                                                  device=device) if config.augment.radiometric else None)
    augmenter = Augmenter(config.augment, radiometry)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    # Holes inside patches read as the spectral mean (pooled over the scenes), as in predict.
    sampler = PatchSampler(stores, patch_size=config.patch_size, batch_size=config.batch_size, seed=seed, mask=mask,
                           fill=spectral["mean"].numpy(), transform=model.projection.pixel_map())
    centres = sampler.valid_centres()
    shards = max(1, config.workers)
    full_pass = sampler.batches_per_epoch(shards=shards)  # workers each drop a partial batch
    length = run_length(config, centres, full_pass)
    if length.contrastive_steps == 0:
        raise HsiClusterError(f"fewer usable pixels than one batch of {config.batch_size}; lower {option('--batch-size')}")
    sampler.fraction = length.fraction
    steps_per_epoch = sampler.batches_per_epoch(shards=shards) if length.fraction < 1 else full_pass
    if steps_per_epoch == 0:
        raise HsiClusterError(f"fewer usable pixels than one batch of {config.batch_size}; lower {option('--batch-size')}")
    total_steps = length.contrastive_steps + config.self_label_epochs * steps_per_epoch
    return _Run(config=config, seed=seed, n_clusters=n_clusters, mask=mask, device=device, stores=stores,
                identity=identity, wavelength=wavelength, spectral=spectral, model=model, optimizer=optimizer,
                criterion=criterion, balance=balance, augmenter=augmenter, generator=generator, sampler=sampler,
                centres=centres, length=length, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                epochs=math.ceil(length.contrastive_steps / steps_per_epoch) + config.self_label_epochs,
                drop_every=lr_drop_interval(config, total_steps),
                budget=None if length.rule == "steps" else config.samples,
                use_amp=config.amp and device.type == "cuda", log_every=math.ceil(total_steps / 20))


def _resume(run: _Run, resume_from: Checkpoint, output: Path, log: LogFn) -> _LoopState | TrainResult:
    """Load a checkpoint's weights, optimizer and generator into ``run`` and return its loop state;
    a finished run of this length returns its result instead (nothing trained or written)."""
    state = resume_from.payload["training"]
    run.model.load_state_dict({key: value for key, value in resume_from.payload["state_dict"].items()
                               if not key.startswith("centroid_head.")})  # refitted at the end
    run.optimizer.load_state_dict(state["optimizer"])
    run.generator.set_state(state["generator"].to(run.generator.get_state().device))
    step, epoch, batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
    history, elapsed_before = list(state["history"]), float(state.get("seconds", 0.0))
    epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
    if resume_from.complete and (step >= run.total_steps or epoch >= run.epochs):
        plotted = output.with_suffix(".loss.png")  # drawn again when the run stopped between the two writes
        curve = plotted if plotted.is_file() else write_loss_curve(history, plotted)
        return TrainResult(checkpoint=output, loss_curve=curve, steps=step,
                           epochs=_epochs_begun(epoch, batch_in_epoch), seconds=elapsed_before, samples_per_second=0.0,
                           history=history,
                           already_finished=True, samples=int(state.get("samples_drawn", 0)),
                           budget=run.budget, total_steps=int(state.get("total_steps", step)), stores=list(run.stores))
    if resume_from.complete and batch_in_epoch and history and history[-1]["epoch"] == epoch + 1:
        history.pop()  # the finished run's last, part-way epoch: this run finishes it and records it whole
    log(f"resuming from {resume_from.path.name} at step {step} (epoch {epoch + 1}, batch {batch_in_epoch})")
    samples_before = int(state.get("samples_drawn", step * run.config.batch_size))
    return _LoopState(step=step, epoch=epoch, batch_in_epoch=batch_in_epoch, history=history,
                      epoch_losses=epoch_losses, elapsed_before=elapsed_before, samples_before=samples_before)


def _log_length(run: _Run, log: LogFn) -> None:
    """The line that says how long the run is and what decided it."""
    config, length = run.config, run.length
    passes = length.contrastive_steps * config.batch_size / run.centres
    decided = {"steps": "set in steps", "samples": "the budget of {samples:,} samples",
               "epochs (cap)": "the cap of {epochs} epochs on the budget of {samples:,} samples",
               "epochs": "{epochs} epochs"}[length.rule].format(samples=config.samples or 0, epochs=config.epochs)
    epochs = math.ceil(run.total_steps / run.steps_per_epoch)  # as the progress counts them (the last may be short)
    log(f"training length: {run.total_steps} steps of {config.batch_size} "
        f"({run.total_steps * config.batch_size:,} samples, "
        f"{passes:.3g} passes over {run.centres:,} valid pixels in {counted(epochs, 'epoch')} of up to "
        f"{run.steps_per_epoch} steps; {decided})"
        + (f"; each pass draws {length.fraction:.1%} of every block's pixels" if length.fraction < 1 else "")
        + f"; lr ×{config.lr_gamma:g} every {run.drop_every} steps")


def _progress_line(run: _Run, state: _LoopState) -> str:
    """``step S/T (P%), N samples, elapsed E, ETA R``."""
    step, total_steps = state.step, run.total_steps
    done = step - state.step_at_start
    eta = (time.perf_counter() - state.started) / done * (total_steps - step) if done else float("nan")
    return (f"step {step}/{total_steps} ({step / total_steps:.0%}), {state.samples_before + state.samples_seen:,} "
            f"samples, elapsed {duration_text(state.elapsed_before + time.perf_counter() - state.started)}, "
            f"ETA {duration_text(eta) if math.isfinite(eta) else '?'}")


def _payload(run: _Run, state: _LoopState, complete: bool) -> dict[str, Any]:
    """The checkpoint mapping of the run as it stands."""
    training = {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "seed": run.seed,
                "optimizer": run.optimizer.state_dict(),
                "generator": run.generator.get_state().cpu(), "history": state.history,
                "epoch_losses": list(state.epoch_losses),
                "seconds": state.elapsed_before + time.perf_counter() - state.started,
                "total_steps": run.total_steps,
                "steps_per_epoch": run.steps_per_epoch, "device": str(run.device),
                "samples_budget": run.budget, "samples_drawn": state.samples_before + state.samples_seen,
                "length_rule": run.length.rule, "pass_fraction": run.length.fraction, "valid_centres": run.centres,
                "lr_drop_every": run.drop_every}
    if run.k_max is not None:
        training["k_auto"] = {"k_max": run.k_max}
    if run.k_choice is not None:
        training["k_choice"] = run.k_choice
    if run.scale_choice is not None:
        training["scale_choice"] = run.scale_choice
    if run.centroid_outliers is not None:
        training["centroid_outliers_left_out"] = run.centroid_outliers
    return make_payload(run.model, train_config=run.config.to_dict(), spectral=run.spectral, scenes=run.identity,
                        wavelength=run.wavelength, complete=complete, training=training)


def _train_step(run: _Run, state: _LoopState, batch: Any) -> tuple[float, dict[str, float]]:
    """One optimizer step on a batch; returns its loss and loss terms."""
    config, device, model = run.config, run.device, run.model
    for group in run.optimizer.param_groups:  # the schedule is a function of the step: nothing to resume
        group["lr"] = lr_at(config, state.step, run.total_steps)
    projected = batch.patch_tensor().to(device, non_blocking=True)  # projected by the sampler; pinned on CUDA
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=run.use_amp):
        if state.step < run.length.contrastive_steps:
            loss, terms = _contrastive_step(model, projected, run.augmenter, run.generator, run.criterion,
                                            run.balance, config.entropy_weight)
        else:
            loss, terms = _self_label_step(model, projected, run.augmenter, run.generator,
                                           config.self_label_threshold)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    state.step += 1
    state.batch_in_epoch += 1
    state.samples_seen += len(projected)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise HsiClusterError(f"training diverged at step {state.step} (loss {value}); lower the learning rate")
    state.epoch_losses.append(value)
    return value, terms


def _train_epoch(run: _Run, state: _LoopState, hooks: _Hooks) -> None:
    """The rest of the current epoch: steps, progress, periodic checkpoints, then the epoch's bookkeeping.

    Raises KeyboardInterrupt after ``hooks.stop_after_steps`` steps or on Ctrl-C (after the step under way), with
    the partial checkpoint written.
    """
    run.sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    loader = torch.utils.data.DataLoader(run.sampler, batch_size=None, num_workers=run.config.workers,
                                         collate_fn=None, pin_memory=run.device.type == "cuda")
    stop_after = hooks.stop_after_steps
    # On CUDA one thread cuts (and pins) the next batch while the device computes. Not on the CPU: there the
    # thread takes cores from the step (2 cores: 0.106 s per step against 0.090 without it), and DataLoader
    # workers read ahead by themselves.
    ahead = run.device.type == "cuda" and not run.config.workers
    for batch in (prefetched(loader) if ahead else loader):
        tick = time.perf_counter()
        value, terms = _train_step(run, state, batch)
        if hooks.progress:
            rate = state.samples_seen / max(time.perf_counter() - state.started, 1e-9)
            hooks.progress(state.step, run.total_steps,
                           {"loss": value, "inst": terms["instance"], "cc": terms["cluster"], "samples/s": rate,
                            "step_s": time.perf_counter() - tick,
                            "samples": float(state.samples_before + state.samples_seen),
                            "lr": run.optimizer.param_groups[0]["lr"]})
        if hooks.interrupted is not None:  # Ctrl-C: stop here as a test's stop_after_steps does, the partial checkpoint written
            stop_after = hooks.stop_after_steps = state.step
        if state.step >= run.total_steps or (stop_after is not None and state.step >= stop_after):
            break
        inside = state.batch_in_epoch < run.steps_per_epoch
        if state.step % run.log_every == 0 and inside and run.steps_per_epoch > run.log_every:
            hooks.log(f"{_progress_line(run, state)}: loss {value:.4f}, lr {run.optimizer.param_groups[0]['lr']:.2e}")
        if hooks.checkpoint_every and state.step % hooks.checkpoint_every == 0 and run.config.workers == 0 and \
                inside:  # at the epoch's end, the epoch checkpoint follows
            save_checkpoint(_payload(run, state, False), hooks.partial)
    stop = stop_after is not None and state.step >= stop_after and state.step < run.total_steps
    if stop and state.batch_in_epoch < run.steps_per_epoch:
        save_checkpoint(_payload(run, state, False), hooks.partial)
        raise (hooks.interrupted or KeyboardInterrupt)(f"stopped after {state.step} steps as asked")
    # the run's last epoch may end part-way (its length is in steps): its position is kept, so that a resume
    # with a longer run continues that epoch instead of skipping the rest of it
    _end_epoch(run, state, hooks.log, keep_position=0 < state.batch_in_epoch < run.steps_per_epoch)
    if state.step < run.total_steps:
        save_checkpoint(_payload(run, state, False), hooks.partial)
        if stop:  # stopped on the epoch's last batch: after its end-of-epoch bookkeeping
            raise (hooks.interrupted or KeyboardInterrupt)(f"stopped after {state.step} steps as asked")


def _epochs_begun(epoch: int, batch_in_epoch: int) -> int:
    """Epochs a run has begun: those finished, and the one it stopped part-way through (a length in steps)."""
    return epoch + (batch_in_epoch > 0)


def _end_epoch(run: _Run, state: _LoopState, log: LogFn, *, keep_position: bool = False) -> None:
    """Record the finished epoch's mean loss in the history, log it and move on to the next epoch.

    ``keep_position``: the run ends part-way through this epoch; it is recorded and logged, but the loop
    state stays inside it (a resume to a longer run finishes it, and replaces this history entry).
    """
    mean_loss = float(np.mean(state.epoch_losses)) if state.epoch_losses else float("nan")
    lr = run.optimizer.param_groups[0]["lr"]
    state.history.append({"epoch": state.epoch + 1, "step": state.step, "loss": mean_loss, "lr": lr})
    log(f"epoch {state.epoch + 1}/{run.epochs}: mean loss {mean_loss:.4f}, lr {lr:.2e}, "
        f"{_progress_line(run, state)}")
    if keep_position:
        return
    state.epoch_losses = []
    state.epoch += 1
    state.batch_in_epoch = 0


def _finish(run: _Run, state: _LoopState, output: Path, partial: Path, log: LogFn) -> TrainResult:
    """Fit the centroid head if asked, write the final checkpoint and loss curve, drop the partial checkpoint."""
    config = run.config
    if config.assignment == "centroids":
        features, blocks = centroid_sample(run.model, run.stores, config=config, seed=run.seed, mask=run.mask,
                                           fill=run.spectral["mean"].numpy(), device=run.device)
        n_clusters = run.n_clusters
        if run.k_max is not None:
            n_clusters = _choose_k(run, features, blocks, log)
        log(f"fitting {n_clusters} feature centroids on {len(features)} training pixels")
        if config.centroid_features == "auto" and blocks > 1:
            head = _choose_scales(run, features, n_clusters, blocks, log)
        else:
            head = CentroidHead.fit(features, n_clusters, seed=run.seed, blocks=blocks)
        run.centroid_outliers = head.outliers_left_out
        if head.outliers_left_out:
            log(f"  {head.outliers_left_out} outlying pixels formed clusters under {TINY_CLUSTER_SHARE:.0%} of the "
                "mean cluster size; k-means was fitted again without them (they take their nearest centroid)")
        run.model.set_centroid_head(head, scales=config.centroids_read_scales)
    seconds = state.elapsed_before + time.perf_counter() - state.started
    save_checkpoint(_payload(run, state, True), output)
    partial.unlink(missing_ok=True)
    curve = write_loss_curve(state.history, output.with_suffix(".loss.png"))
    return TrainResult(checkpoint=output, loss_curve=curve, steps=state.step,
                       epochs=_epochs_begun(state.epoch, state.batch_in_epoch), seconds=seconds,
                       samples_per_second=state.samples_seen / max(time.perf_counter() - state.started, 1e-9),
                       history=state.history, samples=state.samples_before + state.samples_seen,
                       budget=run.budget, total_steps=run.total_steps, k_choice=run.k_choice,
                       stores=list(run.stores))


#: ``-k auto`` warns when ``--k-max`` leaves fewer sampled pixels per cluster than this.
K_AUTO_MIN_PIXELS = 10
#: Epoch number of the sampler plan that draws the pixels of the feature centroids (not a training epoch).
CENTROID_PLAN_EPOCH = 1_000_003


def _choose_k(run: _Run, features: np.ndarray, blocks: int, log: LogFn) -> int:
    """``-k auto``: the elbow K of the centroid sample's features, logged and kept for the checkpoint."""
    assert run.k_max is not None
    if run.k_max * K_AUTO_MIN_PIXELS > len(features):
        log(f"warning: {option('--k-max', run.k_max)} leaves fewer than {K_AUTO_MIN_PIXELS} of the {len(features)} "
            f"sampled pixels per cluster at the end of the curve, where k-means splits noise and the elbow follows "
            f"{option('--k-max')}; "
            + (f"choose a {option('--k-max')} of at most {len(features) // K_AUTO_MIN_PIXELS}"
               if len(features) // K_AUTO_MIN_PIXELS >= K_MAX_MIN else f"too few to choose K: pass {option('-k')}"))
    log(f"-k auto: k-means on {len(features)} training pixels for K = 2..{run.k_max} ({RULE})")
    choice = choose_k(CentroidHead.weigh(features, blocks), run.k_max, seed=run.seed)
    for k, inertia, distance in zip(choice.candidates, choice.inertia, choice.distance, strict=True):
        log(f"  K = {k:2d}: inertia per pixel {inertia:.4f}, below the chord by {distance:.3f}"
            + ("  <- chosen" if k == choice.k else ""))
    run.k_choice = choice.to_dict()
    return choice.k


def _choose_scales(run: _Run, features: np.ndarray, n_clusters: int, blocks: int, log: LogFn) -> CentroidHead:
    """``centroid_features: auto``: the centroids of the best-separated stage set, logged and kept for the checkpoint."""
    assert isinstance(run.model.backbone, DenseBackbone)  # the config check asks for it
    fields = run.model.backbone.scale_fields
    head, choice = choose_scales(features, n_clusters, blocks, seed=run.seed)
    log(f"centroid_features auto: k-means on {len(choice.candidates)} sets of stages; the best-separated "
        "partition (silhouette on every stage joined) is kept")
    for stages, silhouette in zip(choice.candidates, choice.silhouette, strict=True):
        names = " + ".join(f"{fields[i]}×{fields[i]}" for i in stages)
        log(f"  centroids on {names}: silhouette {silhouette:.3f}" + ("  <- kept" if stages == choice.stages else ""))
    run.scale_choice = choice.to_dict()
    return head


def centroid_sampler(stores: Sequence[Path], *, config: TrainConfig, seed: int, mask: np.ndarray | None,
                     **options: Any) -> PatchSampler:
    """The sampler of the centroid sample: its own plan, the same share of every block's valid centres, about
    ``config.centroid_samples`` in all (``options``: ``fill``, ``transform`` of :class:`PatchSampler`)."""
    sampler = PatchSampler(list(stores), patch_size=config.patch_size, batch_size=config.batch_size, seed=seed,
                           mask=mask, epoch=CENTROID_PLAN_EPOCH, keep_partial=True, **options)
    sampler.fraction = min(1.0, config.centroid_samples / max(sampler.valid_centres(), 1))
    return sampler


@torch.no_grad()
def centroid_sample(model: SSCC, stores: Sequence[Path], *, config: TrainConfig, seed: int,
                    mask: np.ndarray | None, fill: np.ndarray, device: torch.device) -> tuple[np.ndarray, int]:
    """The trained features of a random sample of training pixels, and the blocks they join.

    Draws up to ``config.centroid_samples`` centres with the training sampler, the same share of
    every block's valid centres (so every region of every scene contributes in proportion to its
    valid pixels, however large the scenes), and encodes their patches in eval mode: the features
    of every scale (one block per stage) when ``config.centroid_features`` is "scales" or "auto",
    else the last stage's (one block).

    Returns:
        ``(features, blocks)``: (N, F) float32 features, N ≤ ``centroid_samples``, and the number of
        equal blocks F splits into.
    """
    sampler = centroid_sampler(stores, config=config, seed=seed, mask=mask, fill=fill,
                               transform=model.projection.pixel_map())
    scales = config.centroids_read_scales
    backbone = model.backbone
    if scales and not isinstance(backbone, DenseBackbone):
        raise HsiClusterError(f"centroid_features {config.centroid_features!r} needs the dense backbone: set "
                              "centroid_features: last")
    model.eval()
    features: list[np.ndarray] = []
    drawn = 0
    for batch in sampler:
        projected = batch.patch_tensor().to(device)
        encoded = backbone.forward_scales(projected) if isinstance(backbone, DenseBackbone) and scales \
            else model.encode(projected)
        features.append(encoded.float().cpu().numpy())
        drawn += len(projected)
        if drawn >= config.centroid_samples:
            break
    model.train()
    blocks = backbone.n_scales if isinstance(backbone, DenseBackbone) and scales else 1
    return np.concatenate(features)[:config.centroid_samples], blocks


def _contrastive_step(model: SSCC, projected: torch.Tensor, augmenter: Augmenter, generator: torch.Generator,
                      criterion: SSCCLoss, balance: ClusterEntropyLoss,
                      entropy_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """SSCC's objective on two augmented views of projected patches (N, C, p, p)."""
    view1, view2 = two_views(projected, augmenter, generator)
    features1, features2 = model.encode(view1), model.encode(view2)
    probs1 = probs(model.cluster_head(features1))
    probs2 = probs(model.cluster_head(features2))
    if model.instance_projector is None:  # the paper: NT-Xent on the cluster probabilities
        terms = criterion(probs1, probs2)
    else:  # NT-Xent on a separate instance embedding (Contrastive Clustering, Li et al. 2021)
        terms = criterion(probs1, probs2, instance1=model.instance_projector(features1),
                          instance2=model.instance_projector(features2))
    loss = terms["loss"]
    if entropy_weight > 0:
        loss = loss + entropy_weight * (balance(probs1) + balance(probs2))
    return loss, {"instance": float(terms["instance"].detach()), "cluster": float(terms["cluster"].detach())}


def _self_label_step(model: SSCC, projected: torch.Tensor, augmenter: Augmenter, generator: torch.Generator,
                     threshold: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Self-labelling (SCAN, Van Gansbeke et al. 2020): confident clean-patch labels teach augmented views.

    Patches whose unaugmented cluster probability exceeds ``threshold`` give pseudo-labels; an
    augmented view is trained on them with cross-entropy weighted by inverse label frequency so
    large clusters cannot swallow small ones.
    """
    with torch.no_grad():
        confidence, pseudo = probs(model.forward_projected(projected)).float().max(dim=1)
    confident = confidence > threshold
    logits = model.forward_projected(augmenter(projected, generator)).float()
    if not bool(confident.any()):
        return logits.sum() * 0.0, {"instance": 0.0, "cluster": 0.0}
    counts = torch.bincount(pseudo[confident], minlength=logits.shape[1]).float()
    weights = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()), 0.0)
    loss = torch.nn.functional.cross_entropy(logits[confident], pseudo[confident], weight=weights)
    return loss, {"instance": float(confident.float().mean()), "cluster": float(loss.detach())}


def write_loss_curve(history: list[dict[str, float]], path: Path) -> Path | None:
    """Plot mean loss per epoch to a PNG; returns None when there is nothing to plot."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    losses = [h["loss"] for h in history]
    ax.plot([h["epoch"] for h in history], losses, marker="o", ms=3)
    # log axis: the loss falls fast in the first epochs and a linear axis shows the rest as flat; symlog
    # when a loss is ≤ 0 (the cluster-balance term can push it below zero)
    finite = [v for v in losses if math.isfinite(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
    elif finite:
        ax.set_yscale("symlog", linthresh=max(1e-3, min((abs(v) for v in finite if v != 0), default=1.0)))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss (log scale)")
    ax.set_title("SSCC training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, ".tmp.png") as scratch:
            fig.savefig(scratch)
    finally:
        plt.close(fig)
    return path
