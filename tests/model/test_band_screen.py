"""The band screen: flagged, empty/constant and noise-dominated bands are left out of the projection."""

from __future__ import annotations

import numpy as np
import pytest

from hsi_cluster.model.band_screen import MIN_BANDS_TO_SCREEN, MIN_SHARED_VARIANCE, screen_bands, shared_variance


def _spectrometer(n: int = 3000, n_bands: int = 40, noise_bands: tuple[int, ...] = (), seed: int = 0,
                  snr: float = 20.0) -> np.ndarray:
    """(n, B) smooth spectra: 4 latent materials through overlapping Gaussian band responses, plus
    sensor noise; the ``noise_bands`` hold noise only (a water-vapour window)."""
    rng = np.random.default_rng(seed)
    wavelength = np.linspace(0, 1, n_bands)
    basis = np.stack([np.exp(-((wavelength - centre) / 0.25) ** 2) for centre in (0.1, 0.4, 0.7, 1.0)])
    spectra = rng.gamma(2.0, 1.0, size=(n, 4)) @ basis + 5.0
    spectra += rng.normal(size=spectra.shape) * spectra.std(axis=0) / snr
    for band in noise_bands:
        spectra[:, band] = 0.3 + rng.normal(size=n) * rng.uniform(0.01, 0.1)
    return spectra


def test_shared_variance_is_near_one_for_overlapping_bands_and_near_zero_for_noise():
    spectra = _spectrometer(noise_bands=(20, 21, 22))
    r2 = shared_variance(spectra)
    assert r2.shape == (40,)
    assert np.all(np.delete(r2, [20, 21, 22]) > 0.95)
    assert np.all(np.abs(r2[[20, 21, 22]]) < 0.02)  # adjusted: about 0 for pure noise whatever n / B


def test_a_column_constant_in_the_sample_is_not_taken_for_noise():
    spectra = _spectrometer()
    spectra[:, 7] = 3.0
    r2 = shared_variance(spectra)
    assert np.isfinite(r2).all() and r2[7] > 0.99


def test_shared_variance_needs_more_samples_than_bands():
    with pytest.raises(ValueError, match="more samples than bands"):
        shared_variance(np.random.default_rng(0).normal(size=(10, 12)))


def test_screen_leaves_out_noise_flagged_and_constant_bands_and_keeps_the_rest():
    spectra = _spectrometer(noise_bands=(20, 21, 22, 23))
    spectra[:, 39] = 7.0  # dead detector row
    spectra[:, 5] = np.nan  # flagged bad, NaN everywhere (as many deliveries fill them)
    mean, std = spectra.mean(axis=0), spectra.std(axis=0)  # NaN for band 5, as the band statistics give
    good_band = np.ones(40, bool)
    good_band[5] = False

    screen = screen_bands(mean, std, spectra, good_band=good_band)

    assert np.flatnonzero(screen.flagged).tolist() == [5]
    assert np.flatnonzero(screen.constant).tolist() == [39]
    assert np.flatnonzero(screen.noisy).tolist() == [20, 21, 22, 23]
    assert screen.used.sum() == 40 - 6
    assert np.all(screen.shared_variance[screen.used] >= MIN_SHARED_VARIANCE)
    assert screen.summary() == ("left out 6 of 40 bands: 1 flagged bad (in the metadata, or empty at ingest) (bands 6); 1 empty or constant "
                                "(bands 40); 4 noise only (under 5% of their variance shared with other bands) "
                                "(bands 21–24)")
    assert screen.to_record() == {"flagged": [5], "constant": [39], "noisy": [20, 21, 22, 23],
                                  "min_shared_variance": MIN_SHARED_VARIANCE}


def test_screen_keeps_every_band_of_a_clean_scene():
    spectra = _spectrometer()
    screen = screen_bands(spectra.mean(0), spectra.std(0), spectra)
    assert screen.used.all()
    assert screen.summary() == "all 40 bands used"


def test_a_multispectral_scene_is_not_screened():
    """With fewer bands than a spectrometer has, a band unlike all others (NIR beside RGB) is kept."""
    rng = np.random.default_rng(3)
    spectra = rng.normal(size=(2000, MIN_BANDS_TO_SCREEN - 1))  # no band explains another
    screen = screen_bands(spectra.mean(0), spectra.std(0), spectra)
    assert screen.used.all()
    assert np.isnan(screen.shared_variance).all()


def test_screen_is_skipped_with_too_few_samples_or_when_it_would_leave_too_few_bands():
    spectra = _spectrometer(n=60)  # 60 pixels of 40 bands: R² would not be steady
    assert screen_bands(spectra.mean(0), spectra.std(0), spectra).used.all()
    noise = np.random.default_rng(4).normal(size=(3000, 30))
    screen = screen_bands(noise.mean(0), noise.std(0), noise, keep_at_least=3)
    assert screen.used.all()  # every band is noise: leaving all out would leave nothing to project
    spectra = _spectrometer(noise_bands=tuple(range(0, 40, 2)))  # half of the bands: still a noisy sensor
    assert screen_bands(spectra.mean(0), spectra.std(0), spectra).noisy.sum() == 20
    spectra = _spectrometer(noise_bands=tuple(range(0, 40, 2)) + (1, 3))  # over half: low contrast, keep all
    assert screen_bands(spectra.mean(0), spectra.std(0), spectra).used.all()
