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

Measured (docs/accuracy.md): the unseen halves of the four development scenes have 0.1–2.5 % of their
pixels outside, the same halves twice as bright 93–100 %. A scene darker than its training scenes can
still fall among them where the training held dark ground (water), so the check misses some dimmed
scenes: it speaks when it is sure, and is silent otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

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


def _nearest(values: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """(N,) Euclidean distance of each of (N, C) ``values`` to the nearest of (P, C) ``prototypes``."""
    centres = prototypes.astype(np.float64)
    squared = (values ** 2).sum(1)[:, None] - 2 * values @ centres.T + (centres ** 2).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(1), 0.0))
