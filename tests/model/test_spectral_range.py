"""The training spectra's range in the projected space, and whether new pixels fall outside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsi_cluster.data.augment import band_positions
from hsi_cluster.model.spectral_range import (
    GAIN_SUBSAMPLE,
    GAINS,
    N_PROTOTYPES,
    RANGE_QUANTILE,
    TILTS,
    RangeFit,
    SpectralRange,
    radiometric_factors,
)


def _three_kinds_of_ground(n: int, *, seed: int = 0) -> np.ndarray:
    """(n, 5) projected pixels of three classes of unequal size and spread (a small, tight one among them)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0, 0, 0], [8, 1, 0, 0, 0], [0, -6, 3, 0, 0]], float)
    sizes = [int(n * 0.6), int(n * 0.35)]
    sizes.append(n - sum(sizes))
    spreads = [1.0, 0.7, 0.2]
    return np.vstack([centre + spread * rng.standard_normal((size, 5))
                      for centre, size, spread in zip(centres, sizes, spreads, strict=True)])


def test_new_pixels_of_the_training_ground_lie_inside_and_a_brighter_scene_outside() -> None:
    """Fresh pixels of the same classes, the small one included, lie outside at about the quantile's rate; the
    same ground scaled about the projection of a zero spectrum (a brightness change) lies outside."""
    trained = SpectralRange.fit(_three_kinds_of_ground(20_000), seed=0)
    assert trained.prototypes.shape == (N_PROTOTYPES, 5) and trained.prototypes.dtype == np.float32
    fresh = _three_kinds_of_ground(20_000, seed=1)
    assert trained.outside(fresh).mean() < 5 * (1 - RANGE_QUANTILE)
    small_class = fresh[-1000:]
    assert trained.outside(small_class).mean() < 0.01
    zero_spectrum = np.array([-30.0, 10, 0, 0, 0])  # far from the scene, as a standardised zero spectrum lies
    brighter = zero_spectrum + 1.5 * (fresh - zero_spectrum)
    assert trained.outside(brighter).mean() > 0.9


def test_the_range_survives_a_checkpoint_record_and_older_records_have_none() -> None:
    trained = SpectralRange.fit(_three_kinds_of_ground(2_000), seed=3)
    record = trained.to_record()
    assert all(isinstance(value, torch.Tensor) for value in record.values())
    again = SpectralRange.from_record({"mean": torch.zeros(3), **record})
    assert again is not None and np.array_equal(again.prototypes, trained.prototypes)
    assert again.radius == trained.radius
    assert SpectralRange.from_record({"mean": torch.zeros(3)}) is None


def test_a_tiny_or_uniform_sample_still_gives_a_range() -> None:
    """Fewer distinct pixels than centres: as many centres as there are; one repeated pixel: a positive radius,
    and a pixel elsewhere lies outside."""
    few = SpectralRange.fit(np.repeat(np.eye(3), 10, axis=0), seed=0)
    assert len(few.prototypes) <= 3 and few.radius > 0
    assert not few.outside(np.eye(3)).any() and few.outside(np.full((1, 3), 5.0)).all()
    with pytest.raises(ValueError, match="projected spectra"):
        SpectralRange.fit(np.zeros((1, 3)))


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.0, 1.25, 2.0])
def test_the_gain_at_which_a_scene_fits_best_undoes_a_brightness_change(factor: float) -> None:
    """The same ground under a raw gain (in the projected space, a scaling about the projection of a zero spectrum):
    the gain that fits it best is the inverse, within the grid's 5 % steps; a change over 10 % that fits far better
    undone is another acquisition, the unchanged ground is not."""
    trained = SpectralRange.fit(_three_kinds_of_ground(20_000), seed=0)
    origin = np.array([-30.0, 10, 0, 0, 0])
    changed = factor * _three_kinds_of_ground(8_000, seed=2) + (1 - factor) * origin
    counts = trained.counts(changed, origin)
    assert counts.dtype == np.int64 and len(counts) == 3 + len(TILTS) * len(GAINS)
    assert counts[0] == 8_000 and counts[2] == 8_000 // GAIN_SUBSAMPLE
    fit = RangeFit.from_counts(counts)
    assert fit is not None and abs(np.log(fit.gain * factor)) < 0.05 and fit.tilt == 0
    assert fit.fit_ratio <= 1 and fit.another_acquisition == (factor != 1.0)
    assert abs(fit.outside_share - trained.outside(changed).mean()) < 1e-12


