"""The ``hsicluster`` command line: ``info``, ``ingest``, ``evaluate``, ``--version``, a real subprocess."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from click.testing import CliRunner

import hsi_cluster
from hsi_cluster.cli import main
from hsi_cluster.io import is_complete_store, open_scene
from tests import helpers
from tests.helpers import EPSG, SyntheticScene, write_envi

INFO_KEYS = {"source", "format", "bands", "rows", "cols", "dtype", "size_bytes", "nodata", "georeferenced", "crs",
             "transform", "resolution", "rotation_deg", "bounds", "chunks", "wavelength_nm", "fwhm", "bad_bands"}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    result = runner.invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def test_version(runner: CliRunner) -> None:
    result = invoke(runner, "--version")
    assert result.stdout.strip() == f"hsicluster, version {hsi_cluster.__version__}"


def test_help_lists_commands(runner: CliRunner) -> None:
    result = invoke(runner, "--help")
    for command in ("info", "ingest", "evaluate"):
        assert command in result.stdout


# --------------------------------------------------------------------------------------------
# info


def test_info_gives_the_pixel_size_and_rotation_of_a_rotated_grid(runner: CliRunner, tmp_path: Path) -> None:
    """An AVIRIS-NG swath's ENVI map info rotates the grid by 75°: info printed no resolution and no rotation."""
    cube = helpers.synthetic_cube(4, 9, 7)
    angle = np.radians(75.0)
    transform = (5 * np.cos(angle), -5 * np.sin(angle), 500_000.0, 5 * np.sin(angle), 5 * np.cos(angle), 4_000_000.0)
    path = helpers.write_geotiff(tmp_path / "rotated.tif", cube, transform=Affine(*transform)).path
    info = json.loads(invoke(runner, "info", path, "--json").stdout)
    assert info["resolution"] == pytest.approx([5.0, 5.0]) and info["rotation_deg"] == pytest.approx(75.0)
    assert "resolution    5 × 5 (grid rotated 75° from north-up: pixel sides along its own axes)" in \
        invoke(runner, "info", path).stdout


def test_info_json_synthetic_geotiff(runner: CliRunner, geotiff: SyntheticScene) -> None:
    info = json.loads(invoke(runner, "info", geotiff.path, "--json").stdout)
    assert INFO_KEYS <= set(info)
    bands, rows, cols = geotiff.shape
    assert (info["bands"], info["rows"], info["cols"]) == (bands, rows, cols)
    assert info["dtype"] == "float32"
    assert info["size_bytes"] == geotiff.cube.nbytes
    assert info["georeferenced"] is True
    assert info["crs"]["epsg"] == EPSG
    assert info["resolution"] == [30.0, 30.0] and info["rotation_deg"] == 0.0
    west, north = helpers.ORIGIN
    assert info["bounds"] == pytest.approx({"left": west, "top": north, "right": west + 30 * cols,
                                            "bottom": north - 30 * rows})
    assert info["transform"] == pytest.approx(list(helpers.utm_transform())[:6])
    assert info["nodata"] == -9999.0
    assert info["wavelength_nm"] == pytest.approx({"min": 400.0, "max": 2500.0})
    assert info["fwhm"] is True
    assert info["source"] == str(geotiff.path.absolute())
    assert info["chunks"][0] == bands


def test_info_text_synthetic_geotiff(runner: CliRunner, geotiff: SyntheticScene) -> None:
    text = invoke(runner, "info", geotiff.path).stdout
    assert "EPSG:32633" in text
    assert "21 rows × 23 cols × 6 bands" in text
    assert "float32" in text
    assert "400.0–2500.0 nm (with FWHM)" in text
    assert "30 × 30" in text
    assert "-9999" in text
    assert "not georeferenced" not in text
    assert "file layout   uncompressed strips of " in text  # how the file stores its pixels (read speed)


def test_info_envi_bad_bands(runner: CliRunner, envi_bsq: SyntheticScene) -> None:
    info = json.loads(invoke(runner, "info", envi_bsq.header, "--json").stdout)
    assert info["bad_bands"] == 2 and info["bad_band_numbers"] == [3, 6]  # bbl 1, 1, 0, 1, 1, 0, 1
    assert info["crs"]["epsg"] == EPSG
    assert "2 flagged (bands 3, 6)" in invoke(runner, "info", envi_bsq.header).stdout


