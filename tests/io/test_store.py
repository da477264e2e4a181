"""The working store object: arrays, grid, statistics and haloed window reads, against plain numpy.

Stores are tiny GeoTIFFs ingested with 16-pixel chunks (3 × 3 blocks, short last ones), so every
read touches block edges, scene edges and corners.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from hsi_cluster.errors import SceneError
from hsi_cluster.geo import BlockGrid, Window, halo_read
from hsi_cluster.io.store import METADATA_KEY, Store, invalid_fill, pooled_band_mean, read_haloed
from hsi_cluster.stats import BandStats
from tests import helpers
from tests.train_helpers import NODATA, IngestedScene, make_scene, reference_filled, reflect_padded, structured_cube

HEIGHT, WIDTH, BANDS = 40, 37, 6
#: The four corner blocks of the 40 × 37 scene in 16-pixel blocks, and one inner block.
CORNERS = [Window(0, 0, 16, 16), Window(0, 32, 16, 5), Window(32, 0, 8, 16), Window(32, 32, 8, 5)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    return make_scene(tmp_path_factory.mktemp("clean"), bands=BANDS, seed=3)


@pytest.fixture(scope="module")
def corner_holes(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """Invalid pixels at and beside all four corners (NaN in every band, or nodata in one band)."""
    cube = structured_cube(BANDS, HEIGHT, WIDTH, seed=5)
    for row, col in [(0, 0), (1, 1), (0, WIDTH - 1), (HEIGHT - 1, 0), (HEIGHT - 2, WIDTH - 1)]:
        cube[:, row, col] = np.nan
    cube[2, HEIGHT - 1, WIDTH - 1] = NODATA
    cube[4, 0, 2] = NODATA
    scene = make_scene(tmp_path_factory.mktemp("holes"), cube=cube)
    assert (~scene.valid).sum() == 7
    return scene


def test_store_gives_its_arrays_shape_dtype_and_grid(clean: IngestedScene) -> None:
    store = Store.open(clean.store)
    assert store.path == clean.store.absolute()
    assert store.shape == (BANDS, HEIGHT, WIDTH) and store.dtype == np.float32
    assert store.grid == BlockGrid(HEIGHT, WIDTH, 16)
    np.testing.assert_array_equal(store.data[...], clean.cube)
    np.testing.assert_array_equal(store.valid[...], clean.valid)
    assert store.metadata["complete"] and store.metadata["chunk"] == 16


def test_block_statistics_equal_numpy_per_block_and_merged(corner_holes: IngestedScene) -> None:
    store = Store.open(corner_holes.store)
    grid = store.grid
    assert store.block_stats.shape == (*grid.shape, 5, BANDS)
    counts = store.valid_counts_per_block
    assert counts.shape == (len(grid),)
    for index, (i, j) in enumerate(grid):
        rows, cols = grid.window(i, j).slices
        assert counts[index] == corner_holes.valid[rows, cols].sum()
        block = BandStats.unpack(store.block_stats[i, j])
        reference = helpers.reference_stats(corner_holes.cube[:, rows, cols], corner_holes.valid[rows, cols])
        np.testing.assert_allclose(block.mean, reference["mean"], rtol=1e-12)
    stats = store.band_stats()
    reference = helpers.reference_stats(corner_holes.cube, corner_holes.valid)
    np.testing.assert_array_equal(stats.count, reference["count"])
    np.testing.assert_allclose(stats.mean, reference["mean"], rtol=1e-12)
    np.testing.assert_allclose(stats.std, reference["std"], rtol=1e-9)


@pytest.mark.parametrize("window", [*CORNERS, Window(16, 16, 16, 16), Window(0, 0, HEIGHT, WIDTH),
                                    Window(39, 0, 1, 1)])
@pytest.mark.parametrize("halo", [0, 1, 3])
def test_read_window_is_the_reflect_padded_scene_cut(clean: IngestedScene, window: Window, halo: int) -> None:
    got = Store.open(clean.store).read_window(window, halo)
    rows, cols = window.grown(halo).slices
    expected = reflect_padded(clean.cube, halo)[:, rows.start + halo:rows.stop + halo,
                                                  cols.start + halo:cols.stop + halo]
    assert got.shape == (BANDS, window.height + 2 * halo, window.width + 2 * halo)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("window", [*CORNERS, Window(16, 16, 16, 16), Window(37, 0, 3, 3)])
@pytest.mark.parametrize("halo", [1, 2])
def test_read_window_without_neighbours_is_the_haloed_read_cut_to_the_window(corner_holes: IngestedScene,
                                                                             window: Window, halo: int) -> None:
    """Read alone, a window keeps the halo past the raster's edges and nothing beyond its other sides."""
    store = Store.open(corner_holes.store)
    fill = invalid_fill([store])
    full = store.read_window(window, halo, fill)
    alone = store.read_window(window, halo, fill, neighbours=False)
    (top, bottom), (left, right) = halo_read(window, halo, height=HEIGHT, width=WIDTH)[1]
    assert alone.shape == (BANDS, window.height + top + bottom, window.width + left + right)
    np.testing.assert_array_equal(alone, full[:, halo - top:full.shape[1] - halo + bottom,
                                              halo - left:full.shape[2] - halo + right])


