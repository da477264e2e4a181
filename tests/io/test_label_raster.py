"""io/label_raster directly: write_cog (tiled COG, georeferencing, nodata, colours, tags, atomic) and
the resumable TileStore."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import zarr

from hsi_cluster.errors import OutputError
from hsi_cluster.geo import BlockGrid
from hsi_cluster.io.label_raster import RasterGrid, TileStore, colour_table, label_dtype, write_cog
from tests import helpers


def _array(tmp_path: Path, values: np.ndarray) -> zarr.Array:
    array = zarr.create_array(str(tmp_path / "labels.zarr"), shape=values.shape, dtype=values.dtype,
                              chunks=(16, 16))
    array[...] = values
    return array


def test_label_dtype_and_colour_table() -> None:
    assert label_dtype(6) == (np.dtype("uint8"), 255)
    assert label_dtype(300) == (np.dtype("uint16"), 65535)
    table = colour_table(25)
    assert len(table) == 25 and len(set(table.values())) == 25
    assert all(len(c) == 4 and c[3] == 255 and all(0 <= v <= 255 for v in c) for c in table.values())


def test_write_cog_keeps_values_georeferencing_nodata_colours_and_tags(tmp_path: Path) -> None:
    values = np.random.default_rng(0).integers(0, 4, (40, 70)).astype(np.uint8)
    values[:3, :5] = 255
    transform = helpers.utm_transform()
    grid = RasterGrid(40, 70, helpers.utm_crs().to_wkt(), tuple(transform)[:6])
    output = write_cog(_array(tmp_path, values), tmp_path / "labels.tif", grid=grid, nodata=255,
                       colormap=colour_table(4), description="cluster", tags={"HSICLUSTER_K": "4"})
    with rasterio.open(output) as dataset:
        np.testing.assert_array_equal(dataset.read(1), values)
        assert dataset.nodata == 255 and dataset.crs == helpers.utm_crs()
        assert dataset.transform.almost_equals(transform)
        assert dataset.colormap(1)[2] == colour_table(4)[2]
        assert dataset.tags()["HSICLUSTER_K"] == "4" and dataset.descriptions == ("cluster",)
        assert dataset.profile["tiled"] and dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "labels.zarr"]  # no temporary left


def test_write_cog_of_a_float_raster_without_georeferencing(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 12 * 9, dtype=np.float32).reshape(12, 9)
    values[0, 0] = np.nan
    output = write_cog(_array(tmp_path, values), tmp_path / "confidence.tif", grid=RasterGrid(12, 9, None, None),
                       nodata=float("nan"))
    with rasterio.open(output) as dataset:
        read = dataset.read(1)
        assert dataset.crs is None and np.isnan(dataset.nodata)
    np.testing.assert_array_equal(read, values)


def test_tile_store_marks_tiles_and_resumes_only_the_same_job(tmp_path: Path) -> None:
    output, grid = tmp_path / "labels.tif", BlockGrid(20, 30, 16)
    identity = {"checkpoint": "abc", "tiles": 16}
    store = TileStore.open_or_create(output, grid=grid, dtype=np.dtype("uint8"), nodata=255, with_confidence=True,
                                     identity=identity, resume=False)
    assert store.path == TileStore.partial_path(output) == tmp_path / "labels.tif.partial.zarr"
    assert (store.labels[...] == 255).all() and np.isnan(store.confidence[...]).all()
    tile = np.full((16, 16), 3, dtype=np.uint8)
    store.write(0, 0, *grid.window(0, 0).slices, tile, np.full((16, 16), 0.5, dtype=np.float32))
    assert store.is_done(0, 0) and not store.is_done(0, 1)

    again = TileStore.open_or_create(output, grid=grid, dtype=np.dtype("uint8"), nodata=255, with_confidence=True,
                                     identity=identity, resume=True)
    assert again.is_done(0, 0) and (again.labels[:16, :16] == 3).all() and (again.confidence[:16, :16] == 0.5).all()
    other = TileStore.open_or_create(output, grid=grid, dtype=np.dtype("uint8"), nodata=255, with_confidence=False,
                                     identity={**identity, "checkpoint": "def"}, resume=True)
    assert not other.is_done(0, 0) and (other.labels[...] == 255).all()
    with pytest.raises(KeyError):
        _ = other.confidence  # made without confidence: there is none
    other.remove()
    assert not TileStore.partial_path(output).exists()


@pytest.mark.parametrize("free", [10_000, 10**12])
def test_a_cog_that_does_not_read_back_is_never_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           free: int) -> None:
    """libtiff reports a full disk to GDAL's log and the COG copy returns: the truncated file was renamed into place
    and predict said 'wrote'. Now nothing is published, and a full disk is named as such (the CLI's disk-full line)."""
    import shutil
    from collections import namedtuple

    values = np.random.default_rng(0).integers(0, 4, (40, 70)).astype(np.uint8)
    copy = rasterio.shutil.copy

    def truncating_copy(source, target, **options):
        copy(source, target, **options)
        whole = Path(target).read_bytes()
        Path(target).write_bytes(whole[:len(whole) * 3 // 4])

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(rasterio.shutil, "copy", truncating_copy)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, free))
    expected = OSError if free < 10**6 else OutputError
    with pytest.raises(expected) as raised:
        write_cog(_array(tmp_path, values), tmp_path / "labels.tif", grid=RasterGrid(40, 70, None, None), nodata=255)
    if expected is OSError:
        assert raised.value.errno == errno.ENOSPC
    else:
        assert "labels.tif: cannot write the raster" in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr"]


def test_half_written_files_of_a_killed_run_do_not_stop_the_next(tmp_path: Path) -> None:
    """A kill mid-write leaves a header-only staging file (and the COG driver's overview file); GDAL read it back
    ("TIFFReadDirectory: Failed to read directory") and every resume failed until someone deleted it by hand."""
    values = np.arange(12 * 9, dtype=np.uint8).reshape(12, 9) % 5
    leftovers = [tmp_path / ".labels.tif.staging.tif", tmp_path / ".labels.tif.cog.tmp",
                 tmp_path / ".labels.tif.cog.tmp.ovr.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"II*\x00\x08\x00\x00\x00")
    output = write_cog(_array(tmp_path, values), tmp_path / "labels.tif", grid=RasterGrid(12, 9, None, None),
                       nodata=255)
    with rasterio.open(output) as written:
        assert np.array_equal(written.read(1), values)
    assert not any(leftover.exists() for leftover in leftovers)
