"""Bad input and bad output paths: a clear ``SceneError``/``OutputError`` from the library, a one-line
error naming the file (exit code ≠ 0, no traceback) from the CLI, and never a partial output."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.enums import ColorInterp

from hsi_cluster.cli import main
from hsi_cluster.errors import HsiClusterError, OutputError, SceneError
from hsi_cluster.io import ingest, open_scene
from tests import helpers


@dataclass
class Bad:
    """A bad scene: ``make(tmp_path)`` returns the path to pass; ``named`` is the file the message must name."""

    make: Callable[[Path], Path]
    named: Callable[[Path], Path] | None = None  # default: the path passed
    fails_on_open: bool = True  # False: the file opens and the problem shows when reading


def _geotiff(tmp: Path, name: str = "scene.tif", bands: int = 6, height: int = 24, width: int = 20) -> Path:
    return helpers.write_geotiff(tmp / name, helpers.synthetic_cube(bands, height, width, "float32")).path


def _text_tif(tmp: Path) -> Path:
    path = tmp / "notes.tif"
    path.write_text("this is not a raster\n" * 20)
    return path


def _truncated_geotiff(tmp: Path) -> Path:
    path = helpers.write_geotiff(tmp / "cut.tif", helpers.synthetic_cube(6, 256, 256, "float32", seed=1)).path
    helpers.truncate_file(path, 0.5)
    return path


def _truncated_envi(tmp: Path) -> Path:
    written = helpers.write_envi(tmp / "cut.img", helpers.synthetic_cube(6, 30, 30, "int16"))
    helpers.truncate_file(written.path, 0.5)
    return written.path


def _envi_with(fields: dict, *, open_header: bool = False):
    def make(tmp: Path) -> Path:
        written = helpers.write_envi(tmp / "bad.img", helpers.synthetic_cube(6, 10, 12, "int16"),
                                     header_fields=fields)
        return written.header if open_header else written.path
    return make


def _alpha_band(tmp: Path) -> Path:
    """Ten spectral bands and an 11th whose colour interpretation is alpha (read as data, its 0s labelled)."""
    path = helpers.write_geotiff(tmp / "alpha.tif", helpers.synthetic_cube(11, 10, 12, "uint8")).path
    with rasterio.open(path, "r+") as dataset:
        dataset.colorinterp = [ColorInterp.gray] * 10 + [ColorInterp.alpha]
    return path


def _bands_with_other_nodata(tmp: Path) -> Path:
    """A VRT stacking bands that declare −9999 (1–2) and −32768 (3–4), as a per-band delivery can: band 1's
    value was used for all, and the others' fill read as data."""
    source = helpers.write_geotiff(tmp / "bands.tif", helpers.synthetic_cube(4, 10, 12, "int16")).path
    bands = "".join(
        f'<VRTRasterBand dataType="Int16" band="{b}"><NoDataValue>{-9999 if b <= 2 else -32768}</NoDataValue>'
        f'<SimpleSource><SourceFilename relativeToVRT="1">{source.name}</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>" for b in range(1, 5))
    vrt = tmp / "stack.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="12" rasterYSize="10">{bands}</VRTDataset>')
    return vrt


def _header_without_binary(tmp: Path) -> Path:
    written = helpers.write_envi(tmp / "lonely.img", helpers.synthetic_cube(4, 5, 6, "int16"))
    written.path.unlink()
    return written.header


def _npy(array: np.ndarray, name: str):
    def make(tmp: Path) -> Path:
        np.save(tmp / name, array)
        return tmp / name
    return make


def _fake_npy(tmp: Path) -> Path:
    (tmp / "fake.npy").write_bytes(b"\x93NUMPY garbage, not an array header")
    return tmp / "fake.npy"


def _mat_without_cube(tmp: Path) -> Path:
    return helpers.write_mat_v5(tmp / "flat.mat", None, extra={"a": np.zeros((4, 5)), "b": np.arange(7.0)}).path


def _mat73_without_cube(tmp: Path) -> Path:
    return helpers.write_mat_v73(tmp / "flat73.mat", None, extra={"a": np.zeros((4, 5))}).path


def _single_band_geotiff(tmp: Path) -> Path:
    return helpers.write_geotiff(tmp / "one.tif", helpers.synthetic_cube(1, 10, 10, "uint16")).path


def _plain_folder(tmp: Path) -> Path:
    (tmp / "folder").mkdir()
    (tmp / "folder" / "readme.txt").write_text("hello")
    return tmp / "folder"


def _incomplete_store(tmp: Path) -> Path:
    scene = _geotiff(tmp, "src.tif", height=64, width=64)

    def stop(done: int, total: int) -> None:
        if done >= 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ingest(scene, tmp / "half.zarr", chunk=16, workers=1, progress=stop)
    return tmp / "half.zarr.partial"


BAD_SCENES = {
    "missing-file": Bad(lambda tmp: tmp / "nowhere.tif"),
    "text-file-named-tif": Bad(_text_tif),
    "truncated-geotiff": Bad(_truncated_geotiff, fails_on_open=False),
    "truncated-envi-binary": Bad(_truncated_envi),
    "envi-bands-not-a-number": Bad(_envi_with({"bands": "abc"})),
    "envi-bands-not-a-number-via-hdr": Bad(_envi_with({"bands": "abc"}, open_header=True)),
    "envi-missing-samples": Bad(_envi_with({"samples": None})),
    "envi-unknown-data-type": Bad(_envi_with({"data type": 99})),
    "envi-header-without-binary": Bad(_header_without_binary),
    # a data file larger than its header describes read shifted (pixel (0, 1) already wrong), in silence
    "envi-header-gives-fewer-bands": Bad(_envi_with({"bands": 5})),
    "envi-header-gives-a-smaller-data-type": Bad(_envi_with({"data type": 1})),
    "envi-unknown-interleave": Bad(_envi_with({"interleave": "bxx"})),  # GDAL read it as bsq
    "alpha-band": Bad(_alpha_band),
    "bands-with-other-nodata": Bad(_bands_with_other_nodata),
    "npy-2d": Bad(_npy(np.zeros((8, 9), np.float32), "flat.npy")),
    "npy-4d": Bad(_npy(np.zeros((2, 3, 4, 5), np.float32), "hyper.npy")),
    "npy-zero-size": Bad(_npy(np.zeros((0, 5, 5), np.float32), "empty.npy")),
    "npy-not-an-array": Bad(_fake_npy),
    "single-band-geotiff": Bad(_single_band_geotiff),
    "mat-without-3d-array": Bad(_mat_without_cube),
    "mat-v73-without-3d-array": Bad(_mat73_without_cube),
    "folder-not-a-store": Bad(_plain_folder),
    "incomplete-store": Bad(_incomplete_store),
}


def assert_no_output(out: Path) -> None:
    leftovers = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name)) \
        if out.parent.is_dir() else []
    assert leftovers == [], f"partial output left behind: {leftovers}"


