"""Which bands the spectral projection reads: flagged, empty, constant and noise-dominated bands are left out.

Raw deliveries of imaging spectrometers carry bands that hold no image: the water-vapour windows
(noise only), dead detector rows (constant), bands the file's metadata flags as bad (ENVI ``bbl``,
often NaN or a fill value). Per-band standardisation gives each of them the same weight as a band
that carries the ground, so twenty noise bands add twenty dimensions of pure noise to the PCA.

The noise screen needs no labels and no spatial structure (fine parcels have little): the bands of
an imaging spectrometer overlap, so the signal of any band is largely shared with other bands,
while noise is not. The share of a band's variance that the other bands explain linearly (the
adjusted R² of regressing it on all of them) estimates its signal share; a band where it is below
:data:`MIN_SHARED_VARIANCE` holds noise alone, as far as the other bands can tell, and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hsi_cluster.errors import number_ranges

#: A band is left out when the other bands explain less than this share of its variance: what they
#: share with it is then hard to tell from nothing (the adjusted R² of a noise-only band is 0 ± 0.01 on
#: a few thousand pixels). Bands of weak but real signal stay: at 0.5 the screen also left out bands
#: 104 and 200 of Indian Pines (R² 0.45, 0.33) and 1-2 of Salinas-A (0.26, 0.35), at 0.2 band 1 of
#: Indian Pines (0.09), and those scenes scored lower (docs/accuracy.md).
MIN_SHARED_VARIANCE = 0.05
#: The noise screen needs a spectrometer: with fewer bands (multispectral), every good band is kept,
#: since a broad band there can carry what no other band does.
MIN_BANDS_TO_SCREEN = 20
#: And at least this many sampled pixels per band screened, so that the R² estimate is steady.
MIN_SAMPLES_PER_BAND = 5
#: The screen never leaves fewer bands than this (nor than the projection's components).
MIN_BANDS_KEPT = 3
#: Nor does it leave out more than this share of the bands: the absorption windows of a raw delivery
#: are about a tenth of its bands; far more bands below the line means a scene of little contrast
#: (one material, calm water), where every band is kept.
MAX_SHARE_SCREENED = 0.5


@dataclass(frozen=True)
class BandScreen:
    """Which bands the projection reads, and why the others are left out.

    Attributes:
        flagged: bool (B,), marked bad in the scenes' metadata (``good_band`` / ENVI ``bbl``).
        constant: bool (B,), no valid value or no variance.
        noisy: bool (B,), noise only: less than :data:`MIN_SHARED_VARIANCE` of the variance shared with the others.
        shared_variance: float64 (B,), the adjusted R² of each screened band (NaN where not screened).
    """

    flagged: np.ndarray
    constant: np.ndarray
    noisy: np.ndarray
    shared_variance: np.ndarray

    @property
    def used(self) -> np.ndarray:
        """bool (B,): the bands the projection reads."""
        return ~(self.flagged | self.constant | self.noisy)

    def summary(self) -> str:
        """One line for the training log, band numbers 1-based as in GDAL, e.g.
        ``left out 2 of 12 bands: 2 flagged bad (…) (bands 5, 8)``."""
        parts = [f"{int(mask.sum())} {why} (bands {number_ranges(np.flatnonzero(mask) + 1)})"
                 for mask, why in ((self.flagged, "flagged bad (in the metadata, or empty at ingest)"), (self.constant, "empty or constant"),
                                   (self.noisy, f"noise only (under {MIN_SHARED_VARIANCE:.0%} of their "
                                                "variance shared with other bands)")) if mask.any()]
        if not parts:
            return f"all {self.used.size} bands used"
        return f"left out {int((~self.used).sum())} of {self.used.size} bands: " + "; ".join(parts)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready band indices (0-based, unlike :meth:`summary`) per reason, for the checkpoint."""
        return {"flagged": np.flatnonzero(self.flagged).tolist(), "constant": np.flatnonzero(self.constant).tolist(),
                "noisy": np.flatnonzero(self.noisy).tolist(), "min_shared_variance": MIN_SHARED_VARIANCE}


