"""Block-wise band statistics (``BandStats``) and the valid-pixel mask, against plain numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hsi_cluster.stats import (
    PACKED_FIELDS,
    BandStats,
    likely_fill,
    spread_against,
    spread_ratios,
    usable_values,
    valid_pixel_mask,
)
from tests import helpers


def merged(blocks: list[np.ndarray], masks: list[np.ndarray], order: list[int] | None = None) -> BandStats:
    total = BandStats.empty(blocks[0].shape[0])
    for k in order or range(len(blocks)):
        total = total.merge(BandStats.of_block(blocks[k], masks[k]))
    return total


def assert_matches_numpy(stats: BandStats, pixels: np.ndarray, *, rtol: float = 1e-10) -> None:
    """``pixels``: (bands, n) float64 valid values."""
    n = pixels.shape[1]
    np.testing.assert_array_equal(stats.count, np.full(pixels.shape[0], n))
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=1), rtol=rtol)
    np.testing.assert_allclose(stats.std, pixels.std(axis=1, ddof=0), rtol=1e-8)
    np.testing.assert_array_equal(stats.min, pixels.min(axis=1))
    np.testing.assert_array_equal(stats.max, pixels.max(axis=1))


def random_blocks(rng: np.random.Generator, dtype: str, n_bands: int, *, loc: float, scale: float,
                  n_blocks: int = 12) -> tuple[list[np.ndarray], list[np.ndarray]]:
    blocks, masks = [], []
    for k in range(n_blocks):
        h, w = rng.integers(1, 23, size=2)
        block = rng.normal(loc, scale, (n_bands, h, w))
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(dtype)
            block = np.clip(np.round(block), info.min, info.max)
        block = block.astype(dtype)
        mask = rng.random((h, w)) > 0.3
        if k % 5 == 2:
            mask[:] = False  # an empty block
        if k % 7 == 3:
            mask[:] = True
        blocks.append(block)
        masks.append(mask)
    return blocks, masks


def valid_pixels(blocks: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([b[:, m].astype(np.float64) for b, m in zip(blocks, masks, strict=True)], axis=1)


@pytest.mark.parametrize("dtype,loc,scale", [("float32", 0.0, 1.0), ("float64", 1e4, 0.5), ("int16", -200.0, 900.0),
                                             ("uint16", 30000.0, 5.0), ("float32", 3e5, 40.0)])
def test_merge_of_random_blocks_equals_one_pass(dtype: str, loc: float, scale: float) -> None:
    rng = np.random.default_rng([int(abs(loc)), int(scale * 10), np.dtype(dtype).num])
    blocks, masks = random_blocks(rng, dtype, 7, loc=loc, scale=scale)
    pixels = valid_pixels(blocks, masks)
    assert pixels.shape[1] > 100
    stats = merged(blocks, masks)
    assert_matches_numpy(stats, pixels)
    # merge order does not matter (up to rounding)
    shuffled = merged(blocks, masks, list(rng.permutation(len(blocks))))
    np.testing.assert_allclose(shuffled.mean, stats.mean, rtol=1e-12)
    np.testing.assert_allclose(shuffled.std, stats.std, rtol=1e-9)
    # a tree of merges equals a chain
    half = len(blocks) // 2
    tree = merged(blocks[:half], masks[:half]).merge(merged(blocks[half:], masks[half:]))
    np.testing.assert_allclose(tree.mean, stats.mean, rtol=1e-12)
    np.testing.assert_allclose(tree.std, stats.std, rtol=1e-9)


def test_block_whose_first_pixel_is_far_from_the_mean() -> None:
    rng = np.random.default_rng(0)
    block = rng.normal(0.0, 1.0, (3, 40, 40))
    block[:, 0, 0] = 1e3  # an outlier where a shifted-sum implementation takes its shift
    mask = np.ones((40, 40), bool)
    assert_matches_numpy(BandStats.of_block(block, mask), block.reshape(3, -1))


def test_empty_blocks() -> None:
    empty = BandStats.empty(4)
    assert empty.count.tolist() == [0, 0, 0, 0]
    block = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    none = BandStats.of_block(block, np.zeros((3, 5), bool))
    np.testing.assert_array_equal(none.count, [0, 0])
    assert np.isnan(none.std).all()
    one = BandStats.of_block(block, np.eye(3, 5, dtype=bool))
    assert empty.merge(empty).count.tolist() == [0, 0, 0, 0]
    for combined in (none.merge(one), one.merge(none), none.merge(none).merge(one)):
        np.testing.assert_allclose(combined.mean, one.mean)
        np.testing.assert_allclose(combined.m2, one.m2)
        np.testing.assert_array_equal(combined.min, one.min)
        np.testing.assert_array_equal(combined.max, one.max)
    attrs = none.to_attrs()
    assert attrs["count"] == [0, 0]
    for key in ("mean", "std", "min", "max"):
        assert attrs[key] == [None, None], key


def test_single_pixel_block() -> None:
    block = np.array([[[5.0]], [[-2.0]]])
    stats = BandStats.of_block(block, np.ones((1, 1), bool))
    np.testing.assert_array_equal(stats.mean, [5.0, -2.0])
    np.testing.assert_array_equal(stats.std, [0.0, 0.0])


def test_pack_unpack_and_attrs_round_trip() -> None:
    rng = np.random.default_rng(3)
    block = rng.normal(10, 2, (5, 6, 7))
    stats = BandStats.of_block(block, rng.random((6, 7)) > 0.2)
    packed = stats.pack()
    assert packed.shape == (len(PACKED_FIELDS), 5) and packed.dtype == np.float64
    back = BandStats.unpack(packed)
    for name in ("count", "mean", "m2", "min", "max"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name))
    attrs = json.loads(json.dumps(stats.to_attrs()))  # JSON-ready
    assert attrs["mean"] == pytest.approx(stats.mean.tolist())
    assert attrs["std"] == pytest.approx(stats.std.tolist())
    assert all(isinstance(c, int) for c in attrs["count"])


# --------------------------------------------------------------------------------------------
# valid-pixel mask


def test_valid_mask_nan_inf_nodata() -> None:
    cube = helpers.synthetic_cube(5, 14, 16, "float32", seed=4, nan_pixels=6, inf_pixels=4, nodata=-9999.0,
                                  nodata_pixels=6)
    mask = valid_pixel_mask(cube, nodata=-9999.0)
    assert mask.shape == (14, 16) and mask.dtype == bool
    np.testing.assert_array_equal(mask, helpers.reference_valid_mask(cube, -9999.0))
    assert (~mask).sum() == 16  # every planted pixel, whether one band or all bands is bad
    # without nodata, the nodata pixels are valid
    assert (~valid_pixel_mask(cube)).sum() == 10


def test_valid_mask_nodata_integer() -> None:
    cube = helpers.synthetic_cube(4, 9, 8, "uint16", seed=5, nodata=65535, nodata_pixels=7)
    np.testing.assert_array_equal(valid_pixel_mask(cube, nodata=65535.0), helpers.reference_valid_mask(cube, 65535))
    assert (~valid_pixel_mask(cube, nodata=65535.0)).sum() == 7  # one band or all: a fill value is never ground
    assert valid_pixel_mask(cube).all()


def test_a_nodata_of_zero_is_a_gap_only_in_at_least_half_the_bands() -> None:
    """Reflectance clipped at 0 in a few bands (dark water, absorption edges) is ground; a swath's border or a
    detector's missing half holds 0 in at least half the bands."""
    cube = helpers.synthetic_cube(6, 5, 4, "uint16", seed=5)
    cube[2, 0, 0] = 0  # one band of six: clipped water
    cube[[0, 4], 0, 1] = 0  # two of six
    cube[3:, 0, 2] = 0  # three of six: the SWIR detector's missing half
    cube[:, 0, 3] = 0  # every band: the border
    cube[1:3, 1, 3] = 0  # two of six, but one of them a band flagged bad
    for nodata in (0, 0.0):
        mask = valid_pixel_mask(cube, nodata=nodata)
        np.testing.assert_array_equal(mask[0], [True, True, False, False])
        assert mask[1:].all()
        np.testing.assert_array_equal(mask, helpers.reference_valid_mask(cube, nodata))
    good = np.array([True, True, False, True, True, True])  # five good bands: 3 of them zero at (0, 2)
    assert not valid_pixel_mask(cube, nodata=0, good_band=good)[0, 2]
    np.testing.assert_array_equal(valid_pixel_mask(cube, nodata=0, good_band=good),
                                  helpers.reference_valid_mask(cube, 0, good))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_fill_values_are_invalid_like_inf(dtype: str) -> None:
    """±1e30, netCDF's default fill and float32's largest value mark fill in one band as in all: a few such
    pixels would otherwise take over a band's statistics."""
    cube = helpers.synthetic_cube(5, 4, 4, dtype, seed=3)
    cube[2, 0, 0] = 1e30
    cube[0, 0, 1] = -1e30
    cube[4, 0, 2] = 9.96921e36
    cube[1, 0, 3] = -3.4e38
    cube[3, 1, 0] = 9.9e29  # large, but under the fill magnitude
    mask = valid_pixel_mask(cube)
    np.testing.assert_array_equal(mask[0], [False] * 4)
    assert mask[1:].all()
    np.testing.assert_array_equal(mask, helpers.reference_valid_mask(cube))
    np.testing.assert_array_equal(valid_pixel_mask(cube, nodata=0), mask)


