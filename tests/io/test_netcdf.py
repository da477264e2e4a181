"""NetCDF scenes: the band dimension found by name, CF decoding, georeferencing, EMIT's swath orthorectified."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
from click.testing import CliRunner

from hsi_cluster.cli import main
from hsi_cluster.errors import MetadataWarning, SceneError
from hsi_cluster.io import open_scene
from tests import helpers
from tests.train_helpers import TINY

FILL = -9999.0


@pytest.fixture
def emit(tmp_path: Path) -> helpers.SyntheticScene:
    swath = helpers.synthetic_cube(8, 24, 20, "float32", seed=4)  # (band, row, col)
    swath[:, 0, :5] = FILL  # fill pixels in the swath
    return helpers.write_emit_netcdf(tmp_path / "EMIT_L2A_RFL.nc", swath, map_shape=(30, 26), good=[1, 1, 1, 0, 1, 1, 1, 1])


def test_emit_swath_is_orthorectified_by_its_lookup_table(emit: helpers.SyntheticScene) -> None:
    scene = open_scene(emit.path, chunks=(16, 16))  # several map chunks, each reading its own swath window
    assert scene.dims == ("band", "y", "x") and scene.shape == (8, 30, 26)
    np.testing.assert_array_equal(scene.values, emit.cube)
    assert scene.attrs["crs"] == helpers.WGS84_WKT and scene.attrs["georeferenced"]
    x0, dx, _, y0, _, dy = helpers.EMIT_GEOTRANSFORM
    assert scene.attrs["transform"] == (dx, 0.0, x0, 0.0, dy, y0)
    assert np.isnan(scene.attrs["nodata"])
    wavelength, fwhm = helpers.spectral_axis(8)
    np.testing.assert_allclose(scene.coords["wavelength"].values, wavelength)
    np.testing.assert_allclose(scene.coords["fwhm"].values, fwhm)
    assert scene.coords["good_band"].values.tolist() == [True, True, True, False, True, True, True, True]
    assert scene.attrs["variable"] == "/reflectance" and "lookup table" in scene.attrs["orthorectified"]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(scene)).values, scene.values)


def test_band_dimension_by_name_on_any_axis_south_up_grid_flipped(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(5, 6, 7, "float32", seed=5)  # (band, y, x), row 0 north
    lat = 40.0 - 0.01 * np.arange(6)  # north to south
    lon = 10.0 + 0.02 * np.arange(7)
    path = helpers.write_netcdf(
        tmp_path / "grid.nc", {"radiance": (("lat", "lon", "wavelength"), cube[:, ::-1].transpose(1, 2, 0))},
        coords={"lat": ("lat", lat[::-1], {}), "lon": ("lon", lon, {}),
                "wavelength": ("wavelength", np.linspace(0.4, 2.4, 5), {"units": "micrometers"})})
    scene = open_scene(path)
    np.testing.assert_array_equal(scene.values, cube)  # bands first, flipped back to north-up
    assert rasterio.crs.CRS.from_wkt(scene.attrs["crs"]).to_epsg() == 4326
    a, _, c, _, e, f = scene.attrs["transform"]
    assert (a, e) == pytest.approx((0.02, -0.01)) and (c, f) == pytest.approx((9.99, 40.005))
    np.testing.assert_allclose(scene.coords["wavelength"].values, np.linspace(400, 2400, 5))


def test_a_latitude_longitude_grid_trains_and_predicts_a_wgs84_map(tmp_path: Path) -> None:
    """Its CRS was the text 'EPSG:4326' where every reader of a scene's CRS expects WKT: `info` and `train` failed
    with 'unexpected CRSError: The WKT could not be parsed'."""
    cube = helpers.synthetic_cube(5, 24, 20, "float32", seed=5)
    lat, lon = 40.0 - 0.0002 * np.arange(24), -87.0 + 0.0002 * np.arange(20)
    path = helpers.write_netcdf(tmp_path / "grid.nc", {"refl": (("band", "lat", "lon"), cube)},
                                coords={"lat": ("lat", lat, {}), "lon": ("lon", lon, {}),
                                        "wavelength": ("band", np.linspace(400, 2400, 5), {"units": "nm"})})
    runner = CliRunner()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    model, labels = tmp_path / "m.ckpt", tmp_path / "labels.tif"
    info = runner.invoke(main, ["info", str(path), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["crs"]["epsg"] == 4326
    for args in (["train", path, "-k", "3", "-o", model, "--config", config, "--work", tmp_path / "work", "-q"],
                 ["predict", path, "-m", model, "-o", labels, "-q"]):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    with rasterio.open(labels) as raster:
        assert raster.crs.to_epsg() == 4326 and raster.shape == (24, 20)
        assert tuple(raster.transform)[:6] == pytest.approx((0.0002, 0.0, -87.0001, 0.0, -0.0002, 40.0001))


def test_cf_scale_fill_and_grid_mapping_crs(tmp_path: Path) -> None:
    counts = np.arange(2 * 3 * 4, dtype=np.int16).reshape(3, 4, 2)
    counts[0, 0, :] = -1
    path = helpers.write_netcdf(
        tmp_path / "scaled.nc", {"rfl": (("y", "x", "band"), counts), "crs": ((), np.int32(0))},
        coords={"y": ("y", 5_000_030.0 - 30 * np.arange(3), {}), "x": ("x", 500_015.0 + 30 * np.arange(4), {})},
        attrs={"rfl": {"scale_factor": 0.5, "add_offset": 1.0, "_FillValue": np.int16(-1), "grid_mapping": "crs"},
               "crs": {"crs_wkt": rasterio.crs.CRS.from_epsg(32633).to_wkt()}})
    scene = open_scene(path)
    values = scene.values
    assert np.isnan(values[:, 0, 0]).all()
    np.testing.assert_array_equal(values[:, 1, 2], counts[1, 2] * 0.5 + 1.0)
    assert rasterio.crs.CRS.from_wkt(scene.attrs["crs"]).to_epsg() == 32633
    assert scene.attrs["transform"] == pytest.approx((30.0, 0.0, 500_000.0, 0.0, -30.0, 5_000_045.0))


def test_band_dimension_from_a_wavelength_variable_classic_netcdf(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(4, 5, 6, "float32", seed=6)
    path = helpers.write_netcdf(tmp_path / "classic.nc", {"cube": (("spec", "line", "sample"), cube),
                                                          "wavelength": (("spec",), np.array([450., 550, 650, 850]))},
                                engine="scipy")
    scene = open_scene(path)
    np.testing.assert_array_equal(scene.values, cube)
    assert not scene.attrs["georeferenced"]
    np.testing.assert_allclose(scene.coords["wavelength"].values, [450, 550, 650, 850])


@pytest.mark.parametrize(("variables", "var", "message"), [
    ({"cube": (("a", "b", "c"), np.zeros((3, 4, 5), np.float32))}, None,
     r"cannot tell which dimension of /cube \(a 3, b 4, c 5\) holds the bands; name it 'band'"),
    ({"one": (("y", "x", "band"), np.zeros((3, 4, 5))), "two": (("y", "x", "band"), np.ones((3, 4, 5)))}, None,
     r"several 3-D variables \(/one .*, /two .*\); choose one with --var NAME"),
    ({"one": (("y", "x", "band"), np.zeros((3, 4, 5)))}, "three", r"no variable 'three'; it holds /one"),
    ({"image": (("y", "x"), np.zeros((3, 4)))}, None, r"no 3-D variable \(it holds /image\)"),
    ({"image": (("y", "x"), np.zeros((3, 4)))}, "image", r"variable 'image' has dimensions \('y', 'x'\)"),
])
def test_netcdf_errors_name_the_problem(tmp_path: Path, variables: dict, var: str | None, message: str) -> None:
    path = helpers.write_netcdf(tmp_path / "bad.nc", variables)
    with pytest.raises(SceneError, match=message):
        open_scene(path, var=var)


def test_var_chooses_among_several_cubes(tmp_path: Path) -> None:
    path = helpers.write_netcdf(tmp_path / "two.nc", {"one": (("y", "x", "band"), np.zeros((3, 4, 5))),
                                                      "two": (("y", "x", "band"), np.ones((3, 4, 5)))})
    assert float(open_scene(path, var="two").values.mean()) == 1.0
    assert float(open_scene(path, var="/one").values.mean()) == 0.0


def test_a_file_that_is_not_netcdf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.nc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(SceneError, match=r"junk.nc: not a readable NetCDF file \(.*\); check the file"):
        open_scene(path)


def test_a_plain_hdf5_cube_is_read_with_its_bands_found_by_the_wavelengths(tmp_path: Path) -> None:
    """An HDF5 file holding a (y, x, band) cube and a wavelength list went to GDAL, which took its first axis
    (rows) for the bands: 100 rows × 200 cols × 100 bands, trained and labelled with exit 0. It reads as the
    NetCDF reader reads a NetCDF-4 file (HDF5 too), with several cubes refused as there."""
    import h5py

    cube = helpers.synthetic_cube(5, 6, 7, "float32", seed=5)
    path = tmp_path / "scene.h5"
    with h5py.File(path, "w") as handle:
        handle["data/reflectance"] = cube.transpose(1, 2, 0)
        handle["data/wavelength"] = np.linspace(400, 2400, 5)
    scene = open_scene(path)
    np.testing.assert_array_equal(scene.values, cube)
    np.testing.assert_allclose(scene.coords["wavelength"].values, np.linspace(400, 2400, 5))
    two = tmp_path / "two.h5"
    with h5py.File(two, "w") as handle:
        handle["data/reflectance"] = cube.transpose(1, 2, 0)
        handle["data/wavelength"] = np.linspace(400, 2400, 5)
        handle["data/other"] = np.zeros((6, 7, 5), np.float32)
    with pytest.raises(SceneError, match=r"several 3-D variables \(/data/other .*, /data/reflectance .*\); choose"):
        open_scene(two)
    np.testing.assert_array_equal(open_scene(two, var="/data/reflectance").values, cube)
    undecidable = tmp_path / "cube.hdf5"
    with h5py.File(undecidable, "w") as handle:
        handle["VNIR"] = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(SceneError, match=r"cannot tell which dimension of /VNIR .* holds the bands"):
        open_scene(undecidable)


def test_emit_file_trains_and_predicts_a_georeferenced_map(tmp_path: Path, emit: helpers.SyntheticScene) -> None:
    runner = CliRunner()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    model, labels = tmp_path / "m.ckpt", tmp_path / "labels.tif"
    for args in (["train", emit.path, "-k", "3", "-o", model, "--config", config, "--work", tmp_path / "work", "-q"],
                 ["predict", emit.path, "-m", model, "-o", labels, "-q"]):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    expected = emit.cube
    with rasterio.open(labels) as raster:
        assert raster.crs.to_epsg() == 4326 and raster.shape == (30, 26)
        x0, dx, _, y0, _, dy = helpers.EMIT_GEOTRANSFORM
        assert tuple(raster.transform)[:6] == pytest.approx((dx, 0.0, x0, 0.0, dy, y0))
        labelled = raster.read_masks(1) > 0
    np.testing.assert_array_equal(labelled, np.isfinite(expected).all(axis=0))


def test_info_json_stays_strict_json_with_a_nan_nodata(emit: helpers.SyntheticScene) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    result = CliRunner().invoke(main, ["info", str(emit.path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout, parse_constant=refuse)
    assert info["nodata"] == "nan" and (info["bands"], info["rows"], info["cols"]) == (8, 30, 26)
    assert info["crs"]["epsg"] == 4326 and info["wavelength_nm"]["min"] == pytest.approx(400.0)


def test_a_variable_without_dimension_scales_opens_without_a_warning(tmp_path: Path) -> None:
    """A file with one HDF5 variable that has no dimension scales (as some EMIT exports): h5netcdf's phony_dims
    warning leaked to the user."""
    import h5netcdf
    import h5py
    path = tmp_path / "plain.nc"
    cube = np.random.default_rng(0).random((10, 12, 20), dtype=np.float32)
    with h5netcdf.File(path, "w") as handle:
        handle.dimensions = {"downtrack": 10, "crosstrack": 12, "bands": 20}
        handle.create_variable("reflectance", ("downtrack", "crosstrack", "bands"), data=cube)
    with h5py.File(path, "a") as handle:
        handle["extra/quality"] = np.zeros((4, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scene = open_scene(path)
    assert scene.shape == (20, 10, 12)
    np.testing.assert_array_equal(scene.values, cube.transpose(2, 0, 1))


@pytest.mark.parametrize("damage", ["no glt_y", "no geotransform"])
def test_an_incomplete_location_group_warns_and_reads_the_swath(tmp_path: Path, damage: str) -> None:
    """An EMIT file whose lookup table or map grid is incomplete was read as the unprojected swath in silence."""
    import h5py
    swath = helpers.synthetic_cube(8, 24, 20, "float32", seed=4)
    emit = helpers.write_emit_netcdf(tmp_path / "EMIT_L2A_RFL.nc", swath, map_shape=(30, 26))
    with h5py.File(emit.path, "a") as handle:
        if damage == "no glt_y":
            del handle["location/glt_y"]
        else:
            del handle.attrs["geotransform"]
    with pytest.warns(MetadataWarning, match=r"has a location group but not (location/glt_y|the geotransform "
                                             r"attribute), so the swath is read as stored, without map coordinates"):
        scene = open_scene(emit.path)
    assert scene.shape == (8, 24, 20) and not scene.attrs["georeferenced"]


def test_a_scene_without_georeferencing_round_trips_through_xarrays_netcdf(tmp_path: Path) -> None:
    """open_scene's array of a scene without a CRS (rows 0.5, 1.5, …), written by xarray: it came back upside down
    (ascending rows taken for a south-up map) and 'georeferenced'; labels saved so were read flipped by evaluate."""
    from hsi_cluster.io.labels import read_label_map

    cube = helpers.synthetic_cube(5, 12, 9, "float32")
    plain = open_scene(helpers.write_geotiff(tmp_path / "plain.tif", cube, crs=None).path).load()
    copy = plain.copy()
    copy.attrs = {}
    copy.to_dataset(name="cube").to_netcdf(tmp_path / "scene.nc")
    again = open_scene(tmp_path / "scene.nc")
    np.testing.assert_array_equal(again.values, cube)
    assert not again.attrs["georeferenced"]
    labels = xr.DataArray(np.arange(12 * 9, dtype=np.uint8).reshape(12, 9), dims=("y", "x"),
                          coords={"y": plain.y, "x": plain.x})
    labels.to_netcdf(tmp_path / "labels.nc")
    np.testing.assert_array_equal(read_label_map(tmp_path / "labels.nc")[0], labels.values)
