"""``open_scene``: every supported format → lazy ``(band, y, x)`` with the file's metadata."""

from __future__ import annotations

import gc
import pickle
import time
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from hsi_cluster.errors import MetadataWarning, SceneError
from hsi_cluster.io import ingest, open_scene
from hsi_cluster.io.scene import scene_files, scene_files_identity
from hsi_cluster.stats import valid_pixel_mask
from tests import helpers
from tests.helpers import EPSG, SyntheticScene
from tests.io.test_enmap import write_product

UTM_TRANSFORM = tuple(helpers.utm_transform())[:6]
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def assert_same_values(scene: xr.DataArray, expected: np.ndarray) -> None:
    """Shape, dtype and values (NaN where NaN) of an opened scene equal ``expected`` (band, y, x)."""
    assert scene.dims == ("band", "y", "x")
    assert scene.shape == expected.shape
    assert scene.dtype == expected.dtype
    np.testing.assert_array_equal(scene.values, expected)


def assert_georeferenced_utm(scene: xr.DataArray) -> None:
    assert scene.attrs["georeferenced"] is True
    assert CRS.from_wkt(scene.attrs["crs"]) == CRS.from_epsg(EPSG)
    assert CRS.from_wkt(scene.attrs["crs"]).to_epsg() == EPSG
    assert scene.attrs["transform"] == pytest.approx(UTM_TRANSFORM)
    # pixel-centre coordinates
    west, north = helpers.ORIGIN
    assert scene.x.values[0] == pytest.approx(west + helpers.PIXEL_SIZE / 2)
    assert scene.y.values[0] == pytest.approx(north - helpers.PIXEL_SIZE / 2)
    assert np.diff(scene.x.values) == pytest.approx(np.full(scene.sizes["x"] - 1, helpers.PIXEL_SIZE))
    assert np.diff(scene.y.values) == pytest.approx(np.full(scene.sizes["y"] - 1, -helpers.PIXEL_SIZE))


def assert_not_georeferenced(scene: xr.DataArray) -> None:
    assert scene.attrs["crs"] is None
    assert scene.attrs["georeferenced"] is False
    assert scene.attrs["transform"] == IDENTITY


# --------------------------------------------------------------------------------------------
# GeoTIFF


@pytest.mark.parametrize("dtype,nodata", [("int16", -9999), ("uint16", 0), ("float32", -9999.0),
                                          ("float64", None)])
@pytest.mark.parametrize("tiled", [False, True], ids=["striped", "tiled"])
def test_geotiff_dtypes(tmp_path: Path, dtype: str, nodata: float | None, tiled: bool) -> None:
    cube = helpers.synthetic_cube(5, 37, 29, dtype, seed=7, nodata=nodata, nodata_pixels=3 if nodata is not None
                                  else 0)
    written = helpers.write_geotiff(tmp_path / "s.tif", cube, nodata=nodata, tiled=tiled)
    scene = open_scene(written.path)
    assert_same_values(scene, cube)
    with rasterio.open(written.path) as ds:
        np.testing.assert_array_equal(scene.values, ds.read())
    assert_georeferenced_utm(scene)
    assert scene.attrs["nodata"] == (None if nodata is None else float(nodata))
    assert scene.attrs["format"] == "GTiff"
    assert scene.attrs["source"] == str(written.path.absolute())
    assert list(scene.band.values) == [1, 2, 3, 4, 5]
    assert "wavelength" not in scene.coords and "fwhm" not in scene.coords and "good_band" not in scene.coords


def test_geotiff_nan_pixels_and_band_tags_in_micrometres(geotiff: SyntheticScene) -> None:
    scene = open_scene(geotiff.path)
    assert np.isnan(geotiff.cube).any() and np.isinf(geotiff.cube).any()
    assert_same_values(scene, geotiff.cube)  # NaN/Inf are values, not errors
    assert_georeferenced_utm(scene)
    assert scene.attrs["nodata"] == -9999.0
    np.testing.assert_allclose(scene.wavelength.values, geotiff.wavelength_nm, rtol=1e-12)
    np.testing.assert_allclose(scene.fwhm.values, geotiff.fwhm_nm, rtol=1e-12)
    assert scene.wavelength.dims == ("band",)


