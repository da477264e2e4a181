"""The scene checks train and predict share (io/checks): patch size and band agreement."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from rasterio.crs import CRS

from hsi_cluster.errors import HsiClusterError, MetadataWarning, python_option_names
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
    shifted = wavelength + [0, 0, 3.5, 0, 0, 0]
    with pytest.raises(HsiClusterError, match=r"band 3 is at .* \(3\.5 nm apart, more than 3 nm, a quarter of the "
                       r"band spacing there within 1–3 nm\); retrain"):
        check_bands(scene, n_bands=6, wavelength=shifted, reference="the model", advice="retrain")


def test_bands_moved_by_a_recalibration_are_the_same_bands_with_a_warning(geotiff) -> None:
    """1.5 nm on 10 nm bands (a recalibration between flights) was refused ("more than 1 nm"): a quarter of the
    spacing is allowed, said in a warning; within 1 nm, silence; beyond the quarter, refused."""
    scene = open_scene(geotiff.path).assign_coords(wavelength=("band", 400.0 + 10 * np.arange(6)))
    model = scene.coords["wavelength"].values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_bands(scene, n_bands=6, wavelength=model + 0.9, reference="the model", advice="retrain")
    with pytest.warns(MetadataWarning, match=r"band centres lie up to 1\.5 nm from those of the model \(band 2: "
                      r"410\.0 against 411\.5 nm\), within a quarter of the band spacing: taken as the same bands"):
        check_bands(scene, n_bands=6, wavelength=model + [0.5, 1.5, 1, 0, 0, 0], reference="the model",
                    advice="retrain")
    with pytest.raises(HsiClusterError, match=r"band 2 is at .* \(2\.6 nm apart, more than 2\.5 nm"):
        check_bands(scene, n_bands=6, wavelength=model + [0, 2.6, 0, 0, 0, 0], reference="the model", advice="retrain")


def test_scenes_agree_compares_with_the_first(tmp_path) -> None:
    cube = helpers.synthetic_cube(6, 12, 12, "float32", seed=0)
    wl, fw = helpers.spectral_axis(6)
    a = helpers.write_geotiff(tmp_path / "a.tif", cube, wavelength_nm=wl, fwhm_nm=fw).path
    b = helpers.write_geotiff(tmp_path / "b.tif", cube, wavelength_nm=wl + 0.5, fwhm_nm=fw).path
    c = helpers.write_geotiff(tmp_path / "c.tif", cube[:5], wavelength_nm=wl[:5], fwhm_nm=fw[:5]).path
    check_scenes_agree([a])
    check_scenes_agree([a, b])
    with pytest.raises(HsiClusterError, match=r"has 5 bands but .*a.tif has 6; .*\(leave it out with --exclude\)$"):
        check_scenes_agree([a, b, c])
    d = helpers.write_geotiff(tmp_path / "d.tif", cube, wavelength_nm=wl + 9.0, fwhm_nm=fw).path
    with python_option_names(), pytest.raises(HsiClusterError, match=r"\(leave it out of the list of scenes, or "
                                                                     r"resample its bands to the others'\)$"):
        check_scenes_agree([a, d])  # hc.train has no exclude=: a Python caller is told what it can do


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
    # other CRSs compare in metres: a tile in degrees (0.0003° near the equator, 33 m) against 10 m UTM scenes,
    # where the model recorded '0.0003 unknown' and compared nothing; a tile in US survey feet likewise
    wgs84 = scene(0.0003, crs="EPSG:4326")
    notice = pixel_size_notice(wgs84, [(10.0, "metre")], model="m.ckpt")
    assert notice is not None and notice.startswith("tile0.0003.tif: its pixels are 33.3 metre across, those the "
                                                    "model m.ckpt was trained on 10 metre: a patch spans 3.33×")
    assert "gdalwarp -tr, in the scene's CRS units" in notice
    assert pixel_size_notice(scene(0.0003 / 3, crs="EPSG:4326"), [(10.0, "metre")], model="m.ckpt") is None
    assert pixel_size_notice(scene(98.4, crs="EPSG:2263"), [(30.0, "metre")], model="m.ckpt") is None  # 30 m in ft


def test_a_raw_raster_in_large_compressed_blocks_is_named(tmp_path) -> None:
    """512² tiles (the COG default) of 70 int16 bands decode 35 MB per block: predict read them piece by piece and
    was 8.8× slower than on 256² tiles; it now says so and how to avoid it. Small or uncompressed blocks pass."""
    import numpy as np

    from hsi_cluster.io import open_scene
    from hsi_cluster.io.checks import kept_reads_bytes, slow_layout_notice
    from tests import helpers

    cube = np.zeros((70, 520, 520), np.int16)
    large = helpers.write_geotiff(tmp_path / "large.tif", cube, tiled=True, blocksize=512, compress="deflate").path
    notice = slow_layout_notice(open_scene(large))
    assert notice is not None and notice.startswith(f"{large}: stored in compressed 512 × 512 blocks (35 MB with all "
                                                    "bands)") and "hsicluster ingest it first" in notice
    needed = kept_reads_bytes(open_scene(large), tile=512, halo=2)
    assert needed == 4 * 70 * 512 * 512 * 2  # the scene's 2 × 2 blocks: fewer than three rows of them
    assert slow_layout_notice(open_scene(large), kept=needed, tile=512, halo=2) is None  # kept: each decoded once
    assert slow_layout_notice(open_scene(large), kept=needed - 1, tile=512, halo=2) is not None
    for name, options in (("small.tif", {"blocksize": 256, "compress": "deflate"}), ("plain.tif", {"blocksize": 512})):
        path = helpers.write_geotiff(tmp_path / name, cube, tiled=True, **options).path
        assert slow_layout_notice(open_scene(path)) is None, name


def test_the_reads_kept_for_large_tiles_are_about_three_rows_of_blocks_across_the_scene() -> None:
    """Measured on a 2048² file of 100 bands in 512² DEFLATE tiles: keeping 11 of its 16 blocks labels it as fast as
    keeping all, 8 (two rows) takes 1.7× as long. The rule keeps three rows and one window's columns, and nothing for
    uncompressed files or small blocks."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    from hsi_cluster.io.checks import kept_reads_bytes

    def scene(width: int, block: int = 512, compressed: bool = True) -> xr.DataArray:
        data = da.zeros((100, 4096, width), dtype=np.int16, chunks=(100, block, block))
        return xr.DataArray(data, dims=("band", "y", "x"),
                            attrs={"file_block": (block, block), "file_compressed": compressed, "source": "s.tif"})

    block_bytes = 100 * 512 * 512 * 2
    assert kept_reads_bytes(scene(2048), tile=512, halo=2) == (3 * 4 + 3) * block_bytes
    assert kept_reads_bytes(scene(20480), tile=512, halo=2) == (3 * 40 + 3) * block_bytes  # grows with the width only
    assert kept_reads_bytes(scene(20480), tile=1024, halo=2) == (5 * 40 + 4) * block_bytes
    assert kept_reads_bytes(scene(2048, compressed=False), tile=512, halo=2) == 0
    assert kept_reads_bytes(scene(2048, block=256), tile=512, halo=2) == 0  # 13 MB blocks: cheap to read again


