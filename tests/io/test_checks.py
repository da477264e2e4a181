"""The scene checks train and predict share (io/checks): patch size and band agreement."""

from __future__ import annotations

import pytest

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
