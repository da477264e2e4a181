"""Pure pixel-grid geometry: windows, chunk grids, tiles with halos. No I/O, no torch.

All sizes and offsets are in pixels; ``row`` runs down (y), ``col`` runs right (x).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hsi_cluster.errors import HsiClusterError, option, whole_number

#: Tile side (pixels) of tiled inference: the default, and the smallest that ``predict`` and ``batch`` accept.
DEFAULT_TILE = 512
MIN_TILE = 8


def check_tile_size(tiles: int) -> None:
    """Raise a one-line error for a tile side that is not a whole number of at least :data:`MIN_TILE`."""
    tiles = whole_number(tiles, option("--tiles"), hint=f"a whole number of pixels ({DEFAULT_TILE} is a good default)")
    if tiles < MIN_TILE:
        raise HsiClusterError(f"{option('--tiles', tiles)} is too small; use at least {MIN_TILE} pixels "
                              f"({DEFAULT_TILE} is a good default)")


@dataclass(frozen=True)
class PatchGeometry:
    """The pixel neighbourhood a model labels a pixel from: an odd ``patch_size`` p centred on the pixel.

    Attributes:
        patch_size: side p of the patch (odd, ≥ 1).
        halo: pixels of context on each side of a tile, (p − 1) / 2.
        receptive_field: side of the square of input pixels one label depends on (= p).
    """

    patch_size: int

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"patch size must be a positive odd number of pixels, got {self.patch_size}")

    @classmethod
    def from_depth(cls, depth: int) -> PatchGeometry:
        """The geometry of ``depth`` stacked valid 3 × 3 convolutions: p = 2 · depth + 1."""
        return cls(2 * depth + 1)

    @property
    def halo(self) -> int:
        return (self.patch_size - 1) // 2

    @property
    def receptive_field(self) -> int:
        return self.patch_size

    def contained(self, window: Window, *, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Which rows (window.height,) and cols (window.width,) of ``window`` in a ``height × width``
        raster have patches that read only the window's own pixels.

        A patch reaches ``halo`` pixels each way; past the raster's edge it reads the reflection
        (numpy's ``reflect``, as patches see the scene border), which may lie in the window. A pixel's
        patch stays inside the window when both its row and its col do, so a reader of that window
        alone (no neighbouring blocks) cuts the same patch as a reader of the whole scene.
        """
        return (_contained_axis(window.row, window.height, height, self.halo),
                _contained_axis(window.col, window.width, width, self.halo))


def _contained_axis(start: int, size: int, length: int, halo: int) -> np.ndarray:
    """bool (size,): whether positions ``start …`` of an axis of ``length`` reach only ``[start, start + size)``
    within ``halo`` steps, reflecting about the axis' first and last position."""
    reach = np.arange(start, start + size)[:, None] + np.arange(-halo, halo + 1)[None, :]
    reach = np.abs(reach)
    reach = np.where(reach >= length, 2 * (length - 1) - reach, reach)
    return np.asarray(((reach >= start) & (reach < start + size)).all(axis=1))


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels: rows ``[row, row + height)``, cols ``[col, col + width)``."""

    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices selecting this window from a ``(..., y, x)`` array."""
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    @property
    def size(self) -> int:
        """Number of pixels."""
        return self.height * self.width

    def grown(self, by: int) -> Window:
        """This window with ``by`` more pixels on every side (it may reach past the raster)."""
        return Window(self.row - by, self.col - by, self.height + 2 * by, self.width + 2 * by)

    def clipped(self, height: int, width: int) -> Window:
        """The part of this window inside a ``height × width`` raster (empty sides are 0 pixels)."""
        top, left = max(self.row, 0), max(self.col, 0)
        bottom, right = min(self.row + self.height, height), min(self.col + self.width, width)
        return Window(top, left, max(bottom - top, 0), max(right - left, 0))


PadWidths = tuple[tuple[int, int], tuple[int, int]]


def halo_read(window: Window, halo: int, *, height: int, width: int) -> tuple[Window, PadWidths]:
    """What to read for ``window`` plus a ``halo`` from a ``height × width`` raster, and how to pad it.

    Returns:
        ``(inside, pad)``: ``inside`` is the haloed window clipped to the raster (what to read);
        ``pad`` is ``((top, bottom), (left, right))`` in pixels, the widths that padding ``inside``
        (by reflection, say) needs to reach the full ``(height + 2·halo, width + 2·halo)`` window.

    Raises:
        ValueError: ``halo`` is negative.
    """
    if halo < 0:
        raise ValueError(f"halo must be ≥ 0 pixels, got {halo}")
    wanted = window.grown(halo)
    inside = wanted.clipped(height, width)
    pad = ((inside.row - wanted.row, wanted.row + wanted.height - inside.row - inside.height),
           (inside.col - wanted.col, wanted.col + wanted.width - inside.col - inside.width))
    return inside, pad


