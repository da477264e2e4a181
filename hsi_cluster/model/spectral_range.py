"""Where a model's training spectra lie, seen through its projection: does a new scene fall among them?

A model labels what it was trained on. A scene from another acquisition (sun angle, atmosphere,
calibration) or of ground it never saw lies elsewhere in the projected space, and its labels are an
extrapolation: on Indian Pines, two thirds of the pixels of a scene made 5 % brighter lie farther from the
training spectra than 99.9 % of the training pixels (the scene's spectra sit far from zero in standardised
units, so a small gain is a large move), a change the units warning (100×) never sees. The check,
label-free and the same on every scene:

1. At training, :data:`N_PROTOTYPES` k-means centres of the projected spectra of one half of the
   pixels the projection was fitted on stand for the training spectra (every kind of ground the
   sample holds, whatever its share). A model trained with the radiometric augmentation
   (``brightness``, ``spectral_tilt``) sees its sample under gains drawn alike, so the scenes it was
   trained to take for the same ground lie inside.
2. The radius is the :data:`RANGE_QUANTILE` quantile of the other half's distance to the nearest
   centre: a training pixel lies farther with probability 0.1 %.
3. At predict, a pixel farther than the radius from every centre lies outside; when more than
   :data:`OUTSIDE_SHARE_LIMIT` of a scene's checked pixels do, it is warned of.
4. The same pixels are tried under every gain of :data:`GAINS` and every tilt of :data:`TILTS` on their
   raw values (the raw spectrum times ``g (1 + τ s_b)``, ``s_b`` running from −1 at the first band to 1 at
   the last: the radiometric change the training augmentation's ``brightness`` and ``spectral_tilt``
   mimic): the pair at which their mean distance to the range (capped at :data:`DISTANCE_CAP` radii) is
   smallest is the radiometry at which the scene looks like the training scenes. A scene that fits clearly
   better at another pair than (1, 0) is another acquisition of the kind of ground the model knows: warned
   of, and ``--match-brightness`` labels it at that gain and tilt.

Measured (docs/accuracy.md): the unseen halves of the four development scenes have 0.1–2.5 % of their
pixels outside, the same halves twice as bright 93–100 %; a scene darker than its training scenes can
still fall among them where the training held dark ground (water), but its best gain finds it (Samson
at half its brightness: none outside, best gain 1.9). A ±10 % tilt across Salinas-A's bands keeps 97.5 % of
its pixels inside while it costs 0.27 ACC; its best tilt is the inverse one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

from hsi_cluster.data.augment import band_positions

#: k-means centres that stand for the training spectra.
N_PROTOTYPES = 32
#: The quantile of the training pixels' distance to the nearest centre that sets the radius.
RANGE_QUANTILE = 0.999
#: The share of a scene's valid pixels outside the training range beyond which predict warns.
OUTSIDE_SHARE_LIMIT = 0.5
#: Pixels sampled at training (half fit the centres, half set the radius).
RANGE_SAMPLES = 40_000
#: The smallest radius, relative to the centres' root-mean-square norm (float32 rounding is ~1e-7 of it).
RADIUS_FLOOR = 1e-5
#: Gains tried on a scene's raw values (0.5–2×, 5 % apart, and one step beyond each end) to find the one at which
#: they best fit the range; a scene that fits best at one of the two outer gains lies beyond what is corrected.
GAINS = 2.0 ** (np.arange(-15, 16) / 14)
#: Tilts tried with each gain: the raw spectrum times ``1 + τ s_b``, ``s_b`` = 2 b / (B − 1) − 1 (−1 at the first
#: band, 1 at the last), τ from −20 % to 20 % in steps of 5 %.
TILTS = np.linspace(-0.2, 0.2, 9)
#: Distances are counted up to this many radii when fitting the gain (a cloud or unseen ground weighs no more).
DISTANCE_CAP = 2.0
#: Every this many checked pixels also try the gains.
GAIN_SUBSAMPLE = 8
#: A scene whose best gain is another than 1 (one step of GAINS, 5 %, or more) or whose best tilt is another than
#: 0, and that fits the range at least GAIN_FIT_RATIO better there (mean capped distance, relative) is taken for
#: another acquisition of the kind of ground the model knows. Unseen ground of the same flight fits best at (1, 0)
#: or one step off, and no better than 0.97 of it. A tilt is taken only where it fits GAIN_FIT_RATIO better than the
#: best gain alone (haze, which no tilt undoes, fits a tilt somewhat better, and labelled there loses ACC).
GAIN_LIMIT = 1.04
GAIN_FIT_RATIO = 0.75
#: Fixed-point scale of the summed capped distances kept among a tile's integer statistics.
_FIXED = 1000


@dataclass(frozen=True)
class SpectralRange:
    """The training spectra's region of the projected space: ``prototypes`` (P, C) float32 centres and a
    ``radius`` (projected units) that all but 0.1 % of the training pixels lie within of their nearest centre."""

    prototypes: np.ndarray
    radius: float

    @classmethod
    def fit(cls, projected: np.ndarray, *, seed: int = 0) -> SpectralRange:
        """Fit on (N, C) projected training spectra, N ≥ 2 (one random half fits the centres, the other the
        radius; at most :data:`N_PROTOTYPES` centres, fewer when a half has fewer distinct pixels)."""
        values = np.asarray(projected, dtype=np.float64)
        if values.ndim != 2 or len(values) < 2:
            raise ValueError(f"need (N ≥ 2, C) projected spectra, got shape {values.shape}")
        order = np.random.default_rng(seed).permutation(len(values))
        fitting, held_out = values[order[: len(values) // 2]], values[order[len(values) // 2:]]
        n_centres = min(N_PROTOTYPES, len(np.unique(fitting, axis=0)))
        centres = KMeans(n_centres, n_init=3, random_state=seed).fit(fitting).cluster_centers_
        prototypes = centres.astype(np.float32)
        radius = float(np.quantile(_nearest(held_out, prototypes), RANGE_QUANTILE))
        # a sample of a few repeated spectra gives radius 0, which float32 rounding at predict would cross
        floor = RADIUS_FLOOR * (1.0 + float(np.sqrt((centres ** 2).sum(1).mean())))
        return cls(prototypes=prototypes, radius=max(radius, floor))

    def outside(self, projected: np.ndarray) -> np.ndarray:
        """bool (N,): the (N, C) projected pixels that lie farther than the radius from every centre."""
        return _nearest(np.asarray(projected, dtype=np.float64), self.prototypes) > self.radius

    def counts(self, projected: np.ndarray, origin: np.ndarray, tried: np.ndarray | None = None,
               tilted: np.ndarray | None = None) -> np.ndarray:
        """int64 (3 + len(TILTS) · len(GAINS),): of (N, C) projected pixels, how many were checked and lie outside,
        how many tried the gains and tilts (bool (N,) ``tried``; default every :data:`GAIN_SUBSAMPLE`-th), and for
        each tilt of :data:`TILTS` and gain of :data:`GAINS` (tilt-major) the sum of their distance to the range in
        radii, capped at :data:`DISTANCE_CAP`, in thousandths. ``origin`` (C,) is the projection of a spectrum the
        change leaves alone (zero, but for bands read as the training mean); ``tilted`` (n, C), one row per pixel
        tried, is the projection's linear part applied to its raw spectrum times ``s_b`` (zero where bands read as the
        mean; None: no tilt tried, its rows of the curve repeat tilt 0). A gain g and tilt τ on the raw values move
        a projected pixel p to g (p − origin + τ tilted) + origin. Summed over tiles, :meth:`RangeFit.from_counts`
        reads them."""
        values = np.asarray(projected, dtype=np.float64)
        outside = int((_nearest(values, self.prototypes) > self.radius).sum())
        tried = values[::GAIN_SUBSAMPLE] if tried is None else values[np.asarray(tried, bool)]
        offset = np.asarray(origin, dtype=np.float64)
        direction = np.zeros_like(tried) if tilted is None else np.asarray(tilted, dtype=np.float64)
        centres = self.prototypes.astype(np.float64)
        to_centres = offset[None] - centres  # (P, C): origin − centre
        squared_to_centres = (to_centres ** 2).sum(1)  # (P,)
        curve = np.empty((len(TILTS), len(GAINS)))
        doubled = (2 * GAINS).astype(np.float32)[:, None, None]
        for t, tilt in enumerate(TILTS):  # |g b + origin − c|² = g² |b|² + 2 g b·(origin − c) + |origin − c|²
            moved = tried - offset + tilt * direction  # (n, C): b, the pixel's part the change scales
            cross = (moved @ to_centres.T).astype(np.float32)  # (n, P)
            nearest = (doubled * cross[None] + squared_to_centres.astype(np.float32)).min(2)  # (G, n): |b|² aside
            squared = GAINS[:, None] ** 2 * (moved ** 2).sum(1)[None] + nearest
            distance = np.sqrt(np.maximum(squared, 0.0))  # (G, n)
            curve[t] = np.minimum(distance / self.radius, DISTANCE_CAP).sum(1)
        return np.array([len(values), outside, len(tried), *np.round(curve.ravel() * _FIXED)], np.int64)

    def to_record(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps (in its ``spectral`` mapping)."""
        return {"range_prototypes": torch.from_numpy(self.prototypes.copy()),
                "range_radius": torch.tensor(self.radius, dtype=torch.float64)}

    @classmethod
    def from_record(cls, spectral: dict[str, object]) -> SpectralRange | None:
        """The range a checkpoint's ``spectral`` mapping keeps; None for checkpoints trained before it was kept."""
        prototypes, radius = spectral.get("range_prototypes"), spectral.get("range_radius")
        if not isinstance(prototypes, torch.Tensor) or not isinstance(radius, torch.Tensor):
            return None
        return cls(prototypes=prototypes.numpy().astype(np.float32), radius=float(radius))