def assert_one_line_error(result, named: Path) -> str:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    stderr = result.stderr
    assert "Traceback" not in stderr and "Traceback" not in result.stdout
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("hsicluster: error: "), lines[0]
    assert named.name in lines[0], f"the message should name {named.name}: {lines[0]}"
    return lines[0]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("case", list(BAD_SCENES), ids=list(BAD_SCENES))
def test_library_raises_scene_error(tmp_path: Path, case: str) -> None:
    bad = BAD_SCENES[case]
    scene = bad.make(tmp_path)
    named = bad.named(tmp_path) if bad.named else scene
    if bad.fails_on_open:
        with pytest.raises(SceneError) as info:
            open_scene(scene)
    else:
        opened = open_scene(scene)  # opening reads headers only
        with pytest.raises(SceneError) as info:
            opened.load()
    assert named.name in str(info.value)
    assert "\n" not in str(info.value)
    out = tmp_path / "out" / "store.zarr"
    out.parent.mkdir()
    with pytest.raises(SceneError) as info:
        ingest(scene, out, chunk=16)
    assert named.name in str(info.value)
    assert_no_output(out)


@pytest.mark.parametrize("case", list(BAD_SCENES), ids=list(BAD_SCENES))
def test_cli_ingest_bad_scene(tmp_path: Path, runner: CliRunner, case: str) -> None:
    bad = BAD_SCENES[case]
    scene = bad.make(tmp_path)
    out = tmp_path / "out" / "store.zarr"
    out.parent.mkdir()
    result = runner.invoke(main, ["ingest", str(scene), "-o", str(out), "--chunk", "16"])
    assert_one_line_error(result, bad.named(tmp_path) if bad.named else scene)
    assert_no_output(out)


@pytest.mark.parametrize("case", [c for c, bad in BAD_SCENES.items() if bad.fails_on_open])
def test_cli_info_bad_scene(tmp_path: Path, runner: CliRunner, case: str) -> None:
    bad = BAD_SCENES[case]
    scene = bad.make(tmp_path)
    for extra in ([], ["--json"]):
        result = runner.invoke(main, ["info", str(scene), *extra])
        assert_one_line_error(result, bad.named(tmp_path) if bad.named else scene)
        assert result.stdout == ""