def test_the_counts_are_those_of_the_pixels_moved_one_by_one() -> None:
    """The expansion that spares the (gain, tilt, pixel, centre) array gives the capped distances of the pixels moved
    explicitly, origin far from the data (bands read as the mean) and tilt included."""
    trained = SpectralRange.fit(_three_kinds_of_ground(5_000), seed=0)
    pixels = _three_kinds_of_ground(400, seed=4) * 1.1
    origin = np.array([-30.0, 10, 2, 0, 1])
    tilted = np.random.default_rng(5).standard_normal((400, 5))
    counts = trained.counts(pixels, origin, tried=np.ones(400, bool), tilted=tilted)
    expected = []
    for tilt in TILTS:
        for gain in GAINS:
            moved = gain * (pixels - origin + tilt * tilted) + origin
            distance = np.sqrt(((moved[:, None] - trained.prototypes[None].astype(np.float64)) ** 2).sum(2)).min(1)
            expected.append(np.minimum(distance / trained.radius, 2.0).sum() * 1000)
    np.testing.assert_allclose(counts[3:], np.round(expected), rtol=1e-4, atol=2)  # float32 inside: 2e-5 of the sum


@pytest.mark.parametrize("factor", [0.35, 3.0])
def test_a_change_beyond_the_gains_corrected_is_said_so_and_not_taken_for_another_acquisition(factor: float) -> None:
    """A scene 3× as bright (or a third as bright) fits best at an outer gain, one step beyond 0.5–2×: that is not
    the gain that undoes it, so it is not offered for matching (it was reported as 0.50× and matched there)."""
    trained = SpectralRange.fit(_three_kinds_of_ground(20_000), seed=0)
    origin = np.array([-30.0, 10, 0, 0, 0])
    changed = factor * _three_kinds_of_ground(8_000, seed=2) + (1 - factor) * origin
    fit = RangeFit.from_counts(trained.counts(changed, origin))
    assert fit is not None and fit.gain in (GAINS[0], GAINS[-1]) and not 0.5 <= fit.gain <= 2.0
    assert fit.beyond_range and not fit.another_acquisition


def test_no_checked_pixel_gives_no_fit() -> None:
    trained = SpectralRange.fit(_three_kinds_of_ground(2_000), seed=0)
    assert RangeFit.from_counts(np.zeros(3 + len(TILTS) * len(GAINS), np.int64)) is None
    assert RangeFit.from_counts(trained.counts(np.zeros((0, 5)), np.zeros(5))) is None


@pytest.mark.parametrize(("gain", "tilt"), [(1.0, 0.0), (1.0, 0.1), (1.0, -0.15), (1.25, 0.1)])
def test_the_tilt_at_which_a_scene_fits_best_undoes_a_tilt_across_its_bands(gain: float, tilt: float) -> None:
    """Raw spectra of three kinds of ground (8 bands) under a gain and a linear tilt across the bands, seen through
    an affine projection: the best gain and tilt undo them (within one step of each grid), and only a changed scene
    is taken for another acquisition."""
    rng = np.random.default_rng(0)
    shapes = np.array([[10, 12, 14, 16, 18, 20, 22, 24], [30, 28, 20, 12, 10, 12, 14, 15], [5, 9, 30, 31, 29, 25, 20, 18]],
                      float)

    def raw(n: int, seed: int) -> np.ndarray:
        kinds = np.random.default_rng(seed).integers(0, 3, n)
        return shapes[kinds] * (1 + 0.03 * np.random.default_rng(seed + 1).standard_normal((n, 8)))

    weights = rng.standard_normal((8, 5)) / 8
    training = raw(20_000, 1)
    bias = -training.mean(0) @ weights

    def project(x: np.ndarray) -> np.ndarray:
        return x @ weights + bias

    trained = SpectralRange.fit(project(training), seed=0)
    scene = raw(8_000, 5) * radiometric_factors(gain, tilt, 8)
    tried = np.zeros(len(scene), bool)
    tried[::4] = True
    counts = trained.counts(project(scene), bias, tried=tried, tilted=(scene[tried] * band_positions(8)) @ weights)
    fit = RangeFit.from_counts(counts)
    assert fit is not None
    step = TILTS[1] - TILTS[0]
    assert abs(np.log(fit.gain * gain)) < 0.05 + 1e-9 and abs(fit.tilt + tilt) <= step + 1e-9, fit
    assert fit.another_acquisition == (gain != 1.0 or tilt != 0.0), fit
