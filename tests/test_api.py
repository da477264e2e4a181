"""The Python API (``import hsi_cluster as hc``), end to end, against what the CLI writes and prints.

One short training (20 steps of the ``fast`` preset) on the bundled Salinas-A scene; a tiny model on a
georeferenced synthetic GeoTIFF (EPSG:32633) for the CRS/transform round trip.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import scipy.io
import torch
import xarray as xr
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning

import hsi_cluster as hc
from hsi_cluster.cli import main
from hsi_cluster.errors import HsiClusterError, MetadataWarning
from hsi_cluster.io.files import sha256_of
from tests import helpers
from tests.predict_helpers import LABEL_NODATA, PATCH, holey_cube, read_raster, write_scene

#: A tiny dense model trained one pass in batches of 64 (training-config keys, as hc.train takes them).
TINY_DENSE = {"backbone_kwargs": {"width": 8, "depth": 2}, "patch_size": PATCH, "batch_size": 64, "epochs": 1}

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLE_GT = "SalinasA_gt.mat"


def read_band(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            return dataset.read(1)


@pytest.fixture(scope="module")
def salinas(tmp_path_factory: pytest.TempPathFactory, sample_salinas_a: Path) -> dict:
    """A model trained through the API on the bundled scene (20 steps), in memory only."""
    root = tmp_path_factory.mktemp("api")
    scene = hc.open_scene(sample_salinas_a)
    model = hc.train(scene, k=6, steps=20, device="cpu", work_dir=root / "work")
    return {"root": root, "scene": scene, "model": model, "gt": sample_salinas_a.parent / SAMPLE_GT}


def test_train_returns_a_model_held_in_memory(salinas: dict) -> None:
    model = salinas["model"]
    assert isinstance(model, hc.Model)
    assert model.k == 6 and model.n_bands == 204 and model.path is None
    assert model.config["steps"] == 20 and model.history
    assert len(model.sha256) == 64


def test_predict_in_memory_equals_the_written_cog(salinas: dict) -> None:
    model, scene, root = salinas["model"], salinas["scene"], salinas["root"]
    labels = model.predict(scene, device="cpu")
    assert isinstance(labels, xr.DataArray) and labels.dims == ("y", "x") and labels.shape == (83, 86)
    assert labels.dtype == np.uint8 and labels.rio.nodata == LABEL_NODATA
    assert "spatial_ref" in labels.coords and labels.rio.crs is None  # the benchmark scene has no CRS
    assert int(labels.max()) < 6

    result = model.predict(scene, output=root / "labels.tif", confidence=True, device="cpu", stac=True)
    assert result.output == root / "labels.tif" and result.confidence == root / "labels_confidence.tif"
    np.testing.assert_array_equal(read_band(result.output), labels.values)
    _, meta = read_raster(result.output)
    assert meta["tags"]["HSICLUSTER_MODEL_SHA256"] == model.sha256[:16]
    assert {k: int((labels.values == k).sum()) for k in range(6)} == result.counts

    both = model.predict(sample := str(scene.attrs["source"]), confidence=True, tiles=32, device="cpu")
    assert isinstance(both, xr.Dataset) and set(both.data_vars) == {"labels", "confidence"}
    np.testing.assert_array_equal(both["labels"].values, labels.values)  # whatever the tile size
    np.testing.assert_allclose(both["confidence"].values, read_band(result.confidence), rtol=1e-6)
    assert sample.endswith(".img")

    item = json.loads((root / "labels.stac.json").read_text())  # no CRS: null geometry and proj:code
    assert item["geometry"] is None and item["properties"]["proj:code"] is None
    assert item["properties"]["hsicluster:model_sha256"] == model.sha256


def test_evaluate_equals_the_cli(salinas: dict) -> None:
    model, scene, root, gt = salinas["model"], salinas["scene"], salinas["root"], salinas["gt"]
    labels = model.predict(scene, device="cpu")
    output = root / "eval_labels.tif"
    model.predict(scene, output=output, device="cpu")
    result = CliRunner().invoke(main, ["evaluate", str(output), str(gt), "--json"])
    assert result.exit_code == 0, result.stderr
    cli = json.loads(result.stdout)
    assert hc.evaluate(output, gt).to_dict() == cli
    assert hc.evaluate(labels, gt).to_dict() == cli
    assert hc.evaluate(str(output), str(gt)).to_dict() == cli

    # nodata on labelled pixels counts as wrong, from a DataArray, an array or a file alike
    holed = labels.copy()
    holed.values[:10] = LABEL_NODATA
    holed_file = root / "holed.tif"
    holed.rio.to_raster(holed_file)
    cli = json.loads(CliRunner().invoke(main, ["evaluate", str(holed_file), str(gt), "--json"]).stdout)
    assert cli["n_invalid_pred"] > 0
    assert hc.evaluate(holed, gt).to_dict() == cli
    assert hc.evaluate(holed.values, gt).to_dict() == cli
    assert hc.evaluate(holed_file, gt).to_dict() == cli


def test_save_and_load_keep_the_model_byte_for_byte(salinas: dict) -> None:
    model, scene, root = salinas["model"], salinas["scene"], salinas["root"]
    path = model.save(root / "model.ckpt")
    assert model.path == path and sha256_of(path) == model.sha256
    loaded = hc.load_model(path)
    assert loaded.sha256 == model.sha256 and loaded.k == 6 and loaded.path == path
    np.testing.assert_array_equal(loaded.predict(scene, device="cpu").values, model.predict(scene, device="cpu").values)
    with pytest.raises(HsiClusterError, match="exists"):
        model.save(path)
    model.save(path, overwrite=True)


def test_georeferenced_scene_round_trips_crs_and_transform(tmp_path: Path) -> None:
    cube, valid = holey_cube()
    scene_path = write_scene(tmp_path / "scene.tif", cube).path
    model = hc.train(scene_path, k=4, output=tmp_path / "m.ckpt", device="cpu", work_dir=tmp_path / "work",
                     **TINY_DENSE)
    assert model.path == tmp_path / "m.ckpt" and (tmp_path / "m.loss.png").is_file()
    scene = hc.open_scene(scene_path)
    labels = model.predict(scene, tiles=16, device="cpu")
    assert labels.rio.crs.to_epsg() == helpers.EPSG
    assert labels.rio.transform() == helpers.utm_transform()
    np.testing.assert_array_equal(labels.x.values, scene.x.values)
    np.testing.assert_array_equal(labels.y.values, scene.y.values)
    assert (labels.values[~valid] == LABEL_NODATA).all() and (labels.values[valid] < 4).all()

    result = model.predict(scene_path, output=tmp_path / "labels.tif", device="cpu")
    values, meta = read_raster(result.output)
    np.testing.assert_array_equal(values, labels.values)
    labels.rio.to_raster(tmp_path / "from_memory.tif")
    with rasterio.open(tmp_path / "from_memory.tif") as written:
        np.testing.assert_array_equal(written.read(1), values)
        assert written.crs == meta["crs"] and written.transform == meta["transform"]
        assert written.nodata == meta["nodata"] == LABEL_NODATA

    # any (band, y, x) DataArray works in memory; a crop is not a file to train on or write from
    crop = scene.isel(x=slice(5, 30), y=slice(3, 40))
    cropped = model.predict(crop.load(), device="cpu")
    assert cropped.shape == (37, 25) and cropped.rio.crs.to_epsg() == helpers.EPSG
    assert cropped.rio.transform() == helpers.utm_transform() @ rasterio.Affine.translation(5, 3)
    with pytest.raises(ValueError, match="not one as opened by open_scene"):
        model.predict(crop, output=tmp_path / "crop.tif")
    with pytest.raises(ValueError, match="not one as opened by open_scene"):
        hc.train(crop, k=3)
    # nor is a whole scene changed in xarray: its shape and coordinates match the file, its values do not
    masked = scene.where(scene > 1e9)  # every pixel NaN, the file's attrs kept
    assert int((model.predict(masked, device="cpu").values != LABEL_NODATA).sum()) == 0
    for changed in (masked, scene.astype("float64") * 2, hc.open_scene(scene_path).load()):
        with pytest.raises(ValueError, match="a changed, loaded or computed array"):
            model.predict(changed, output=tmp_path / "changed.tif")
        with pytest.raises(ValueError, match="a changed, loaded or computed array"):
            hc.train(changed, k=3)
    assert not (tmp_path / "changed.tif").exists()
    reopened = model.predict(hc.open_scene(scene_path), output=tmp_path / "reopened.tif", device="cpu")
    np.testing.assert_array_equal(read_raster(reopened.output)[0], values)
    chunked = model.predict(hc.open_scene(scene_path, chunks=(16, 16)), output=tmp_path / "chunked.tif", device="cpu")
    np.testing.assert_array_equal(read_raster(chunked.output)[0], values)  # its own chunks: still the file


def test_train_checks_its_options(tmp_path: Path) -> None:
    scene_path = write_scene(tmp_path / "scene.tif", holey_cube()[0]).path
    with pytest.raises(HsiClusterError, match="epoch"):
        hc.train(scene_path, k=3, epoch=3)  # a misspelt config key
    with pytest.raises(HsiClusterError, match="at least 2"):
        hc.train(scene_path, k=1, work_dir=tmp_path / "work")
    with pytest.raises(HsiClusterError, match="projection must be one of"):
        hc.train(scene_path, k=3, projection="MNF ", work_dir=tmp_path / "work")


def test_train_with_the_mnf_projection(tmp_path: Path) -> None:
    scene_path = write_scene(tmp_path / "scene.tif", holey_cube()[0]).path
    model = hc.train(scene_path, k=3, projection="mnf", output=tmp_path / "m.ckpt", device="cpu",
                     work_dir=tmp_path / "work", **TINY_DENSE)
    assert torch.load(model.path, weights_only=True)["train_config"]["projection"] == "mnf"
    labels = model.predict(hc.open_scene(scene_path), device="cpu")
    assert int(labels.where(labels != 255).max()) < 3


def test_train_k_auto_gives_the_chosen_k_and_its_curve(tmp_path: Path) -> None:
    scene_path = write_scene(tmp_path / "scene.tif", holey_cube()[0]).path
    model = hc.train(scene_path, k="auto", k_max=4, device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    assert model.k_choice is not None and model.k == model.k_choice["k"] and 2 <= model.k <= 4
    assert model.k_choice["candidates"] == [2, 3, 4]
    assert model.scale_choice is not None and model.scale_choice["stages"] in model.scale_choice["candidates"]
    assert model.bands_left_out == {"flagged": [], "constant": [], "noisy": [], "min_shared_variance": 0.05}
    labels = model.predict(hc.open_scene(scene_path))
    assert int(labels.where(labels != 255).max()) < model.k  # 255: nodata


def test_import_is_light_and_names_stay_the_api() -> None:
    code = ("import sys, hsi_cluster as hc; assert 'torch' not in sys.modules, 'torch imported'; "
            "import hsi_cluster.train, hsi_cluster.evaluate; from hsi_cluster.train import train as job; "
            "assert callable(hc.train) and hc.train is not job and hc.train.__module__ == 'hsi_cluster.api'; "
            "assert hc.evaluate.__module__ == 'hsi_cluster.api'; "
            "assert sys.modules['hsi_cluster.train'].train is job; "
            "assert {'open_scene', 'train', 'load_model', 'evaluate', 'Model'} <= set(hc.__all__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def matched_labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_predict_warns_of_a_scene_in_other_units_or_outside_the_training_spectra(tmp_path: Path) -> None:
    """The command's units check holds in Python too: reflectance against scaled digital numbers is labelled
    with a UserWarning naming the factor, and the in-memory labels say so in their attributes."""
    cube, valid = holey_cube()
    scene_path = write_scene(tmp_path / "scene.tif", cube).path
    model = hc.train(scene_path, k=3, device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        same = model.predict(hc.open_scene(scene_path), device="cpu")
    assert same.attrs["units_differ"] == 0 and 0.1 < same.attrs["spread"] < 10
    reflectance = write_scene(tmp_path / "reflectance.tif", np.where(valid, cube * 1e-4, np.nan).astype(np.float32),
                              nodata=None).path
    for scene in (hc.open_scene(reflectance), hc.open_scene(reflectance).load() * 1):
        with pytest.warns(UserWarning, match=r"its values vary [\d.e-]+× as much as the model's training scenes"):
            labels = model.predict(scene, device="cpu")
        assert labels.attrs["units_differ"] == 1 and labels.attrs["spread"] < 1e-3
    with pytest.warns(UserWarning, match=f"{reflectance}: its values vary"):
        result = model.predict(reflectance, output=tmp_path / "labels.tif", device="cpu")
    assert result.units_differ
    # 1.5× brighter: the same units, but outside the training spectra (the units warning speaks alone above)
    assert same.attrs["outside_share"] < 0.05
    brighter = write_scene(tmp_path / "brighter.tif", np.where(valid, cube * 1.5, np.nan).astype(np.float32),
                           nodata=None).path
    with pytest.warns(UserWarning, match=r"\d+% of its valid pixels lie outside the spectra the model was trained on"):
        labels = model.predict(hc.open_scene(brighter), device="cpu")
    assert labels.attrs["outside_share"] > 0.9 and labels.attrs["units_differ"] == 0
    assert abs(np.log(labels.attrs["matching_gain"] * 1.5)) < 0.05 and labels.attrs["matching_fit_ratio"] < 0.75
    with pytest.warns(UserWarning, match=f"{brighter}: \\d+% of its valid pixels lie outside"):
        result = model.predict(brighter, output=tmp_path / "brighter_labels.tif", device="cpu")
    assert result.outside_share is not None and result.outside_share > 0.9
    # labelled at the gain that fits, in memory as to a file: the labels of the scene as trained on
    with pytest.warns(UserWarning, match=r"labelled at 0\.6\d× its values \(match_brightness=True\)"):
        in_memory = model.predict(hc.open_scene(brighter), device="cpu", match_brightness=True)
    with pytest.warns(UserWarning, match=r"labelled at 0\.6\d× its values \(match_brightness=True\)"):
        written = model.predict(brighter, output=tmp_path / "matched.tif", device="cpu", match_brightness=True)
    for gain in (in_memory.attrs["applied_gain"], written.applied_gain):
        assert abs(np.log(gain * 1.5)) < 0.05
    with pytest.warns(UserWarning, match=r"match_brightness=True changed nothing: it fits the training spectra as "):
        model.predict(hc.open_scene(scene_path), device="cpu", match_brightness=True)
    assert (labels.values != same.values).any() and (matched_labels(tmp_path / "matched.tif") == same.values).mean() > 0.95


def test_arrays_that_are_not_scenes_get_a_message_that_says_what_to_do(tmp_path: Path) -> None:
    cube, _ = holey_cube()
    # HsiClusterErrors, as the docs say of every error for bad input, and still the TypeError and ValueError they were
    with pytest.raises(hc.HsiClusterError, match=r"train: expected a path or a DataArray from open_scene\(\), got "
                                                 r"ndarray; write an array to a file first \(np.save"):
        hc.train(cube, k=3)
    with pytest.raises(TypeError, match="got ndarray"):
        hc.train([cube], k=3)
    model = hc.train(write_scene(tmp_path / "scene.tif", cube).path, k=3, device="cpu", work_dir=tmp_path / "work",
                     **TINY_DENSE)
    other_dims = xr.DataArray(cube, dims=("b", "row", "col"))
    with pytest.raises(hc.HsiClusterError, match=r"dims band, y, x \(as open_scene gives\), got \('b', 'row', "
                                                 r"'col'\); rename them, e.g. scene.rename\(\{'b': 'band', 'row': 'y', "
                                                 r"'col': 'x'\}\) if they are in that order"):
        model.predict(other_dims, device="cpu")
    with pytest.raises(ValueError, match=r"scene.rename\(\{'bands': 'band', 'rows': 'y', 'cols': 'x'\}\)"):
        model.predict(xr.DataArray(cube, dims=("bands", "rows", "cols")), device="cpu")
    renamed = model.predict(other_dims.rename({"b": "band", "row": "y", "col": "x"}), device="cpu")
    assert renamed.shape == cube.shape[1:]


def test_save_never_writes_over_a_training_scene(tmp_path: Path) -> None:
    """``save(scene, overwrite=True)`` replaced the GeoTIFF it was trained on with a checkpoint."""
    scene_path = write_scene(tmp_path / "scene.tif", holey_cube()[0]).path
    model = hc.train(scene_path, k=3, device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    before = scene_path.read_bytes()
    with pytest.raises(HsiClusterError, match="scene.tif: is training scene 1, an input of this command"):
        model.save(scene_path, overwrite=True)
    assert scene_path.read_bytes() == before
    store = Path(model.checkpoint.payload["scenes"][0]["store"])
    with pytest.raises(HsiClusterError, match=r"is training scene 1 \(its store\)"):
        model.save(store, overwrite=True)
    assert model.save(tmp_path / "m.ckpt").is_file()


@pytest.mark.parametrize("suffix", [".mat", ".nc"])
def test_a_cube_chosen_with_var_is_the_one_trained_on_and_labelled(tmp_path: Path, suffix: str) -> None:
    """A .mat file of two cubes: ``open_scene(path, var="b")`` trains and labels cube b (train refused the file:
    "several 3-D arrays; choose one with --var"), in memory and to a file alike. A NetCDF (or HDF5) file's cube
    was refused as "not one as opened by open_scene()": each opening named its dask array anew."""
    cube, _ = holey_cube()
    other = np.random.default_rng(1).normal(5, 1, (cube.shape[1], cube.shape[2], 5)).astype(np.float32)
    path = tmp_path / f"two{suffix}"
    if suffix == ".mat":
        scipy.io.savemat(path, {"a": other, "b": np.ascontiguousarray(cube.transpose(1, 2, 0))})
    else:
        helpers.write_netcdf(path, {"a": (("y", "x", "bands"), other), "b": (("y", "x", "band"), cube.transpose(1, 2, 0))})
    scene = hc.open_scene(path, var="b")
    model = hc.train(scene, k=3, device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    assert model.n_bands == cube.shape[0]
    in_memory = model.predict(scene, device="cpu").values
    written = model.predict(scene, output=tmp_path / "labels.tif", device="cpu")
    assert np.array_equal(read_band(written.output), in_memory)
    with pytest.raises(HsiClusterError, match=f"has 5 bands but the model .* has {cube.shape[0]}"):
        model.predict(hc.open_scene(path, var="a"), output=tmp_path / "a.tif", device="cpu")


def test_a_file_of_several_arrays_is_refused_naming_the_keyword_argument(tmp_path: Path) -> None:
    """``hc.open_scene`` and ``hc.evaluate`` on a file of several arrays say ``var='NAME'``, not ``--var NAME`` (a
    flag a Python caller has nowhere to pass); the CLI's message is unchanged."""
    cubes = tmp_path / "two.mat"
    scipy.io.savemat(cubes, {"a": np.ones((8, 9, 4), np.float32), "b": np.zeros((8, 9, 5), np.float32)})
    with pytest.raises(HsiClusterError, match=r"several 3-D arrays .*; choose one with open_scene\(path, "
                       r"var='NAME'\) and pass that DataArray to train or predict$"):
        hc.open_scene(cubes)
    maps = tmp_path / "maps.mat"
    scipy.io.savemat(maps, {"a": np.ones((8, 9), np.uint8), "b": np.zeros((8, 9), np.uint8)})
    with pytest.raises(HsiClusterError, match=r"found a .*, b .*; choose with var='NAME'$"):
        hc.evaluate(np.zeros((8, 9), np.uint8), maps)
    refused = CliRunner().invoke(main, ["info", str(cubes)])
    assert refused.exit_code != 0 and "choose one with --var NAME (hsicluster ingest" in refused.stderr