@dataclass(frozen=True)
class BlockGrid:
    """A ``height × width`` raster cut into ``block × block`` blocks (the last ones shorter).

    Block ``(i, j)`` covers rows ``[i * block, …)`` and cols ``[j * block, …)``, clipped to the
    raster, so blocks align with Zarr chunks of the same size.
    """

    height: int
    width: int
    block: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"raster must be at least 1×1 pixels, got {self.height}×{self.width}")
        if self.block < 1:
            raise ValueError(f"block size must be ≥ 1 pixel, got {self.block}")

    @property
    def shape(self) -> tuple[int, int]:
        """Number of blocks ``(rows, cols)``."""
        return math.ceil(self.height / self.block), math.ceil(self.width / self.block)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def window(self, i: int, j: int) -> Window:
        """The pixel window of block ``(i, j)``."""
        row, col = i * self.block, j * self.block
        return Window(row, col, min(self.block, self.height - row), min(self.block, self.width - col))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Block indices ``(i, j)`` in row-major order."""
        rows, cols = self.shape
        for i in range(rows):
            for j in range(cols):
                yield i, j


def auto_chunk_size(n_bands: int, itemsize: int, *, target_bytes: int = 8 * 2**20,
                    minimum: int = 32, maximum: int = 1024) -> int:
    """Largest power-of-two spatial chunk side whose ``(bands, c, c)`` chunk fits ``target_bytes``.

    Args:
        n_bands: bands stored in every chunk.
        itemsize: bytes per value.
        target_bytes: wanted upper bound of one uncompressed chunk (bytes).
        minimum, maximum: clamp of the returned side (pixels).
    """
    side = maximum
    while side > minimum and n_bands * itemsize * side * side > target_bytes:
        side //= 2
    return side


def north_up(array: np.ndarray, transform: tuple[float, ...] | None) -> np.ndarray:
    """A (y, x) raster as a map shows it: rows flipped for a south-up grid (``e`` > 0), columns for a grid whose
    x runs west (``a`` < 0); unchanged without a transform or for a rotated one (``b``, ``d`` ≠ 0).

    Args:
        array: (y, x) values in file order.
        transform: the affine ``a, b, c, d, e, f`` of the grid, or None.
    """
    if transform is None:
        return array
    a, b, _, d, e, _ = transform[:6]
    if b or d:
        return array
    return array[:: -1 if e > 0 else 1, :: -1 if a < 0 else 1]


def pixel_aspect(transform: tuple[float, ...] | None, *, geographic: bool = False, height: int = 0) -> float:
    """A pixel's ground height over its ground width, for drawing a raster with the proportions of the ground.

    Args:
        transform: the affine ``a, b, c, d, e, f`` of the grid (rotated ones too), or None (square pixels).
        geographic: the CRS is in degrees: a degree of longitude spans cos(latitude) of a degree of latitude,
            taken at the grid's middle row.
        height: rows of the grid (where its middle row lies).

    Returns:
        The ratio (1.0 without a transform or for a degenerate one).
    """
    if transform is None:
        return 1.0
    a, b, _, d, e, f = transform[:6]
    width_along, height_along = math.hypot(a, d), math.hypot(b, e)  # a column step and a row step on the ground
    if geographic:
        middle_latitude = f + e * height / 2  # y = d·col + e·row + f, at column 0
        width_along *= math.cos(math.radians(max(-89.0, min(89.0, middle_latitude))))
    if not width_along or not height_along or not math.isfinite(width_along / height_along):
        return 1.0
    return height_along / width_along


def pixel_sides(transform: tuple[float, ...]) -> tuple[float, float, float]:
    """A grid's pixel width and height (in CRS units, along its own axes) and its rotation: the angle in degrees
    (counter-clockwise) from east to the direction its columns advance; 0 for a north-up grid, whose sides are |a|
    and |e|."""
    a, b, _, d, e, _ = transform[:6]
    rotation = 0.0 if not (b or d) else math.degrees(math.atan2(d, a))
    return math.hypot(a, d), math.hypot(b, e), rotation


def north_up_grid(array: np.ndarray, transform: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
    """:func:`north_up` of a (y, x) raster with the transform of the flipped array (the same footprint)."""
    a, b, c, d, e, f = transform[:6]
    if b or d:
        return array, (a, b, c, d, e, f)
    height, width = array.shape
    if e > 0:
        f, e = f + e * height, -e
    if a < 0:
        c, a = c + a * width, -a
    return north_up(array, transform), (a, b, c, d, e, f)


def grid_offset(first: tuple[str, tuple[float, ...]], second: tuple[str, tuple[float, ...]]) -> tuple[int, int] | None:
    """The second raster's origin in whole pixels (rows, cols) of the first, when both lie on one pixel grid (the
    same CRS, the same north-up pixel size, origins a whole number of pixels apart); else None."""
    (crs_a, (a1, b1, c1, d1, e1, f1)), (crs_b, (a2, b2, c2, d2, e2, f2)) = first, second
    if crs_a != crs_b or b1 or d1 or b2 or d2 or not math.isclose(a1, a2, rel_tol=1e-9) or \
            not math.isclose(e1, e2, rel_tol=1e-9):
        return None
    col_shift, row_shift = (c2 - c1) / a1, (f2 - f1) / e1
    if abs(col_shift - round(col_shift)) > 1e-6 or abs(row_shift - round(row_shift)) > 1e-6:
        return None
    return round(row_shift), round(col_shift)


def aligned_overlap(first: tuple[str, tuple[float, ...]], first_shape: tuple[int, ...],
                    second: tuple[str, tuple[float, ...]], second_shape: tuple[int, ...]
                    ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where two rasters on one pixel grid (:func:`grid_offset`) overlap: ``((rows, cols) of the first, (rows, cols)
    of the second)``. None when they are not on one grid, or do not overlap.
    """
    offset = grid_offset(first, second)
    if offset is None:
        return None
    dy, dx = offset
    top, left = max(0, dy), max(0, dx)
    bottom, right = min(first_shape[0], dy + second_shape[0]), min(first_shape[1], dx + second_shape[1])
    if bottom <= top or right <= left:
        return None
    return (slice(top, bottom), slice(left, right)), (slice(top - dy, bottom - dy), slice(left - dx, right - dx))