@pytest.mark.parametrize("window", CORNERS)
@pytest.mark.parametrize("halo", [1, 2])
def test_read_window_fills_invalid_pixels_at_the_corners(corner_holes: IngestedScene, window: Window,
                                                         halo: int) -> None:
    store = Store.open(corner_holes.store)
    fill = invalid_fill([store])
    got = store.read_window(window, halo, fill)
    rows, cols = window.grown(halo).slices
    filled = reflect_padded(reference_filled(corner_holes.cube, corner_holes.valid), halo)
    expected = filled[:, rows.start + halo:rows.stop + halo, cols.start + halo:cols.stop + halo]
    assert np.isfinite(got).all() and not (got == NODATA).any()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    raw = store.read_window(window, halo)  # without fill: the values as stored
    assert not np.isfinite(raw).all() or (raw == NODATA).any()


def test_read_haloed_reads_numpy_and_dask_alike(corner_holes: IngestedScene) -> None:
    store = Store.open(corner_holes.store)
    window = Window(30, 30, 10, 7)
    expected = store.read_window(window, 3)
    np.testing.assert_array_equal(read_haloed(corner_holes.cube, window, 3), expected)
    lazy = read_haloed(da.from_array(corner_holes.cube, chunks=(BANDS, 16, 16)), window, 3)
    np.testing.assert_array_equal(np.asarray(lazy), expected)
    with pytest.raises(ValueError, match="pass fill"):
        read_haloed(store.data, window, 3, valid=store.valid)


def test_invalid_fill_is_the_pooled_mean_in_the_first_stores_dtype(clean: IngestedScene,
                                                                   corner_holes: IngestedScene) -> None:
    stores = [Store.open(clean.store), Store.open(corner_holes.store)]
    pooled = np.concatenate([clean.cube[:, clean.valid], corner_holes.cube[:, corner_holes.valid]], axis=1)
    np.testing.assert_allclose(pooled_band_mean(stores), pooled.astype(np.float64).mean(axis=1), rtol=1e-12)
    fill = invalid_fill(stores)
    assert fill.dtype == np.float32
    np.testing.assert_array_equal(fill, pooled_band_mean(stores).astype(np.float32))


def test_store_pickles_as_its_path_and_reopens(clean: IngestedScene) -> None:
    store = Store.open(clean.store)
    state = store.__getstate__()
    assert state == {"path": str(clean.store.absolute())}
    again = pickle.loads(pickle.dumps(store))
    assert again.path == store.path and again.shape == store.shape
    np.testing.assert_array_equal(again.read_window(CORNERS[3], 2), store.read_window(CORNERS[3], 2))


def test_opening_what_is_not_a_complete_store_fails_with_a_hint(clean: IngestedScene, tmp_path: Path) -> None:
    with pytest.raises(SceneError, match="not an hsicluster store"):
        Store.open(tmp_path)
    unfinished = tmp_path / "unfinished.zarr"
    shutil.copytree(clean.store, unfinished)
    group_meta = json.loads((unfinished / "zarr.json").read_text())
    group_meta["attributes"][METADATA_KEY]["complete"] = False
    (unfinished / "zarr.json").write_text(json.dumps(group_meta))
    with pytest.raises(SceneError, match="incomplete"):
        Store.open(unfinished)