def test_an_interrupted_predict_to_a_file_resumes_from_its_finished_tiles(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``Model.predict(output=…, resume=True)`` continues a call stopped part-way (the error of a second call
    pointed to ``resume=True``, which ``Model.predict`` did not take) and gives the file of an unbroken call."""
    import hsi_cluster.api as api_module
    from hsi_cluster.io.label_raster import TileStore

    cube, _ = holey_cube()
    scene_path = write_scene(tmp_path / "scene.tif", cube).path
    model = hc.train(scene_path, k=3, device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    whole = model.predict(scene_path, output=tmp_path / "whole.tif", tiles=16, device="cpu")
    labelled: list[int] = []
    stopping = True

    class Stop:
        """The progress bar, made to stop the call once two tiles are finished (Ctrl-C in a notebook)."""

        def __init__(self, *args: object) -> None:
            pass

        def __enter__(self) -> object:
            def update(done: int, total: int) -> None:
                labelled.append(done)
                if done >= 2 and stopping:
                    raise KeyboardInterrupt
            return update

        def __exit__(self, *exc: object) -> None:
            pass

    output = tmp_path / "labels.tif"
    with monkeypatch.context() as patched:
        patched.setattr(api_module, "_bar", Stop)
        with pytest.raises(KeyboardInterrupt):
            model.predict(scene_path, output=output, tiles=16, device="cpu")
    assert not output.exists() and TileStore.partial_path(output).is_dir()
    stopping, labelled[:] = False, []
    with monkeypatch.context() as patched:
        patched.setattr(api_module, "_bar", Stop)
        resumed = model.predict(scene_path, output=output, tiles=16, device="cpu", resume=True)
    assert labelled[0] >= 2  # the two finished tiles were kept
    np.testing.assert_array_equal(read_band(resumed.output), read_band(whole.output))
    assert not TileStore.partial_path(output).exists()
    with pytest.raises(HsiClusterError, match=r"pass overwrite=True to replace it \(resume=True continues only an "):
        model.predict(scene_path, output=output, tiles=16, device="cpu")
    with pytest.raises(ValueError, match="resume= concern a written label raster"):
        model.predict(scene_path, resume=True)


def test_evaluate_scores_the_map_of_a_crop_on_its_overlap_with_the_truth(tmp_path: Path) -> None:
    """Labels of a crop of a georeferenced scene against the whole scene's ground truth raster: scored on their
    overlap, as the CLI scores the written file (it was refused: the shapes differ)."""
    cube, valid = holey_cube()
    scene_path = write_scene(tmp_path / "scene.tif", cube).path
    truth = np.where(valid, 1 + (np.arange(cube.shape[2]) * 3 // cube.shape[2])[None, :], 0).astype(np.uint8)
    truth_path = helpers.write_geotiff(tmp_path / "truth.tif", truth[None]).path
    model = hc.train(scene_path, k=3, device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    crop = model.predict(hc.open_scene(scene_path).isel(y=slice(5, 40), x=slice(10, 50)), device="cpu")
    crop.rio.to_raster(tmp_path / "crop.tif")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "crop.tif"), str(truth_path), "--json"])
    assert result.exit_code == 0, result.stderr
    with pytest.warns(UserWarning, match="labelled pixels lie outside the labels and are not scored") as caught:
        scores = hc.evaluate(crop, truth_path)
    assert scores.to_dict() == json.loads(result.stdout)
    assert scores.n_scored == int((truth[5:40, 10:50] != 0).sum())
    assert not any("hsicluster-evaluate" in str(warning.message) for warning in caught)  # no temporary file named
    # the same labels in other orders of their axes score the same: rows sorted by y (south-up), or (x, y)
    whole = model.predict(hc.open_scene(scene_path), device="cpu")
    expected = hc.evaluate(whole, truth_path).to_dict()
    assert hc.evaluate(whole.sortby("y"), truth_path).to_dict() == expected
    assert hc.evaluate(whole.T, truth_path).to_dict() == expected
    assert hc.evaluate(whole.T, truth).to_dict() == expected
    other_grid = whole.rio.write_transform(helpers.utm_transform(origin=(0.0, 0.0)))
    with pytest.raises(HsiClusterError, match="^the labels: ") as refused:
        hc.evaluate(other_grid.assign_coords(x=other_grid.x - 5e5, y=other_grid.y - 4.1e6), truth_path)
    assert "hsicluster-evaluate" not in str(refused.value)


def test_labels_in_memory_keep_the_scene_grid_exactly(tmp_path: Path) -> None:
    """A pixel size with no exact binary fraction (3.7 m) comes back bit for bit, and a rioxarray array read without
    coordinates keeps its transform (it was the identity: the labels lay at the CRS origin)."""
    import rioxarray

    cube, _ = holey_cube()
    transform = helpers.utm_transform(pixel=3.7)
    scene_path = write_scene(tmp_path / "scene.tif", cube, transform=transform).path
    model = hc.train(scene_path, k=3, device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    for scene in (hc.open_scene(scene_path), rioxarray.open_rasterio(scene_path),
                  rioxarray.open_rasterio(scene_path, parse_coordinates=False)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetadataWarning)  # rioxarray's arrays carry no wavelengths
            labels = model.predict(scene, tiles=16, device="cpu")
        assert labels.rio.transform() == transform and labels.rio.crs.to_epsg() == helpers.EPSG
    crop = model.predict(hc.open_scene(scene_path).isel(x=slice(4, 20), y=slice(2, 30)), device="cpu")
    assert crop.rio.transform().almost_equals(transform @ rasterio.Affine.translation(4, 2), precision=1e-6)


def test_training_warnings_reach_python_without_verbose(tmp_path: Path) -> None:
    cube, _ = holey_cube()
    scene_path = write_scene(tmp_path / "scene.tif", cube).path
    tiny = write_scene(tmp_path / "tiny.tif", cube[:, :3, :3]).path
    with pytest.warns(UserWarning, match=r"tiny.tif: the scene \(3×3 pixels\) is smaller than the 5×5 patch"):
        model = hc.train([scene_path, tiny], k=3, device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    assert model.k == 3 and model.path is None
    # a model held in memory has no file to name (its training's temporary checkpoint is gone)
    two_bands = write_scene(tmp_path / "two.tif", cube[:2], wavelengths=False).path
    with pytest.raises(HsiClusterError, match=r"has 2 bands but the model \(unsaved\) has"):
        model.predict(hc.open_scene(two_bands), device="cpu")


def test_numpy_numbers_from_a_notebook_sweep_train_a_model_that_loads(tmp_path: Path) -> None:
    """``lr=np.float64(1e-3)`` trained fully, then left a checkpoint that nothing could load (numpy scalars are not
    plain data); ``k=np.int64(3)`` was refused and ``seed=np.int64(1)`` failed with a raw TypeError after the ingest."""
    scene_path = write_scene(tmp_path / "scene.tif", holey_cube()[0]).path
    settings = {**TINY_DENSE, "epochs": None, "steps": np.int64(2), "lr": np.float64(1e-3),
                "augment": {"pixel_mask_prob": np.float64(0.1)}}
    model = hc.train(scene_path, k=np.int64(3), seed=np.int64(1), device="cpu", output=tmp_path / "m.ckpt",
                     work_dir=tmp_path / "work", **settings)
    again = hc.load_model(tmp_path / "m.ckpt")
    assert again.k == 3 and type(again.config["lr"]) is float and again.config["lr"] == 1e-3
    assert model.sha256 == again.sha256
    with pytest.raises(HsiClusterError, match=r"seed must be a whole number, got 'a'"):
        hc.train(scene_path, k=3, seed="a", device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    with pytest.raises(ValueError, match=r"resume=True continues the interrupted run of a checkpoint file; pass its "
                                         r"path as output="):
        hc.train(scene_path, k=3, resume=True)


def test_bands_reordered_in_memory_are_read_in_the_order_of_their_band_numbers(salinas: dict) -> None:
    """``scene.isel(band=slice(None, None, -1))`` of a scene without wavelengths was labelled as given (ACC 0.83 →
    0.36): the band coordinate says which band each is, and the model reads them in the file's order."""
    model, scene = salinas["model"], salinas["scene"]
    expected = model.predict(scene, device="cpu").values
    permutation = np.random.default_rng(0).permutation(scene.sizes["band"])
    for reordered in (scene.isel(band=slice(None, None, -1)), scene.isel(band=permutation)):
        np.testing.assert_array_equal(model.predict(reordered, device="cpu").values, expected)


def test_options_that_would_be_ignored_or_fail_raw_are_named(salinas: dict) -> None:
    """In memory, confidence='c.tif' returned a Dataset and wrote nothing; output='x.npy' wrote a GeoTIFF under that
    name in silence (the CLI warns); tiles='big' / 64.0 and unlabelled='zero' were raw TypeError/ValueError."""
    model, scene, root = salinas["model"], salinas["scene"], salinas["root"]
    with pytest.raises(ValueError, match=r"confidence='c.tif' names a file, which is written beside output="):
        model.predict(scene, confidence="c.tif", device="cpu")
    with pytest.warns(UserWarning, match=r"x.npy: output= is written as a GeoTIFF whatever its name; name it .tif"):
        model.predict(scene, output=root / "x.npy", device="cpu")
    for tiles in ("big", 64.0):
        with pytest.raises(HsiClusterError, match=r"^tiles must be a whole number of pixels \(512 is a good default\), got " + re.escape(repr(tiles))):
            model.predict(scene, tiles=tiles, device="cpu")
    # messages name the keyword arguments, not the command's flags (they said "--tiles 7", "pass --overwrite")
    with pytest.raises(HsiClusterError, match=r"^tiles=7 is too small; use at least 8 pixels"):
        model.predict(scene, tiles=7, device="cpu")
    with pytest.raises(HsiClusterError, match=r"already exists; pass overwrite=True to replace it \(resume=True"):
        model.predict(scene, output=root / "x.npy", device="cpu")
    with pytest.raises(HsiClusterError, match=r"^device must be auto, cpu or cuda, got 'gpu'"):
        model.predict(scene, device="gpu")
    for options, message in (({"k": 1}, "k must be at least 2 clusters, got 1"),
                             ({"k": 6, "k_max": 10}, "k_max only applies to k='auto'; drop it or pass k='auto' instead "
                                                     "of k=6"),
                             ({"k": 6, "output": root / "x.npy"}, "already exists; pass overwrite=True to replace it or "
                                                                  "resume=True to train it further")):
        with pytest.raises(HsiClusterError, match=re.escape(message)):
            hc.train(scene, steps=2, device="cpu", **options)
    labels = model.predict(scene, device="cpu")
    with pytest.raises(HsiClusterError, match="unlabelled must be a whole class value, None or 'auto', got 'zero'"):
        hc.evaluate(labels, salinas["gt"], unlabelled="zero")
    with pytest.raises(HsiClusterError, match="unlabelled must be a whole class value"):
        hc.evaluate(labels.values, labels.values, unlabelled="zero")
    assert hc.evaluate(labels, salinas["gt"], unlabelled=np.int64(0)).acc == hc.evaluate(labels, salinas["gt"]).acc


def test_in_memory_labels_of_a_crop_of_a_rotated_grid_carry_no_transform(tmp_path: Path) -> None:
    """A rotated grid gives no x/y coordinates, so the labels of a crop of it took the whole scene's transform (put
    at the scene's origin, in silence); now they carry none, with a warning. The whole scene keeps its own."""
    from affine import Affine

    cube, _ = holey_cube()
    rotated = write_scene(tmp_path / "rot.tif", cube, transform=Affine(30, 5, 500000, 5, -30, 4e6)).path
    model = hc.train(rotated, k=3, device="cpu", work_dir=tmp_path / "work", **TINY_DENSE)
    whole = model.predict(hc.open_scene(rotated), device="cpu")
    assert tuple(whole.rio.transform())[:6] == (30, 5, 500000, 5, -30, 4e6)
    with pytest.warns(UserWarning, match="the labels of a crop of a rotated grid carry no transform"):
        crop = model.predict(hc.open_scene(rotated).isel(x=slice(5, 30)), device="cpu")
    assert crop.shape == (cube.shape[1], 25) and crop.rio.transform() == Affine.identity()