def shared_variance(samples: np.ndarray) -> np.ndarray:
    """Adjusted R² of each column of ``samples`` regressed linearly on all the other columns.

    From the inverse correlation matrix: R²_j = 1 − 1 / (C⁻¹)_jj, adjusted for the n − 1 − p degrees
    of freedom left with p = B − 1 predictors, so that a column of pure noise scores about 0 whatever
    the sample size. A tiny ridge keeps nearly collinear bands (R² → 1) finite.

    Args:
        samples: (n, B) values, finite; n > B. A column constant in the sample scores about 1 (it is
            not taken for noise: the band statistics decide on constant bands).

    Returns:
        float64 (B,), at most 1 (may dip below 0 for pure noise).
    """
    n, n_bands = np.shape(samples)
    if n <= n_bands:
        raise ValueError(f"need more samples than bands to screen bands, got {n} samples of {n_bands} bands")
    centred = np.array(samples, dtype=np.float64)  # the one (n, B) temporary
    centred -= centred.mean(axis=0)
    covariance = centred.T @ centred / (n - 1)
    scale = np.sqrt(np.diag(covariance))
    scale = np.where(scale > 0, scale, 1.0)  # constant in the sample: no correlation, R² ≈ 1 by the ridge
    correlation = covariance / np.outer(scale, scale)
    precision = np.linalg.inv(correlation + 1e-6 * np.eye(n_bands))
    r2 = 1.0 - 1.0 / np.diag(precision)
    return 1.0 - (1.0 - r2) * (n - 1) / (n - n_bands)


def screen_bands(mean: np.ndarray, std: np.ndarray, spectra: np.ndarray, *,
                 good_band: np.ndarray | None = None, keep_at_least: int = MIN_BANDS_KEPT) -> BandScreen:
    """Decide which bands the projection reads.

    Args:
        mean, std: per-band mean and standard deviation over the valid pixels, (B,) (NaN where a band
            has no valid pixel).
        spectra: (n, B) a random sample of valid pixels (flagged bands may hold NaN there).
        good_band: optional bool (B,) from the metadata; False bands are left out whatever they hold.
        keep_at_least: the noise screen is skipped if it would leave fewer bands than this, or leave
            out more than :data:`MAX_SHARE_SCREENED` of them.

    Returns:
        the screen; its :attr:`BandScreen.used` has at least one band unless none is usable.
    """
    n_bands = np.asarray(std).shape[0]
    flagged = np.zeros(n_bands, bool) if good_band is None else ~np.asarray(good_band, bool)
    constant = ~flagged & ~(np.isfinite(std) & (np.asarray(std) > 0) & np.isfinite(mean))
    noisy = np.zeros(n_bands, bool)
    r2 = np.full(n_bands, np.nan)
    candidates = np.flatnonzero(~flagged & ~constant)
    spectra = np.asarray(spectra)
    if (candidates.size >= max(MIN_BANDS_TO_SCREEN, keep_at_least)
            and spectra.shape[0] >= MIN_SAMPLES_PER_BAND * candidates.size):
        values = spectra[:, candidates]
        finite = np.isfinite(values).all(axis=1)
        if finite.sum() >= MIN_SAMPLES_PER_BAND * candidates.size:
            r2[candidates] = shared_variance(values if finite.all() else values[finite])
            low = candidates[r2[candidates] < MIN_SHARED_VARIANCE]
            # Over half the bands "noisy" means a low-contrast scene, not a noisy sensor: keep them all.
            if candidates.size - low.size >= keep_at_least and low.size <= candidates.size * MAX_SHARE_SCREENED:
                noisy[low] = True
    return BandScreen(flagged=flagged, constant=constant, noisy=noisy, shared_variance=r2)