def test_valid_mask_nan_nodata_means_non_finite() -> None:
    cube = helpers.synthetic_cube(3, 5, 5, "float64", seed=6, nan_pixels=3)
    np.testing.assert_array_equal(valid_pixel_mask(cube, nodata=float("nan")), np.isfinite(cube).all(axis=0))


def test_valid_mask_good_band() -> None:
    cube = np.ones((4, 3, 3), np.float32)
    cube[1, 0, 0] = np.nan  # bad band only: pixel stays valid
    cube[2, 1, 1] = np.inf  # good band: invalid
    cube[3, 2, 2] = -1  # nodata in a good band
    cube[1, 2, 0] = -1  # nodata in a bad band only
    good = np.array([True, False, True, True])
    mask = valid_pixel_mask(cube, nodata=-1, good_band=good)
    expected = np.ones((3, 3), bool)
    expected[1, 1] = expected[2, 2] = False
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(mask, helpers.reference_valid_mask(cube, -1, good))
    everything = valid_pixel_mask(cube, nodata=-1, good_band=np.ones(4, bool))
    np.testing.assert_array_equal(everything, helpers.reference_valid_mask(cube, -1))


@pytest.mark.parametrize("fill", [0, 65535])
def test_a_flat_pixel_of_a_spectrometer_is_fill(fill: int) -> None:
    """An orthorectified swath's border holds one value in every band without a declared nodata: with
    20 good bands or more it is invalid; with fewer (RGB: a grey pixel can be real) it stays valid."""
    cube = helpers.synthetic_cube(24, 10, 12, "uint16", seed=7)
    cube[:, :, :3] = fill  # border columns
    cube[:5, 4, 6] = cube[0, 4, 6]  # a pixel flat in some bands only is real
    mask = valid_pixel_mask(cube)
    assert not mask[:, :3].any() and mask[:, 3:].all()
    np.testing.assert_array_equal(mask, helpers.reference_valid_mask(cube))
    assert valid_pixel_mask(cube[:19]).all()
    good = np.zeros(24, bool)
    good[:19] = True  # fewer than 20 good bands decide
    assert valid_pixel_mask(cube, good_band=good).all()