def test_band_numbers_read_as_ranges() -> None:
    from hsi_cluster.errors import number_ranges

    assert number_ranges([1, 2, 3, 5, 101, 102, 204]) == "1–3, 5, 101–102, 204"


def test_info_warns_of_a_bad_band_list_of_the_wrong_length(runner: CliRunner, tmp_path: Path) -> None:
    cube = np.random.default_rng(0).normal(500, 50, (6, 8, 9)).astype(np.float32)
    scene = write_envi(tmp_path / "short.img", cube, header_fields={"bbl": [1, 1, 0, 1]})
    result = invoke(runner, "info", scene.header)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("hsicluster: warning:")]
    assert warnings == [f"hsicluster: warning: {scene.header}: the header's 'bbl' lists 4 values for 6 bands, so it "
                        "is not used; correct the header"]
    assert "flagged" not in result.stdout


def test_info_salinas_a_not_georeferenced(runner: CliRunner, sample_salinas_a: Path) -> None:
    text = invoke(runner, "info", sample_salinas_a).stdout
    assert "not georeferenced" in text
    assert "83 rows × 86 cols × 204 bands" in text and "int16" in text
    info = json.loads(invoke(runner, "info", sample_salinas_a, "--json").stdout)
    assert (info["bands"], info["rows"], info["cols"], info["dtype"]) == (204, 83, 86, "int16")
    assert info["georeferenced"] is False
    assert info["crs"] is None and info["bounds"] is None and info["resolution"] is None


def test_info_of_a_store_has_statistics(runner: CliRunner, tmp_path: Path, geotiff: SyntheticScene) -> None:
    store = tmp_path / "s.zarr"
    invoke(runner, "ingest", geotiff.path, "-o", store, "--chunk", "16", "--quiet")
    info = json.loads(invoke(runner, "info", store, "--json").stdout)
    assert info["format"] == "zarr"
    assert info["crs"]["epsg"] == EPSG
    assert info["chunks"] == [6, 16, 16]
    # a store's storage is its chunks: no raster 'file layout' (it said "uncompressed strips of 16 rows")
    assert "file_layout" not in info and "file layout" not in invoke(runner, "info", store).stdout
    valid = helpers.reference_valid_mask(geotiff.cube, geotiff.nodata)
    assert info["valid_pixels"] == int(valid.sum())
    assert info["statistics"]["mean"] == pytest.approx(helpers.reference_stats(geotiff.cube, valid)["mean"].tolist())
    assert info["ingested_from"]["path"] == str(geotiff.path.absolute())
    # one JSON document; per-band arrays on one line each, not one number a line
    result = invoke(runner, "info", store, "--json")
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) < 60
    assert any(line.strip().startswith('"mean": [') and line.rstrip().endswith("],") for line in lines)
    text = invoke(runner, "info", store).stdout
    assert "valid pixels" in text and "statistics" in text
    assert "statistics" not in invoke(runner, "info", store, "--quiet").stdout


# --------------------------------------------------------------------------------------------
# ingest


def test_ingest(runner: CliRunner, tmp_path: Path, geotiff: SyntheticScene) -> None:
    store = tmp_path / "out.zarr"
    result = invoke(runner, "ingest", geotiff.path, "-o", store, "--chunk", "16", "--workers", "2")
    assert result.stdout.strip() == f"wrote {store.absolute()}"
    assert is_complete_store(store)
    np.testing.assert_array_equal(open_scene(store).values, geotiff.cube)
    # rerun: refused without --overwrite, done with it
    again = runner.invoke(main, ["ingest", str(geotiff.path), "-o", str(store)])
    assert again.exit_code != 0 and "--overwrite" in again.stderr
    quiet = invoke(runner, "ingest", geotiff.path, "-o", store, "--overwrite", "--quiet", "--chunk", "24")
    assert quiet.stdout == "" and quiet.stderr == ""
    assert open_scene(store).attrs["chunk"] == 24


