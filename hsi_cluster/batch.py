"""``batch``: label many scenes with one model on dask.distributed.

One task per scene (:func:`label_scene`, which runs the tiled ``predict`` on a worker). The client
keeps ``OUTDIR/manifest.json``: one record per scene (source, output, status, error, timings, pixel
counts, sha256 of the output, attempts), rewritten atomically as each scene finishes, so it survives
a crash of the client. A rerun skips the scenes whose output still matches its recorded checksum and
whose files (the scene's, an ENVI header, an EnMAP ``METADATA.XML``) are unchanged, and redoes the others;
an interrupted scene continues from its finished tiles (``predict --resume``).

Scheduling, retries after a lost worker and the dashboard are dask.distributed's: a
:class:`~distributed.LocalCluster` of worker processes by default, or any running scheduler
(``dask scheduler`` + ``dask worker``, dask-jobqueue, dask-kubernetes) by address. Workers must see
the scenes, the checkpoint and OUTDIR at the same paths (a shared filesystem on a cluster).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsi_cluster import __version__
from hsi_cluster.errors import HsiClusterError, MetadataWarning, OutputError, counted, first_line, storage_error
from hsi_cluster.geo import DEFAULT_TILE, check_tile_size
from hsi_cluster.io.files import check_name_length, exclusive_lock, sha256_of, write_text_atomic
from hsi_cluster.io.label_raster import sidecar_path
from hsi_cluster.io.paths import expand_scene_paths
from hsi_cluster.io.scene import scene_files_identity

MANIFEST = "manifest.json"
ATTEMPTS_DIR = ".attempts"
#: Held (an exclusive ``flock``) by the batch writing to OUTDIR; a second batch on the same OUTDIR is refused.
LOCK_FILE = ".hsicluster-batch.lock"
OUTPUT_SUFFIX = "_labels.tif"
#: The fields of a scene's manifest record that tell whether it changed since it was labelled (:func:`_source_fields`).
SOURCE_FIELDS = ("source_mtime_ns", "source_companions")

ProgressFn = Callable[[int, int, dict[str, Any]], None]
"""``(scenes_finished, scenes_total, record_just_finished)``."""


def output_paths(sources: Sequence[Path], outdir: Path) -> dict[Path, Path]:
    """Where each scene's labels go: OUTDIR / (path relative to the scenes' common folder) with
    ``_labels.tif`` in place of the (last) extension, so scenes of the same name in different folders
    do not collide (``HLS.S30.T33UVP.2024001.v2.0.tif`` → ``HLS.S30.T33UVP.2024001.v2.0_labels.tif``)."""
    if not sources:
        return {}
    common = Path(os.path.commonpath([str(s.parent) for s in sources]))
    targets: dict[Path, Path] = {}
    for source in sources:
        relative = source.relative_to(common)
        targets[source] = outdir / relative.parent / (relative.stem + OUTPUT_SUFFIX)
    seen: dict[Path, Path] = {}
    resolved_sources = {source.resolve() for source in sources}
    for source, target in targets.items():
        if target.resolve() in resolved_sources:
            raise HsiClusterError(f"{target}: is a scene and would also be the labels of {source}; choose an OUTDIR "
                                  "outside the scenes' folders")
        if target in seen:
            raise HsiClusterError(f"{source} and {seen[target]} would both write {target}; rename one of them")
        seen[target] = source
    return targets


def label_scene(source: str, checkpoint: str, output: str, tiles: int, attempts_dir: str,
                torch_threads: int | None = None, match_brightness: bool = False) -> dict[str, Any]:
    """The task run on a worker: tiled ``predict`` of one scene (``match_brightness``: as ``predict``'s).

    ``torch_threads`` sets torch's thread count (default: the host's cores shared among the
    worker's task slots), so that concurrent tasks do not oversubscribe the cores.

    A problem with the scene or model (:class:`HsiClusterError`) is returned as a failed record
    instead of raised, so dask does not retry what cannot succeed; anything else raises and is
    retried by dask. Each attempt leaves a file in ``attempts_dir`` (holding the worker's process id)
    so the client can count them.

    Returns:
        the scene's manifest record (without the client-side fields).
    """
    import torch

    from hsi_cluster.predict import predict_scene, result_warnings

    Path(attempts_dir).mkdir(parents=True, exist_ok=True)
    (Path(attempts_dir) / f"{attempt_stem(output)}.{uuid.uuid4().hex[:8]}").write_text(str(os.getpid()))
    worker = _current_worker()
    slots = worker.state.nthreads if worker is not None else None
    threads = torch_threads or (max(1, (os.cpu_count() or 1) // slots) if slots else None)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    record: dict[str, Any] = {"source": source, "output": output,
                              "worker": str(worker.address) if worker is not None else None}
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        # the scene's metadata warnings go to the client with the record (a worker's stderr is not the user's)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MetadataWarning)
            result = predict_scene(source, checkpoint, output, tiles=tiles, device="auto", overwrite=True,
                                   resume=True, match_brightness=match_brightness)
    except HsiClusterError as exc:
        return {**record, "status": "failed", "error": str(exc), "seconds": time.perf_counter() - started}
    except Exception as exc:  # a full disk, a name too long (OSError, or GDAL's CPLE_FileIOError): one line in the
        # record, not a retried worker traceback
        cause = storage_error(exc)
        if cause is None:
            raise
        return {**record, "status": "failed", "error": f"{cause[0]}; {cause[1]}, then rerun the batch",
                "seconds": time.perf_counter() - started}
    notices = result_warnings(source, result)
    notices += dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, MetadataWarning))
    return {**record, "status": "done", "error": None, "seconds": result.seconds, "pixels": result.pixels,
            "valid_pixels": result.valid_pixels, "tiles": result.tiles, "tiles_resumed": result.tiles_resumed,
            "counts": {str(k): v for k, v in result.counts.items()}, "sha256": sha256_of(Path(output)),
            "spread": result.spread, "units_differ": result.units_differ,
            "outside_share": result.outside_share, "matching_gain": result.matching_gain,
            "matching_tilt": result.matching_tilt,
            "another_acquisition": result.range_fit is not None and result.range_fit.another_acquisition,
            "applied_gain": result.applied_gain, "applied_tilt": result.applied_tilt, "warnings": notices}


def _current_worker() -> Any | None:
    """The dask worker running this task, or None outside one (a plain call)."""
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


@dataclass
class BatchResult:
    """What a finished batch reports."""

    manifest: Path
    records: list[dict[str, Any]]
    seconds: float
    dashboard: str | None = None
    workers: int = 0
    #: STAC files of an earlier ``--stac`` run that described labels this run replaced, removed (see run_batch).
    stale_stac: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "failed"]

    @property
    def done(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "done"]

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "skipped"]


def _source_fields(source: Path) -> dict[str, Any]:
    """A scene's manifest fields that tell whether it changed since it was labelled: ``source_mtime_ns`` (None for
    a missing scene) and ``source_companions``, the files read with it (an ENVI header, an EnMAP
    ``METADATA.XML``), both from :func:`~hsi_cluster.io.scene.scene_files_identity`; the latter is left out for a
    lone file, as in manifests of versions that watched the scene's own file alone."""
    if not source.exists():
        return {"source_mtime_ns": None}
    identity = scene_files_identity(source)
    fields = {"source_mtime_ns": identity["mtime_ns"]}
    if "companions" in identity:
        fields["source_companions"] = identity["companions"]
    return fields


@dataclass
class Manifest:
    """OUTDIR/manifest.json: the batch's model, settings and one record per scene, by source."""

    path: Path
    header: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the records of a manifest made with another model or tiles (dropped), and that manifest's header
    replaced: dict[str, dict[str, Any]] = field(default_factory=dict)
    replaced_header: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, header: dict[str, Any], log: Callable[[str], None] | None = None) -> Manifest:
        """The manifest at ``path``; its records are kept only if it was made with the same model and tiles (else
        in :attr:`replaced`). An unreadable one is kept beside as ``manifest.json.bak``, with a warning."""
        manifest = cls(path, header)
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return manifest
        except (OSError, ValueError) as exc:  # start afresh: outputs are checked against their checksums anyway
            backup = path.with_name(path.name + ".bak")
            shutil.copyfile(path, backup)
            if log:
                log(f"warning: {path}: unreadable ({first_line(exc)}); kept as {backup.name}, and every scene is "
                    "labelled again")
            return manifest
        listed = saved.get("scenes")
        scenes: dict[str, dict[str, Any]] = {source: record for source, record in listed.items()
                                             if isinstance(record, dict)} if isinstance(listed, dict) else {}
        moved_from = saved.get("outdir")
        if isinstance(moved_from, str) and moved_from != header.get("outdir"):  # OUTDIR moved or copied: its outputs too
            for record in scenes.values():
                output = Path(str(record.get("output")))
                if output.is_relative_to(moved_from):
                    record["output"] = str(path.parent / output.relative_to(moved_from))
            scenes = _moved_sources(scenes, Path(moved_from), path.parent)
        if all(saved.get(key) == header.get(key) for key in ("model_sha256", "tiles")):
            manifest.records = scenes
        else:
            manifest.replaced, manifest.replaced_header = scenes, saved
        return manifest

    def check_not_mixing(self, sources: list[Path], *, remove: bool, log: Callable[[str], None]) -> None:
        """Refuse a run that would leave labels of another model (or tiles) in OUTDIR beside this one's, or with
        ``remove`` remove those labels (a pipeline's batch step after its model changed): the manifest made with
        them lists scenes, still labelled there, that this run does not label again."""
        labelled_now = set(sources)
        outputs = {source: Path(str(record.get("output"))) for source, record in self.replaced.items()
                   if Path(source) not in labelled_now and record.get("status") in ("done", "skipped")}
        left = {source: output for source, output in outputs.items() if output.is_file()}
        if not left:
            return
        old = self.replaced_header
        made_with = (f"the model {Path(str(old.get('model'))).name} (sha256 {str(old.get('model_sha256'))[:12]}…)"
                     if old.get("model_sha256") != self.header["model_sha256"] else f"--tiles {old.get('tiles')}")
        what = (f"the labels of {counted(len(left), 'scene')} made with {made_with} "
                f"({Path(next(iter(left))).name}{', …' if len(left) > 1 else ''}), which this run does not label again")
        if not remove:
            raise OutputError(f"{self.path.parent}: holds {what}: the folder would mix two models' labels, and its "
                              "manifest would forget those. Pass all its scenes, or choose another OUTDIR")
        from hsi_cluster.io.stac import remove_stale_item

        for output in left.values():
            output.unlink()
            sidecar_path(output).unlink(missing_ok=True)
            remove_stale_item(str(output))
        log(f"removed {what}")

    def save(self) -> None:
        """Write atomically (temporary file, then rename)."""
        body = {**self.header, "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "scenes": self.records}
        write_text_atomic(self.path, json.dumps(body, indent=2))

    def is_current(self, source: Path, output: Path, *, match_brightness: bool = False) -> bool:
        """Whether ``source`` finished before and its output is still the file recorded (with its sidecar of
        class names), labelled at the gain ``match_brightness`` gives it (a scene taken for another acquisition is
        labelled again when the option changes; the others are not)."""
        record = self.records.get(str(source))
        if not record or record.get("status") not in ("done", "skipped") or not output.is_file() \
                or not sidecar_path(output).is_file():
            return False
        if match_brightness and "another_acquisition" not in record:  # labelled before batch could match: unknown
            return False
        matched = record.get("applied_gain", 1.0) != 1.0 or record.get("applied_tilt", 0.0) != 0.0
        if matched != (match_brightness and bool(record.get("another_acquisition"))):
            return False
        current = _source_fields(source)
        if current["source_mtime_ns"] is None or any(record.get(key) != current.get(key) for key in SOURCE_FIELDS):
            return False
        return record.get("sha256") == sha256_of(output)


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[tuple[Any, int | None]]:
    """A dask.distributed client and the torch threads each task should use.

    To ``scheduler`` when given (threads: None, each task works it out from its worker), else to a
    new LocalCluster of ``workers`` single-task processes (default: one per core, at most 4) that
    share the cores between them.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise HsiClusterError(f"--scheduler {scheduler}: cannot connect ({exc}); start it with "
                                  "`dask scheduler` or check the address") from exc
        try:
            yield client, None
        finally:
            client.close()
        return
    cores = os.cpu_count() or 1
    n_workers = workers or max(1, min(cores, 4))
    # One task at a time per worker; its torch uses the worker's share of the cores. dask's default
    # MALLOC_TRIM_THRESHOLD_ for workers turns off glibc's adaptive mmap threshold, so every tile-sized
    # buffer is mapped and faulted in afresh (measured: predict ~12 % slower); keep the other settings.
    environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if key != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _children_ignore_ctrl_c():
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=40)
    client = Client(cluster)
    try:
        yield client, max(1, cores // n_workers)
    finally:
        client.close()
        cluster.close()


@contextmanager
def _children_ignore_ctrl_c() -> Iterator[None]:
    """Start processes that ignore SIGINT (an ignored signal stays ignored in a child, and Python keeps it so): a
    terminal's Ctrl-C reaches the whole process group, and each worker printed its KeyboardInterrupt traceback
    while the client was already closing the cluster in order. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _dashboard(client: Any, *, local: bool) -> str | None:
    """The scheduler's dashboard link; None when it has none, or when a local one cannot serve it (no bokeh)."""
    if local and importlib.util.find_spec("bokeh") is None:  # the page would only say that bokeh is missing
        return None
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001 — the link is a nicety, never a reason to fail
        return None
    return client.dashboard_link if "dashboard" in services else None


def run_batch(scenes: Sequence[str | os.PathLike[str]], checkpoint: str | os.PathLike[str],
              outdir: str | os.PathLike[str], *, tiles: int = DEFAULT_TILE, scheduler: str | None = None,
              workers: int | None = None, retries: int = 2, progress: ProgressFn | None = None,
              log: Callable[[str], None] | None = None, remove_other_models: bool = False,
              exclude: Sequence[str | os.PathLike[str]] = (), match_brightness: bool = False,
              on_start: Callable[[int, int], None] | None = None) -> BatchResult:
    """Label every scene with one model on dask.distributed; see the module docstring.

    Args:
        scenes: files and glob patterns (quoted on the command line; ``**`` recursive).
        checkpoint: a checkpoint from ``hsicluster train``.
        outdir: folder for the label rasters and ``manifest.json`` (created if missing).
        tiles: tile side passed to ``predict``.
        scheduler: address of a running dask scheduler (``tcp://host:8786``); default: a LocalCluster.
        workers: worker processes of the LocalCluster.
        retries: extra attempts for a scene whose task raised or whose worker died.
        progress: called as each scene finishes.
        on_start: called ``(scenes done, scenes)`` once the cluster is up and the scenes are submitted, so that a
            rate (an ETA) leaves out the cluster's start-up.
        log: receives notices (dashboard link, skipped scenes).
        remove_other_models: remove the labels that OUTDIR holds of scenes this run does not label, made with
            another model or tiles (a pipeline's batch step after its model changed); default: refuse the run.
        exclude: paths and patterns of files among ``scenes`` to leave out (a scene that cannot be labelled).
        match_brightness: label a scene that fits the training spectra clearly better at another gain or tilt
            there (as ``predict --match-brightness``); a rerun that changes it labels only such scenes again (every
            scene of a manifest written before batch could match, once).

    Returns:
        the records of every scene, in input order; ``failed`` lists the failures.

    Raises:
        HsiClusterError: no scenes, an unreadable checkpoint, an unusable OUTDIR or scheduler.
    """
    from hsi_cluster.checkpoint import load_checkpoint

    started = time.perf_counter()
    log = log or (lambda message: None)
    sources = expand_scene_paths(scenes, log=log, exclude=exclude)
    if not sources:
        raise HsiClusterError("no scenes given; pass files or a quoted glob pattern")
    check_tile_size(tiles)
    checkpoint_path = Path(checkpoint).expanduser().absolute()
    model_sha = load_checkpoint(checkpoint_path).sha256()  # fails here, once, for a bad checkpoint
    out = Path(outdir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file, not a folder; give OUTDIR a folder (new or one batch wrote before)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder ({exc.strerror}); choose another") from exc
    if not os.access(out, os.W_OK):
        raise OutputError(f"{out}: the output folder is not writable; choose another")
    with _outdir_lock(out):
        return _run_locked(sources, checkpoint_path, model_sha, out, tiles=tiles, scheduler=scheduler,
                           workers=workers, retries=retries, progress=progress, log=log, started=started,
                           remove_other_models=remove_other_models, match_brightness=match_brightness,
                           on_start=on_start)


def _outdir_lock(out: Path) -> AbstractContextManager[None]:
    """OUTDIR's lock for the run: two batches writing one OUTDIR would both resume the same partial outputs and
    record each other's half-written files as done."""
    return exclusive_lock(out / LOCK_FILE, lambda holder: OutputError(
        f"{out}: another hsicluster batch is writing to this folder (pid {holder}); wait for it to finish, or "
        "choose another OUTDIR"), remove=True)


def _run_locked(sources: list[Path], checkpoint_path: Path, model_sha: str, out: Path, *, tiles: int,
                scheduler: str | None, workers: int | None, retries: int, progress: ProgressFn | None,
                log: Callable[[str], None], started: float, remove_other_models: bool,
                match_brightness: bool, on_start: Callable[[int, int], None] | None) -> BatchResult:
    """:func:`run_batch` once OUTDIR is checked and locked."""
    from distributed import as_completed

    if not sources:
        raise HsiClusterError(f"no scenes given: every file matched is a label raster under {out}")
    targets = output_paths(sources, out)
    header = {"format": "hsicluster-batch", "library_version": __version__, "model": str(checkpoint_path),
              "model_sha256": model_sha, "tiles": tiles, "match_brightness": match_brightness, "outdir": str(out)}
    manifest = Manifest.load(out / MANIFEST, header, log)
    manifest.check_not_mixing(sources, remove=remove_other_models, log=log)
    _tell_removed_scenes(manifest, sources, log)
    attempts_dir = out / ATTEMPTS_DIR
    _check_targets(sources, targets, manifest, log)
    todo: list[Path] = []
    for source in sources:
        if manifest.is_current(source, targets[source], match_brightness=match_brightness):
            manifest.records[str(source)]["status"] = "skipped"
        else:
            todo.append(source)
            manifest.records[str(source)] = {"source": str(source), "output": str(targets[source]),
                                             "status": "pending", "error": None}
    manifest.save()
    if len(todo) < len(sources):
        log(f"{len(sources) - len(todo)} of {len(sources)} scenes are up to date; skipping them")
    finished = len(sources) - len(todo)
    dashboard, n_workers = None, 0
    if todo:
        with dask_client(scheduler, workers) as (client, torch_threads):
            dashboard = _dashboard(client, local=not scheduler)
            n_workers = len(client.scheduler_info().get("workers", {}))
            if dashboard:
                log(f"dask dashboard: {dashboard}")
            collector = _Collector(manifest, targets, attempts_dir)
            for source in todo:
                _clear_attempts(attempts_dir, str(targets[source]))
                future = client.submit(label_scene, str(source), str(checkpoint_path), str(targets[source]), tiles,
                                       str(attempts_dir), torch_threads, match_brightness,
                                       key=f"label-{uuid.uuid4().hex}",
                                       retries=retries, pure=False)
                collector.futures[future] = source
            if on_start is not None:
                on_start(finished, len(sources))
            try:
                for future in as_completed(list(collector.futures)):
                    record = collector.record(future)
                    finished += 1
                    if progress:
                        progress(finished, len(sources), record)
            except KeyboardInterrupt:  # keep the scenes that finished meanwhile, or a rerun labels them again
                for future in [f for f in collector.futures if f.status == "finished"]:
                    collector.record(future)
                raise
    if attempts_dir.is_dir() and not any(attempts_dir.iterdir()):
        attempts_dir.rmdir()
    records = [manifest.records[str(source)] for source in sources]
    return BatchResult(manifest=manifest.path, records=records, seconds=time.perf_counter() - started,
                       dashboard=dashboard, workers=n_workers, stale_stac=_remove_stale_stac(records, out))


def _tell_removed_scenes(manifest: Manifest, sources: list[Path], log: Callable[[str], None]) -> None:
    """Warn of labels in OUTDIR whose scene is gone from disk (deleted from the archive since): they stay, and
    the manifest keeps their records, but a reader of OUTDIR should know they describe nothing there now."""
    labelled_now = {str(source) for source in sources}
    gone = [record for source, record in manifest.records.items() if source not in labelled_now
            and not Path(source).exists() and Path(str(record.get("output"))).is_file()]
    if gone:
        first = Path(str(gone[0]["output"])).name
        log(f"warning: {counted(len(gone), 'label raster')} in {manifest.path.parent} ({first}"
            f"{', …' if len(gone) > 1 else ''}) {'is' if len(gone) == 1 else 'are'} of scenes no longer on disk; "
            "delete them if they should go")


def _moved_sources(scenes: dict[str, dict[str, Any]], old_outdir: Path, new_outdir: Path) -> dict[str, dict[str, Any]]:
    """The records of scenes that moved with OUTDIR (a project folder moved whole: ``/a/proj/{archive,labels}`` to
    ``/b/proj2/{archive,labels}``) under their new paths, where the scene is there; others as they were. Without
    it, every scene's labels seemed another scene's after the move, and the batch refused to write them."""
    old_parts, new_parts = old_outdir.parts, new_outdir.parts
    shared = 0  # the trailing folders the two OUTDIRs share: what moved is the folder above them
    while shared < min(len(old_parts), len(new_parts)) - 1 and old_parts[-1 - shared] == new_parts[-1 - shared]:
        shared += 1
    old_root, new_root = Path(*old_parts[:len(old_parts) - shared]), Path(*new_parts[:len(new_parts) - shared])
    moved: dict[str, dict[str, Any]] = {}
    for source, record in scenes.items():
        rebased = new_root / Path(source).relative_to(old_root) if Path(source).is_relative_to(old_root) else None
        if rebased is not None and not Path(source).exists() and rebased.exists() and str(rebased) not in scenes:
            moved[str(rebased)] = {**record, "source": str(rebased)} if "source" in record else record
        else:
            moved[source] = record
    return moved


def _check_targets(sources: list[Path], targets: dict[Path, Path], manifest: Manifest,
                   log: Callable[[str], None]) -> None:
    """Refuse outputs that would replace another scene's labels or a file batch did not write; say when scenes
    labelled before go to other paths now (other patterns, another common folder)."""
    owners = {record.get("output"): other for other, record in manifest.records.items()
              if record.get("status") in ("done", "skipped")}
    for source in sources:
        check_name_length(targets[source], what=f"the labels of {source.name[:40]}…",
                          remedy="rename the scene", path_remedy="choose a shorter OUTDIR")
        owner = owners.get(str(targets[source]))
        if owner is not None and owner != str(source) and targets[source].is_file():
            raise OutputError(f"{targets[source]}: holds the labels of {owner} (see {MANIFEST}), and this run would "
                              f"write those of {source} over them; choose another OUTDIR for these scenes")
        _check_unrecorded_output(source, targets[source], manifest)
    earlier = {source: str(record["output"]) for source in sources
               if (record := manifest.records.get(str(source))) is not None
               and record.get("status") in ("done", "skipped") and record.get("output") != str(targets[source])
               and Path(str(record.get("output"))).is_file()}
    if earlier:  # outputs mirror the folders under the scenes' common folder, which these patterns changed
        first = next(iter(earlier))
        log(f"{len(earlier)} of these scenes {'was' if len(earlier) == 1 else 'were'} labelled before into other "
            f"paths under OUTDIR ({first.name}: "
            f"{earlier[first]}, now {targets[first]}), as other patterns had another common folder; they are "
            "labelled again there and the earlier outputs are left as they are")


@dataclass
class _Collector:
    """Records each finished task of a run in the manifest (saved at once), by its future."""

    manifest: Manifest
    targets: dict[Path, Path]
    attempts_dir: Path
    futures: dict[Any, Path] = field(default_factory=dict)  # pending future -> its scene

    def record(self, future: Any) -> dict[str, Any]:
        """The finished ``future``'s record, kept in the manifest."""
        source = self.futures.pop(future)
        try:
            record: dict[str, Any] = future.result()
        except Exception as exc:  # noqa: BLE001 — a scene fails alone; dask already retried it
            record = {"source": str(source), "output": str(self.targets[source]), "status": "failed",
                      "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        record["attempts"] = _count_attempts(self.attempts_dir, record["output"])
        _clear_attempts(self.attempts_dir, record["output"])  # counted: the markers have served
        record.update(_source_fields(source))
        record["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.manifest.records[str(source)] = record
        self.manifest.save()
        return record


def _check_unrecorded_output(source: Path, target: Path, manifest: Manifest) -> None:
    """Refuse to write ``source``'s labels over a file at ``target`` that is neither recorded in the manifest as its
    output nor labels hsicluster made of it (a file of the user's, another scene's ``predict`` output): batch has no
    ``--overwrite``, and never replaces what it did not write."""
    from hsi_cluster.io.labels import labelled_source

    record = manifest.records.get(str(source))
    if not target.exists() or (record is not None and record.get("output") == str(target)):
        return
    if target.is_dir():
        raise OutputError(f"{target}: is a folder where the labels of {source} go; move it away or choose another "
                          "OUTDIR")
    made_from = labelled_source(target)
    if made_from == str(source):
        return  # its labels from an earlier run (another model, or a manifest lost): relabelled
    held = f"holds the labels of {made_from}" if made_from else "is a file this batch did not write"
    raise OutputError(f"{target}: {held}, and this run would write the labels of {source} over it; move it away "
                      "or choose another OUTDIR")


def _remove_stale_stac(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Remove the STAC Items of the label rasters this run rewrote and, when there were any, OUTDIR's Collection:
    an earlier ``--stac`` run's, they name another model and other class counts (``--stac`` writes new ones)."""
    from hsi_cluster.io.stac import COLLECTION_NAME, remove_stale_item

    removed = [item for record in records if record["status"] == "done"
               for item in [remove_stale_item(record["output"])] if item is not None]
    collection = out / COLLECTION_NAME
    if removed and collection.is_file():
        collection.unlink()
        removed.append(collection)
    return removed


def failure_text(record: dict[str, Any]) -> str:
    """A failed scene's error, led by its path once (library errors already start with it)."""
    error = str(record.get("error"))
    return error if error.startswith(str(record.get("source"))) else f"{record.get('source')}: {error}"


def attempt_stem(output: str) -> str:
    """Name prefix of the attempt markers of the scene written to ``output``."""
    return hashlib.sha1(output.encode()).hexdigest()[:16]


def _count_attempts(attempts_dir: Path, output: str) -> int:
    return len(list(attempts_dir.glob(f"{attempt_stem(output)}.*"))) if attempts_dir.is_dir() else 0


def _clear_attempts(attempts_dir: Path, output: str) -> None:
    for marker in attempts_dir.glob(f"{attempt_stem(output)}.*") if attempts_dir.is_dir() else []:
        marker.unlink(missing_ok=True)


__all__ = ["run_batch", "label_scene", "failure_text", "attempt_stem", "output_paths", "BatchResult", "Manifest"]
