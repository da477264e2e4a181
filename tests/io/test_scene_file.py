"""hc.write_scene: a crop or edited copy of a scene written as a GeoTIFF that open_scene reads back whole."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401 — the .rio accessor
import xarray as xr

import hsi_cluster as hc
from hsi_cluster.errors import HsiClusterError, OutputError
from hsi_cluster.io.scene import open_scene
from hsi_cluster.io.scene_file import write_scene
from tests import helpers


def _same_scene(written: xr.DataArray, expected: xr.DataArray) -> None:
    """Values (NaN where nodata), grid, CRS, nodata and band metadata agree."""
    assert written.shape == expected.shape
    np.testing.assert_array_equal(written.values, expected.values)
    assert written.attrs.get("nodata") == expected.attrs.get("nodata")
    np.testing.assert_allclose(written.coords["x"].values, expected.coords["x"].values)
    np.testing.assert_allclose(written.coords["y"].values, expected.coords["y"].values)
    for name in ("wavelength", "fwhm", "good_band"):
        assert (name in written.coords) == (name in expected.coords), name
        if name in expected.coords:
            np.testing.assert_allclose(written.coords[name].values, expected.coords[name].values, rtol=1e-5)


def test_a_crop_of_a_georeferenced_scene_keeps_its_place_values_and_bands(geotiff: helpers.SyntheticScene,
                                                                          tmp_path: Path) -> None:
    scene = open_scene(geotiff.path)
    crop = scene.isel(y=slice(3, 17), x=slice(5, 20, 2))  # a window and a stride
    path = write_scene(crop, tmp_path / "crop.tif")
    written = open_scene(path)
    _same_scene(written, crop)
    assert written.attrs["crs"] == scene.attrs["crs"] and written.attrs["georeferenced"]
    # the crop's own transform: pixels twice as wide, centred where the scene's pixels it took are (column 5's
    # centre lies 5.5 pixels in, so the wider pixel starts one of its halves before it)
    a, _, c, _, e, f = written.attrs["transform"][:6]
    sa, _, sc, _, se, sf = scene.attrs["transform"][:6]
    assert (a, e) == (2 * sa, se) and (c, f) == (sc + 5.5 * sa - sa, sf + 3 * se)


def test_an_envi_scene_without_a_crs_and_an_edited_copy(envi_bsq: helpers.SyntheticScene, tmp_path: Path) -> None:
    """The hint of hc.train's error for a crop (``scene.rio.to_raster``) failed on every scene without a CRS (the
    bundled Salinas-A among them); ``hc.write_scene`` writes it, and train takes the file."""
    scene = helpers.write_envi(tmp_path / "plain.img", envi_bsq.cube, georeferenced=False,
                               wavelength_nm=envi_bsq.wavelength_nm, bbl=envi_bsq.good_band, nodata=-9999)
    opened = open_scene(scene.path)
    assert not opened.attrs["georeferenced"]
    crop = opened.isel(x=slice(0, 12))
    with pytest.raises(HsiClusterError, match=r"write it to a file first with hc.write_scene\(scene, 'crop.tif'\)"):
        hc.train(crop, k=2)
    with warnings.catch_warnings(record=True) as caught:  # rasterio warned of the identity matrix it was given
        warnings.simplefilter("always")
        path = hc.write_scene(crop, tmp_path / "crop.tif")
    assert not caught, [str(w.message) for w in caught]
    written = open_scene(path)
    _same_scene(written, crop)
    assert not written.attrs["georeferenced"]
    # an edit: values changed in memory (float, NaN for nodata) are what the file holds
    edited = opened.where(opened != -9999).astype(np.float32) * 2
    again = open_scene(write_scene(edited, tmp_path / "edited.tif"))
    np.testing.assert_array_equal(again.values, edited.values)


def test_refusals(geotiff: helpers.SyntheticScene, tmp_path: Path) -> None:
    scene = open_scene(geotiff.path)
    path = write_scene(scene, tmp_path / "copy.tif")
    before = path.read_bytes()
    with pytest.raises(OutputError, match=r"already exists; pass overwrite=True to replace it"):
        hc.write_scene(scene, path)
    assert path.read_bytes() == before
    write_scene(scene * 1, path, overwrite=True)
    with pytest.raises(HsiClusterError, match=r"needs a \(band, y, x\) DataArray"):
        write_scene(scene.isel(band=0), tmp_path / "one.tif")
    with pytest.raises(ValueError, match="has no pixels"):
        write_scene(scene.isel(x=slice(0, 0)), tmp_path / "empty.tif")
    assert not (tmp_path / "empty.tif").exists() and not (tmp_path / "one.tif").exists()
    with pytest.raises(OutputError, match="missing"):
        write_scene(scene, tmp_path / "missing" / "x.tif")


def test_types_geotiff_lacks_rotated_crops_and_bad_coordinates(tmp_path: Path) -> None:
    """float16 and a nodata the integers cannot hold are written as float32 (rasterio refused them with a raw error);
    a crop of a rotated grid, whose pixels carry no coordinates, is refused (it was written at the whole scene's
    place); text coordinates are refused in one line."""
    from affine import Affine

    cube = helpers.synthetic_cube(3, 12, 10, "float32", seed=4)
    half = write_scene(open_scene(helpers.write_geotiff(tmp_path / "a.tif", cube).path).astype(np.float16),
                       tmp_path / "half.tif")
    assert open_scene(half).dtype == np.float32
    small = open_scene(helpers.write_geotiff(tmp_path / "u8.tif", cube.astype(np.uint8)).path).copy()
    small.attrs["nodata"] = -9999.0
    assert open_scene(write_scene(small, tmp_path / "u8_out.tif")).attrs["nodata"] == -9999.0
    rotated = helpers.write_geotiff(tmp_path / "rot.tif", cube, transform=Affine(10, 2, 500000, 3, -10, 4e6)).path
    write_scene(open_scene(rotated), tmp_path / "rot_copy.tif")  # the whole scene keeps its transform
    assert open_scene(tmp_path / "rot_copy.tif").attrs["transform"][:6] == open_scene(rotated).attrs["transform"][:6]
    with pytest.raises(HsiClusterError, match="a crop or stride of a rotated grid cannot be placed"):
        write_scene(open_scene(rotated).isel(x=slice(2, 6)), tmp_path / "rot_crop.tif")
    texts = open_scene(helpers.write_geotiff(tmp_path / "b.tif", cube).path).assign_coords(
        wavelength=("band", ["a", "b", "c"]))
    with pytest.raises(HsiClusterError, match="the wavelength coordinate is not numeric"):
        write_scene(texts, tmp_path / "t.tif")
    assert not (tmp_path / "rot_crop.tif").exists() and not (tmp_path / "t.tif").exists()