def test_the_memory_for_kept_reads_is_a_share_of_what_is_available(monkeypatch) -> None:
    """An eighth of the available memory, at most KEPT_READS_MAX; in a dask worker (batch's workers share the
    machine) at most a quarter of its memory limit."""
    from types import SimpleNamespace

    import distributed

    from hsi_cluster.io import checks

    monkeypatch.setattr(checks.psutil, "virtual_memory", lambda: SimpleNamespace(available=8 * 2**30))
    assert checks.kept_reads_budget() == 2**30
    monkeypatch.setattr(checks.psutil, "virtual_memory", lambda: SimpleNamespace(available=64 * 2**30))
    assert checks.kept_reads_budget() == checks.KEPT_READS_MAX
    worker = SimpleNamespace(memory_manager=SimpleNamespace(memory_limit=400 * 2**20))
    monkeypatch.setattr(distributed, "get_worker", lambda: worker)
    assert checks.kept_reads_budget() == 100 * 2**20


def test_every_scene_that_cannot_train_with_the_others_is_named_at_once(tmp_path) -> None:
    """``train 'archive/**/*.tif'`` stopped at the first unusable scene, so three bad files took three runs (each
    ingesting the archive again) to find; now one line names them all. The others are compared with the band count
    most scenes have, not with the first scene's."""
    cube = helpers.synthetic_cube(6, 12, 12, "float32", seed=0)
    few = helpers.write_geotiff(tmp_path / "a_few.tif", cube[:4]).path  # first, but the odd one out
    good = [helpers.write_geotiff(tmp_path / f"good{i}.tif", cube).path for i in range(3)]
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a raster at all" * 10)
    with pytest.raises(HsiClusterError) as caught:
        check_scenes_agree([few, *good, garbage])
    message = str(caught.value)
    assert "\n" not in message and message.startswith("2 of the 5 scenes cannot train with the others: "
                                                      "a_few.tif: has 4 bands but ")  # in the order given
    assert "; garbage.tif: cannot open" in message
    assert "good0.tif has 6" in message and message.endswith("; leave them out with --exclude, or fix them")
    check_scenes_agree(good)
