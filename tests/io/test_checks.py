"""The scene checks train and predict share (io/checks): patch size and band agreement."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from rasterio.crs import CRS

from hsi_cluster.errors import HsiClusterError
from hsi_cluster.io import open_scene
from hsi_cluster.io.checks import check_bands, check_patch_fits, check_scenes_agree
from tests import helpers


def test_patch_fits_names_the_scene_and_patch(geotiff) -> None:
    scene = open_scene(geotiff.path)  # 21 × 23 pixels
    check_patch_fits(scene, 21)
    with pytest.raises(HsiClusterError, match=r"21×23 pixels\) is smaller than the model's 23×23 patch"):
        check_patch_fits(scene, 23, whose="the model's")


def test_bands_count_and_wavelengths(geotiff) -> None:
    scene = open_scene(geotiff.path)
    wavelength = scene.coords["wavelength"].values
    check_bands(scene, n_bands=6, wavelength=wavelength, reference="the model", advice="retrain")
    check_bands(scene, n_bands=6, wavelength=None, reference="the model", advice="retrain")
    with pytest.raises(HsiClusterError, match="has 6 bands but the model has 7; retrain"):
        check_bands(scene, n_bands=7, wavelength=None, reference="the model", advice="retrain")
    shifted = wavelength + [0, 0, 2.5, 0, 0, 0]
    with pytest.raises(HsiClusterError, match=r"band 3 is at .* \(2\.5 nm apart, more than 1 nm\); retrain"):
        check_bands(scene, n_bands=6, wavelength=shifted, reference="the model", advice="retrain")


def test_scenes_agree_compares_with_the_first(tmp_path) -> None:
    cube = helpers.synthetic_cube(6, 12, 12, "float32", seed=0)
    wl, fw = helpers.spectral_axis(6)
    a = helpers.write_geotiff(tmp_path / "a.tif", cube, wavelength_nm=wl, fwhm_nm=fw).path
    b = helpers.write_geotiff(tmp_path / "b.tif", cube, wavelength_nm=wl + 0.5, fwhm_nm=fw).path
    c = helpers.write_geotiff(tmp_path / "c.tif", cube[:5], wavelength_nm=wl[:5], fwhm_nm=fw[:5]).path
    check_scenes_agree([a])
    check_scenes_agree([a, b])
    with pytest.raises(HsiClusterError, match="has 5 bands but .*a.tif has 6"):
        check_scenes_agree([a, b, c])


def test_scenes_agree_warns_of_mixed_pixel_sizes_and_missing_wavelengths(tmp_path) -> None:
    """Scenes that may train together but whose clusters would then follow the resolution, or whose bands
    cannot be checked: a warning each, through ``log``; scenes alike: nothing said."""
    import rasterio

    cube = helpers.synthetic_cube(6, 12, 12, "float32", seed=0)
    wl, fw = helpers.spectral_axis(6)
    fine = helpers.write_geotiff(tmp_path / "fine.tif", cube, wavelength_nm=wl, fwhm_nm=fw,
                                 transform=rasterio.Affine(10, 0, 500000, 0, -10, 4000000)).path
    same = helpers.write_geotiff(tmp_path / "same.tif", cube, wavelength_nm=wl, fwhm_nm=fw,
                                 transform=rasterio.Affine(12, 0, 600000, 0, -12, 4000000)).path
    coarse = helpers.write_geotiff(tmp_path / "coarse.tif", cube, wavelength_nm=wl, fwhm_nm=fw,
                                   transform=rasterio.Affine(30, 0, 500000, 0, -30, 4000000)).path
    bare = helpers.write_geotiff(tmp_path / "bare.tif", cube,
                                 transform=rasterio.Affine(10, 0, 500000, 0, -10, 4000000)).path
    said: list[str] = []
    check_scenes_agree([fine, same], log=said.append)
    assert said == []
    check_scenes_agree([fine, same, coarse, bare], log=said.append)
    assert said == [
        f"warning: the scenes have different pixel sizes ({fine}: 10 metre; {coarse}: 30 metre): a patch spans 3× "
        "as much ground in one as in the other, so clusters may follow the resolution; resample them to one pixel "
        "size (gdalwarp -tr) or train on them apart",
        f"warning: {bare} carries no wavelengths, so its bands cannot be checked against the others'; they are "
        "taken to be the same bands in the same order"]


def test_bands_in_the_reverse_order_are_named_so(geotiff) -> None:
    scene = open_scene(geotiff.path)
    wavelength = scene.coords["wavelength"].values
    with pytest.raises(HsiClusterError, match=r"its bands run the other way \(.* → .* nm\) from those of the model "
                                              r"\(.* nm\); write them in the same order \(gdal_translate with -b 6 … "
                                              r"-b 1 reverses them\); retrain"):
        check_bands(scene, n_bands=6, wavelength=wavelength[::-1], reference="the model", advice="retrain")


def test_a_scene_of_other_pixel_sizes_than_the_training_scenes_is_named() -> None:
    """A 10 m tile labelled with a model trained on 30 m scenes: a patch spans a third of the ground it learned."""
    from hsi_cluster.io.checks import pixel_size_notice

    def scene(pixel: float, crs: str | None = "EPSG:32633") -> xr.DataArray:
        attrs = {"source": f"tile{pixel:g}.tif", "georeferenced": crs is not None,
                 "crs": CRS.from_string(crs).to_wkt() if crs else None, "transform": (pixel, 0, 0, 0, -pixel, 0)}
        return xr.DataArray(np.zeros((2, 3, 3)), dims=("band", "y", "x"), attrs=attrs)

    trained = [(30.0, "metre"), (29.0, "metre")]
    notice = pixel_size_notice(scene(10), trained, model="m.ckpt")
    assert notice is not None and notice.startswith("tile10.tif: its pixels are 10 metre across, those the model "
                                                    "m.ckpt was trained on 29 metre")
    assert "gdalwarp -tr 29 29" in notice
    assert pixel_size_notice(scene(40), trained, model="m.ckpt") is None  # within 1.5×
    assert pixel_size_notice(scene(10, crs=None), trained, model="m.ckpt") is None  # no CRS: nothing to compare
    assert pixel_size_notice(scene(10), [(0.0003, "degree")], model="m.ckpt") is None  # other units


def test_a_raw_raster_in_large_compressed_blocks_is_named(tmp_path) -> None:
    """512² tiles (the COG default) of 70 int16 bands decode 35 MB per block: predict read them piece by piece and
    was 8.8× slower than on 256² tiles; it now says so and how to avoid it. Small or uncompressed blocks pass."""
    import numpy as np

    from hsi_cluster.io import open_scene
    from hsi_cluster.io.checks import slow_layout_notice
    from tests import helpers

    cube = np.zeros((70, 520, 520), np.int16)
    large = helpers.write_geotiff(tmp_path / "large.tif", cube, tiled=True, blocksize=512, compress="deflate").path
    notice = slow_layout_notice(open_scene(large))
    assert notice is not None and notice.startswith(f"{large}: stored in compressed 512 × 512 blocks (35 MB with all "
                                                    "bands)") and "hsicluster ingest it first" in notice
    for name, options in (("small.tif", {"blocksize": 256, "compress": "deflate"}), ("plain.tif", {"blocksize": 512})):
        path = helpers.write_geotiff(tmp_path / name, cube, tiled=True, **options).path
        assert slow_layout_notice(open_scene(path)) is None, name