def test_a_fill_pixel_may_differ_in_a_few_dead_or_saturated_bands() -> None:
    """An AVIRIS collar: 0 in every band but three saturated over the whole swath (32767, border included), which
    are later left out as constant: it is fill (it was trained on as ground, while predict labelled it nodata). A
    pixel flat in all but 6 of 100 bands is not."""
    cube = helpers.synthetic_cube(100, 10, 12, "int16", seed=3)
    cube[40:43] = 32767  # saturated everywhere
    cube[:40, :, :3] = cube[43:, :, :3] = 0  # the collar: border columns
    cube[:, 5, 6] = 0
    cube[[3, 20, 50, 61, 77, 98], 5, 6] = 9  # 6 of 100 other
    mask = valid_pixel_mask(cube)
    assert not mask[:, :3].any() and mask[:, 3:].sum() == 10 * 9
    np.testing.assert_array_equal(mask, helpers.reference_valid_mask(cube))
    cube[[3, 20, 50, 61, 77], 5, 6] = 0  # 1 of 100 (the 5 % allowed and fewer): fill, wherever the odd band lies
    assert not valid_pixel_mask(cube)[5, 6]


def test_likely_fill_finds_the_value_many_pixels_hold_in_every_band() -> None:
    rng = np.random.default_rng(0)
    spectra = rng.normal(500, 50, (1000, 8))
    spectra[:100] = -9999.0  # an undeclared fill
    spectra[100:102] = 7.0  # two flat pixels of another value
    value, share = likely_fill(spectra)
    assert value == -9999.0 and share == pytest.approx(0.1)
    assert likely_fill(spectra[100:]) is None  # 2 flat pixels of 900: too few to report
    assert likely_fill(rng.normal(size=(1000, 8))) is None


