"""baseline directly: standardised valid pixels of a raster and of a store, k-means labels and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from hsi_cluster.baseline import NO_LABEL, kmeans_baseline, kmeans_labels, kmeans_transfer, standardised_pixels
from hsi_cluster.io import ingest
from tests import helpers


def _two_materials(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 6-band GeoTIFF whose left half is one spectrum and right half another (plus noise), with two nodata
    pixels; the truth labels the halves 1 and 2 (0, unlabelled, at the nodata pixels)."""
    rng = np.random.default_rng(0)
    cube = np.empty((6, 12, 16), dtype=np.float32)
    cube[:, :, :8] = np.linspace(100, 600, 6, dtype=np.float32)[:, None, None]
    cube[:, :, 8:] = np.linspace(600, 100, 6, dtype=np.float32)[:, None, None]
    cube += rng.normal(0, 5, cube.shape).astype(np.float32)
    cube[:, 0, 0] = cube[:, 5, 9] = -9999
    truth = np.where(np.arange(16)[None, :] < 8, 1, 2).repeat(12, axis=0)
    truth[0, 0] = truth[5, 9] = 0  # unlabelled
    return helpers.write_geotiff(tmp_path / "two.tif", cube, nodata=-9999).path, truth


def test_standardised_pixels_of_a_raster_and_its_store_agree(tmp_path: Path) -> None:
    scene, _ = _two_materials(tmp_path)
    pixels, valid = standardised_pixels(scene)
    assert pixels.shape == (12 * 16 - 2, 6) and valid.sum() == len(pixels) and not valid[0, 0] and not valid[5, 9]
    np.testing.assert_allclose(pixels.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(pixels.std(axis=0), 1, atol=1e-6)
    from_store, store_valid = standardised_pixels(ingest(scene, tmp_path / "two.zarr"))
    np.testing.assert_array_equal(store_valid, valid)
    np.testing.assert_allclose(from_store, pixels)


def test_bands_flagged_bad_are_left_out_of_the_baseline(tmp_path: Path) -> None:
    """An ENVI delivery with a ``bbl``-flagged band of NaN: k-means reads the 5 good bands, raster or store."""
    scene, truth = _two_materials(tmp_path)
    with rasterio.open(scene) as raster:
        cube = raster.read()
    cube[2] = np.nan
    envi = helpers.write_envi(tmp_path / "flagged.img", cube, bbl=[1, 1, 0, 1, 1, 1], nodata=-9999).path
    pixels, valid = standardised_pixels(envi)
    assert pixels.shape == (12 * 16 - 2, 5) and np.isfinite(pixels).all()
    np.testing.assert_allclose(standardised_pixels(ingest(envi, tmp_path / "flagged.zarr"))[0], pixels)
    assert kmeans_baseline(envi, truth, 2, seed=0, n_init=2).acc == 1.0


def test_kmeans_separates_two_materials(tmp_path: Path) -> None:
    scene, truth = _two_materials(tmp_path)
    labels = kmeans_labels(scene, 2, seed=0, n_init=2)
    assert labels.shape == truth.shape and labels.dtype == np.int64
    assert labels[0, 0] == labels[5, 9] == NO_LABEL
    assert set(np.unique(labels)) == {NO_LABEL, 0, 1}
    prepared = standardised_pixels(scene)
    np.testing.assert_array_equal(kmeans_labels(scene, 2, seed=0, n_init=2, prepared=prepared), labels)
    scores = kmeans_baseline(scene, truth, 2, seed=0, n_init=2)
    assert scores.acc == 1.0 and scores.nmi > 0.99


def test_kmeans_transfer_gives_a_label_the_same_meaning_in_every_scene(tmp_path: Path) -> None:
    scene, truth = _two_materials(tmp_path)
    with rasterio.open(scene) as src:
        cube = src.read()
    swapped = helpers.write_geotiff(tmp_path / "swapped.tif", cube[:, :, ::-1].copy(), nodata=-9999).path
    fitted, applied = kmeans_transfer([scene], [scene, swapped], 2, seed=0, n_init=2)
    assert applied.shape == truth.shape and applied.dtype == np.int64
    np.testing.assert_array_equal(fitted, kmeans_labels(scene, 2, seed=0, n_init=2))
    np.testing.assert_array_equal(applied, fitted[:, ::-1])  # same spectra, same labels, wherever they lie
    narrow = helpers.write_geotiff(tmp_path / "narrow.tif", cube[:4], nodata=-9999).path
    with pytest.raises(ValueError, match="4 bands"):
        kmeans_transfer([scene], [narrow], 2, n_init=1)
    with pytest.raises(ValueError, match="at least one scene"):
        kmeans_transfer([], [scene], 2)
