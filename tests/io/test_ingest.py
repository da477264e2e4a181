"""``ingest``: scene → Zarr v3 store, round trip, statistics, valid mask, resumability, memory."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from rasterio.crs import CRS

from hsi_cluster.errors import OutputError, SceneError
from hsi_cluster.io import ingest, is_complete_store, is_store, open_scene, open_valid_mask
from hsi_cluster.io.info import describe, format_info
from hsi_cluster.io.store import Store
from tests import helpers
from tests.helpers import EPSG, SyntheticScene
from tests.io.test_enmap import write_product

PARTIAL = ".partial"
PROGRESS_DIR = "_blocks_done"


class SimulatedKill(Exception):
    """Raised from the progress callback: the ingest stops as if interrupted."""


def partial_of(store: Path) -> Path:
    return store.with_name(store.name + PARTIAL)


def stop_after(blocks: int):
    """A progress callback that interrupts the ingest once ``blocks`` blocks are done."""
    def progress(done: int, total: int) -> None:
        if done >= blocks:
            raise SimulatedKill(f"{done}/{total}")
    return progress


def store_arrays(store: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {"data": group["data"][...], "valid": group["valid"][...]}


def store_metadata(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"]["hsicluster"]


def assert_stats_match(statistics: dict, cube: np.ndarray, valid: np.ndarray, *, rtol: float = 1e-10) -> None:
    """Stored per-band statistics equal plain numpy's over the valid pixels."""
    expected = helpers.reference_stats(cube, valid)
    assert statistics["count"] == [int(valid.sum())] * cube.shape[0]
    for key in ("mean", "std", "min", "max"):
        got = np.array([np.nan if v is None else v for v in statistics[key]], dtype=np.float64)
        np.testing.assert_allclose(got, expected[key], rtol=rtol, atol=1e-9 * max(1.0, float(np.nanmax(
            np.abs(expected[key]))) if np.isfinite(expected[key]).any() else 1.0), err_msg=key)


def assert_round_trip(store: Path, written: SyntheticScene, chunk: int) -> None:
    """Values, georeferencing, spectral coords, statistics, mask and chunking of a finished store."""
    original = open_scene(written.path)
    stored = open_scene(store)
    assert stored.attrs["format"] == "zarr"
    assert stored.dims == ("band", "y", "x")
    assert stored.dtype == written.cube.dtype
    np.testing.assert_array_equal(stored.values, written.cube)
    for key in ("crs", "transform", "georeferenced", "nodata"):
        assert stored.attrs[key] == original.attrs[key], key
    if written.crs is not None:
        assert CRS.from_wkt(stored.attrs["crs"]).to_epsg() == EPSG
    for coord in ("wavelength", "fwhm", "good_band", "x", "y"):
        assert (coord in stored.coords) == (coord in original.coords), coord
        if coord in original.coords:
            np.testing.assert_array_equal(stored[coord].values, original[coord].values)
            assert stored[coord].dtype == original[coord].dtype
    valid = helpers.reference_valid_mask(written.cube, written.nodata, written.good_band)
    np.testing.assert_array_equal(open_valid_mask(store).compute(), valid)
    assert stored.attrs["valid_pixels"] == int(valid.sum())
    assert_stats_match(stored.attrs["statistics"], written.cube, valid)
    group = zarr.open_group(str(store), mode="r")
    assert group["data"].chunks == (written.cube.shape[0], chunk, chunk)
    assert group["valid"].chunks == (chunk, chunk)
    assert stored.attrs["chunk"] == chunk
    assert not partial_of(store).exists()
    assert is_complete_store(store)


# --------------------------------------------------------------------------------------------
# round trips


def test_round_trip_geotiff_with_invalid_pixels(tmp_path: Path, geotiff: SyntheticScene) -> None:
    valid = helpers.reference_valid_mask(geotiff.cube, geotiff.nodata)
    assert 0 < valid.sum() < valid.size - 10  # NaN, ±Inf and nodata pixels are present
    store = ingest(geotiff.path, tmp_path / "out.zarr", chunk=16)
    assert store == (tmp_path / "out.zarr").absolute()
    assert_round_trip(store, geotiff, 16)


