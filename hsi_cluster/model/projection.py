"""Frozen spectral projection: per-band standardisation followed by PCA, as one 1 × 1 convolution.

SSCC (Cai et al., arXiv:2111.07945) standardises every band and reduces the spectrum to 8 principal
components before cutting patches. Both steps are linear, so they fold into a single 1 × 1
convolution

    y = components @ ((x - mean) / std) = W x + b,   W = components / std,   b = -W @ mean,

which runs on the device next to the backbone and works on tiles of any size. ``W`` and ``b`` are
buffers: saved in ``state_dict`` and moved by ``.to(device)``, never trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsi_cluster.model.band_screen import MIN_BANDS_KEPT, BandScreen, screen_bands
from hsi_cluster.stats import BandStats

ArrayLike = Tensor | np.ndarray


def _check_std(std: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(std) | (std <= 0))
    if bad.size:
        raise ValueError(
            f"per-band std must be finite and > 0, but bands {bad[:10].tolist()}"
            f"{' ...' if bad.size > 10 else ''} have std {std[bad[:10]].tolist()}: drop these constant or "
            "empty bands before fitting, or set their std to 1")


def fit_pca(samples: np.ndarray, n_components: int | float, mean: ArrayLike, std: ArrayLike) -> np.ndarray:
    """Principal axes of standardised spectra.

    The samples are standardised with the given per-band ``mean`` and ``std`` (typically the scene's
    band statistics), centred on their own mean, and the eigenvectors of their covariance are
    returned, sorted by decreasing variance. Each component's sign is fixed so that its entry of
    largest magnitude is positive, which makes the result deterministic.

    Args:
        samples: spectra, shape (n, B), any real dtype; n >= 2.
        n_components: number of components C to keep, 1 <= C <= B; or a fraction 0 < f < 1 of the
            standardised variance: C is then the fewest components whose variance reaches f.
        mean: per-band mean, shape (B,), in the units of ``samples``.
        std: per-band standard deviation, shape (B,), all > 0.

    Returns:
        float32 (C, B), orthonormal rows (in standardised band space).

    Raises:
        ValueError: on inconsistent shapes, non-finite samples, std <= 0 or C > B.
    """
    samples = np.asarray(samples)
    if samples.ndim != 2:
        raise ValueError(f"samples must be a 2-D (n, bands) array, got shape {samples.shape}")
    n_samples, n_bands = samples.shape
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.shape != (n_bands,) or std.shape != (n_bands,):
        raise ValueError(f"mean and std must have one value per band ({n_bands}), "
                         f"got shapes {mean.shape} and {std.shape}")
    fraction = float(n_components) if isinstance(n_components, float) else None
    if fraction is not None and not 0 < fraction < 1:
        raise ValueError(f"a variance fraction n_components={n_components} must lie in (0, 1); "
                         "pass an int for a count")
    if fraction is None and not 1 <= n_components <= n_bands:
        raise ValueError(f"n_components={n_components} must be between 1 and the number of bands "
                         f"({n_bands}); choose at most {n_bands} components")
    if n_samples < 2:
        raise ValueError(f"need at least 2 samples to fit PCA, got {n_samples}: sample more pixels")
    _check_std(std)
    standardised = (samples.astype(np.float64) - mean) / std
    if not np.isfinite(standardised).all():
        raise ValueError("samples contain NaN or Inf values: drop nodata pixels before fitting PCA")
    centred = standardised - standardised.mean(axis=0)
    covariance = centred.T @ centred / (n_samples - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    if fraction is not None:
        explained = np.cumsum(np.clip(eigenvalues[order], 0, None))
        n_components = int(np.searchsorted(explained, fraction * explained[-1]) + 1) if explained[-1] > 0 else 1
        n_components = min(n_components, n_bands)
    order = order[:n_components]
    components = eigenvectors[:, order].T  # (C, B)
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(n_components), largest])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    return components.astype(np.float32)


def fit_mnf(samples: np.ndarray, noise_differences: np.ndarray, n_components: int, mean: ArrayLike,
            std: ArrayLike, subspace: np.ndarray | None = None) -> np.ndarray:
    """Minimum-noise-fraction axes of standardised spectra (ENVI's MNF; Green et al. 1988).

    The noise covariance is half the covariance of ``noise_differences`` (each sampled pixel minus a
    neighbour that differs from it by noise alone, see
    :func:`~hsi_cluster.data.spectral.sample_spectra_and_noise`). The components whiten the noise,
    then take the principal axes of the whitened spectra: they are sorted by decreasing
    signal-to-noise ratio instead of variance, so a band set where the classes differ little but
    cleanly is not outranked by a noisy one. Scores come out in noise standard deviations.

    With ``subspace``, both covariances are first restricted to its span. Whitening ranks a direction
    of tiny variance first when its noise estimate is tinier still; where the bands outnumber the
    columns (or rows), a faint stripe pattern is such a direction. Inside the leading principal axes it
    cannot be.

    Args:
        samples: spectra (n, B), finite; n >= 2.
        noise_differences: (m, B) differences in the units of ``samples``; rows with a non-finite
            value are left out, and at least B + 1 must remain.
        n_components: components C to keep, 1 <= C <= B.
        mean, std: per-band standardisation (B,), std > 0.

    Returns:
        float32 (C, B), acting on standardised bands; each row's entry of largest magnitude positive.

    Raises:
        ValueError: on inconsistent shapes, non-finite samples or too few usable differences.
    """
    samples = np.asarray(samples, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    n_bands = samples.shape[1] if samples.ndim == 2 else -1
    differences = np.asarray(noise_differences, dtype=np.float64)
    if n_bands < 1 or mean.shape != (n_bands,) or std.shape != (n_bands,) or differences.ndim != 2 \
            or differences.shape[1] != n_bands:
        raise ValueError(f"samples (n, B), noise differences (m, B) and per-band mean and std (B,) must agree, got "
                         f"shapes {samples.shape}, {differences.shape}, {mean.shape} and {std.shape}")
    basis = np.eye(n_bands) if subspace is None else np.asarray(subspace, dtype=np.float64)  # (D, B)
    if basis.ndim != 2 or basis.shape[1] != n_bands:
        raise ValueError(f"the subspace must be (D, {n_bands}) rows over the bands, got shape {basis.shape}")
    n_dims = basis.shape[0]
    if not 1 <= n_components <= n_dims:
        raise ValueError(f"n_components={n_components} must be between 1 and the number of bands or subspace "
                         f"dimensions ({n_dims})")
    _check_std(std)
    standardised = (samples - mean) / std
    if len(standardised) < 2 or not np.isfinite(standardised).all():
        raise ValueError("need at least 2 finite samples to fit the MNF projection")
    differences = differences[np.isfinite(differences).all(axis=1)] / std @ basis.T  # (m, D)
    if len(differences) <= n_dims:
        raise ValueError(f"only {len(differences)} neighbour differences are valid, too few to estimate the "
                         f"noise of {n_dims} dimensions: the scene's valid pixels are too scattered for projection "
                         "'mnf'; use projection 'pca'")
    noise = differences.T @ differences / len(differences) / 2
    noise += 1e-6 * max(np.trace(noise) / n_dims, 1e-12) * np.eye(n_dims)  # a direction without noise stays finite
    noise_variance, noise_axes = np.linalg.eigh(noise)
    whiten = basis.T @ (noise_axes / np.sqrt(noise_variance))  # (B, D): noise covariance → identity
    whitened = (standardised - standardised.mean(axis=0)) @ whiten
    ratios, axes = np.linalg.eigh(whitened.T @ whitened / (len(whitened) - 1))
    components = (whiten @ axes[:, np.argsort(ratios)[::-1][:n_components]]).T  # (C, B)
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(n_components), largest])
    return (components * np.where(signs == 0, 1.0, signs)[:, None]).astype(np.float32)


@dataclass(frozen=True)
class SpectralFit:
    """Per-band ``mean``/``std`` (B,) float64, PCA or MNF ``components`` (C, B) float32 and the band ``screen``.

    The columns of ``components`` are 0 for the bands the screen left out, so the projection never
    reads them (see :class:`SpectralProjection`).
    """

    mean: np.ndarray
    std: np.ndarray
    components: np.ndarray
    screen: BandScreen
    sample: np.ndarray | None = field(default=None, repr=False)  # (n, B): the spectra it was fitted on, when kept


def fit_spectral(stats: BandStats, spectra: np.ndarray, n_components: int | float, *,
                 good_band: np.ndarray | None = None) -> SpectralFit:
    """The spectral projection's parameters: band screen and standardisation from ``stats``, PCA of ``spectra``.

    Bands flagged bad (``good_band`` False), empty or constant, and bands dominated by noise are left
    out (:func:`~hsi_cluster.model.band_screen.screen_bands`); they get std 1 and mean 0 where they
    have no usable statistics, and a zero column in the components.

    Args:
        stats: per-band statistics over all valid pixels (B bands).
        spectra: (n, B) a random sample of valid pixels.
        n_components: as in :func:`fit_pca`, over the bands used.
        good_band: optional bool (B,) from the scenes' metadata.

    Raises:
        ValueError: no band is usable, or more components are asked for than bands are used.
    """
    std = stats.std
    mean = stats.mean
    screen = screen_bands(mean, std, spectra, good_band=good_band, keep_at_least=max(
        MIN_BANDS_KEPT, n_components if isinstance(n_components, int) else 1))
    used = screen.used
    if not used.any():
        raise ValueError("no band is usable: every band is flagged bad, empty or constant over the valid pixels")
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    if isinstance(n_components, int) and n_components > used.sum():
        raise ValueError(f"n_components={n_components} but only {int(used.sum())} bands are usable "
                         f"({screen.summary()}); choose at most {int(used.sum())} components")
    kept = fit_pca(np.asarray(spectra)[:, used], n_components, mean[used], std[used])
    components = np.zeros((kept.shape[0], std.size), np.float32)
    components[:, used] = kept
    return SpectralFit(mean=mean, std=std, components=components, screen=screen)


#: The MNF projection is fitted within the leading ``MNF_SUBSPACE`` × C principal axes (C: its components).
MNF_SUBSPACE = 4


def fit_spectral_mnf(pca: SpectralFit, spectra: np.ndarray, noise_differences: np.ndarray) -> SpectralFit:
    """``pca`` (from :func:`fit_spectral`) with its C components replaced by as many MNF axes (:func:`fit_mnf`).

    Same standardisation and band screen; ``spectra`` (n, B) and ``noise_differences`` (m, B) are
    read on the bands the screen keeps. The MNF axes are sought within the leading
    :data:`MNF_SUBSPACE` × C principal axes of ``spectra``, so they stay in the directions that carry
    the scene's variance.
    """
    used = pca.screen.used
    samples = np.asarray(spectra)[:, used]
    n_components = pca.components.shape[0]
    subspace = fit_pca(samples, min(MNF_SUBSPACE * n_components, int(used.sum())), pca.mean[used], pca.std[used])
    kept = fit_mnf(samples, np.asarray(noise_differences)[:, used], n_components, pca.mean[used], pca.std[used],
                   subspace)
    components = np.zeros_like(pca.components)
    components[:, used] = kept
    return dataclasses.replace(pca, components=components)


class SpectralProjection(nn.Module):
    """Standardise each band, then project onto principal components, per pixel.

    Args:
        mean: per-band mean, shape (B,), in input units.
        std: per-band standard deviation, shape (B,), all > 0.
        components: PCA components, shape (C, B), acting on standardised bands
            (e.g. from :func:`fit_pca`).

    Shapes:
        input (N, B, H, W) raw band values (any real dtype) → output (N, C, H, W) float32, any H, W.

    The folded weight is computed in float64 and stored as float32 buffers ``weight`` (C, B, 1, 1)
    and ``bias`` (C,). The forward always runs in float32 (autocast is disabled inside), since raw
    radiances and large per-band offsets lose too much precision in half precision.

    Bands whose weight column is all zero (left out by the band screen) do not count, whatever they
    hold: NaN or Inf there is read as 0 (the input is copied only when there is any).
    """

    weight: Tensor
    bias: Tensor

    def __init__(self, mean: ArrayLike, std: ArrayLike, components: ArrayLike) -> None:
        super().__init__()
        mean_np = _as_float64(mean).reshape(-1)
        std_np = _as_float64(std).reshape(-1)
        components_np = _as_float64(components)
        if components_np.ndim != 2:
            raise ValueError(f"components must be 2-D (C, B), got shape {components_np.shape}")
        n_bands = components_np.shape[1]
        if mean_np.shape != (n_bands,) or std_np.shape != (n_bands,):
            raise ValueError(f"mean and std must have one value per band of components ({n_bands}), "
                             f"got shapes {mean_np.shape} and {std_np.shape}")
        if not np.isfinite(mean_np).all() or not np.isfinite(components_np).all():
            raise ValueError("mean and components must be finite: recompute the band statistics / PCA "
                             "without nodata pixels")
        _check_std(std_np)
        folded = components_np / std_np  # (C, B)
        bias = -folded @ mean_np  # (C,)
        self.register_buffer("weight", torch.from_numpy(folded[:, :, None, None].astype(np.float32)))
        self.register_buffer("bias", torch.from_numpy(bias.astype(np.float32)))
        self._left_out = self.left_out_bands()

    @classmethod
    def placeholder(cls, *, in_bands: int, out_channels: int) -> SpectralProjection:
        """A zero projection of the right shape, to be filled by ``load_state_dict``."""
        return cls(np.zeros(in_bands), np.ones(in_bands), np.zeros((out_channels, in_bands)))

    @property
    def in_bands(self) -> int:
        """Number of input bands B."""
        return int(self.weight.shape[1])

    @property
    def out_channels(self) -> int:
        """Number of output channels C (principal components)."""
        return int(self.weight.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """Project raw spectra.

        Args:
            x: (N, B, H, W) raw band values.

        Returns:
            (N, C, H, W) float32 principal-component scores (standardised units).
        """
        if x.ndim != 4 or x.shape[1] != self.in_bands:
            raise ValueError(f"expected input of shape (N, {self.in_bands}, H, W), got {tuple(x.shape)}")
        if self._left_out is not None and x.is_floating_point():
            left_out = self._left_out.to(x.device)
            if not torch.isfinite(x.index_select(1, left_out)).all():
                x = x.index_fill(1, left_out, 0)  # zero weight × NaN would still be NaN
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.conv2d(x.to(self.weight.dtype), self.weight, self.bias)

    def left_out_bands(self) -> Tensor | None:
        """Indices (on the CPU) of the bands the projection does not read (an all-zero weight column),
        or None when it reads all B."""
        read = self.weight[:, :, 0, 0].ne(0).any(dim=0)
        return None if bool(read.all()) else torch.nonzero(~read).squeeze(1).cpu()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._left_out = self.left_out_bands()  # the loaded weights decide, once, not every forward

    def extra_repr(self) -> str:
        return f"in_bands={self.in_bands}, out_channels={self.out_channels}"

    def pixel_map(self) -> PixelProjection:
        """This projection as a numpy map of pixels (for the patch sampler, on the CPU)."""
        left_out = self.left_out_bands()
        return PixelProjection(self.weight[:, :, 0, 0].detach().cpu().numpy().copy(),
                               self.bias.detach().cpu().numpy().copy(), None if left_out is None else left_out.numpy())


@dataclass(frozen=True)
class PixelProjection:
    """:class:`SpectralProjection` as a plain numpy map of pixels: (n, B) raw spectra → (n, C) float32.

    The projection acts on each pixel alone, so cutting patches from a projected block gives the
    projected patches: the sampler projects each block's pixels once as it reads it, and then cuts
    and moves C channels per pixel instead of B. Picklable, for DataLoader workers.

    Attributes:
        weight: (C, B) float32, the folded ``components / std`` (zero columns for bands left out).
        bias: (C,) float32.
        left_out: int indices of the bands left out, or None: their values are never used (NaN included).
    """

    weight: np.ndarray
    bias: np.ndarray
    left_out: np.ndarray | None = None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim != 2 or pixels.shape[1] != self.weight.shape[1]:
            raise ValueError(f"expected pixels of shape (n, {self.weight.shape[1]}), got {pixels.shape}")
        if (self.left_out is not None and np.issubdtype(pixels.dtype, np.floating)
                and not np.isfinite(pixels[:, self.left_out]).all()):
            pixels = pixels.copy(order="K")
            pixels[:, self.left_out] = 0  # zero weight × NaN would still be NaN
        # torch's matmul, not numpy's: numpy's BLAS threads would spin beside the training step's threads.
        # astype keeps the layout, so a transposed (B, n) block goes to the BLAS call without a copy.
        spectra = torch.from_numpy(pixels.astype(np.float32, copy=False))
        return torch.addmm(torch.from_numpy(self.bias)[None, :], spectra, torch.from_numpy(self.weight).T).numpy()


def _as_float64(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)