def test_spread_against_training_statistics_tells_other_units() -> None:
    rng = np.random.default_rng(0)
    std = np.array([50.0, 80.0, 120.0])
    pixels = rng.normal([500, 900, 1500], std, (2000, 3))
    assert spread_against(pixels, std) == pytest.approx(1.0, abs=0.05)
    assert spread_against(pixels * 1e-4, std) == pytest.approx(1e-4, rel=0.05)  # reflectance against DN
    assert spread_against(pixels * 1e4, std) == pytest.approx(1e4, rel=0.05)


def test_spread_ratios_single_out_a_scene_in_other_units() -> None:
    rng = np.random.default_rng(1)
    std = rng.uniform(20, 200, 30)
    ratios = spread_ratios([std, std * 1.3, std * 1e-4, std * 0.8])
    assert ratios[2] < 1e-3 and all(0.5 < r < 2 for r in ratios[[0, 1, 3]])
    assert spread_ratios([std, np.full(30, np.nan)]).tolist() == [1.0, 1.0]  # nothing to compare
    assert spread_ratios([std]).tolist() == [1.0]


def test_spread_ratios_of_two_scenes_single_out_percent_against_fractions() -> None:
    """Two scenes 100× apart (reflectance in percent and in fractions): each is compared with the other, so the
    pair shows 100× (against the median of both, 1.98× and 0.0198×: no warning under 200×)."""
    std = np.random.default_rng(2).uniform(0.01, 0.2, 30)
    np.testing.assert_allclose(spread_ratios([std, std * 100]), [0.01, 100.0])
    np.testing.assert_allclose(spread_ratios([std, std * 3]), [1 / 3, 3.0])


def test_band_voids_counts_the_pixels_a_band_makes_invalid_where_most_bands_hold_values() -> None:
    """What ingest's dropout rule reads: a band missing where most bands hold values, alone or with others, not a
    footprint's fill."""
    from hsi_cluster.stats import band_voids

    cube = np.random.default_rng(0).normal(1.0, 0.1, (5, 6, 8)).astype(np.float32)
    cube[:, :, :2] = -9999.0          # a footprint: missing in every band, no band's dropout
    cube[2, :4, 2:] = np.nan          # a dropout of band 3 over 24 pixels
    cube[4, 5, 7] = np.inf            # band 5 at one pixel
    cube[[1, 3], 5, 2] = np.nan       # bands 2 and 4 together at one pixel (2 of 5: the others hold values)
    cube[[0, 1, 3], 5, 3] = np.nan    # three of five bands: most are missing, no band's dropout
    valid = valid_pixel_mask(cube, nodata=-9999.0)
    assert band_voids(cube, valid, nodata=-9999.0).tolist() == [0, 1, 24, 1, 1]
    good = np.array([True, True, False, True, True])  # a band flagged bad counts nothing and decides nothing
    assert band_voids(cube, valid_pixel_mask(cube, nodata=-9999.0, good_band=good), nodata=-9999.0,
                      good_band=good).tolist() == [0, 1, 0, 1, 1]
    assert not band_voids(cube[:, :, 2:4][:, 4:], np.ones((2, 2), bool)).any()  # nothing invalid: free