@pytest.mark.parametrize("units", ["nanometers", "micrometers"])
def test_geotiff_band_tags_normalised_to_nm(tmp_path: Path, units: str) -> None:
    wl, fw = helpers.spectral_axis(4, 410.5, 980.25)
    cube = helpers.synthetic_cube(4, 8, 9, "float32")
    written = helpers.write_geotiff(tmp_path / "s.tif", cube, wavelength_nm=wl, fwhm_nm=fw, wavelength_units=units,
                                    good_band=[True, False, True, True])
    scene = open_scene(written.path)
    np.testing.assert_allclose(scene.wavelength.values, wl, rtol=1e-12)
    np.testing.assert_allclose(scene.fwhm.values, fw, rtol=1e-12)
    assert scene.good_band.dtype == bool
    assert scene.good_band.values.tolist() == [True, False, True, True]


def test_geotiff_without_crs_is_not_georeferenced(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(3, 6, 7, "int16")
    written = helpers.write_geotiff(tmp_path / "plain.tif", cube, crs=None)
    scene = open_scene(written.path)
    assert_same_values(scene, cube)
    assert_not_georeferenced(scene)


def physical(cube: np.ndarray, scales: list[float], offsets: list[float], nodata: float | None) -> np.ndarray:
    """Plain numpy ``stored * scale + offset`` per band in float32, NaN where the stored value is nodata."""
    values = cube.astype(np.float32) * np.float32(scales)[:, None, None] + np.float32(offsets)[:, None, None]
    if nodata is not None:
        values[cube == nodata] = np.nan
    return values


@pytest.mark.parametrize("tiled", [False, True], ids=["striped", "tiled"])
def test_geotiff_band_scale_and_offset_give_physical_values(tmp_path: Path, tiled: bool) -> None:
    # int16 reflectance × 0.0001 (EnMAP, PRISMA, DESIS deliveries), one band with an offset; the nodata
    # test is made on the stored values: -9999 × 0.0001 + offset is no longer -9999.
    scales, offsets = [1e-4, 1e-4, 2e-4, 1e-4], [0.0, 0.0, 0.0, -0.1]
    cube = helpers.synthetic_cube(4, 19, 21, "int16", seed=3, nodata=-9999, nodata_pixels=6)
    written = helpers.write_geotiff(tmp_path / "s.tif", cube, nodata=-9999, tiled=tiled, scales=scales,
                                    offsets=offsets)
    scene = open_scene(written.path)
    assert scene.dtype == np.float32
    assert scene.attrs["scaled_from"] == "int16"
    assert np.isnan(scene.attrs["nodata"])  # nodata pixels now read as NaN
    expected = physical(cube, scales, offsets, -9999)
    assert np.isnan(expected).sum() > 0
    np.testing.assert_allclose(scene.values, expected, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(np.isnan(scene.values), cube == -9999)
    window = scene.isel(band=slice(2, 4), y=slice(4, 15), x=slice(3, 20)).values  # band offsets follow the window
    np.testing.assert_allclose(window, expected[2:4, 4:15, 3:20], rtol=1e-6)
    clone = pickle.loads(pickle.dumps(scene.data))  # the scaling travels to dask workers
    np.testing.assert_array_equal(clone.compute(scheduler="synchronous"), scene.values)
    assert_georeferenced_utm(scene)


def test_geotiff_with_scale_one_and_offset_zero_reads_as_stored(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(4, 9, 11, "int16", seed=3, nodata=-9999, nodata_pixels=3)
    plain = open_scene(helpers.write_geotiff(tmp_path / "plain.tif", cube, nodata=-9999).path)
    unit = open_scene(helpers.write_geotiff(tmp_path / "unit.tif", cube, nodata=-9999, scales=[1.0] * 4,
                                            offsets=[0.0] * 4).path)
    assert_same_values(unit, cube)
    assert unit.attrs["nodata"] == plain.attrs["nodata"] == -9999.0
    assert "scaled_from" not in unit.attrs


@pytest.mark.parametrize("dtype,expected", [("uint16", np.float32), ("int32", np.float64), ("float64", np.float64)])
def test_geotiff_scaled_dtype_keeps_the_stored_precision(tmp_path: Path, dtype: str, expected: type) -> None:
    cube = helpers.synthetic_cube(3, 6, 7, dtype, seed=1)
    scene = open_scene(helpers.write_geotiff(tmp_path / "s.tif", cube, scales=[0.5, 2.0, 0.01]).path)
    assert scene.dtype == expected
    assert scene.attrs["nodata"] is None  # no nodata declared: none made up
    np.testing.assert_allclose(scene.values, cube * np.array([0.5, 2.0, 0.01])[:, None, None], rtol=1e-6)


def test_scaled_reflectance_clipped_at_a_nodata_of_0_stays_ground(tmp_path: Path) -> None:
    """int16 reflectance × 10 000 clipped at 0, nodata 0, scale 1e-4: a 0 in a few bands is dark ground and the
    pixel stays valid, as without the scale (each stored 0 read NaN and voided the pixel: 5 % of Salinas-A)."""
    cube = np.random.default_rng(0).integers(100, 5000, (24, 8, 8)).astype(np.int16)
    cube[:3, 2, 2] = 0  # clipped in three bands: ground
    cube[:, 5, 5] = 0  # 0 in every band: a gap
    scaled = open_scene(helpers.write_geotiff(tmp_path / "s.tif", cube, nodata=0, scales=[1e-4] * 24).path)
    plain = open_scene(helpers.write_geotiff(tmp_path / "p.tif", cube, nodata=0).path)
    assert scaled.attrs["nodata"] == 0
    values = scaled.values
    assert (values[:3, 2, 2] == 0).all() and np.isfinite(values).all()
    valid = valid_pixel_mask(values, nodata=scaled.attrs["nodata"])
    np.testing.assert_array_equal(valid, valid_pixel_mask(plain.values, nodata=plain.attrs["nodata"]))
    assert valid[2, 2] and not valid[5, 5] and valid.sum() == 63


def test_geotiff_band_scale_of_zero_is_refused(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(3, 6, 7, "int16")
    written = helpers.write_geotiff(tmp_path / "s.tif", cube, scales=[1e-4, 0.0, 1e-4])
    with pytest.raises(SceneError, match=r"band 2 has scale 0 .*gdal_edit\.py") as info:
        open_scene(written.path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# ENVI


def test_envi_metadata(envi_bsq: SyntheticScene) -> None:
    scene = open_scene(envi_bsq.path)
    assert_same_values(scene, envi_bsq.cube)
    assert_georeferenced_utm(scene)
    assert scene.attrs["format"] == "ENVI"
    assert scene.attrs["nodata"] == -9999.0
    # the header gives micrometres: normalised to nanometres
    np.testing.assert_allclose(scene.wavelength.values, envi_bsq.wavelength_nm, rtol=1e-9)
    assert scene.wavelength.values.min() > 300
    np.testing.assert_allclose(scene.fwhm.values, envi_bsq.fwhm_nm, rtol=1e-9)
    assert scene.good_band.values.tolist() == [True, True, False, True, True, False, True]


@pytest.mark.parametrize("units", ["Nanometers", "Micrometers"])
def test_envi_wavelength_units(tmp_path: Path, units: str) -> None:
    wl, fw = helpers.spectral_axis(5, 380.0, 2510.0)
    written = helpers.write_envi(tmp_path / "s.img", helpers.synthetic_cube(5, 6, 7, "float32"),
                                 wavelength_nm=wl, fwhm_nm=fw, wavelength_units=units)
    scene = open_scene(written.path)
    np.testing.assert_allclose(scene.wavelength.values, wl, rtol=1e-9)
    np.testing.assert_allclose(scene.fwhm.values, fw, rtol=1e-9)
    assert "good_band" not in scene.coords


@pytest.mark.parametrize("units", [None, "Unknown"])
def test_envi_micrometre_centres_and_widths_without_units_read_silently(tmp_path: Path, units: str | None) -> None:
    """A HySpex header lists centres and FWHM in µm without (or with unknown) units: both are read as µm; the FWHM
    was read as nm against the converted centres, rescaled, and warned of as if it were in other units."""
    wl = np.array([0.95, 1.2, 1.5, 1.9, 2.4])
    fw = np.full(5, 0.006)
    written = helpers.write_envi(tmp_path / "s.img", helpers.synthetic_cube(5, 6, 7, "float32"),
                                 header_fields={"wavelength": "{" + ", ".join(map(str, wl)) + "}",
                                                "fwhm": "{" + ", ".join(map(str, fw)) + "}", "wavelength units": units})
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataWarning)
        scene = open_scene(written.path)
    np.testing.assert_allclose(scene.wavelength.values, wl * 1000, rtol=1e-9)
    np.testing.assert_allclose(scene.fwhm.values, fw * 1000, rtol=1e-9)


def test_envi_via_header_and_via_binary(envi_bsq: SyntheticScene) -> None:
    by_binary = open_scene(envi_bsq.path)
    by_header = open_scene(envi_bsq.header)
    xr.testing.assert_identical(by_binary, by_header)
    assert by_header.attrs["source"] == str(envi_bsq.path.absolute())


def test_an_envi_header_without_its_envi_line_is_named_as_the_fault(envi_bsq: SyntheticScene) -> None:
    """GDAL does not read a header whose first line is not ``ENVI``; the error told to check samples, lines, bands,
    data type and interleave, every one of them right."""
    header = envi_bsq.header
    assert header is not None
    header.write_text(header.read_text().split("\n", 1)[1])
    with pytest.raises(SceneError, match=r"the ENVI header scene.hdr must begin with a line that reads ENVI; add it$"):
        open_scene(envi_bsq.path)


def test_an_envi_header_finds_a_binary_of_the_sensors_own_suffix(tmp_path: Path) -> None:
    """AVIRIS' ``f970619t01p02_r02_sc01.a.rfl`` beside ``….a.hdr``: the header was refused ("without its data file")
    though the binary lay next to it; a glob of the folder takes the binary alone, once. Two such files: refused,
    naming them."""
    from hsi_cluster.io.paths import expand_scene_paths

    cube = helpers.synthetic_cube(6, 9, 7, "int16")
    written = helpers.write_envi(tmp_path / "f970619t01p02_r02_sc01.a.rfl", cube)
    assert written.header.name == "f970619t01p02_r02_sc01.a.hdr"
    (tmp_path / "f970619t01p02_r02_sc01.a.rfl.aux.xml").write_text("<PAMDataset/>")  # a sidecar is no candidate
    (tmp_path / "f970619t01p02_r02_sc01.a.md5").write_text("0" * 32)  # nor a file smaller than the data
    by_header = open_scene(written.header)
    xr.testing.assert_identical(by_header, open_scene(written.path))
    assert expand_scene_paths([str(tmp_path / "*")]) == [written.path]
    (tmp_path / "f970619t01p02_r02_sc01.a.rdn").write_bytes(written.path.read_bytes())
    with pytest.raises(SceneError, match=r"without its data file .*; beside it: f970619t01p02_r02_sc01.a.rdn, "
                                         r"f970619t01p02_r02_sc01.a.rfl\); pass the binary itself"):
        open_scene(written.header)


@pytest.mark.parametrize("dtype", ["int16", "uint16", "float32", "float64"])
def test_envi_interleaves_identical(tmp_path: Path, dtype: str) -> None:
    cube = helpers.synthetic_cube(6, 13, 11, dtype, seed=4)
    wl, fw = helpers.spectral_axis(6)
    scenes = {}
    for interleave in ("bsq", "bil", "bip"):
        written = helpers.write_envi(tmp_path / f"{interleave}.img", cube, interleave=interleave, wavelength_nm=wl,
                                     fwhm_nm=fw, bbl=[1, 0, 1, 1, 1, 1])
        scenes[interleave] = open_scene(written.header)
        assert_same_values(scenes[interleave], cube)
    for interleave in ("bil", "bip"):
        np.testing.assert_array_equal(scenes[interleave].values, scenes["bsq"].values)
        for coord in ("wavelength", "fwhm", "good_band"):
            np.testing.assert_array_equal(scenes[interleave][coord].values, scenes["bsq"][coord].values)
        assert scenes[interleave].attrs["transform"] == scenes["bsq"].attrs["transform"]


def test_envi_without_map_info(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(4, 5, 6, "uint16")
    written = helpers.write_envi(tmp_path / "s.img", cube, georeferenced=False)
    scene = open_scene(written.path)
    assert_same_values(scene, cube)
    assert_not_georeferenced(scene)
    assert scene.attrs["nodata"] is None


def test_envi_data_gain_and_offset_values_are_applied(tmp_path: Path) -> None:
    # GDAL exposes the header's data gain values / data offset values as the bands' scale and offset
    cube = helpers.synthetic_cube(3, 7, 8, "int16", seed=5, nodata=-9999, nodata_pixels=2)
    written = helpers.write_envi(tmp_path / "s.img", cube, nodata=-9999, header_fields={
        "data gain values": [0.0001, 0.0001, 0.0002], "data offset values": [0, 0.5, 0]})
    scene = open_scene(written.header)
    assert scene.dtype == np.float32 and scene.attrs["scaled_from"] == "int16"
    np.testing.assert_allclose(scene.values, physical(cube, [1e-4, 1e-4, 2e-4], [0.0, 0.5, 0.0], -9999), rtol=1e-6)


@pytest.mark.parametrize("keyword", ["reflectance scale factor", "Reflectance Scale Factor"])
def test_envi_reflectance_scale_factor_divides_the_stored_values(tmp_path: Path, keyword: str) -> None:
    # AVIRIS-NG / FLAASH style: int16 reflectance × 10000; ENVI: stored value / factor = reflectance (0-1)
    cube = helpers.synthetic_cube(3, 7, 8, "int16", seed=5, nodata=-9999, nodata_pixels=2)
    written = helpers.write_envi(tmp_path / "s.img", cube, nodata=-9999, header_fields={keyword: "10000.000"})
    scene = open_scene(written.header)
    assert scene.dtype == np.float32 and scene.attrs["scaled_from"] == "int16"
    assert scene.attrs["reflectance_scale_factor"] == 10000.0 and np.isnan(scene.attrs["nodata"])
    expected = (cube / 10000.0).astype(np.float32)  # the nearest float32 to each quotient
    expected[cube == -9999] = np.nan  # the nodata test on the stored values
    assert np.isnan(expected).any()
    np.testing.assert_array_equal(scene.values, expected)
    clone = pickle.loads(pickle.dumps(scene.data))  # the factor travels to dask workers
    np.testing.assert_array_equal(clone.compute(scheduler="synchronous"), expected)


def test_envi_reflectance_scale_factor_of_one_reads_as_stored(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(3, 7, 8, "int16", seed=5, nodata=-9999, nodata_pixels=2)
    scene = open_scene(helpers.write_envi(tmp_path / "s.img", cube, nodata=-9999,
                                          header_fields={"reflectance scale factor": "1.0"}).header)
    assert_same_values(scene, cube)  # int16, as without the line
    assert scene.attrs["nodata"] == -9999.0
    assert "scaled_from" not in scene.attrs and "reflectance_scale_factor" not in scene.attrs


@pytest.mark.parametrize("factor", ["0", "-10000", "nan", "inf", "ten thousand"])
def test_envi_bad_reflectance_scale_factor_is_refused(tmp_path: Path, factor: str) -> None:
    cube = helpers.synthetic_cube(3, 6, 7, "int16")
    written = helpers.write_envi(tmp_path / "s.img", cube, header_fields={"reflectance scale factor": factor})
    with pytest.raises(SceneError, match=r"reflectance scale factor is .*delete that line") as info:
        open_scene(written.header)
    assert "\n" not in str(info.value) and str(written.header) in str(info.value)


def test_envi_data_gain_values_win_over_a_reflectance_scale_factor(tmp_path: Path) -> None:
    # both describe the stored values: the gains are applied, the factor is not (no double scaling)
    cube = helpers.synthetic_cube(3, 7, 8, "int16", seed=5)
    written = helpers.write_envi(tmp_path / "s.img", cube, header_fields={
        "data gain values": [0.0001, 0.0001, 0.0001], "reflectance scale factor": "10000"})
    with pytest.warns(MetadataWarning, match="reflectance scale factor 10000 is not applied"):
        scene = open_scene(written.header)
    assert "reflectance_scale_factor" not in scene.attrs
    np.testing.assert_allclose(scene.values, physical(cube, [1e-4] * 3, [0.0] * 3, None), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# .npy / .mat


def test_npy(npy_scene: SyntheticScene) -> None:
    scene = open_scene(npy_scene.path)
    assert_same_values(scene, npy_scene.cube)
    np.testing.assert_array_equal(scene.values, np.load(npy_scene.path).transpose(2, 0, 1))
    assert_not_georeferenced(scene)
    assert scene.attrs["nodata"] is None
    assert scene.attrs["format"] == "npy"


@pytest.mark.parametrize("fmt", ["mat-v5", "mat-v7.3"])
@pytest.mark.parametrize("dtype", ["int16", "float32", "float64"])
def test_mat(scene_factory, fmt: str, dtype: str) -> None:
    cube = helpers.synthetic_cube(5, 9, 7, dtype, seed=5)  # y != x: catches a swapped transpose
    written = scene_factory(fmt, cube, extra={"labels": np.arange(63, dtype=np.uint8).reshape(9, 7)})
    scene = open_scene(written.path)
    assert_same_values(scene, cube)
    assert_not_georeferenced(scene)
    assert scene.attrs["variable"] == "cube"


@pytest.mark.parametrize("fmt", ["mat-v5", "mat-v7.3"])
def test_mat_variable_choice(scene_factory, fmt: str) -> None:
    cube = helpers.synthetic_cube(4, 6, 5, "float32", seed=8)
    other = helpers.synthetic_cube(3, 6, 5, "float32", seed=9)
    written = scene_factory(fmt, cube, var="first", extra={"second": np.ascontiguousarray(other.transpose(1, 2, 0))})
    with pytest.raises(SceneError, match="--var"):
        open_scene(written.path)
    assert_same_values(open_scene(written.path, var="first"), cube)
    assert_same_values(open_scene(written.path, var="second"), other)
    with pytest.raises(SceneError, match="nope"):
        open_scene(written.path, var="nope")


# --------------------------------------------------------------------------------------------
# every format: lazy, dask-backed, picklable


H5_NOT_PICKLABLE = pytest.mark.xfail(
    strict=True, raises=TypeError,
    reason="known limitation: a MATLAB v7.3 scene wraps an open h5py.Dataset, which cannot be pickled, "
           "so it cannot travel to dask.distributed workers (GDAL scenes can, see RasterioWindowReader)")


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=H5_NOT_PICKLABLE) if f == "mat-v7.3" else f
                                 for f in helpers.iter_formats()])
def test_every_format_is_dask_backed_and_picklable(scene_factory, fmt: str) -> None:
    written = scene_factory(fmt)
    scene = open_scene(written.path)
    assert isinstance(scene.data, da.Array)
    assert scene.dims == ("band", "y", "x")
    assert scene.data.chunks[0] == (scene.sizes["band"],)  # all bands in one chunk
    clone = pickle.loads(pickle.dumps(scene.data))
    np.testing.assert_array_equal(clone.compute(scheduler="synchronous"), written.cube)
    window = scene.isel(y=slice(3, 11), x=slice(5, 17)).values
    np.testing.assert_array_equal(window, written.cube[:, 3:11, 5:17])


def _rss() -> int:
    psutil = pytest.importorskip("psutil", reason="psutil (a test dependency) measures memory")
    gc.collect()
    return psutil.Process().memory_info().rss


def test_open_is_lazy_for_a_big_npy(tmp_path: Path, npy_scene: SyntheticScene) -> None:
    path = tmp_path / "big.npy"
    shape = (1200, 1000, 96)  # y, x, band: 460 MB of float32
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    big[:8] = 1.5  # real bytes at both ends; the middle stays sparse
    big[-8:] = 2.5
    big.flush()
    del big
    open_scene(npy_scene.path).load() # warm up imports outside the measurement
    before = _rss()
    start = time.perf_counter()
    scene = open_scene(path)
    elapsed = time.perf_counter() - start
    grown = _rss() - before
    print(f"open_scene of a {np.prod(shape) * 4 / 1e6:.0f} MB .npy: {elapsed * 1000:.1f} ms, RSS +{grown / 1e6:.1f} MB")
    assert scene.shape == (96, 1200, 1000)
    assert elapsed < 0.5
    assert grown < 50e6
    assert float(scene[:, -1, -1].max()) == 2.5  # still readable on demand


def test_open_is_lazy_for_a_big_envi(tmp_path: Path, envi_bsq: SyntheticScene) -> None:
    path = tmp_path / "big.img"
    bands, height, width = 64, 2000, 2000  # 1 GB of float32, sparse on disk
    with open(path, "wb") as out:
        out.truncate(bands * height * width * 4)
    fields = helpers.envi_header_fields(samples=width, lines=height, bands=bands, dtype="float32",
                                        wavelength_nm=helpers.spectral_axis(bands)[0])
    path.with_suffix(".hdr").write_text(helpers.envi_header_text(fields))
    open_scene(envi_bsq.path).load()
    before = _rss()
    start = time.perf_counter()
    scene = open_scene(path)
    elapsed = time.perf_counter() - start
    grown = _rss() - before
    assert scene.shape == (bands, height, width)
    assert elapsed < 0.5
    assert grown < 50e6


# --------------------------------------------------------------------------------------------
# real scenes


def test_indian_pines(indian_pines: Path) -> None:
    scene = open_scene(indian_pines)
    assert scene.shape == (200, 145, 145)
    assert scene.dtype == np.uint16
    assert isinstance(scene.data, da.Array)
    np.testing.assert_array_equal(scene.values, np.load(indian_pines).transpose(2, 0, 1))
    assert_not_georeferenced(scene)


def _assert_salinas_a(path: Path) -> None:
    for entry in (path, path.with_suffix(".hdr")):
        scene = open_scene(entry)
        assert scene.shape == (204, 83, 86)
        assert scene.dtype == np.int16
        assert scene.attrs["format"] == "ENVI"
        assert_not_georeferenced(scene)
        with rasterio.open(path) as ds:
            np.testing.assert_array_equal(scene.values, ds.read())


def test_salinas_a(salinas_a: Path) -> None:
    _assert_salinas_a(salinas_a)


def test_sample_salinas_a_shipped_in_package(sample_salinas_a: Path) -> None:
    assert sample_salinas_a.is_file(), "the package should ship Salinas-A as its sample scene"
    _assert_salinas_a(sample_salinas_a)
    assert (sample_salinas_a.parent / "SalinasA_gt.mat").is_file()
    assert (sample_salinas_a.parent / "PyHAT_LICENSE").is_file()


def test_sample_salinas_a_equals_shared_copy(sample_salinas_a: Path, salinas_a: Path) -> None:
    np.testing.assert_array_equal(open_scene(sample_salinas_a).values, open_scene(salinas_a).values)


@pytest.mark.parametrize("fmt", ["geotiff", "envi-bip", "npy", "netcdf", "emit"])
def test_views_with_other_chunks_combine_correctly(scene_factory, fmt: str) -> None:
    """Two opens of one file with different chunking must not share dask keys (silent wrong sums)."""
    written = scene_factory(fmt, helpers.synthetic_cube(4, 40, 36, "float32", seed=11))
    default = open_scene(written.path)
    small = open_scene(written.path, chunks=(16, 16))
    assert small.data.chunks[1:] == ((16, 16, 8), (16, 16, 4))
    stacked = da.stack([default.data, small.data]).compute(scheduler="synchronous")
    np.testing.assert_array_equal(stacked[0], written.cube)
    np.testing.assert_array_equal(stacked[1], written.cube)
    assert float((default.data - small.data).max().compute()) == 0.0


@pytest.mark.parametrize("chunks", [8, (0, 5), (10,), "auto", (16.5, 16), (True, 4)])
def test_chunks_must_be_rows_and_cols(scene_factory, chunks) -> None:
    """An int, a 0, one value or a string gave a TypeError, ZeroDivisionError, IndexError or a dask error."""
    written = scene_factory("geotiff", helpers.synthetic_cube(4, 20, 18, "float32", seed=1))
    with pytest.raises(ValueError, match=r"chunks must be \(rows, cols\), two whole numbers ≥ 1, got "):
        open_scene(written.path, chunks=chunks)
    assert open_scene(written.path, chunks=[8, 8]).data.chunks[1:] == ((8, 8, 4), (8, 8, 2))


def test_open_is_lazy_for_a_big_mat_v73(tmp_path: Path, scene_factory) -> None:
    import h5py

    small = scene_factory("mat-v7.3")
    path = tmp_path / "big.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:  # (band, x, y) in HDF5 = (y, x, band) in MATLAB
        handle.create_dataset("cube", shape=(96, 1000, 1200), dtype="float32", chunks=(96, 64, 64))
    with open(small.path, "rb") as src, open(path, "r+b") as dst:
        dst.write(src.read(128))  # the MATLAB 7.3 text header
    open_scene(small.path).load()
    before = _rss()
    start = time.perf_counter()
    scene = open_scene(path)
    elapsed = time.perf_counter() - start
    grown = _rss() - before
    assert scene.shape == (96, 1200, 1000)
    assert elapsed < 0.5
    assert grown < 50e6


def test_var_for_a_file_that_is_not_matlab_is_refused(geotiff: SyntheticScene) -> None:
    with pytest.raises(SceneError, match="--var cube names a variable of a MATLAB .mat, NetCDF or HDF5 file, and this is none"):
        open_scene(geotiff.path, var="cube")


# --------------------------------------------------------------------------------------------
# the files a scene is read from, and whether they changed


def test_the_identity_of_a_lone_file_is_the_record_of_older_versions(geotiff: SyntheticScene, tmp_path: Path) -> None:
    stat = geotiff.path.stat()
    assert scene_files(geotiff.path) == [geotiff.path]
    assert scene_files_identity(geotiff.path) == {"path": str(geotiff.path), "size": stat.st_size,
                                                  "mtime_ns": stat.st_mtime_ns}
    store = ingest(geotiff.path, tmp_path / "out.zarr", chunk=16)
    assert scene_files(store) == [store]  # a store is read from itself alone
    assert scene_files_identity(store) == {"path": str(store), "size": None, "mtime_ns": store.stat().st_mtime_ns}


def test_the_identity_watches_the_files_read_with_the_scene(envi_bsq: SyntheticScene, tmp_path: Path) -> None:
    assert scene_files(envi_bsq.path) == [envi_bsq.path, envi_bsq.header]
    assert scene_files(envi_bsq.header) == [envi_bsq.header, envi_bsq.path]
    product = write_product(tmp_path / "product", envi=True)
    header = product.image.with_suffix(".HDR")
    assert scene_files(product.image) == [product.image, header, product.xml]
    for scene, companion in [(envi_bsq.path, envi_bsq.header), (product.image, header), (product.image, product.xml)]:
        before = scene_files_identity(scene)
        own = {key: before[key] for key in ("path", "size", "mtime_ns")}
        assert before == {**own, "companions": [{"path": str(file), "size": file.stat().st_size,
                                                 "mtime_ns": file.stat().st_mtime_ns} for file in scene_files(scene)[1:]]}
        helpers.edit_file(companion)
        after = scene_files_identity(scene)
        assert after != before and {key: after[key] for key in own} == own, companion


def test_a_crs_without_a_geotransform_is_read_without_georeferencing(tmp_path: Path) -> None:
    """A GeoTIFF with EPSG:32633 and no geotransform read as 1 m pixels at the CRS's origin: its STAC footprint
    lay near 10.5° E, 0° N and info showed a 1 × 1 resolution, without a word."""
    path = helpers.write_geotiff(tmp_path / "nogt.tif", helpers.synthetic_cube(3, 8, 8), crs="EPSG:32633",
                                 transform=Affine.identity()).path
    with pytest.warns(MetadataWarning, match=r"nogt.tif: has a CRS \(EPSG:32633\) but no geotransform, so it is "
                                             r"read without georeferencing"):
        scene = open_scene(path)
    assert not scene.attrs["georeferenced"] and scene.attrs["crs"] is None


def test_an_envi_data_ignore_value_that_is_not_a_number_is_no_nodata(tmp_path: Path) -> None:
    """GDAL reads ``data ignore value = abc`` as 0, so every 0 became a gap, in silence."""
    from hsi_cluster.errors import MetadataWarning

    written = helpers.write_envi(tmp_path / "x.img", helpers.synthetic_cube(4, 5, 6, "int16"),
                                 header_fields={"data ignore value": "abc"})
    with pytest.warns(MetadataWarning, match=r"x.img: its header's data ignore value 'abc' is not a number, so the "
                                             r"scene has no nodata value"):
        scene = open_scene(written.path)
    assert scene.attrs["nodata"] is None


def test_reusing_reads_keeps_the_last_reads_read_only_and_forgets_them_after(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Within ``reusing_reads`` a window read again comes from memory (the same values, read-only), the least
    recently used read is dropped past the capacity, and after the block the reader reads the file again."""
    from hsi_cluster.io.scene import RasterioWindowReader, reusing_reads

    cube = np.arange(3 * 40 * 40, dtype=np.int16).reshape(3, 40, 40)
    path = helpers.write_geotiff(tmp_path / "t.tif", cube, tiled=True, blocksize=16, compress="deflate").path
    monkeypatch.setattr("hsi_cluster.io.scene.auto_chunk_size", lambda *args, **kwargs: 16)
    scene = open_scene(path)
    decoded: list[tuple[int, ...]] = []
    read = RasterioWindowReader._read
    monkeypatch.setattr(RasterioWindowReader, "_read", lambda self, *span: decoded.append(span) or read(self, *span))
    chunk_bytes = 3 * 16 * 16 * 2
    with reusing_reads(scene, 2 * chunk_bytes):
        first = np.asarray(scene.data[:, :16, :16])
        again = np.asarray(scene.data[:, :16, :16])
        assert len(decoded) == 1
        np.testing.assert_array_equal(again, cube[:, :16, :16])
        np.testing.assert_array_equal(first, again)
        np.asarray(scene.data[:, :16, 16:32])
        np.asarray(scene.data[:, 16:32, :16])  # a third chunk: the least recently used (the first) is dropped
        np.asarray(scene.data[:, :16, 16:32])
        assert len(decoded) == 3
        np.asarray(scene.data[:, :16, :16])
        assert len(decoded) == 4
        reader = next(v for v in scene.data.__dask_graph__().values() if isinstance(v, RasterioWindowReader))
        kept = reader[:, 0:16, 0:16]
        assert not kept.flags.writeable  # a caller cannot change what the next read returns
    np.asarray(scene.data[:, :16, :16])
    assert len(decoded) == 5 and reader.memo is None
    with reusing_reads(scene, 0):  # no capacity: nothing kept
        np.asarray(scene.data[:, :16, :16])
        np.asarray(scene.data[:, :16, :16])
    assert len(decoded) == 7