def test_round_trip_envi_bad_bands_and_nodata(tmp_path: Path, envi_bsq: SyntheticScene) -> None:
    store = ingest(envi_bsq.header, tmp_path / "out.zarr", chunk=16)
    assert_round_trip(store, envi_bsq, 16)
    # validity is decided by the good bands only (bbl): a nodata value in a bad band does not count
    assert (store_arrays(store)["valid"] == helpers.reference_valid_mask(envi_bsq.cube, -9999,
                                                                          envi_bsq.good_band)).all()


@pytest.mark.parametrize("fmt,dtype", [("npy", "uint16"), ("mat-v5", "float64"), ("mat-v7.3", "int16"),
                                       ("envi-bip", "float32"), ("geotiff-tiled", "int16")])
@pytest.mark.parametrize("chunk", [16, 24])
def test_round_trip_formats_and_awkward_sizes(tmp_path: Path, scene_factory, fmt: str, dtype: str,
                                              chunk: int) -> None:
    floating = np.issubdtype(np.dtype(dtype), np.floating)
    cube = helpers.synthetic_cube(5, 37, 53, dtype, seed=chunk, nan_pixels=7 if floating else 0)
    written = scene_factory(fmt, cube)
    store = ingest(written.path, tmp_path / "out.zarr", chunk=chunk, workers=2)
    assert_round_trip(store, written, chunk)


def test_default_chunk_and_store_as_input(tmp_path: Path, geotiff: SyntheticScene) -> None:
    first = ingest(geotiff.path, tmp_path / "first.zarr")
    chunk = open_scene(first).attrs["chunk"]
    assert chunk >= 16 and zarr.open_group(str(first))["data"].chunks[1:] == (chunk, chunk)
    second = ingest(first, tmp_path / "second.zarr", chunk=16)  # re-chunk an existing store
    stored = open_scene(second)
    np.testing.assert_array_equal(stored.values, geotiff.cube)
    assert stored.attrs["crs"] == open_scene(first).attrs["crs"]
    np.testing.assert_array_equal(open_valid_mask(second).compute(), open_valid_mask(first).compute())
    valid = helpers.reference_valid_mask(geotiff.cube, geotiff.nodata)
    assert_stats_match(stored.attrs["statistics"], geotiff.cube, valid)


def test_all_pixels_invalid_is_not_an_error(tmp_path: Path) -> None:
    cube = np.full((3, 20, 17), np.nan, dtype=np.float32)
    written = helpers.write_geotiff(tmp_path / "nan.tif", cube)
    store = ingest(written.path, tmp_path / "out.zarr", chunk=16)
    scene = open_scene(store)
    assert scene.attrs["valid_pixels"] == 0
    assert scene.attrs["statistics"]["count"] == [0, 0, 0]
    assert scene.attrs["statistics"]["mean"] == [None, None, None]
    assert not open_valid_mask(store).compute().any()


def _dead_band_scene(tmp_path: Path) -> SyntheticScene:
    """5 bands, 40 × 36, nodata -9999: band 1 at nodata and band 3 NaN in every pixel, not flagged
    (as a delivery that fills its dead or absorption bands without a bad-band list), plus a few
    nodata pixels in the other bands."""
    cube = helpers.synthetic_cube(5, 40, 36, "float32", seed=6)
    cube[1] = -9999
    cube[3] = np.nan
    cube[[0, 2, 4], 7, 9] = -9999
    cube[0, 30, 4] = np.nan
    return helpers.write_geotiff(tmp_path / "dead.tif", cube, nodata=-9999.0)