def test_ingest_mat_with_var(runner: CliRunner, tmp_path: Path, scene_factory) -> None:
    cube = helpers.synthetic_cube(4, 10, 12, "float32", seed=3)
    written = scene_factory("mat-v5", cube, var="first",
                            extra={"second": np.zeros((10, 12, 3), np.float32)})
    written_with_a_list = scene_factory("mat-v5", cube, var="first", extra={
        "second": np.zeros((10, 12, 3), np.float32), "wl": np.arange(4.0)[None]})
    for command in (["ingest"], ["train", "-k", "3"]):  # train has no --var: the message says to ingest with it
        refused = runner.invoke(main, [*command, str(written_with_a_list.path), "-o", str(tmp_path / "a.zarr")])
        assert refused.exit_code != 0 and refused.stderr.count("\n") == 1
        listed = refused.stderr.split("several 3-D arrays (")[1].split(")); ")[0]
        assert sorted(listed.split("), ")) == ["first (10, 12, 4", "second (10, 12, 3"]  # not the 2-D wl
        assert "choose one with --var NAME" in refused.stderr
        assert "ingest it with --var, then train and predict the store" in refused.stderr
    invoke(runner, "ingest", written.path, "-o", tmp_path / "a.zarr", "--var", "first", "--quiet")
    np.testing.assert_array_equal(open_scene(tmp_path / "a.zarr").values, cube)


def test_no_arguments_print_the_help(runner: CliRunner) -> None:
    result = runner.invoke(main, [])
    assert "Usage:" in result.output and "Commands:" in result.output and "error" not in result.output


