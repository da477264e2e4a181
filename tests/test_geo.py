"""Pure grid geometry: ``BlockGrid`` covers a raster exactly once; ``auto_chunk_size`` bounds; halo reads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hsi_cluster.geo import BlockGrid, Window, auto_chunk_size, halo_read, north_up, pixel_aspect


@pytest.mark.parametrize("height,width,block", [(1, 1, 1), (1, 1, 512), (1, 1000, 32), (1000, 1, 32),
                                                (145, 145, 64), (83, 86, 16), (513, 77, 32), (64, 64, 64),
                                                (65, 63, 64), (7, 5, 3), (2048, 2048, 512), (300, 301, 1)])
def test_block_grid_covers_raster_exactly_once(height: int, width: int, block: int) -> None:
    grid = BlockGrid(height, width, block)
    cover = np.zeros((height, width), np.int32)
    indices = list(grid)
    assert len(indices) == len(grid) == math.ceil(height / block) * math.ceil(width / block)
    assert grid.shape == (math.ceil(height / block), math.ceil(width / block))
    assert indices == sorted(indices)  # row-major
    for i, j in indices:
        window = grid.window(i, j)
        assert isinstance(window, Window)
        assert window.row == i * block and window.col == j * block  # aligned with Zarr chunks
        assert 1 <= window.height <= block and 1 <= window.width <= block
        assert window.row + window.height <= height and window.col + window.width <= width
        assert window.size == window.height * window.width
        rows, cols = window.slices
        cover[rows, cols] += 1
    np.testing.assert_array_equal(cover, 1)


def test_window_slices_select_the_window() -> None:
    array = np.arange(20 * 30).reshape(20, 30)
    window = Window(row=3, col=7, height=5, width=11)
    part = array[window.slices]
    assert part.shape == (5, 11)
    assert part[0, 0] == array[3, 7] and part[-1, -1] == array[7, 17]


@pytest.mark.parametrize("height,width,block", [(0, 5, 4), (5, 0, 4), (5, 5, 0), (-1, 5, 4)])
def test_block_grid_rejects_bad_sizes(height: int, width: int, block: int) -> None:
    with pytest.raises(ValueError):
        BlockGrid(height, width, block)


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
@pytest.mark.parametrize("n_bands", [1, 3, 16, 100, 200, 224, 425, 1000, 5000])
def test_auto_chunk_size_bounds(n_bands: int, itemsize: int) -> None:
    target = 8 * 2**20
    side = auto_chunk_size(n_bands, itemsize)
    assert 32 <= side <= 1024
    assert side & (side - 1) == 0  # a power of two
    chunk_bytes = n_bands * itemsize * side * side
    assert chunk_bytes <= target or side == 32
    # the largest such side: doubling it would exceed the target (or the maximum)
    assert side == 1024 or n_bands * itemsize * (2 * side) ** 2 > target


def test_auto_chunk_size_options() -> None:
    assert auto_chunk_size(200, 2) == 128  # AVIRIS int16: 6.5 MB chunks
    assert auto_chunk_size(1, 1) == 1024
    assert auto_chunk_size(10_000, 8) == 32  # clamped at the minimum
    assert auto_chunk_size(100, 4, target_bytes=2**20, minimum=8, maximum=64) == 32
    assert auto_chunk_size(10_000, 8, minimum=4) < 32
    assert auto_chunk_size(1, 1, maximum=256) == 256


def test_grown_and_clipped_windows() -> None:
    window = Window(2, 3, 4, 5)
    assert window.grown(2) == Window(0, 1, 8, 9)
    assert window.grown(0) == window
    assert Window(-2, -1, 6, 6).clipped(10, 10) == Window(0, 0, 4, 5)
    assert Window(7, 8, 6, 6).clipped(10, 10) == Window(7, 8, 3, 2)
    assert Window(12, 0, 3, 3).clipped(10, 10).size == 0  # outside: empty


@pytest.mark.parametrize("window,halo,pad", [
    (Window(0, 0, 4, 4), 2, ((2, 0), (2, 0))),           # top-left corner
    (Window(0, 6, 4, 4), 2, ((2, 0), (0, 2))),           # top-right corner
    (Window(8, 0, 2, 4), 3, ((0, 3), (3, 0))),           # bottom-left corner, short block
    (Window(8, 6, 2, 4), 1, ((0, 1), (0, 1))),           # bottom-right corner
    (Window(4, 4, 2, 2), 2, ((0, 0), (0, 0))),           # inside: nothing to pad
    (Window(0, 0, 10, 10), 0, ((0, 0), (0, 0))),         # no halo
    (Window(0, 0, 10, 10), 3, ((3, 3), (3, 3))),         # the whole raster
])
def test_halo_read_clips_to_the_raster_and_pads_the_rest(window: Window, halo: int,
                                                         pad: tuple[tuple[int, int], tuple[int, int]]) -> None:
    inside, got = halo_read(window, halo, height=10, width=10)
    assert got == pad
    assert inside == window.grown(halo).clipped(10, 10)
    (top, bottom), (left, right) = got
    assert inside.height + top + bottom == window.height + 2 * halo
    assert inside.width + left + right == window.width + 2 * halo


@pytest.mark.parametrize("height,width,block,halo", [(10, 10, 4, 2), (9, 7, 3, 3), (5, 6, 5, 1), (16, 3, 4, 2)])
def test_halo_read_rebuilds_the_reflect_padded_raster(height: int, width: int, block: int, halo: int) -> None:
    """Reading ``inside`` and reflect-padding it by ``pad`` cuts ``np.pad(raster, halo, "reflect")``."""
    raster = np.arange(height * width).reshape(height, width)
    whole = np.pad(raster, halo, mode="reflect")
    grid = BlockGrid(height, width, block)
    for i, j in grid:
        window = grid.window(i, j)
        inside, pad = halo_read(window, halo, height=height, width=width)
        rows, cols = inside.slices
        got = np.pad(raster[rows, cols], pad, mode="reflect")
        np.testing.assert_array_equal(got, whole[window.row:window.row + window.height + 2 * halo,
                                                 window.col:window.col + window.width + 2 * halo])


@pytest.mark.parametrize("height,width,block,halo", [(10, 10, 4, 2), (9, 7, 5, 2), (20, 13, 8, 2), (16, 3, 4, 1)])
def test_contained_patches_read_only_their_window(height: int, width: int, block: int, halo: int) -> None:
    """A pixel is contained exactly when every index of its reflect-padded patch lies in its block."""
    from hsi_cluster.geo import PatchGeometry

    index = np.pad(np.arange(height * width).reshape(height, width), halo, mode="reflect")
    grid = BlockGrid(height, width, block)
    contained = 0
    for i, j in grid:
        window = grid.window(i, j)
        rows_ok, cols_ok = PatchGeometry(2 * halo + 1).contained(window, height=height, width=width)
        assert rows_ok.shape == (window.height,) and cols_ok.shape == (window.width,)
        for r in range(window.height):
            for c in range(window.width):
                row, col = window.row + r, window.col + c
                patch = index[row:row + 2 * halo + 1, col:col + 2 * halo + 1]
                inside = np.isin(patch // width, range(window.row, window.row + window.height)) & \
                    np.isin(patch % width, range(window.col, window.col + window.width))
                assert bool(rows_ok[r] and cols_ok[c]) == bool(inside.all()), f"pixel ({row}, {col})"
                contained += bool(inside.all())
    assert 0 < contained < height * width  # both kinds occur


def test_halo_read_rejects_a_negative_halo() -> None:
    with pytest.raises(ValueError, match="halo must be ≥ 0"):
        halo_read(Window(0, 0, 2, 2), -1, height=4, width=4)


def test_patch_geometry_from_depth_and_checks() -> None:
    from hsi_cluster.geo import PatchGeometry

    geometry = PatchGeometry.from_depth(5)
    assert (geometry.patch_size, geometry.halo, geometry.receptive_field) == (11, 5, 11)
    assert PatchGeometry(1).halo == 0
    for bad in (0, 4, -3):
        with pytest.raises(ValueError, match="positive odd"):
            PatchGeometry(bad)


def test_tile_size_minimum_is_one_definition() -> None:
    from hsi_cluster.errors import HsiClusterError
    from hsi_cluster.geo import DEFAULT_TILE, MIN_TILE, check_tile_size

    check_tile_size(MIN_TILE)
    check_tile_size(DEFAULT_TILE)
    with pytest.raises(HsiClusterError, match=f"at least {MIN_TILE} pixels"):
        check_tile_size(MIN_TILE - 1)


def test_north_up_turns_a_grid_as_a_map_shows_it() -> None:
    """A south-up grid's first row is its southern edge: flipped for the quicklook; a west-running x likewise;
    north-up, rotated and ungeoreferenced grids are shown as stored."""
    values = np.arange(12).reshape(3, 4)
    north = (30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)
    south = (30.0, 0.0, 500000.0, 0.0, 30.0, 3900000.0)
    west = (-30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)
    rotated = (29.5, 5.2, 500000.0, 5.2, -29.5, 4000000.0)
    assert np.array_equal(north_up(values, north), values)
    assert np.array_equal(north_up(values, south), values[::-1])
    assert np.array_equal(north_up(values, west), values[:, ::-1])
    assert np.array_equal(north_up(values, rotated), values)
    assert np.array_equal(north_up(values, None), values)


def test_whole_numbers_of_any_integer_type_pass_and_other_values_are_refused() -> None:
    """One check of counts and sizes for the API and the CLI: numpy ints from a notebook sweep are whole numbers;
    bools, floats (even 64.0) and strings are refused naming the option."""
    from hsi_cluster.errors import HsiClusterError, whole_number

    assert whole_number(np.int64(64), "--tiles") == 64 and type(whole_number(np.uint8(3), "k")) is int
    for value in (True, np.bool_(True), 64.0, "64", None):
        with pytest.raises(HsiClusterError, match=r"^--tiles must be a whole number, got "):
            whole_number(value, "--tiles")


def test_pixel_aspect_is_the_ground_height_over_the_ground_width() -> None:
    assert pixel_aspect(None) == 1.0
    assert pixel_aspect((30.0, 0.0, 0.0, 0.0, -60.0, 0.0)) == 2.0  # 30 m columns, 60 m rows
    assert pixel_aspect((-3.0, 0.0, 0.0, 0.0, 3.0, 0.0)) == 1.0  # flipped axes: the sizes count
    rotated = (30 * math.cos(0.3), -60 * math.sin(0.3), 0.0, 30 * math.sin(0.3), 60 * math.cos(0.3), 0.0)
    assert pixel_aspect(rotated) == pytest.approx(2.0)
    # degrees: at 60° N a degree of longitude spans half a degree of latitude on the ground (100 rows centred there)
    assert pixel_aspect((0.001, 0.0, 10.0, 0.0, -0.001, 60.05), geographic=True, height=100) == pytest.approx(2.0)
    assert pixel_aspect((0.0, 0.0, 0.0, 0.0, 0.0, 0.0)) == 1.0  # degenerate: drawn square