def test_corrupt_input_found_mid_ingest_leaves_nothing(tmp_path: Path) -> None:
    scene = _truncated_geotiff(tmp_path)
    out = tmp_path / "store.zarr"
    progress: list[int] = []
    with pytest.raises(SceneError, match="cut.tif") as info:
        ingest(scene, out, chunk=16, workers=2, progress=lambda done, total: progress.append(done))
    assert max(progress) > 0, "the truncation should be found after some blocks were written"
    assert_no_output(out)
    # GDAL's own reason, not rasterio's "Read failed. See previous exception for details."
    assert "previous exception" not in str(info.value) and "IReadBlock failed" in str(info.value)


def test_verbose_shows_the_traceback(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(main, ["info", str(tmp_path / "nowhere.tif"), "--verbose"])
    assert result.exit_code != 0
    assert "Traceback" in result.stderr
    assert "hsicluster: error:" in result.stderr


# --------------------------------------------------------------------------------------------
# output paths


def _out_in_missing_folder(tmp: Path) -> Path:
    return tmp / "no" / "such" / "folder" / "out.zarr"


def _out_under_a_file(tmp: Path) -> Path:
    (tmp / "some_file.txt").write_text("I am a file")
    return tmp / "some_file.txt" / "out.zarr"


def _out_existing_store(tmp: Path) -> Path:
    return ingest(_geotiff(tmp, "other.tif"), tmp / "exists.zarr", chunk=16)


def _out_existing_file(tmp: Path) -> Path:
    (tmp / "exists.zarr").write_text("precious")
    return tmp / "exists.zarr"


def _out_read_only_folder(tmp: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not stop root, so a read-only folder cannot be made "
                    "(the 'output under a regular file' case covers an unwritable path)")
    folder = tmp / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "out.zarr"


BAD_OUTPUTS = {
    "folder-does-not-exist": _out_in_missing_folder,
    "path-under-a-regular-file": _out_under_a_file,
    "read-only-folder": _out_read_only_folder,
    "store-exists": _out_existing_store,
    "file-exists": _out_existing_file,
}


def _snapshot(path: Path) -> dict[str, bytes] | bytes | None:
    if path.is_dir():
        return helpers.tree_snapshot(path)
    return path.read_bytes() if path.is_file() else None


@pytest.mark.parametrize("case", list(BAD_OUTPUTS), ids=list(BAD_OUTPUTS))
def test_bad_output_library(tmp_path: Path, case: str) -> None:
    scene = _geotiff(tmp_path)
    out = BAD_OUTPUTS[case](tmp_path)
    before = _snapshot(out)
    try:
        with pytest.raises(OutputError) as info:
            ingest(scene, out, chunk=16)
        assert out.name in str(info.value)
        assert _snapshot(out) == before
        assert not Path(str(out) + ".partial").exists()
    finally:
        if case == "read-only-folder":
            out.parent.chmod(0o755)


@pytest.mark.parametrize("case", list(BAD_OUTPUTS), ids=list(BAD_OUTPUTS))
def test_bad_output_cli(tmp_path: Path, runner: CliRunner, case: str) -> None:
    scene = _geotiff(tmp_path)
    out = BAD_OUTPUTS[case](tmp_path)
    before = _snapshot(out)
    try:
        result = runner.invoke(main, ["ingest", str(scene), "-o", str(out)])
        assert_one_line_error(result, out)
        assert _snapshot(out) == before
        assert not Path(str(out) + ".partial").exists()
    finally:
        if case == "read-only-folder":
            out.parent.chmod(0o755)


def test_missing_folder_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        ingest(_geotiff(tmp_path), tmp_path / "new" / "out.zarr")
    assert not (tmp_path / "new").exists()


def test_output_under_a_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="not a folder"):
        ingest(_geotiff(tmp_path), _out_under_a_file(tmp_path))


def test_nan_and_inf_are_not_errors(tmp_path: Path, runner: CliRunner, geotiff) -> None:
    assert not np.isfinite(geotiff.cube).all()
    result = runner.invoke(main, ["ingest", str(geotiff.path), "-o", str(tmp_path / "ok.zarr"), "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert open_scene(tmp_path / "ok.zarr").attrs["valid_pixels"] > 0


def test_errors_are_user_errors() -> None:
    assert issubclass(SceneError, HsiClusterError) and issubclass(OutputError, HsiClusterError)