def test_voiding_bands_flags_few_dropout_bands_together_else_a_band_voiding_as_many_as_stay_valid() -> None:
    """Validity rules 9 and 10: ten of 200 bands with 10 % scattered dropouts each voided 64 % of a scene in silence (no
    band alone voided as many as stayed valid); sixteen sparse bands voided all of it. Dropout bands (≥ 5 % of the
    valid count) are flagged together when they are at most a fifth of the good bands; more (a part of the sensor
    missing beyond its footprint) leave those pixels invalid, as before. Never every band."""
    from hsi_cluster.stats import voiding_bands

    good = np.ones(200, bool)
    voided = np.zeros(200, np.int64)
    voided[190:] = 1200  # ten dropout bands, 4 300 pixels valid
    voided[5] = 20  # under 0.5 % of the valid count: those pixels stay invalid
    assert np.flatnonzero(voiding_bands(4300, voided, np.ones(200, bool), good)).tolist() == list(range(190, 200))
    voided[5] = 200  # 4.7 %, beside bands of 5 % or more: flagged with them (rules 10)
    assert np.flatnonzero(voiding_bands(4300, voided, np.ones(200, bool), good)).tolist() == [5, *range(190, 200)]
    few = np.zeros(200, np.int64)
    few[:10] = 172  # ten bands of 4 % each: a third of the scene together (rules 10)
    assert np.flatnonzero(voiding_bands(4300, few, np.ones(200, bool), good)).tolist() == list(range(10))
    few[:10] = 20  # ten bands of 0.47 % each: under 0.5 %, those pixels stay invalid
    assert not voiding_bands(4300, few, np.ones(200, bool), good).any()
    few[:4] = 40  # four bands of 0.9 %, 3.7 % together: under 5 %, they stay invalid too
    assert not voiding_bands(4300, few, np.ones(200, bool), good).any()
    sparse = np.zeros(200, np.int64)
    sparse[:16] = 11500  # sixteen bands with 3 % of their values: no pixel valid
    assert voiding_bands(0, sparse, np.ones(200, bool), good).sum() == 16
    vnir = np.zeros(200, np.int64)
    vnir[:60] = 300  # 60 bands missing beyond their footprint: too many to drop
    assert not voiding_bands(8000, vnir, np.ones(200, bool), good).any()
    vnir[:60] = 9000  # ... unless they void more pixels than stay valid (rule 8)
    assert voiding_bands(8000, vnir, np.ones(200, bool), good).sum() == 60

    good = np.array([True, True, True, False])
    voided = np.array([10, 0, 0, 50])
    assert voiding_bands(10, voided, np.ones(4, bool), good).tolist() == [True, False, False, False]
    assert voiding_bands(5, np.array([5, 6, 7, 0]), np.ones(4, bool), good).tolist() == [False] * 4  # not every band
    # no valid pixel and no dropout: the good bands that hold no usable value anywhere, unless every one is so
    filled = np.array([True, False, True, False])
    assert voiding_bands(0, np.zeros(4), filled, good).tolist() == [False, True, False, False]
    assert voiding_bands(0, np.zeros(4), np.zeros(4, bool), good).tolist() == [False] * 4


def test_float16_values_are_screened_without_numpy_warnings() -> None:
    """float16 holds no 1e30: the fill bound overflowed to inf with a RuntimeWarning on every block read."""
    values = np.array([1.0, 65_000.0, -3.0, np.inf, -np.inf, np.nan], np.float16)
    with np.errstate(all="raise"):
        usable = usable_values(values, nodata=-3.0)
    np.testing.assert_array_equal(usable, [True, True, False, False, False, False])
