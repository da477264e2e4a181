"""Per-band statistics over valid pixels, computed block by block and merged exactly.

Blocks are summarised by count, mean, M2 (sum of squared deviations), min and max per band;
summaries combine with Chan et al.'s parallel update, so the merged result equals a single pass
over all valid pixels up to float64 rounding, whatever the block order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Field order of a summary packed into one float64 array of shape (5, bands).
PACKED_FIELDS = ("count", "mean", "m2", "min", "max")
_BAND_GROUP = 16
#: From this many (good) bands on, a pixel with the same value in every band is fill, not ground: a
#: spectrometer never measures a flat spectrum, but an orthorectified swath's border often holds 0
#: (or another fill) in every band without a declared nodata. Fewer bands (RGB: a grey pixel) may be real.
FLAT_FILL_MIN_BANDS = 20
#: A fill pixel may differ in a few bands: those a delivery leaves dead or saturated across the whole swath, border
#: included (an AVIRIS scene's 0 collar held 32767 in its three saturated bands and passed as ground). Up to this
#: share of the good bands may hold other values; a real spectrum never repeats one value in the rest.
FLAT_FILL_ODD_SHARE = 0.05
#: Pairs of neighbouring bands compared first: a fill pixel repeats its value in at least half of them (its odd
#: bands can break a few pairs), ground in few.
_FLAT_PROBES = 8


def valid_pixel_mask(block: np.ndarray, *, nodata: float | None = None,
                     good_band: np.ndarray | None = None) -> np.ndarray:
    """Which pixels of a ``(bands, y, x)`` block are usable.

    A pixel is invalid when any of its (good) bands is NaN, ±Inf or fill-sized (:data:`FILL_MAGNITUDE`), or
    equals ``nodata``; and, with at
    least :data:`FLAT_FILL_MIN_BANDS` good bands, when all of them hold the same value (fill), but for at most
    :data:`FLAT_FILL_ODD_SHARE` of them (bands dead or saturated over the whole swath). A nodata
    of 0 is the exception: 0 is also a value that ground takes (reflectance clipped at zero on dark
    water or at the edge of an absorption band), so it marks a gap only where at least half the good
    bands hold it, as a gap in a delivery (a swath's border, a detector's missing half) does.

    Args:
        block: values, shape (bands, y, x).
        nodata: the scene's nodata value, or None.
        good_band: optional bool (bands,): only these bands decide validity.

    Returns:
        bool array (y, x), True where valid.
    """
    values = block if good_band is None or good_band.all() else block[np.asarray(good_band, bool)]
    if nodata is not None and nodata == 0:
        valid = np.asarray(usable_values(values).all(axis=0))
        valid &= 2 * np.count_nonzero(values == 0, axis=0) < values.shape[0]
    else:
        valid = np.asarray(usable_values(values, nodata=nodata).all(axis=0))
    n_bands = values.shape[0]
    if n_bands >= FLAT_FILL_MIN_BANDS:
        probes = np.linspace(0, n_bands - 2, _FLAT_PROBES).astype(int)
        repeated = np.sum([values[b] == values[b + 1] for b in probes], axis=0, dtype=np.int8)
        rows, cols = np.nonzero(valid & (2 * repeated >= _FLAT_PROBES))  # few pixels but fill pass this first test
        if rows.size:
            spectra = values[:, rows, cols]
            middle = np.partition(spectra, n_bands // 2, axis=0)[n_bands // 2]  # a value held in most bands is it
            held = np.count_nonzero(spectra == middle, axis=0)
            flat = held >= n_bands - int(FLAT_FILL_ODD_SHARE * n_bands)
            valid[rows[flat], cols[flat]] = False
    return valid


#: A good band is a dropout band when it is NaN or nodata in at least this share of as many pixels as are valid,
#: among pixels most bands hold (validity rules 9) ...
DROPOUT_SHARE = 0.05
#: ... or in at least this share, when such bands void that many pixels together (the sum of their counts: rules 10).
DROPOUT_MIN_SHARE = 0.005
#: ... and the dropout bands are flagged bad together when they are at most this share of the good bands (more: a
#: part of the sensor missing over part of the scene, such as PRISMA's VNIR beyond its footprint; those pixels stay
#: invalid, and only a band voiding as many pixels as stay valid is flagged, rule 8).
DROPOUT_BANDS_MAX_SHARE = 0.2


def band_voids(block: np.ndarray, valid: np.ndarray, *, nodata: float | None = None,
               good_band: np.ndarray | None = None) -> np.ndarray:
    """int64 (bands,): for each good band, the invalid pixels of a ``(bands, y, x)`` block (``valid``: bool (y, x))
    where that band is unusable (NaN, ±Inf, fill-sized, or nodata other than 0) though at least half the good bands
    are usable: the pixels the band voids, alone or with other dropout bands, inside the scene's footprint. Free on
    a block without invalid pixels."""
    counts = np.zeros(block.shape[0], np.int64)
    if valid.all():
        return counts
    good = np.flatnonzero(np.ones(block.shape[0], bool) if good_band is None else np.asarray(good_band, bool))
    if not len(good):
        return counts
    missing = None if nodata == 0 else nodata
    # a pixel missing in the first, middle and last good band is a footprint's fill (missing in all): skipped cheaply
    probes = ~usable_values(block[good[[0, len(good) // 2, -1]]], nodata=missing)
    candidates = ~valid & ~probes.all(axis=0)
    if not candidates.any():
        return counts
    unusable = ~usable_values(block[:, candidates][good], nodata=missing)  # (good bands, candidate pixels)
    inside = np.count_nonzero(unusable, axis=0) <= len(good) // 2
    if inside.any():
        counts[good] = np.count_nonzero(unusable[:, inside], axis=1)
    return counts


def voiding_bands(valid_pixels: int, voided: np.ndarray, filled: np.ndarray, good: np.ndarray) -> np.ndarray:
    """bool (bands,): the good bands to flag bad so that the others' pixels stay valid (validity rules 9).

    The dropout bands (``voided``: the sums of :func:`band_voids`, each at least :data:`DROPOUT_MIN_SHARE` of
    ``valid_pixels`` and one pixel, together at least :data:`DROPOUT_SHARE` of it) when they are few
    (:data:`DROPOUT_BANDS_MAX_SHARE`); else a band that
    voided at least as many pixels as stayed valid; with no valid pixel and no dropout band, the bands that hold no
    usable value at all (``filled``: bool, a band holds one somewhere). Never every band. ``good``: the bands
    considered.
    """
    good = np.asarray(good, bool)
    voided = np.asarray(voided)
    none = np.zeros_like(good)
    dropouts = good & (voided >= max(1.0, DROPOUT_MIN_SHARE * valid_pixels))
    if voided[dropouts].sum() < max(1.0, DROPOUT_SHARE * valid_pixels):
        dropouts = none
    if dropouts.any() and dropouts.sum() <= DROPOUT_BANDS_MAX_SHARE * good.sum():
        return dropouts if (good & ~dropouts).any() else none
    if valid_pixels:
        flagged = good & (voided >= valid_pixels)
        return flagged if (good & ~flagged).any() else none
    kept = good & np.asarray(filled, bool)
    return good & ~kept if kept.any() else none


#: Version of the rules that decide which pixels are valid (this module's and the file's own mask band),
#: recorded in each store: ``train`` ingests a scene again when its cached store was made under other rules.
#: 2 (2026-12-02): flat fill pixels, bands empty everywhere, and GDAL mask bands.
#: 3: a GDAL raster's band scale/offset applied on reading (the stored values change, not which pixels are valid).
#: 4: an ENVI header's reflectance scale factor applied on reading (likewise: int16 reflectance × 10000 reads ÷ 10000).
#: 5: an EnMAP product's METADATA.XML applied on reading its spectral image: gain/offset, and the fill value (L2A:
#: -32768) as nodata where the file has none (the values change, and fill pixels become invalid).
#: 6: a nodata of 0 marks a gap only where at least half the good bands hold it (clipped dark pixels are ground);
#: float values of magnitude ≥ FILL_MAGNITUDE (1e30) are fill, like ±Inf.
#: 7: rule 6 also where a band scale/offset is applied (a stored 0 read as NaN voided the pixel: 5 % of Salinas-A
#: clipped at 0 and scaled by 0.0001).
#: 8: a band whose NaN/nodata alone voids at least as many pixels as stay valid is flagged bad (a dropout over
#:    most of a swath voided the scene but for 3 %).
#: 9: dropout bands (NaN/nodata in ≥ 5 % as many pixels as are valid, where most bands hold values) are flagged bad
#:    together when they are few (≤ 20 % of the good bands): ten bands with 10 % scattered dropouts each voided 64 %
#:    of a scene in silence, and sixteen sparse bands all of it.
#: 10: and bands that each void at least 0.5 % as many pixels as are valid, when they void 5 % together (ten bands
#:    with 4 % scattered gaps each voided a third of a scene in silence).
#: 11: a fill pixel may hold other values in up to 5 % of the good bands (a swath's 0 collar held 32767 in three
#:    saturated bands and was trained on as ground).
VALIDITY_RULES = 11

#: Share of the valid pixels above which one value held in every band is reported as a likely fill.
FLAT_FILL_WARN_SHARE = 0.005


def likely_fill(spectra: np.ndarray) -> tuple[float, float] | None:
    """The value most pixels of a sample hold in every band, and their share, when above :data:`FLAT_FILL_WARN_SHARE`.

    With fewer than :data:`FLAT_FILL_MIN_BANDS` bands a flat pixel stays valid (it may be ground), so an
    undeclared fill value such as −9999 in every band gets through and takes the variance of the PCA;
    this finds it, to tell the user.

    Args:
        spectra: (n, B) valid pixels, B ≥ 2.

    Returns:
        ``(value, share of the n pixels)``, or None.
    """
    spectra = np.asarray(spectra)
    if spectra.ndim != 2 or spectra.shape[1] < 2 or not len(spectra):
        return None
    flat = spectra[(spectra == spectra[:, :1]).all(axis=1), 0]
    if flat.size <= FLAT_FILL_WARN_SHARE * len(spectra):
        return None
    values, counts = np.unique(flat, return_counts=True)
    top = int(np.argmax(counts))
    share = counts[top] / len(spectra)
    return (float(values[top]), float(share)) if share > FLAT_FILL_WARN_SHARE else None


#: A scene whose values vary this many times more or less than a model's training scenes is in other units or
#: scaling (a tile of one land cover varies 0.1–0.5 times as much as a whole training scene).
UNITS_SPREAD_LIMIT = 100.0


def units_differ(spread: float | None) -> bool:
    """A scene whose values vary ``spread`` times as much as the training scenes' (:func:`spread_against`; None: not
    measured) is in other units or scaling than they are: over :data:`UNITS_SPREAD_LIMIT` times more or less."""
    return spread is not None and not 1 / UNITS_SPREAD_LIMIT <= spread <= UNITS_SPREAD_LIMIT


#: Training scenes, each compared with the others as a whole: those of one archive in one unit vary within a
#: few times of each other, reflectance in percent against fractions 100 times, scaled digital numbers 10 000.
SCENES_SPREAD_LIMIT = 30.0


def spread_ratios(stds: Sequence[np.ndarray]) -> np.ndarray:
    """For each of several scenes' per-band std (each (B,)), the median over bands of its std divided by the
    median std of the *other* scenes: about 1 each for scenes in the same units, 0.01 or 100 for one in percent
    among fractions (both of a pair), 1e-4 or 1e4 for digital numbers. Bands without a finite positive std in
    every scene are not compared; a single scene has nothing to compare (1)."""
    table = np.asarray(stds, dtype=np.float64)  # (scenes, B)
    usable = np.all(np.isfinite(table) & (table > 0), axis=0)
    if not usable.any() or len(table) < 2:
        return np.ones(len(table))
    table = table[:, usable]
    return np.array([np.median(row / np.median(np.delete(table, i, axis=0), axis=0))
                     for i, row in enumerate(table)])


def spread_against(pixels: np.ndarray, std: np.ndarray) -> float:
    """How widely ``pixels`` vary against a model's training statistics: the median over bands of their std
    divided by the training std. About 1 on ground like the training scenes (0.1–0.5 on one land cover);
    1e-4 or 1e4 on the same ground in other units, such as reflectance against digital numbers scaled by
    10 000.

    Args:
        pixels: (n ≥ 2, B) valid pixels.
        std: (B,) the training std of each band (> 0).
    """
    spread = np.asarray(pixels, dtype=np.float64).std(axis=0)
    return float(np.median(spread / np.asarray(std, dtype=np.float64)))


#: A band the model reads is outlying in a scene when its values lie typically this many of the training scenes'
#: standard deviations from their mean (the median over pixels): a band of garbage, saturated or in other units, where
#: the other bands fit. Ground unlike the training scenes (snow, cloud) lies within ten or twenty.
OUTLYING_LIMIT = 100.0


def band_deviations(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float64 (B,): for each band, the median over ``pixels`` ((n, B) valid pixels) of their distance from the
    training ``mean`` in training standard deviations ``std`` (each (B,), std > 0)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    return np.median(np.abs(pixels - np.asarray(mean, np.float64)) / np.asarray(std, np.float64), axis=0)


#: Floating-point values this large are fill, like ±Inf: float fills such as ±1e30, netCDF's default 9.97e36
#: or ±3.4e38 (float32's largest), where no radiance, reflectance or digital number comes near.
FILL_MAGNITUDE = 1e30


def usable_values(values: np.ndarray, *, nodata: float | None = None) -> np.ndarray:
    """bool, shaped like ``values``: finite, under :data:`FILL_MAGNITUDE` in magnitude and not equal to ``nodata``."""
    if np.issubdtype(values.dtype, np.floating):  # NaN compares False: not usable
        with np.errstate(over="ignore"):  # float16 holds no 1e30: the bound casts to inf, and ±inf stays out
            usable = (values < FILL_MAGNITUDE) & (values > -FILL_MAGNITUDE)
    else:
        usable = np.ones(values.shape, dtype=bool)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        usable &= values != nodata
    return usable


@dataclass(frozen=True)
class BandStats:
    """Per-band summary of valid pixels; every field is float64 of shape (bands,)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, n_bands: int) -> BandStats:
        """The summary of no pixels (the identity of :meth:`merge`)."""
        zeros = np.zeros(n_bands)
        return cls(zeros, zeros.copy(), zeros.copy(), np.full(n_bands, np.inf),
                   np.full(n_bands, -np.inf))

    @classmethod
    def of_block(cls, block: np.ndarray, valid: np.ndarray) -> BandStats:
        """Summarise the valid pixels of one block.

        Args:
            block: values, shape (bands, y, x).
            valid: bool (y, x) from :func:`valid_pixel_mask`.
        """
        n_bands = block.shape[0]
        n_valid = int(valid.sum())
        if n_valid == 0:
            return cls.empty(n_bands)
        pixels = block.reshape(n_bands, -1)
        if n_valid != valid.size:
            pixels = pixels[:, valid.reshape(-1)]
        # Sums of values shifted by one valid pixel per band avoid the cancellation of the
        # sum-of-squares formula (and are exact in float64 for 16-bit data). Bands go in small
        # groups so the float64 temporaries stay in cache.
        total = np.empty(n_bands)
        squares = np.empty(n_bands)
        with np.errstate(invalid="ignore", over="ignore"):  # a band flagged bad may hold ±Inf: its sums are NaN
            for start in range(0, n_bands, _BAND_GROUP):
                group = slice(start, start + _BAND_GROUP)
                shifted = pixels[group].astype(np.float64)
                shifted -= shifted[:, :1].copy()
                total[group] = shifted.sum(axis=1)
                squares[group] = np.einsum("ij,ij->i", shifted, shifted)
            shift = pixels[:, 0].astype(np.float64)
            mean = shift + total / n_valid
            m2 = np.maximum(squares - total**2 / n_valid, 0.0)
        return cls(np.full(n_bands, float(n_valid)), mean, m2,
                   pixels.min(axis=1).astype(np.float64), pixels.max(axis=1).astype(np.float64))

    def merge(self, other: BandStats) -> BandStats:
        """Combine two disjoint summaries (Chan et al. 1979)."""
        count = self.count + other.count
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = other.mean - self.mean
            weight = np.where(count > 0, other.count / np.where(count > 0, count, 1), 0.0)
            mean = self.mean + delta * weight
            m2 = self.m2 + other.m2 + delta**2 * self.count * weight
        return BandStats(count, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per band (ddof = 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.where(self.count > 0, self.m2 / np.where(self.count > 0, self.count, 1), np.nan))

    def pack(self) -> np.ndarray:
        """float64 (5, bands) in :data:`PACKED_FIELDS` order, for storage."""
        return np.stack([self.count, self.mean, self.m2, self.min, self.max])

    @classmethod
    def unpack(cls, packed: np.ndarray) -> BandStats:
        """Inverse of :meth:`pack`."""
        return cls(*(np.asarray(row, dtype=np.float64) for row in packed))

    @classmethod
    def merge_packed(cls, packed: np.ndarray) -> BandStats:
        """Merge packed block summaries ``(..., 5, bands)`` in row-major block order."""
        total = cls.empty(packed.shape[-1])
        for block in packed.reshape(-1, *packed.shape[-2:]):
            total = total.merge(cls.unpack(block))
        return total

    def to_attrs(self) -> dict[str, list[float | None]]:
        """JSON-ready per-band ``mean``, ``std``, ``min``, ``max`` and valid ``count``."""
        def clean(values: np.ndarray) -> list[float | None]:
            return [float(v) if np.isfinite(v) else None for v in values]
        mean = np.where(self.count > 0, self.mean, np.nan)  # no pixels: no mean (not 0)
        return {"count": [int(c) for c in self.count], "mean": clean(mean), "std": clean(self.std),
                "min": clean(self.min), "max": clean(self.max)}