@dataclass(frozen=True)
class RangeFit:
    """How a scene's checked pixels sit against a model's training range.

    Attributes:
        outside_share: the share of them that lie outside it.
        gain: the gain of :data:`GAINS` on the scene's raw values at which they fit it best.
        fit_ratio: their mean capped distance to it at that gain and tilt over that as delivered (≤ 1; 1: no
            better).
        tilt: the tilt of :data:`TILTS` across the bands that goes with that gain (0 unless it fits
            :data:`GAIN_FIT_RATIO` better than the best gain alone).
    """

    outside_share: float
    gain: float
    fit_ratio: float
    tilt: float = 0.0

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> RangeFit | None:
        """From the sum of tiles' :meth:`SpectralRange.counts`; None when no pixel was checked."""
        checked, outside, tried = (int(v) for v in counts[:3])
        if checked == 0 or tried == 0:
            return None
        curve = np.asarray(counts[3:], dtype=np.float64).reshape(len(TILTS), len(GAINS))
        unit = (int(np.argmin(np.abs(TILTS))), int(np.argmin(np.abs(np.log(GAINS)))))
        from_one = np.abs(np.arange(len(GAINS)) - unit[1])  # among equal fits, the gain closest to 1
        best = (unit[0], int(np.lexsort((from_one, curve[unit[0]]))[0]))
        tilt_index, gain_index = np.unravel_index(int(np.argmin(curve)), curve.shape)
        if curve[tilt_index, gain_index] < GAIN_FIT_RATIO * curve[best]:  # a tilt must earn its place, as a gain does
            best = (int(tilt_index), int(gain_index))
        ratio = float(curve[best] / curve[unit]) if curve[unit] > 0 else 1.0
        return cls(outside_share=outside / checked, gain=float(GAINS[best[1]]), fit_ratio=ratio,
                   tilt=round(float(TILTS[best[0]]), 6))

    @property
    def whole_scene(self) -> bool:
        """The whole scene is at another brightness (or tilt), within the gains corrected or beyond: its bands are
        not to be set aside one by one as outlying."""
        return self.another_acquisition or self.beyond_range

    @property
    def another_acquisition(self) -> bool:
        """The scene fits the training spectra clearly better at a gain over :data:`GAIN_LIMIT` from 1 or a tilt
        other than 0, within the gains corrected (0.5–2×)."""
        changed = abs(math.log(self.gain)) > math.log(GAIN_LIMIT) or abs(self.tilt) > 1e-9
        return changed and self.fit_ratio < GAIN_FIT_RATIO and not self.beyond_range

    @property
    def beyond_range(self) -> bool:
        """The scene fits best at an outer gain of :data:`GAINS`, clearly better or with most pixels outside: it is
        over 2× as bright as the training scenes, or under half as bright (other units or scaling, or another
        processing)."""
        at_edge = self.gain <= GAINS[0] * 1.0001 or self.gain >= GAINS[-1] / 1.0001
        return at_edge and (self.fit_ratio < GAIN_FIT_RATIO or self.outside_share > OUTSIDE_SHARE_LIMIT)


def radiometric_factors(gain: float, tilt: float, n_bands: int) -> np.ndarray:
    """float32 (B,): the factor each band's raw values take under ``gain`` and ``tilt`` (``g (1 + τ s_b)``)."""
    return (gain * (1.0 + tilt * band_positions(n_bands))).astype(np.float32)


def _nearest(values: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """(N,) Euclidean distance of each of (N, C) ``values`` to the nearest of (P, C) ``prototypes``."""
    centres = prototypes.astype(np.float64)
    squared = (values ** 2).sum(1)[:, None] - 2 * values @ centres.T + (centres ** 2).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(1), 0.0))