def test_bands_empty_in_every_pixel_are_flagged_instead_of_voiding_the_scene(tmp_path: Path) -> None:
    written = _dead_band_scene(tmp_path)
    store = ingest(written.path, tmp_path / "out.zarr", chunk=16)
    scene = open_scene(store)
    good = np.array([True, False, True, False, True])
    np.testing.assert_array_equal(scene.coords["good_band"].values, good)
    assert scene.attrs["empty_bands"] == [1, 3]
    valid = helpers.reference_valid_mask(written.cube, -9999, good)
    assert valid.sum() == 40 * 36 - 2
    np.testing.assert_array_equal(open_valid_mask(store).compute(), valid)
    assert scene.attrs["valid_pixels"] == int(valid.sum())
    assert_stats_match(scene.attrs["statistics"], written.cube, valid)
    np.testing.assert_array_equal(scene.values, written.cube)  # the values stay as delivered


def test_killed_while_flagging_empty_bands_then_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill while the valid mask is made again (after some blocks) and a rerun give the same store."""
    written = _dead_band_scene(tmp_path)
    reference = ingest(written.path, tmp_path / "reference.zarr", chunk=16)
    ingest_module = importlib.import_module("hsi_cluster.io.ingest")  # the package re-exports the function
    real, calls = ingest_module.valid_pixel_mask, []

    def dies_on_the_third_revalidated_block(block, *, nodata=None, good_band=None):
        if good_band is not None and not np.all(good_band):
            calls.append(1)
            if len(calls) == 3:
                raise SimulatedKill
        return real(block, nodata=nodata, good_band=good_band)

    monkeypatch.setattr(ingest_module, "valid_pixel_mask", dies_on_the_third_revalidated_block)
    store = tmp_path / "out.zarr"
    with pytest.raises(SimulatedKill):
        ingest(written.path, store, chunk=16, workers=1)
    monkeypatch.setattr(ingest_module, "valid_pixel_mask", real)
    ingest(written.path, store, chunk=16, workers=1)
    np.testing.assert_array_equal(open_valid_mask(store).compute(), open_valid_mask(reference).compute())
    assert open_scene(store).attrs["statistics"] == open_scene(reference).attrs["statistics"]
    assert open_scene(store).attrs["empty_bands"] == [1, 3]


def test_band_scale_and_offset_are_applied_after_the_nodata_test(tmp_path: Path) -> None:
    scales, offsets = [1e-4, 1e-4, 1e-4, 2e-4], [0.0, 0.0, 0.05, 0.0]
    cube = helpers.synthetic_cube(4, 37, 29, "int16", seed=8, nodata=-9999, nodata_pixels=9)
    written = helpers.write_geotiff(tmp_path / "refl.tif", cube, nodata=-9999, scales=scales, offsets=offsets)
    store = ingest(written.path, tmp_path / "out.zarr", chunk=16)
    stored = open_scene(store)
    physical = cube.astype(np.float32) * np.float32(scales)[:, None, None] + np.float32(offsets)[:, None, None]
    valid = helpers.reference_valid_mask(cube, -9999)  # decided on the stored int16 values
    assert 0 < valid.sum() < valid.size
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored.values[:, valid], physical[:, valid], rtol=1e-6)
    assert np.isnan(stored.values[:, ~valid]).any(axis=0).all()  # stored nodata reads as NaN
    np.testing.assert_array_equal(open_valid_mask(store).compute(), valid)
    assert_stats_match(stored.attrs["statistics"], physical, valid, rtol=1e-6)
    assert stored.attrs["scaled_from"] == "int16"
    assert "stored as int16" in format_info(describe(stored))


def test_envi_reflectance_scale_factor_is_applied_and_recorded_in_the_store(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(4, 21, 23, "int16", seed=8, nodata=-9999, nodata_pixels=5)
    written = helpers.write_envi(tmp_path / "refl.img", cube, nodata=-9999,
                                 header_fields={"reflectance scale factor": "10000"})
    store = ingest(written.header, tmp_path / "out.zarr", chunk=16)
    stored = open_scene(store)
    valid = helpers.reference_valid_mask(cube, -9999)
    assert 0 < valid.sum() < valid.size
    np.testing.assert_array_equal(stored.values[:, valid], (cube / 10000.0).astype(np.float32)[:, valid])
    assert stored.attrs["scaled_from"] == "int16" and stored.attrs["reflectance_scale_factor"] == 10000.0
    assert Store.open(store).metadata["reflectance_scale_factor"] == 10000.0
    assert "stored as int16, read ÷ the header's reflectance scale factor 10000" in format_info(describe(stored))
    assert "reflectance scale factor 10000" in format_info(describe(open_scene(written.header)))


def test_band_scale_one_and_offset_zero_give_the_same_store(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(4, 21, 23, "int16", seed=9, nodata=-9999, nodata_pixels=5)
    plain = ingest(helpers.write_geotiff(tmp_path / "plain.tif", cube, nodata=-9999).path, tmp_path / "plain.zarr",
                   chunk=16)
    unit = ingest(helpers.write_geotiff(tmp_path / "unit.tif", cube, nodata=-9999, scales=[1.0] * 4,
                                        offsets=[0.0] * 4).path, tmp_path / "unit.zarr", chunk=16)
    for name, values in store_arrays(unit).items():
        np.testing.assert_array_equal(values, store_arrays(plain)[name])
        assert values.dtype == store_arrays(plain)[name].dtype
    assert store_arrays(unit)["data"].dtype == np.int16
    skip = {"source", "completed"}
    assert ({k: v for k, v in store_metadata(unit).items() if k not in skip}
            == {k: v for k, v in store_metadata(plain).items() if k not in skip})


def test_source_metadata(tmp_path: Path, geotiff: SyntheticScene) -> None:
    store = ingest(geotiff.path, tmp_path / "out.zarr", chunk=16)
    stat = geotiff.path.stat()
    meta = store_metadata(store)
    assert meta["complete"] is True
    assert meta["source"]["path"] == str(geotiff.path.absolute())
    assert meta["source"]["size"] == stat.st_size
    assert meta["source"]["mtime_ns"] == stat.st_mtime_ns
    assert set(meta["source"]) == {"path", "size", "mtime_ns", "format"}  # a lone file: the record of older versions
    assert open_scene(store).attrs["ingested_from"]["path"] == str(geotiff.path.absolute())
    assert CRS.from_wkt(meta["crs"]).to_epsg() == EPSG
    assert meta["transform"] == pytest.approx(list(helpers.utm_transform())[:6])
    assert meta["nodata"] == -9999.0


def test_chunk_too_small(tmp_path: Path, geotiff: SyntheticScene) -> None:
    with pytest.raises(OutputError, match="chunk"):
        ingest(geotiff.path, tmp_path / "out.zarr", chunk=4)
    assert helpers.listing(tmp_path) == ["scene.tif"]


# --------------------------------------------------------------------------------------------
# existing output, overwrite, leftovers


def test_rerun_without_overwrite_fails_and_keeps_the_store(tmp_path: Path, geotiff: SyntheticScene,
                                                           npy_scene: SyntheticScene) -> None:
    store = ingest(geotiff.path, tmp_path / "out.zarr", chunk=16)
    before = helpers.tree_snapshot(store)
    with pytest.raises(OutputError, match="already exists") as info:
        ingest(npy_scene.path, store, chunk=16)
    assert str(store) in str(info.value) and "--overwrite" in str(info.value)
    assert helpers.tree_snapshot(store) == before
    assert not partial_of(store).exists()


def test_overwrite_replaces_the_store(tmp_path: Path, geotiff: SyntheticScene, npy_scene: SyntheticScene) -> None:
    store = ingest(geotiff.path, tmp_path / "out.zarr", chunk=16)
    ingest(npy_scene.path, store, chunk=16, overwrite=True)
    replaced = open_scene(store)
    np.testing.assert_array_equal(replaced.values, npy_scene.cube)
    assert replaced.attrs["crs"] is None and "wavelength" not in replaced.coords
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out.zarr"]


def test_the_scene_itself_as_output_is_refused_even_with_overwrite(tmp_path: Path, geotiff: SyntheticScene) -> None:
    scene = tmp_path / "scene.tif"
    scene.write_bytes(geotiff.path.read_bytes())
    before = helpers.tree_snapshot(tmp_path)
    for overwrite in (False, True):  # never "pass --overwrite" for what --overwrite would then refuse
        with pytest.raises(OutputError, match="is the scene, an input"):
            ingest(scene, scene, chunk=16, overwrite=overwrite)
    assert helpers.tree_snapshot(tmp_path) == before


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(tmp_path: Path, geotiff: SyntheticScene) -> None:
    """``-o FOLDER --overwrite`` where FOLDER holds the scene (or is just a folder of other files): refused, nothing
    deleted; it used to remove the folder with the scene in it."""
    folder = tmp_path / "work"
    folder.mkdir()
    scene = folder / "scene.tif"
    scene.write_bytes(geotiff.path.read_bytes())
    (folder / "notes.txt").write_text("keep")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    before = helpers.tree_snapshot(tmp_path)
    with pytest.raises(OutputError, match=r"work: already exists and --overwrite would delete it, but it holds the "
                                          r"scene; choose another path"):
        ingest(scene, folder, chunk=16, overwrite=True)
    with pytest.raises(OutputError, match="other: already exists and --overwrite would delete it, but it is not an "
                                          "hsicluster store"):
        ingest(scene, other, chunk=16, overwrite=True)
    assert helpers.tree_snapshot(tmp_path) == before


def test_a_chunk_larger_than_the_scene_is_cut_to_the_power_of_two_that_covers_it(tmp_path: Path,
                                                                               geotiff: SyntheticScene) -> None:
    """``--chunk 100000`` on a small scene allocated a (bands, 100000, 100000) block: a MemoryError."""
    height, width = geotiff.cube.shape[1:]
    side = 1 << (max(height, width) - 1).bit_length()
    store = ingest(geotiff.path, tmp_path / "big.zarr", chunk=100_000)
    assert open_scene(store).attrs["chunk"] == side
    np.testing.assert_array_equal(open_scene(store).values, open_scene(ingest(geotiff.path, tmp_path / "x.zarr",
                                                                              chunk=side)).values)


def test_interrupted_then_resumed_in_process(tmp_path: Path, scene_factory) -> None:
    written = scene_factory("geotiff-tiled", helpers.synthetic_cube(4, 96, 80, "float32", seed=3, nan_pixels=9))
    store = tmp_path / "out.zarr"
    with pytest.raises(SimulatedKill):
        ingest(written.path, store, chunk=16, workers=1, progress=stop_after(3))
    assert not store.exists()
    work = partial_of(store)
    assert is_store(work) and not is_complete_store(work)
    with pytest.raises(SceneError, match="incomplete"):
        open_scene(work)
    calls: list[tuple[int, int]] = []
    ingest(written.path, store, chunk=16, workers=1, progress=lambda done, total: calls.append((done, total)))
    first_done, total = calls[0]
    assert total == 6 * 5
    assert 0 < first_done < total, "the rerun should resume from the finished blocks"
    assert calls[-1] == (total, total)
    assert_round_trip(store, written, 16)


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_a_finished_block_that_cannot_be_read_back_is_ingested_again(tmp_path: Path, scene_factory,
                                                                     damage: str) -> None:
    """A machine that crashes can leave a finished block's chunk truncated behind its marker: the resumed ingest
    published it (exit 0), and train then failed with "blosc decompression". It is checked, said, and redone."""
    written = scene_factory("geotiff-tiled", helpers.synthetic_cube(4, 96, 80, "float32", seed=3, nan_pixels=9))
    store = tmp_path / "out.zarr"
    with pytest.raises(SimulatedKill):
        ingest(written.path, store, chunk=16, workers=1, progress=stop_after(3))
    chunks = sorted((partial_of(store) / "data" / "c").rglob("*"))
    chunk = next(path for path in chunks if path.is_file())
    if damage == "truncated":
        chunk.write_bytes(chunk.read_bytes()[:10])
    elif damage == "empty":
        chunk.write_bytes(b"")
    else:
        chunk.unlink()
    told: list[str] = []
    ingest(written.path, store, chunk=16, workers=1, log=told.append)
    assert len(told) == 1 and told[0].startswith("warning: 1 block of the interrupted ingest could not be read back")
    assert_round_trip(store, written, 16)


def test_leftover_from_another_source_is_discarded(tmp_path: Path, scene_factory) -> None:
    old = scene_factory("geotiff", helpers.synthetic_cube(4, 64, 64, "float32", seed=1))
    new = scene_factory("geotiff", helpers.synthetic_cube(4, 64, 64, "float32", seed=2))
    store = tmp_path / "out.zarr"
    with pytest.raises(SimulatedKill):
        ingest(old.path, store, chunk=16, workers=1, progress=stop_after(1))
    assert partial_of(store).is_dir()
    calls: list[tuple[int, int]] = []
    ingest(new.path, store, chunk=16, progress=lambda done, total: calls.append((done, total)))
    assert calls[0][0] == 0, "blocks of another source must not be reused"
    assert_round_trip(store, new, 16)


@pytest.mark.parametrize("kind", ["envi", "enmap"])
def test_leftover_of_a_scene_whose_companion_changed_is_discarded(tmp_path: Path, envi_bsq: SyntheticScene,
                                                                  kind: str) -> None:
    """Blocks read while an ENVI header or an EnMAP METADATA.XML said otherwise are not reused; with the companion
    unchanged they are."""
    if kind == "envi":
        scene, companion = envi_bsq.path, envi_bsq.header
    else:
        product = write_product(tmp_path / "product")
        scene, companion = product.image, product.xml
    for edit, resumed in [(False, True), (True, False)]:
        store = tmp_path / f"edited-{edit}.zarr"
        with pytest.raises(SimulatedKill):
            ingest(scene, store, chunk=16, workers=1, progress=stop_after(1))
        if edit:
            helpers.edit_file(companion)
        calls: list[tuple[int, int]] = []
        ingest(scene, store, chunk=16, workers=1, progress=lambda done, total: calls.append((done, total)))  # noqa: B023
        assert (calls[0][0] > 0) == resumed
        assert [file["path"] for file in store_metadata(store)["source"]["companions"]] == [str(companion)]


def test_leftover_with_other_chunk_is_discarded(tmp_path: Path, geotiff: SyntheticScene) -> None:
    store = tmp_path / "out.zarr"
    with pytest.raises(SimulatedKill):
        ingest(geotiff.path, store, chunk=16, workers=1, progress=stop_after(1))
    ingest(geotiff.path, store, chunk=24)
    assert_round_trip(store, geotiff, 24)


@pytest.mark.parametrize("junk", ["file", "folder"])
def test_leftover_that_is_not_a_store_is_discarded(tmp_path: Path, geotiff: SyntheticScene, junk: str) -> None:
    store = tmp_path / "out.zarr"
    if junk == "file":
        partial_of(store).write_text("junk")
    else:
        partial_of(store).mkdir()
        (partial_of(store) / "zarr.json").write_text("{not json")
    ingest(geotiff.path, store, chunk=16)
    assert_round_trip(store, geotiff, 16)


def test_killed_between_completion_and_rename(tmp_path: Path, geotiff: SyntheticScene) -> None:
    """A kill after the store is marked complete but before the rename: the rerun must finish."""
    store = ingest(geotiff.path, tmp_path / "out.zarr", chunk=16)
    store.rename(partial_of(store))  # exactly the state just before the final rename
    ingest(geotiff.path, store, chunk=16)
    assert_round_trip(store, geotiff, 16)


def test_killed_while_creating_the_store(tmp_path: Path, geotiff: SyntheticScene) -> None:
    """A kill after the group metadata is written but before its arrays exist: the rerun must finish."""
    store = ingest(geotiff.path, tmp_path / "out.zarr", chunk=16)
    work = partial_of(store)
    work.mkdir()
    group_meta = json.loads((store / "zarr.json").read_text())
    meta = group_meta["attributes"]["hsicluster"]
    for key in ("statistics", "valid_pixels", "completed"):
        meta.pop(key, None)
    meta["complete"] = False
    (work / "zarr.json").write_text(json.dumps(group_meta))
    import shutil

    shutil.rmtree(store)
    ingest(geotiff.path, store, chunk=16)
    assert_round_trip(store, geotiff, 16)


# --------------------------------------------------------------------------------------------
# a real kill, in a subprocess


def test_kill_and_rerun_gives_the_same_store(tmp_path: Path) -> None:
    side, bands = 384, 16
    cube = helpers.synthetic_cube(bands, side, side, "float32", seed=5, nan_pixels=40, inf_pixels=10,
                                  nodata=-9999.0, nodata_pixels=40)
    written = helpers.write_geotiff(tmp_path / "scene.tif", cube, nodata=-9999.0, tiled=True, blocksize=32,
                                    wavelength_nm=helpers.spectral_axis(bands)[0])
    del cube
    store, reference = tmp_path / "killed.zarr", tmp_path / "reference.zarr"
    markers = partial_of(store) / PROGRESS_DIR
    total = (side // 32) ** 2
    command = helpers.python_module_command("ingest", str(written.path), "-o", str(store), "--chunk", "32",
                                            "--quiet", "--workers", "1")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = 0
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                seen = len(os.listdir(markers))
            except FileNotFoundError:
                seen = 0
            if seen >= 8:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.003)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the ingest ended (rc {proc.returncode}) before it could be killed with {seen} blocks done; "
        f"stderr: {err.decode()[-500:]}")
    done = len(os.listdir(markers))
    print(f"killed with {done}/{total} blocks done")
    assert 0 < done < total
    assert not store.exists(), "a killed ingest must not leave anything at the destination"
    with pytest.raises(SceneError, match="incomplete"):
        open_scene(partial_of(store))
    with pytest.raises(SceneError):
        open_scene(store)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not partial_of(store).exists()
    ingest(written.path, reference, chunk=32)

    killed_arrays, reference_arrays = store_arrays(store), store_arrays(reference)
    np.testing.assert_array_equal(killed_arrays["data"], reference_arrays["data"])
    np.testing.assert_array_equal(killed_arrays["valid"], reference_arrays["valid"])
    killed_meta, reference_meta = store_metadata(store), store_metadata(reference)
    assert killed_meta["statistics"] == reference_meta["statistics"]
    assert killed_meta["valid_pixels"] == reference_meta["valid_pixels"]
    for key in ("crs", "transform", "nodata", "wavelength", "shape", "dtype", "chunk", "source"):
        assert killed_meta[key] == reference_meta[key], key
    np.testing.assert_array_equal(killed_arrays["data"], written.cube)


# --------------------------------------------------------------------------------------------
# bounded memory on a big scene


@pytest.mark.slow
def test_ingest_of_a_big_scene_keeps_memory_bounded(tmp_path: Path) -> None:
    bands, height, width = 128, 2048, 2048  # float32: 2.15 GB
    source = tmp_path / "big.img"
    try:
        start = time.perf_counter()
        written = helpers.write_big_envi_bsq(source, bands=bands, height=height, width=width, dtype="float32")
        size = source.stat().st_size
        assert size >= 2e9
        write_s = time.perf_counter() - start
        store = tmp_path / "big.zarr"
        run = helpers.run_measured(helpers.measured_cli_command("ingest", str(written.path), "-o", str(store),
                                                                "--quiet"), timeout=1500)
        print(f"\nbounded-memory ingest: {size / 1e9:.2f} GB ENVI BSQ ({bands}×{height}×{width} float32), "
              f"written in {write_s:.1f} s; ingest {run.wall_s:.1f} s ({size / 1e6 / run.wall_s:.0f} MB/s); "
              f"peak RSS {run.peak_rss_bytes / 1e6:.0f} MB (VmHWM; polled {run.polled_peak_rss_bytes / 1e6:.0f} MB, "
              f"wait4 ru_maxrss incl. fork {run.ru_maxrss_bytes / 1e6:.0f} MB)")
        assert run.returncode == 0, run.stderr
        assert run.peak_rss_bytes < 600e6
        scene = open_scene(store)
        assert scene.shape == (bands, height, width)
        # write_big_envi_bsq puts NaN in band b at row b, every 997th column
        assert scene.attrs["valid_pixels"] == height * width - bands * len(range(0, width, 997))
        corner = scene[:, :64, :64].values
        assert np.isfinite(corner[:, 1:, 1:]).all()
    finally:
        for path in (source, source.with_suffix(".hdr")):
            path.unlink(missing_ok=True)
        import shutil

        shutil.rmtree(tmp_path / "big.zarr", ignore_errors=True)


@pytest.mark.parametrize("dtype", ["int16", "float32", "bool"])
def test_chunk_writer_bytes_read_back_through_zarr(tmp_path: Path, dtype: str) -> None:
    """Chunks encoded outside zarr (full and padded edge chunks) read back exactly through zarr."""
    from hsi_cluster.io.ingest import COMPRESSOR, ChunkWriter

    fill = False if dtype == "bool" else (np.nan if dtype == "float32" else 0)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    array = group.create_array("a", shape=(3, 20, 13), dtype=dtype, chunks=(3, 8, 8), compressors=[COMPRESSOR],
                               fill_value=fill)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(3, 20, 13))
    values = noise > 0 if dtype == "bool" else (noise * 1000).astype(dtype)
    writer = ChunkWriter(tmp_path / "s.zarr" / "a", array)
    for i in range(3):
        for j in range(2):
            writer.write((0, i, j), values[:, i * 8:(i + 1) * 8, j * 8:(j + 1) * 8])
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["a"][...], values)


def test_chunk_writer_refuses_arrays_with_other_codecs(tmp_path: Path) -> None:
    from hsi_cluster.io.ingest import ChunkWriter

    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    array = group.create_array("a", shape=(4, 4), dtype="int16", chunks=(2, 2), compressors=None)
    with pytest.raises(ValueError, match="bytes \\+ blosc"):
        ChunkWriter(tmp_path / "s.zarr" / "a", array)


def test_a_file_tile_over_the_read_budget_is_read_whole() -> None:
    """A 512² COG tile of 100 int16 bands (52 MB, over the 48 MB budget) was read in 128² pieces, and GDAL decoded
    the whole tile for each: ingest took 51 s instead of 6 s. Such a tile is read whole, up to MAX_TILE_READ."""
    import dask.array as da
    import xarray as xr

    from hsi_cluster.io.ingest import MAX_TILE_READ, READ_BUDGET, read_unit_shape

    def scene(bands: int, block: tuple[int, int]) -> xr.DataArray:
        return xr.DataArray(da.zeros((bands, 2048, 2048), dtype=np.int16, chunks=(bands, 128, 128)),
                            dims=("band", "y", "x"), attrs={"file_block": block})

    assert 100 * 512 * 512 * 2 > READ_BUDGET
    assert read_unit_shape(scene(100, (512, 512)), 128) == (4, 4)
    assert read_unit_shape(scene(100, (256, 256)), 128) == (2, 2)  # within the budget, as before
    assert 600 * 1024 * 1024 * 2 > MAX_TILE_READ
    assert read_unit_shape(scene(600, (1024, 1024)), 128) == (1, 1)  # too large to hold: pieces