@pytest.mark.parametrize("args, words", [
    (["ingest", "SCENE", "-o", "OUT", "--chunk", "0"], "Invalid value for '--chunk'"),
    (["predict", "SCENE", "-m", "m.ckpt", "-o", "OUT", "--tiles", "0"], "Invalid value for '--tiles'"),
    (["train", "SCENE", "-k", "3", "-o", "OUT", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["train", "-k", "3", "-o", "OUT"], "Missing argument"),
    (["trian", "SCENE"], "No such command 'trian'"),
    (["--bogus"], "No such option '--bogus'"),
])
def test_usage_mistakes_are_one_line_errors(runner: CliRunner, geotiff: SyntheticScene, tmp_path: Path,
                                            args: list[str], words: str) -> None:
    args = [{"SCENE": str(geotiff.path), "OUT": str(tmp_path / "out")}.get(a, a) for a in args]
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsicluster: error: ") and words in lines[0], result.stderr
    assert lines[0].endswith(f"(see hsicluster {args[0]} --help)" if args[0] in main.commands else
                             "(see hsicluster --help)")
    assert not (tmp_path / "out").exists()


def test_bad_option_is_a_usage_error(runner: CliRunner, geotiff: SyntheticScene, tmp_path: Path) -> None:
    result = runner.invoke(main, ["ingest", str(geotiff.path), "-o", str(tmp_path / "x.zarr"), "--chunk", "0"])
    assert result.exit_code != 0
    result = runner.invoke(main, ["ingest", str(geotiff.path), "-o", str(tmp_path / "x.zarr"), "--chunk", "8"])
    assert result.exit_code != 0 and result.stderr.startswith("hsicluster: error:") and "chunk" in result.stderr
    assert "x>=16" in result.stderr  # as --help says (it said x>=1, and 8 was refused later)
    assert not (tmp_path / "x.zarr").exists()


# --------------------------------------------------------------------------------------------
# evaluate


@pytest.fixture
def truth(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (30, 40)).astype(np.uint8)  # 0 = unlabelled, classes 1..3
    path = tmp_path / "gt.npy"
    np.save(path, gt)
    return path, gt


def test_evaluate_npy_labels(runner: CliRunner, tmp_path: Path, truth) -> None:
    gt_path, gt = truth
    relabel = {0: 9, 1: 7, 2: 5, 3: 2}  # a perfect clustering under other ids
    labels = np.vectorize(relabel.get)(gt).astype(np.int32)
    np.save(tmp_path / "labels.npy", labels)
    scores = json.loads(invoke(runner, "evaluate", tmp_path / "labels.npy", gt_path, "--json").stdout)
    assert scores["acc"] == pytest.approx(1.0)
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["kappa"] == pytest.approx(1.0)
    assert scores["n_scored"] == int((gt > 0).sum())
    assert scores["n_classes"] == 3
    assert scores["mapping"] == {"7": 1, "5": 2, "2": 3}
    table = invoke(runner, "evaluate", tmp_path / "labels.npy", gt_path).stdout
    assert "ACC" in table and "1.0000" in table


def test_evaluate_tif_labels_with_nodata(runner: CliRunner, tmp_path: Path, truth) -> None:
    gt_path, gt = truth
    labels = gt.astype(np.uint8).copy()
    labels[:3, :] = 255  # nodata: never scored as a cluster
    n_invalid = int((gt[:3, :] > 0).sum())
    helpers.write_geotiff(tmp_path / "labels.tif", labels[None], nodata=255)
    scores = json.loads(invoke(runner, "evaluate", tmp_path / "labels.tif", gt_path, "--json").stdout)
    assert scores["n_invalid_pred"] == n_invalid
    assert scores["n_scored"] == int((gt > 0).sum())
    assert scores["acc"] == pytest.approx(1 - n_invalid / int((gt > 0).sum()))
    assert "255" not in scores["mapping"]


def test_evaluate_warns_when_no_labelled_pixel_has_a_label(runner: CliRunner, tmp_path: Path, truth) -> None:
    gt_path, gt = truth
    helpers.write_geotiff(tmp_path / "labels.tif", np.full((1, *gt.shape), 255, np.uint8), nodata=255)
    result = runner.invoke(main, ["evaluate", str(tmp_path / "labels.tif"), str(gt_path), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["acc"] == 0
    assert result.stderr.startswith(f"hsicluster: warning: {tmp_path / 'labels.tif'}: every labelled ground-truth "
                                    "pixel has the nodata label") and result.stderr.count("\n") == 1
    helpers.write_geotiff(tmp_path / "some.tif", gt.astype(np.uint8)[None], nodata=255)
    result = runner.invoke(main, ["evaluate", str(tmp_path / "some.tif"), str(gt_path), "--json"])
    assert json.loads(result.stdout)["n_scored"] == int((gt > 0).sum()) and result.stderr == ""
    assert runner.invoke(main, ["evaluate", str(tmp_path / "some.tif"), str(gt_path)]).stderr == ""


def test_dumps_json_is_json_with_flat_lists() -> None:
    from hsi_cluster.cli import dumps_json

    document = {"a": [1, 2.5, None], "b": {"c": [], "d": {}, "e": [{"f": [1, 2]}, 3]}, "g": "x", "h": True}
    text = dumps_json(document)
    assert json.loads(text) == document
    assert '  "a": [1, 2.5, null],' in text.splitlines()


def test_evaluate_salinas_a_ground_truth_against_itself(runner: CliRunner, tmp_path: Path,
                                                        sample_salinas_a: Path) -> None:
    import scipy.io

    gt_path = sample_salinas_a.parent / "SalinasA_gt.mat"
    gt = scipy.io.loadmat(gt_path)["salinasA_gt"]
    np.save(tmp_path / "pred.npy", gt.astype(np.int32))
    scores = json.loads(invoke(runner, "evaluate", tmp_path / "pred.npy", gt_path, "--json").stdout)
    assert scores["n_scored"] == 5348
    assert scores["n_classes"] == 6
    assert scores["acc"] == pytest.approx(1.0)


def test_evaluate_with_swapped_arguments_says_to_swap(runner: CliRunner, tmp_path: Path, truth) -> None:
    import rasterio

    gt_path, gt = truth
    labels_path = tmp_path / "labels.tif"
    helpers.write_geotiff(labels_path, gt.astype(np.uint8)[None], nodata=255)
    with rasterio.open(labels_path, "r+") as dst:  # the tags predict writes
        dst.update_tags(HSICLUSTER_K="4", HSICLUSTER_MODEL_SHA256="0" * 16)
    truth_tif = tmp_path / "gt.tif"
    helpers.write_geotiff(truth_tif, gt.astype(np.uint8)[None], nodata=None)
    for truth_file in (gt_path, truth_tif):
        result = runner.invoke(main, ["evaluate", str(truth_file), str(labels_path), "--json"])
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.startswith("hsicluster: error:") and result.stderr.count("\n") == 1
        assert "arguments look swapped" in result.stderr
        assert f"hsicluster evaluate labels.tif {truth_file.name}" in result.stderr
        assert json.loads(invoke(runner, "evaluate", labels_path, truth_file, "--json").stdout)["acc"] == 1.0
    # two label rasters (comparing two models) are not a mistake
    other = tmp_path / "other.tif"
    shutil.copy(labels_path, other)
    assert json.loads(invoke(runner, "evaluate", labels_path, other, "--json").stdout)["acc"] == 1.0


@pytest.mark.parametrize("option", ["-o", "--confidence", "--quicklook"])
def test_output_file_with_a_trailing_slash_is_refused(runner: CliRunner, tmp_path: Path, option: str) -> None:
    folder = tmp_path / "outdir"
    args = {"-o": str(folder) + "/"} if option == "-o" else {"-o": str(tmp_path / "l.tif"), option: str(folder) + "/"}
    result = runner.invoke(main, ["predict", str(tmp_path / "scene.tif"), "-m", str(tmp_path / "m.ckpt"),
                                  *[x for kv in args.items() for x in kv]])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "ends with '/', so it names a folder" in result.stderr and f"e.g. {folder}/" in result.stderr
    assert not folder.exists()
    result = runner.invoke(main, ["train", str(tmp_path / "scene.tif"), "-k", "3", "-o", str(folder) + "/"])
    assert result.exit_code == 2 and f"e.g. {folder}/model.ckpt" in result.stderr
    assert not folder.exists() and not (tmp_path / "outdir").exists()


def test_evaluate_shape_mismatch_is_an_error(runner: CliRunner, tmp_path: Path, truth) -> None:
    gt_path, _ = truth
    np.save(tmp_path / "small.npy", np.zeros((5, 5), np.int32))
    result = runner.invoke(main, ["evaluate", str(tmp_path / "small.npy"), str(gt_path)])
    assert result.exit_code != 0
    assert result.stderr.startswith("hsicluster: error:") and "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------
# the real console script


def test_a_scene_without_georeferencing_gives_no_rasterio_warning_from_reader_threads(tmp_path: Path) -> None:
    """A scaled GeoTIFF without CRS or transform, read by dask's threads: rasterio's NotGeoreferencedWarning leaked
    to stderr as two raw Python lines, even with -q."""
    cube = helpers.synthetic_cube(204, 83, 86, "int16")
    scene = helpers.write_geotiff(tmp_path / "plain.tif", cube, crs=None, nodata=0, scales=[1e-4] * 204).path
    ingest = subprocess.run(helpers.python_module_command("ingest", str(scene), "-o", str(tmp_path / "s.zarr"), "-q"),
                            capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    assert "NotGeoreferencedWarning" not in ingest.stderr and ingest.stderr == "", ingest.stderr


def test_console_script_ingest_and_info_on_sample(tmp_path: Path, sample_salinas_a: Path) -> None:
    store = tmp_path / "salinas_a.zarr"
    ingest = subprocess.run(helpers.python_module_command("ingest", str(sample_salinas_a), "-o", str(store)),
                            capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    assert f"wrote {store}" in ingest.stdout
    assert "Traceback" not in ingest.stderr
    commands = [helpers.python_module_command("info", str(store), "--json")]
    script = shutil.which("hsicluster")
    if script:
        commands.append([script, "info", str(store), "--json"])
    for command in commands:
        info = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert info.returncode == 0, info.stderr
        summary = json.loads(info.stdout)
        assert (summary["bands"], summary["rows"], summary["cols"], summary["dtype"]) == (204, 83, 86, "int16")
        assert summary["georeferenced"] is False
        assert summary["format"] == "zarr"
        assert summary["valid_pixels"] == 83 * 86
        assert summary["ingested_from"]["path"] == str(sample_salinas_a)
        assert len(summary["statistics"]["mean"]) == 204


@pytest.mark.parametrize("command, target, hint", [
    (["train", "SCENE", "-k", "3", "-o", "OUT"], "hsi_cluster.train.train", "rerun it with --resume"),
    (["predict", "SCENE", "-m", "m.ckpt", "-o", "OUT"], "hsi_cluster.predict.predict_scene", "rerun it with --resume"),
    (["ingest", "SCENE", "-o", "OUT"], "hsi_cluster.io.ingest", "rerun the same command"),
])
def test_interrupt_says_how_to_continue(runner: CliRunner, geotiff: SyntheticScene, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, command: list[str], target: str,
                                        hint: str) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    module, _, name = target.rpartition(".")  # the module object: hsi_cluster.train the attribute is the API function
    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    args = [{"SCENE": str(geotiff.path), "OUT": str(tmp_path / "out.tif")}.get(a, a) for a in command]
    result = runner.invoke(main, args)
    assert result.exit_code == 130
    assert result.stderr.startswith(f"hsicluster: error: interrupted; {hint}") and result.stderr.count("\n") == 1


def test_sigterm_stops_a_command_as_ctrl_c_does(runner: CliRunner, geotiff: SyntheticScene, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduler's time limit (SIGTERM) gets the resume hint and the shell's code 143, not a silent death."""
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(importlib.import_module("hsi_cluster.predict"), "predict_scene", terminated)
    before = signal.getsignal(signal.SIGTERM)
    result = runner.invoke(main, ["predict", str(geotiff.path), "-m", "m.ckpt", "-o", str(tmp_path / "out.tif")])
    assert result.exit_code == 143
    assert result.stderr == ("hsicluster: error: terminated (SIGTERM); rerun it with --resume to continue from the "
                             "finished tiles\n")
    assert signal.getsignal(signal.SIGTERM) is before


def test_ingest_of_an_all_nodata_scene_warns(runner: CliRunner, tmp_path: Path) -> None:
    scene = helpers.write_geotiff(tmp_path / "empty.tif", np.full((3, 8, 9), np.nan, np.float32)).path
    result = runner.invoke(main, ["ingest", str(scene), "-o", str(tmp_path / "empty.zarr"), "-q"])
    assert result.exit_code == 0
    assert result.stderr == (f"hsicluster: warning: {scene}: every pixel is nodata, NaN or fill (one value in every "
                             "band); check the scene's nodata value\n")


def test_ingest_of_a_scene_with_dead_bands_says_which_it_flagged(runner: CliRunner, tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(4, 8, 9, "float32", seed=1)
    cube[2] = np.nan
    scene = helpers.write_geotiff(tmp_path / "dead.tif", cube).path
    result = runner.invoke(main, ["ingest", str(scene), "-o", str(tmp_path / "dead.zarr"), "-q"])
    assert result.exit_code == 0
    assert result.stderr == (f"hsicluster: warning: {scene}: band 3 is NaN or nodata in every pixel; flagged bad so "
                             "that the other bands' pixels stay valid\n")
    info = runner.invoke(main, ["info", str(tmp_path / "dead.zarr")])
    assert "bad bands     1 flagged, of which 1 NaN or nodata in every pixel (bands 3)" in info.stdout


@pytest.mark.parametrize("fill", [np.inf, 3.4e38])
def test_a_band_of_inf_or_float_fill_is_flagged_with_one_warning_and_left_out_of_the_statistics(
        runner: CliRunner, tmp_path: Path, fill: float) -> None:
    """A band of +Inf leaked numpy's 'invalid value encountered in subtract' before the warning, and `info` gave
    a band of float32's largest value (fill) as the scene's largest per-band mean, 3.4e38."""
    cube = helpers.synthetic_cube(4, 8, 9, "float32", seed=1)
    cube[1] = fill
    scene = helpers.write_geotiff(tmp_path / "dead.tif", cube).path
    result = runner.invoke(main, ["ingest", str(scene), "-o", str(tmp_path / "dead.zarr"), "-q"])
    assert result.exit_code == 0
    assert result.stderr == (f"hsicluster: warning: {scene}: band 2 is NaN or nodata in every pixel; flagged bad so "
                             "that the other bands' pixels stay valid\n")
    info = runner.invoke(main, ["info", str(tmp_path / "dead.zarr")]).stdout
    good = cube[[0, 2, 3]].reshape(3, -1).astype(np.float64)
    assert f"statistics    per-band mean {good.mean(axis=1).min():.4g}–{good.mean(axis=1).max():.4g}, " in info
    assert info.rstrip().endswith("(good bands)")


def test_a_metadata_warning_is_printed_once_though_the_scene_is_opened_twice(runner: CliRunner,
                                                                             tmp_path: Path) -> None:
    """`ingest` opens a scene twice; Python's "once" filter forgot the first warning whenever a reader entered
    warnings.catch_warnings, so the units warning was printed twice."""
    cube = helpers.synthetic_cube(4, 8, 9, "float32", seed=1)
    scene = helpers.write_envi(tmp_path / "um.img", cube, wavelength_nm=[0.4, 0.9, 1.6, 2.3]).path
    result = runner.invoke(main, ["ingest", str(scene), "-o", str(tmp_path / "um.zarr"), "-q"])
    assert result.exit_code == 0
    assert result.stderr.count("hsicluster: warning:") == 1
    assert "are labelled nanometres" in result.stderr


def test_a_band_missing_over_most_of_the_scene_is_flagged_bad(runner: CliRunner, tmp_path: Path) -> None:
    """A band NaN in 56 of 72 pixels (52 of them usable in every other band; a detector's dropout over most of the swath) made them invalid in silence:
    the scene trained and was labelled on the other 16. Flagged bad now, with a warning naming it; a band missing
    in a few pixels leaves those pixels invalid, as before."""
    cube = helpers.synthetic_cube(6, 8, 9, "float32", seed=1)
    cube[2, :, :7] = np.nan
    cube[4, :2, :2] = np.nan
    scene = helpers.write_geotiff(tmp_path / "dropout.tif", cube).path
    result = runner.invoke(main, ["ingest", str(scene), "-o", str(tmp_path / "dropout.zarr"), "-q"])
    assert result.exit_code == 0
    assert result.stderr == (f"hsicluster: warning: {scene}: band 3 made 56 pixels invalid (NaN or nodata where most "
                             "bands hold values); flagged bad so that those pixels stay valid\n")
    store = open_scene(tmp_path / "dropout.zarr")
    assert store.attrs["valid_pixels"] == 72 - 4 and not store.coords["good_band"].values[2]
    info = runner.invoke(main, ["info", str(tmp_path / "dropout.zarr")])
    assert "bad bands     1 flagged, of which 1 dropping out where most bands hold values (bands 3)" in info.stdout


def test_info_says_when_a_mask_band_marks_the_unusable_pixels(runner: CliRunner, tmp_path: Path) -> None:
    """``nodata not set`` alone hid that the file's own mask band leaves pixels out of training and labels."""
    import rasterio

    scene = helpers.write_geotiff(tmp_path / "masked.tif", helpers.synthetic_cube(4, 8, 9, "float32")).path
    plain = runner.invoke(main, ["info", str(scene)])
    assert "nodata        not set\n" in plain.stdout
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(scene, "r+") as dst:
        dst.write_mask(np.full((8, 9), 255, np.uint8))
    masked = runner.invoke(main, ["info", str(scene)])
    assert "nodata        not set (a mask band of the file marks the unusable pixels)\n" in masked.stdout
    assert json.loads(runner.invoke(main, ["info", str(scene), "--json"]).stdout)["mask_band"] is True


def test_json_commands_keep_stdout_empty_on_errors(runner: CliRunner, tmp_path: Path) -> None:
    """A script reading stdout gets nothing (not half a document) and exit code 2, with one line on stderr."""
    missing = tmp_path / "missing.tif"
    for args in (["info", missing], ["evaluate", missing, missing],
                 ["batch", missing, "-m", tmp_path / "m.ckpt", "-o", tmp_path / "out"]):
        result = runner.invoke(main, [*map(str, args), "--json"])
        assert result.exit_code == 2, (args, result.stderr)
        assert result.stdout == "" and result.stderr.startswith("hsicluster: error:")
        assert result.stderr.count("\n") == 1
