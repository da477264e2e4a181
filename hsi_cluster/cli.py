"""The ``hsicluster`` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from hsi_cluster import __version__
from hsi_cluster.errors import HsiClusterError, MetadataWarning, Terminated, counted, log_warning, storage_error
from hsi_cluster.geo import DEFAULT_TILE, MIN_TILE
from hsi_cluster.progress import PlainProgress

EXIT_USER_ERROR = 2
EXIT_UNEXPECTED = 1
EXIT_SOME_FAILED = 3
EXIT_TERMINATED = 128 + signal.SIGTERM  # the shell's code for a process SIGTERM ended


# What a user does after Ctrl-C (or a kill), by command; commands that keep no partial work are absent.
RESUME_HINTS = {
    "ingest": "rerun the same command to resume where it stopped",
    "train": "rerun it with --resume to continue from its last periodic checkpoint (OUTPUT.partial); if none was "
             "written yet, rerun it as it was",
    "predict": "rerun it with --resume to continue from the finished tiles",
    "batch": "rerun the same command to resume where it stopped",
    "run": "rerun the same command to resume where it stopped",
}


def _fail(message: str, code: int) -> None:
    click.echo(f"hsicluster: error: {message}", err=True)
    sys.exit(code)


def _warn(message: str) -> None:
    click.echo(f"hsicluster: warning: {message}", err=True)


_python_showwarning = warnings.showwarning


def _log(quiet: bool, write: Callable[[str], Any]) -> Callable[[str], None]:
    """A library log callback for the CLI: its lines through ``write``, a warning (a line ``warning: …``) as
    ``hsicluster: warning: …``; with ``--quiet`` only the warnings (indented ones of a pipeline's log too): quiet is
    no progress or chatter, and a scene in other units or of another pixel size must still be said."""
    def log(message: str) -> None:
        warning = log_warning(message)
        if quiet:
            if warning is not None:
                _warn(warning)
        elif warning is not None and message == message.lstrip():  # as every other warning reads (a pipeline's
            write(f"hsicluster: warning: {warning}")                # indented lines keep their place in its log)
        else:
            write(message)
    return log


class _MetadataWarnings:
    """``warnings.showwarning`` for one command: a scene's :class:`MetadataWarning` as one ``hsicluster: warning:``
    line, each text once (a scene is opened several times per command, and Python's "once" filter forgets what it
    showed whenever a reader enters ``warnings.catch_warnings``); other warnings as Python shows them."""

    def __init__(self) -> None:
        self.shown: set[str] = set()

    def __call__(self, message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, MetadataWarning):
            _python_showwarning(message, category, *args, **kwargs)
        elif str(message) not in self.shown:
            self.shown.add(str(message))
            _warn(str(message))


NO_VALID_PIXELS = "every pixel is nodata, NaN or fill (one value in every band); check the scene's nodata value"

TILES_OPTION = click.option("--tiles", default=DEFAULT_TILE, show_default=True, type=click.IntRange(min=MIN_TILE),
                            help="Tile side in pixels.")


def _echo_json(document: Any) -> None:
    """Print ``document`` as the one JSON document on stdout (lists of numbers or strings on one line)."""
    click.echo(dumps_json(document))


def dumps_json(document: Any, indent: int = 2) -> str:
    """JSON indented by ``indent`` like ``json.dumps``, except that a list of plain values (per-band
    statistics, a transform) stays on one line instead of one value a line."""

    def render(value: Any, depth: int) -> str:
        pad, inner = " " * indent * depth, " " * indent * (depth + 1)
        if isinstance(value, dict) and value:
            items = [f"{inner}{json.dumps(str(k))}: {render(v, depth + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(value, (list, tuple)) and value and any(isinstance(v, (dict, list, tuple)) for v in value):
            return "[\n" + ",\n".join(f"{inner}{render(v, depth + 1)}" for v in value) + f"\n{pad}]"
        return json.dumps(value)

    return render(document, 0)


class OutputFile(click.Path):
    """A file an option writes: a value ending in ``/`` names a folder (the file would be written under the
    folder's name), so it is refused with a one-line error saying how to name the file."""

    def __init__(self, example: str) -> None:
        super().__init__(path_type=Path)
        self.example = example

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.endswith(("/", os.sep)):
            self.fail(f"{value!r} ends with '/', so it names a folder, but the option takes the file to write; "
                      f"name the file, e.g. {value}{self.example}", param, ctx)
        return super().convert(value, param, ctx)


class ClusterCount(click.ParamType):
    """``-k``: a whole number of clusters, or ``auto``."""

    name = "K|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a whole number of clusters nor 'auto'", param, ctx)


class UnlabelledValue(click.ParamType):
    """``--unlabelled``: a whole ground-truth value, ``none`` (score every pixel) or ``auto`` (the default)."""

    name = "VALUE|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value is None:
            return value
        word = str(value).strip().lower()
        if word in ("none", "auto"):
            return None if word == "none" else "auto"
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a whole ground-truth value nor 'none' (score every pixel)", param, ctx)


def command_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--verbose``/``--quiet`` and turn library errors into one-line messages and exit codes."""

    @click.option("--verbose", "-v", is_flag=True, help="Show tracebacks and details on errors.")
    @click.option("--quiet", "-q", is_flag=True, help="Warnings and errors only (and what info, evaluate, --json and run's report line print): "
                  "no progress, log or summary lines.")
    @functools.wraps(func)
    def wrapper(*args: Any, verbose: bool, quiet: bool, **kwargs: Any) -> Any:
        try:
            return func(*args, quiet=quiet, **kwargs)
        except HsiClusterError as exc:
            if verbose:
                traceback.print_exc()
            _fail(str(exc), EXIT_USER_ERROR)
        except KeyboardInterrupt as exc:
            hint = RESUME_HINTS.get(click.get_current_context().info_name or "")
            what, code = ("terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(exc, Terminated) else ("interrupted", 130)
            _fail(f"{what}; {hint}" if hint else what, code)
        except Exception as exc:  # an unexpected failure: keep it to one line unless asked
            full = storage_error(exc)
            if full is not None:
                if verbose:
                    traceback.print_exc()
                hint = RESUME_HINTS.get(click.get_current_context().info_name or "", "rerun the same command")
                what, remedy = full
                _fail(f"{what}; {remedy}" + ("" if "too long" in what else f", then {hint}"), EXIT_USER_ERROR)
            if verbose:
                traceback.print_exc()
                sys.exit(EXIT_UNEXPECTED)
            _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --verbose for details and "
                  "report it if it persists)", EXIT_UNEXPECTED)

    return wrapper


class ProgressUpdate:
    """``update(done, total)`` drives a tqdm bar; ``update.bar`` is the bar (for a postfix). Where no bar is
    drawn (stderr is a log file), ``plain`` writes a progress line every 30 s instead."""

    def __init__(self, bar: Any, plain: PlainProgress | None = None) -> None:
        self.bar = bar
        self.plain = plain

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.bar_format = None  # tqdm's own, now that the total is known
            self.bar.reset(total=total)
        self.bar.n = done
        self.bar.refresh()
        if self.plain is not None:
            self.plain(done, total)

    def start(self, done: int, total: int) -> None:
        """The work begins now with ``done`` of ``total`` units done: the bar's rate and ETA, and the plain lines',
        leave out what came before (a batch's cluster starting)."""
        self.bar.bar_format = None
        self.bar.reset(total=total)
        self.bar.n = self.bar.initial = done  # tqdm's rate counts from initial
        self.bar.refresh()
        if self.plain is not None:
            self.plain.start(done)


@contextmanager
def progress_bar(description: str, *, unit: str, quiet: bool, plain_lines: bool = True) -> Iterator[ProgressUpdate]:
    """A tqdm bar on stderr driven by ``update(done, total)``; silent when quiet; when stderr is not a terminal,
    a progress line with the ETA every 30 s (``plain_lines``) or nothing."""
    from tqdm import tqdm

    # until the first update brings the total: "predict: starting, 00:03" (tqdm drew "0tile [00:03, ?tile/s]")
    bar = tqdm(desc=description, unit=unit, disable=quiet or None, file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc}: starting, {elapsed}")
    plain = None
    if plain_lines and not quiet and bar.disable:
        plain = PlainProgress(description, unit, lambda line: click.echo(f"hsicluster: {line}", err=True))
    update = ProgressUpdate(bar, plain)
    try:
        yield update
    finally:
        update.bar.close()


class OneLineErrors(click.Group):
    """A group whose commands report usage mistakes (a bad option value, a missing argument, an unknown
    command) as one ``hsicluster: error:`` line, like every other error, instead of click's usage block."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:  # the group's own options
        with self._one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:  # the command's name, options and arguments
        from rasterio.errors import NotGeoreferencedWarning

        with self._one_line(), warnings.catch_warnings(), _terminate_like_ctrl_c():
            warnings.simplefilter("always", MetadataWarning)  # shown once each by _MetadataWarnings
            # a raster without a CRS is a fact `info` states, not a warning; silenced here for all threads (the
            # readers' own catch_warnings is not thread-safe: dask's threads let rasterio's through)
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            warnings.showwarning = _MetadataWarnings()
            return super().invoke(ctx)

    @staticmethod
    @contextmanager
    def _one_line() -> Iterator[None]:
        try:
            yield
        except click.exceptions.NoArgsIsHelpError:
            raise  # the help itself, not a mistake
        except click.UsageError as exc:
            sub = exc.ctx.info_name if exc.ctx is not None and exc.ctx.parent is not None else None
            command = f"hsicluster {sub}" if sub is not None else "hsicluster"
            _fail(f"{exc.format_message()} (see {command} --help)", exc.exit_code)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("SIGTERM")


@contextmanager
def _terminate_like_ctrl_c() -> Iterator[None]:
    """While a command runs, SIGTERM (a scheduler's time limit, ``kill``) stops it as Ctrl-C does: what is
    finished is kept and the resume hint printed, instead of dying mid-write (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hsicluster")
def main() -> None:
    """Unsupervised clustering of large hyperspectral scenes (SSCC)."""


@main.command()
@click.argument("scene", type=click.Path(path_type=Path))
@click.option("--output", "-o", "store", required=True, type=click.Path(path_type=Path),
              help="Destination Zarr store (a directory, e.g. scene.zarr).")
@click.option("--chunk", type=click.IntRange(min=16), default=None,
              help="Spatial chunk side in pixels, at least 16 (default: chunks of about 8 MB).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--var", default=None, help="Variable to read from a MATLAB .mat or NetCDF file with several cubes.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Reader/compressor threads.")
@command_options
def ingest(scene: Path, store: Path, chunk: int | None, overwrite: bool, var: str | None,
           workers: int | None, quiet: bool) -> None:
    """Stream SCENE into a chunked Zarr v3 store with band statistics and a valid-pixel mask.

    Safe to interrupt: rerunning the same command finishes the job.
    """
    from hsi_cluster.io import ingest as run_ingest
    from hsi_cluster.io import open_scene

    with progress_bar("ingest", unit="block", quiet=quiet) as update:
        path = run_ingest(scene, store, chunk=chunk, overwrite=overwrite, var=var, workers=workers,
                          progress=update, log=_log(quiet, lambda message: update.bar.write(message, file=sys.stderr)))
    if not quiet:
        click.echo(f"wrote {path}")
    attrs = open_scene(path).attrs
    if not attrs.get("valid_pixels"):
        _warn(f"{scene}: {NO_VALID_PIXELS}")


@main.command()
@click.argument("scene", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--var", default=None, help="Variable to read from a MATLAB .mat or NetCDF file with several cubes.")
@command_options
def info(scene: Path, as_json: bool, var: str | None, quiet: bool) -> None:
    """Describe SCENE (any readable raster or an ingested store), a model checkpoint, or a label raster."""
    from hsi_cluster.io import open_scene
    from hsi_cluster.io.info import describe, describe_model, format_info, format_model_info, is_checkpoint_file

    if is_checkpoint_file(scene):
        from hsi_cluster.checkpoint import load_checkpoint

        model = describe_model(load_checkpoint(scene))
        if as_json:
            _echo_json(model)
        else:
            click.echo(format_model_info(model))
        return
    from hsi_cluster.io.labels import written_by_hsicluster

    if written_by_hsicluster(scene):  # a label (or confidence) raster of predict: one band, not a scene
        from hsi_cluster.io.info import describe_label_raster, format_label_raster_info

        labels = describe_label_raster(scene)
        if as_json:
            _echo_json(labels)
        else:
            click.echo(format_label_raster_info(labels))
        return
    summary = describe(open_scene(scene, var=var))
    if as_json:
        _echo_json(summary)
    else:
        if quiet and summary.get("statistics"):
            summary = dict(summary, statistics=None)
        click.echo(format_info(summary))


@main.command()
@click.argument("scenes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-k", "--clusters", "n_clusters", required=True, type=ClusterCount(),
              help="Number of clusters K (≥ 2), or 'auto' to choose it without labels (see --k-max).")
@click.option("--k-max", type=int, default=None,
              help="With -k auto: the largest K considered (default 20). The elbow of the k-means curve of the "
                   "trained features over K = 2..k-max is chosen; the curve is printed and kept in the checkpoint.")
@click.option("--output", "-o", required=True, type=OutputFile("model.ckpt"), help="Checkpoint to write.")
@click.option("--preset", type=click.Choice(["fast", "paper"]), default="fast", show_default=True,
              help="fast: dense backbone sized for CPUs, 640 000 samples (at most 30 epochs); paper: the published "
                   "recipe (ResNet, 200 epochs).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="YAML file of training options applied on top of the preset.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Length of the run as a sample budget: patches drawn in all, whatever the scenes' size.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Length of the run in passes over all "
              "valid pixels (instead of the preset's budget).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Length of the run in optimiser steps.")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Patches per step.")
@click.option("--restarts", type=click.IntRange(min=1), default=None,
              help="Networks to train (N times the time); the one whose labels agree most with the others' is kept.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUTPUT.partial.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="Cache folder for scenes ingested on the fly (default: $HSICLUSTER_WORK or ~/.cache/hsicluster).")
@click.option("--checkpoint-every", default=100, show_default=True, type=click.IntRange(min=1),
              help="Steps between periodic checkpoints (also at every epoch end).")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave out the scenes this path or quoted pattern names (repeatable); a bare name or pattern "
                   "such as '*bad*' matches any scene's file name.")
@command_options
def train(scenes: tuple[Path, ...], n_clusters: int | str, k_max: int | None, output: Path, preset: str,
          config_file: Path | None,
          samples: int | None, epochs: int | None, steps: int | None, batch_size: int | None, restarts: int | None,
          device: str, seed: int, resume: bool,
          overwrite: bool,
          work: Path | None, checkpoint_every: int, exclude: tuple[str, ...], quiet: bool) -> None:
    """Train an SSCC model with K clusters on SCENES (rasters, ingested stores or quoted glob patterns).

    Several scenes must have the same bands; patches are drawn from all of them in proportion to
    their valid pixels, e.g. hsicluster train 'archive/**/*.tif' -k 8 -o model.ckpt

    The length of the run is one of --samples, --epochs or --steps (default: the preset's).
    """
    from hsi_cluster.config import load_config
    from hsi_cluster.io.files import check_output
    from hsi_cluster.train import train as run_train

    if config_file is not None:  # the scenes are checked by train()
        check_output(output.expanduser().absolute(), replace=True, inputs={"the --config file": config_file})
    config = load_config(preset, config_file, samples=samples, epochs=epochs, steps=steps, batch_size=batch_size,
                         restarts=restarts)
    if exclude:
        from hsi_cluster.io.paths import expand_scene_paths

        scenes = tuple(expand_scene_paths(scenes, exclude=exclude, log=_log(quiet, lambda m: click.echo(m, err=True))))
    with progress_bar("train", unit="step", quiet=quiet, plain_lines=False) as update:  # the log has its own
        # above the bar on a terminal (the bar shows step/total and the ETA), plain lines in a log
        log = _log(quiet, lambda message: update.bar.write(message, file=sys.stderr))
        first: list[int] = []

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            update(step, total)
            if not first:  # a resumed run: the rate (and the ETA) count this session's steps only
                first.append(step)
                update.bar.initial = step - 1
            if not quiet and step % 5 == 0:
                update.bar.set_postfix(loss=f"{metrics['loss']:.4f}", inst=f"{metrics['inst']:.3f}",
                                       cc=f"{metrics['cc']:.3f}", rate=f"{metrics['samples/s']:.0f}/s",
                                       samples=f"{metrics['samples']:,.0f}", refresh=False)
        result = run_train(list(scenes), n_clusters=n_clusters, output=output, config=config, seed=seed, device=device,
                           resume=resume, overwrite=overwrite, work_dir=work, checkpoint_every=checkpoint_every,
                           progress=on_step, log=log, k_max=k_max)
    if result.already_finished:
        click.echo(f"{result.checkpoint}: training already finished ({result.steps} steps, {counted(result.epochs, 'epoch')}); "
                   "nothing to resume, the file is unchanged (pass a longer --samples, --epochs or --steps with "
                   "--resume to train it further)", err=True)
    elif not quiet:
        click.echo(f"wrote {result.checkpoint} ({result.steps} steps, {result.samples:,} samples, "
                   f"{counted(result.epochs, 'epoch')}, {result.seconds:.0f} s, "
                   f"{result.samples_per_second:.0f} samples/s); loss curve {result.loss_curve}")
        if result.k_choice is not None:
            click.echo(f"-k auto chose K = {result.k_choice['k']} of 2..{result.k_choice['k_max']} "
                       "(the elbow of the k-means curve of the trained features)")
        if result.restart_choice is not None:
            kept = result.restart_choice["chosen"]
            click.echo(f"kept restart {kept + 1} of {len(result.restart_choice['seeds'])} (seed "
                       f"{result.restart_choice['seeds'][kept]}): its labels agree most with the others' (mean NMI "
                       f"{result.restart_choice['mean_agreement'][kept]:.3f})")


@main.command()
@click.argument("scene", type=click.Path(path_type=Path))
@click.option("--model", "-m", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="Checkpoint from 'hsicluster train'.")
@click.option("--output", "-o", required=True, type=OutputFile("labels.tif"), help="Label GeoTIFF (COG) to write.")
@TILES_OPTION
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--confidence", type=OutputFile("confidence.tif"), default=None,
              help="Also write the winning cluster probability (float32 GeoTIFF).")
@click.option("--quicklook", type=OutputFile("labels.png"), default=None, help="Also write a PNG with a legend.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its finished tiles.")
@click.option("--stac", is_flag=True, help="Also write a STAC Item beside the labels (labels.stac.json).")
@click.option("--match-brightness", is_flag=True,
              help="If the scene fits the training spectra clearly better at another brightness or tilt across its "
                   "bands (another acquisition of the same kind of ground), label it there, estimated without labels.")
@command_options
def predict(scene: Path, checkpoint: Path, output: Path, tiles: int, device: str, confidence: Path | None,
            quicklook: Path | None, overwrite: bool, resume: bool, stac: bool, match_brightness: bool,
            quiet: bool) -> None:
    """Label every pixel of SCENE with a trained model; write a georeferenced label raster."""
    from hsi_cluster.predict import output_name_notices, predict_scene, result_warnings

    for notice in output_name_notices([("-o", output, "GeoTIFF"), ("--confidence", confidence, "GeoTIFF"),
                                       ("--quicklook", quicklook, "PNG")]):
        _warn(notice)
    started = time.perf_counter()
    with progress_bar("predict", unit="tile", quiet=quiet) as update:
        def on_tile(done: int, total: int) -> None:
            update(done, total)
            if not quiet and done:  # edge tiles are smaller: the rate is approximate until the end
                update.bar.set_postfix_str(f"{done * tiles * tiles / 1e6 / (time.perf_counter() - started):.3g} Mpix/s")
        result = predict_scene(scene, checkpoint, output, tiles=tiles, device=device, confidence_path=confidence,
                               quicklook_path=quicklook, overwrite=overwrite, resume=resume, progress=on_tile,
                               stac=stac, match_brightness=match_brightness)
    if stac:
        from hsi_cluster.io.stac import write_label_item

        item = write_label_item(result.output, model=checkpoint, counts=result.counts, confidence=result.confidence,
                                quicklook=result.quicklook)
        if not quiet:
            click.echo(f"wrote {item}")
    elif result.tiles_resumed < result.tiles:  # new labels: an Item of the ones they replaced would describe them
        from hsi_cluster.io.stac import remove_stale_item

        stale = remove_stale_item(result.output)
        if stale is not None:
            _warn(f"{stale}: removed, the STAC Item of the labels this run replaced; pass --stac to write a new one")
    if not quiet:
        resumed = f", {result.tiles_resumed} resumed" if result.tiles_resumed else ""
        rate = f", {result.megapixels_per_second:.3g} Mpix/s" if result.tiles_resumed < result.tiles else ""
        click.echo(f"wrote {result.output} ({counted(result.tiles, 'tile')}{resumed}, {result.valid_pixels} labelled pixels{rate})")
    for warning in result_warnings(scene, result, match_brightness=match_brightness):
        _warn(warning)


def _scene_warnings(record: dict[str, Any]) -> list[str]:
    """What a batch tells of a scene it labelled: the warnings the worker kept in its record (no labelled pixel,
    other units, the scene's metadata: a worker's stderr is not the user's)."""
    return list(record.get("warnings") or []) if record["status"] == "done" else []


@main.command()
@click.argument("scenes", nargs=-1, required=True)
@click.option("--model", "-m", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="Checkpoint from 'hsicluster train'.")
@click.option("--output", "-o", "outdir", required=True, type=click.Path(path_type=Path),
              help="Folder for the label rasters and manifest.json.")
@TILES_OPTION
@click.option("--scheduler", default=None, help="Address of a running dask scheduler (tcp://HOST:8786); "
              "default: a local cluster.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the local cluster (default: one per core, at most 4).")
@click.option("--retries", default=2, show_default=True, type=click.IntRange(min=0),
              help="Extra attempts for a scene whose task crashed or whose worker died.")
@click.option("--json", "as_json", is_flag=True, help="Print the scene records as JSON.")
@click.option("--stac", is_flag=True, help="Also write a STAC Item beside each label raster and OUTDIR/collection.json.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave out the scenes this path or quoted pattern names (repeatable), e.g. a file that cannot "
                   "be labelled; a bare name or pattern such as '*bad*' matches any scene's file name.")
@click.option("--match-brightness", is_flag=True,
              help="Label a scene that fits the training spectra clearly better at another brightness or tilt there "
                   "(as predict --match-brightness); a rerun that changes this labels only such scenes again.")
@command_options
def batch(scenes: tuple[str, ...], checkpoint: Path, outdir: Path, tiles: int, scheduler: str | None,
          workers: int | None, retries: int, as_json: bool, stac: bool, exclude: tuple[str, ...],
          match_brightness: bool, quiet: bool) -> None:
    """Label many SCENES (files or quoted glob patterns, ** recursive) with one model on dask.

    Rerunning skips the scenes already done; a failing scene is recorded in OUTDIR/manifest.json and
    the others go on. Exit code 3 when some scenes failed.
    """
    from hsi_cluster.batch import failure_text, run_batch

    reported: set[str] = set()  # failures already printed as they happened: each is printed once

    def report_failure(record: dict[str, Any]) -> None:
        if record["source"] not in reported:
            reported.add(record["source"])
            tqdm_write(f"hsicluster: failed: {failure_text(record)}")

    with progress_bar("batch", unit="scene", quiet=quiet) as update:
        pixels = 0

        def tqdm_write(message: str) -> None:  # above the bar, on stderr: stdout holds only the results
            update.bar.write(message, file=sys.stderr)

        def on_scene(done: int, total: int, record: dict[str, Any]) -> None:
            nonlocal pixels
            pixels += int(record.get("pixels") or 0)
            update(done, total)
            if record["status"] == "failed":
                report_failure(record)
            for warning in _scene_warnings(record):
                tqdm_write(f"hsicluster: warning: {warning}")
            if not quiet:
                update.bar.set_postfix_str(f"{pixels / 1e6:.1f} Mpix")
        result = run_batch(list(scenes), checkpoint, outdir, tiles=tiles, scheduler=scheduler, workers=workers,
                           retries=retries, progress=on_scene, log=_log(quiet, tqdm_write), exclude=exclude,
                           match_brightness=match_brightness, on_start=update.start)
        for record in result.failed:
            report_failure(record)
    empty = sum(1 for record in result.done if record.get("valid_pixels") == 0)
    summary = (f"{len(result.done)} done" + (f" ({empty} with no valid pixel)" if empty else "")
               + f", {len(result.skipped)} skipped, {len(result.failed)} failed in {result.seconds:.0f} s; "
               f"manifest: {result.manifest}")
    if stac:
        from hsi_cluster.io.stac import write_batch_catalog

        summary += f"; STAC: {write_batch_catalog(result.records, outdir, model=checkpoint)}"
    elif result.stale_stac:
        _warn(f"removed {len(result.stale_stac)} STAC files of an earlier --stac run ({result.stale_stac[0].name}, …) "
              "that described labels this run replaced; pass --stac to write new ones")
    if as_json:
        _echo_json(result.records)
        if not quiet:
            click.echo(summary, err=True)
    elif not quiet:
        click.echo(summary)
    if result.failed:
        sys.exit(EXIT_SOME_FAILED)


@main.command()
@click.argument("labels", type=click.Path(path_type=Path))
@click.argument("truth", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--unlabelled", type=UnlabelledValue(), default="auto",
              help="Ground-truth value of unlabelled pixels (default: the ground truth's nodata value when it "
                   "declares one, else 0), or 'none' to score every pixel (classes numbered from 0).")
@click.option("--var", default=None, help="Variable in a MATLAB ground-truth file with several arrays.")
@command_options
def evaluate(labels: Path, truth: Path, as_json: bool, unlabelled: int | str | None, var: str | None,
             quiet: bool) -> None:
    """Score a cluster-label raster LABELS against ground truth TRUTH (ACC, NMI, Kappa, ARI)."""
    from hsi_cluster.evaluate import score_label_files

    scores = score_label_files(labels, truth, unlabelled=unlabelled, var=var)
    if as_json:
        _echo_json(scores.to_dict())
    else:
        click.echo(scores.format_table())
    if scores.n_invalid_pred == scores.n_scored:
        _warn(f"{labels}: every labelled ground-truth pixel has the nodata label; check that these are the labels "
              "of the ground truth's scene")


@main.command("run")
@click.argument("pipeline_file", metavar="PIPELINE.yaml", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Rerun every step, even those that are up to date.")
@click.option("--dry-run", is_flag=True, help="Only say which steps would run and why.")
@click.option("--only", multiple=True, metavar="STEP", help="Run just this step (repeatable); its inputs must exist.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Folder for the outputs (default: the file's workdir, else runs/NAME).")
@command_options
def run_pipeline(pipeline_file: Path, force: bool, dry_run: bool, only: tuple[str, ...], workdir: Path | None,
                 quiet: bool) -> None:
    """Run a YAML pipeline of steps (ingest, train, predict, evaluate, batch, report) in order.

    Steps whose inputs, parameters and outputs are unchanged since their last run are skipped.
    """
    from hsi_cluster.pipeline import describe, run

    log = _log(quiet, lambda message: click.echo(message, err=True))
    result = run(pipeline_file, workdir=workdir, force=force, dry_run=dry_run, only=list(only) or None, log=log)
    if dry_run:
        count = sum(1 for step in result.steps if step.status == "would run")
        click.echo(f"{count} of {len(result.steps)} steps would run (workdir {result.pipeline.workdir})")
        return
    if not quiet:
        for step in result.steps:
            if step.kind == "evaluate":  # the scores, also when up to date
                for job, summary in step.summary.items():
                    if summary:
                        click.echo(f"{step.name}{f' ({job})' if job else ''}: {describe(step.kind, summary)}")
        click.echo(f"{len(result.ran)} of {len(result.steps)} steps ran ({len(result.skipped)} up to date) in "
                   f"{result.seconds:.0f} s (workdir {result.pipeline.workdir})")
    if result.report:
        click.echo(f"report: {result.report}")
    for failure in result.failures:
        click.echo(f"hsicluster: failed: {failure}", err=True)
    if result.failures:
        sys.exit(EXIT_SOME_FAILED)


if __name__ == "__main__":
    main()
