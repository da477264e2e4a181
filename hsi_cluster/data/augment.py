"""SSCC's spectral-spatial augmentation pool, batched on the device.

The pool of SSCC (Cai et al., arXiv:2111.07945, and the authors' code): random resized crop back to
the patch size (area scale 0.08–1, aspect 3/4–4/3), random horizontal flip, then exactly one of
Gaussian blur (3 × 3, sigma ~ U(0.1, 2), applied with p = 0.5), pixel masking (each spatial position
zeroed in all channels with p = 0.5) or band masking (each channel zeroed with p = 0.5). Two
independent draws of the pool make the two views of a patch.

Here every sample of a batch gets its own draw without per-sample Python loops: the crop, flips and
rotations are one per-sample affine resampling (``F.affine_grid`` + ``F.grid_sample``), the blur is
one grouped convolution with a per-sample kernel, and the "one of" choice is a per-sample integer
applied through masks. The blur is spatial (the authors' code blurs over the wrong axes).

The augmentation runs AFTER the spectral projection, on projected patches (N, C, p, p) (C = 8 PCA
components in standardised units): masking zeroes a channel or pixel at the scene mean, and the
projection is not repeated per view. An optional radiometric change (not in the paper) mimics another
acquisition of the same ground: a brightness factor and a linear spectral tilt of the *raw* spectrum,
carried into the projected space exactly for the brightness and in the span of the components for
the tilt (:class:`RadiometricBasis`). Random numbers come from an optional ``torch.Generator`` on
the same device as the patches, so results are reproducible given its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Names of the operations the "exactly one of" step can choose from.
ONE_OF_OPS = ("blur", "pixel_mask", "band_mask")


def band_positions(n_bands: int) -> np.ndarray:
    """float64 (B,): ``s_b`` = 2 b / (B − 1) − 1, from −1 at the first band to 1 at the last (0 for one band): the
    direction of ``spectral_tilt``, which multiplies the raw spectrum by ``1 + τ s_b``."""
    return np.linspace(-1.0, 1.0, n_bands) if n_bands > 1 else np.zeros(1)


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Parameters of the augmentation pool; defaults are the paper's.

    Attributes:
        crop_scale: range of the crop area as a fraction of the patch area, 0 < lo <= hi <= 1.
        crop_ratio: range of the crop aspect ratio width / height (sampled log-uniformly), 0 < lo <= hi.
        hflip_prob: probability of a horizontal (left-right) flip.
        vflip_prob: probability of a vertical (up-down) flip (0: off, as in the paper).
        rot90: rotate by a uniformly drawn multiple of 90° (off in the paper; needs square patches).
        one_of: operations of the "exactly one of" step, each chosen with equal probability per
            sample; a subset of :data:`ONE_OF_OPS`; empty to skip the step.
        blur_prob: probability that blur is applied when chosen.
        blur_sigma: range of the Gaussian sigma, in pixels, sampled uniformly.
        blur_kernel_size: odd side of the blur kernel, in pixels.
        pixel_mask_prob: when pixel masking is chosen, probability of zeroing each spatial position.
        band_mask_prob: when band masking is chosen, probability of zeroing each channel.
        spectral_noise_std: std of additive Gaussian noise on every value, in projected
            (standardised) units; 0: off.
        spectral_scale: range of a per-sample multiplicative factor on all values, sampled
            uniformly; None: off.
        brightness: range of a per-sample factor on the raw spectrum (illumination, a scene of
            another date), sampled log-uniformly; None: off. Needs a :class:`RadiometricBasis`.
        spectral_tilt: largest per-sample linear gain across the bands: the raw spectrum is
            multiplied by ``1 + tau · (2 b / (B − 1) − 1)`` with tau ~ U(−tilt, tilt) (calibration
            or atmosphere of another scene); 0: off. Needs a :class:`RadiometricBasis`.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    rot90: bool = False
    one_of: tuple[str, ...] = ONE_OF_OPS
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int = 3
    pixel_mask_prob: float = 0.5
    band_mask_prob: float = 0.5
    spectral_noise_std: float = 0.0
    spectral_scale: tuple[float, float] | None = None
    brightness: tuple[float, float] | None = None
    spectral_tilt: float = 0.0

    def __post_init__(self) -> None:
        # Accept lists (e.g. from YAML) and store tuples, so the config stays hashable.
        for name in ("crop_scale", "crop_ratio", "blur_sigma", "one_of", "spectral_scale", "brightness"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        lo, hi = _range(self.crop_scale, "crop_scale")
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        lo, hi = _range(self.crop_ratio, "crop_ratio")
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        for name in ("hflip_prob", "vflip_prob", "blur_prob", "pixel_mask_prob", "band_mask_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {value}")
        unknown = [op for op in self.one_of if op not in ONE_OF_OPS]
        if unknown or len(set(self.one_of)) != len(self.one_of):
            raise ValueError(f"one_of must list distinct operations from {ONE_OF_OPS}, got {self.one_of}")
        lo, hi = _range(self.blur_sigma, "blur_sigma")
        if not 0 < lo <= hi:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        if self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be a positive odd number, got {self.blur_kernel_size}")
        self._check_spectral()

    def _check_spectral(self) -> None:
        """The options that change the spectrum (noise, scale, brightness, tilt)."""
        if self.spectral_noise_std < 0:
            raise ValueError(f"spectral_noise_std must be >= 0, got {self.spectral_noise_std}")
        if self.spectral_scale is not None:
            lo, hi = _range(self.spectral_scale, "spectral_scale")
            if not 0 <= lo <= hi:
                raise ValueError(f"spectral_scale must satisfy 0 <= lo <= hi, or be None, got {self.spectral_scale}")
        if self.brightness is not None:
            lo, hi = _range(self.brightness, "brightness")
            if not 0 < lo <= hi:
                raise ValueError(f"brightness must satisfy 0 < lo <= hi, or be None, got {self.brightness}")
        if not 0 <= self.spectral_tilt < 1:
            raise ValueError(f"spectral_tilt must be in [0, 1), got {self.spectral_tilt}")

    def raw_gains(self, n_samples: int, n_bands: int, rng: np.random.Generator) -> np.ndarray:
        """(n_samples, n_bands) float32 gains on raw spectra, drawn as the pool draws ``brightness`` and
        ``spectral_tilt`` (ones when neither is set): the radiometric changes a model trained with them treats as
        the same ground."""
        brightness = np.ones(n_samples)
        if self.brightness is not None:
            brightness = np.exp(rng.uniform(math.log(self.brightness[0]), math.log(self.brightness[1]), n_samples))
        tilt = rng.uniform(-self.spectral_tilt, self.spectral_tilt, n_samples)
        return (brightness[:, None] * (1 + tilt[:, None] * band_positions(n_bands)[None, :])).astype(np.float32)

    @property
    def radiometric(self) -> bool:
        """Whether the pool changes the raw spectrum (brightness or tilt), which needs a :class:`RadiometricBasis`."""
        return self.brightness is not None or self.spectral_tilt > 0

    @classmethod
    def mild(cls, **overrides: Any) -> AugmentConfig:
        """Milder settings that calibrated better (crop area 0.5–1, pixel and band masking at 0.2)."""
        return replace(cls(crop_scale=(0.5, 1.0), pixel_mask_prob=0.2, band_mask_prob=0.2), **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready field values (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _range(value: tuple[float, ...], name: str) -> tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair, got {value}")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class RadiometricBasis:
    """What a change of the raw spectrum does to projected pixels, for the projection ``p = C ((x − μ) / σ)``.

    Scaling the raw spectrum x by a gain g (per band) gives ``p' = C (g ∘ z) + C ((g − 1) ∘ μ / σ)``
    with z = (x − μ) / σ. For g = a (brightness) that is exactly ``a p + (1 − a) origin``, origin being
    the projection of a zero spectrum. For the tilt g = 1 + tau s, s = 2 b / (B − 1) − 1, the first term
    is read in the span of the components (z ≈ Cᵀ p): ``p + tau (S p + u)`` with S = C diag(s) Cᵀ and
    u = C (s ∘ μ / σ).

    Attributes:
        origin: (C,) projection of a zero spectrum, ``−C (μ / σ)``.
        tilt_matrix: (C, C) S.
        tilt_offset: (C,) u.
    """

    origin: Tensor
    tilt_matrix: Tensor
    tilt_offset: Tensor

    @classmethod
    def from_projection(cls, mean: Any, std: Any, components: Any, *,
                        device: torch.device | str = "cpu") -> RadiometricBasis:
        """The basis of a projection given its per-band ``mean``, ``std`` (B,) and ``components`` (C, B)."""
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        comp = torch.as_tensor(components, dtype=torch.float64)
        n_bands = comp.shape[1]
        if mean_t.shape != (n_bands,) or std_t.shape != (n_bands,):
            raise ValueError(f"mean and std need one value per band ({n_bands}), got {tuple(mean_t.shape)} "
                             f"and {tuple(std_t.shape)}")
        slope = torch.linspace(-1.0, 1.0, n_bands, dtype=torch.float64) if n_bands > 1 else torch.zeros(1)
        ratio = mean_t / std_t
        return cls(origin=(-comp @ ratio).float().to(device),
                   tilt_matrix=((comp * slope) @ comp.T).float().to(device),
                   tilt_offset=(comp @ (slope * ratio)).float().to(device))

    def apply(self, x: Tensor, brightness: Tensor, tilt: Tensor) -> Tensor:
        """Projected patches after a raw gain ``brightness · (1 + tilt · s)`` per sample.

        Args:
            x: (N, C, p, p) projected patches.
            brightness: (N,) factors a > 0.
            tilt: (N,) tilts tau.

        Returns:
            (N, C, p, p), same dtype.
        """
        matrix = self.tilt_matrix.to(x.dtype)
        tilted = torch.einsum("cd,ndhw->nchw", matrix, x) + self.tilt_offset.to(x.dtype)[None, :, None, None]
        out = x + tilt.to(x.dtype)[:, None, None, None] * tilted
        scale = brightness.to(x.dtype)[:, None, None, None]
        return scale * out + (1 - scale) * self.origin.to(x.dtype)[None, :, None, None]


def gaussian_blur(x: Tensor, sigma: Tensor, *, kernel_size: int = 3) -> Tensor:
    """Spatial Gaussian blur with one sigma per sample, reflect padding, same size out.

    Args:
        x: (N, C, H, W) patches, H, W > kernel_size // 2.
        sigma: (N,) standard deviation per sample, in pixels, > 0.
        kernel_size: odd kernel side, in pixels.

    Returns:
        (N, C, H, W); every channel blurred with its sample's normalised kernel (a constant image
        stays constant).
    """
    n_samples, n_channels, height, width = x.shape
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=torch.float32)
    kernel_1d = torch.exp(-offsets[None, :] ** 2 / (2 * sigma.float()[:, None] ** 2))  # (N, k)
    kernel_1d = kernel_1d / kernel_1d.sum(dim=1, keepdim=True)
    kernel_2d = kernel_1d[:, :, None] * kernel_1d[:, None, :]  # (N, k, k)
    weight = kernel_2d[:, None].expand(n_samples, n_channels, kernel_size, kernel_size)
    weight = weight.reshape(n_samples * n_channels, 1, kernel_size, kernel_size).to(x.dtype)
    padded = F.pad(x.reshape(1, n_samples * n_channels, height, width), (half, half, half, half), mode="reflect")
    return F.conv2d(padded, weight, groups=n_samples * n_channels).reshape(n_samples, n_channels, height, width)


class Augmenter:
    """Draw one random augmentation per sample from the SSCC pool, for a whole batch at once.

    Order: random resized crop with flips / rotation (one bilinear resampling), the radiometric
    change, spectral scale and noise (each if enabled), then exactly one of blur / pixel masking /
    band masking.

    Args:
        config: the pool's parameters.
        radiometry: the projection's basis; required when the config sets ``brightness`` or
            ``spectral_tilt``.

    Example:
        >>> augment = Augmenter(AugmentConfig())
        >>> view = augment(projected_patches, generator=torch.Generator().manual_seed(0))
    """

    def __init__(self, config: AugmentConfig | None = None, radiometry: RadiometricBasis | None = None) -> None:
        self.config = AugmentConfig() if config is None else config
        if self.config.radiometric and radiometry is None:
            raise ValueError("brightness or spectral_tilt need the projection's RadiometricBasis")
        self.radiometry = radiometry

    def __repr__(self) -> str:
        return f"Augmenter({self.config!r})"

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch of projected patches.

        Args:
            x: (N, C, p, p) floating-point patches (after the spectral projection).
            generator: random source on ``x.device``; None uses torch's global generator.

        Returns:
            (N, C, p, p), same dtype and device; ``x`` is not modified.
        """
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected floating-point patches (N, C, p, p), got {x.dtype} {tuple(x.shape)}")
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(f"generator is on {generator.device} but the patches are on {x.device}: "
                             f"create it with torch.Generator(device={str(x.device)!r})")
        if x.shape[0] == 0:
            return x.clone()
        cfg = self.config
        out = self._crop_flip_rotate(x, generator)
        if cfg.radiometric and self.radiometry is not None:
            n_samples = x.shape[0]
            brightness = torch.ones(n_samples, device=x.device)
            if cfg.brightness is not None:
                log_lo, log_hi = math.log(cfg.brightness[0]), math.log(cfg.brightness[1])
                brightness = torch.exp(log_lo + (log_hi - log_lo) * self._uniform((n_samples,), x, generator))
            tilt = cfg.spectral_tilt * (2 * self._uniform((n_samples,), x, generator) - 1)
            out = self.radiometry.apply(out, brightness, tilt)
        if cfg.spectral_scale is not None:
            lo, hi = cfg.spectral_scale
            factor = lo + (hi - lo) * self._uniform((x.shape[0], 1, 1, 1), x, generator)
            out = out * factor.to(out.dtype)
        if cfg.spectral_noise_std > 0:
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=torch.float32)
            out = out + cfg.spectral_noise_std * noise.to(out.dtype)
        if cfg.one_of:
            out = self._one_of(out, generator)
        return out

    @staticmethod
    def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)

    def _crop_flip_rotate(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Per-sample random resized crop (+ flips, rot90) as one affine resampling back to p × p.

        In normalised coordinates ([-1, 1] spans the patch), a crop box of relative width w and
        height h centred at (cx, cy) is sampled by the affine map out ↦ diag(±w, ±h) · R · out + c,
        bilinear, pixel centres aligned (``align_corners=False``), so the full box without flip is
        the identity. Box sides above the patch side are clipped to it (then placed at the centre).
        """
        cfg = self.config
        n_samples, _, height, width = x.shape
        scale_lo, scale_hi = cfg.crop_scale
        area = scale_lo + (scale_hi - scale_lo) * self._uniform((n_samples,), x, generator)
        log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * self._uniform((n_samples,), x, generator))
        box_w = torch.sqrt(area * ratio).clamp(max=1.0)
        box_h = torch.sqrt(area / ratio).clamp(max=1.0)
        centre_x = (1 - box_w) * (2 * self._uniform((n_samples,), x, generator) - 1)
        centre_y = (1 - box_h) * (2 * self._uniform((n_samples,), x, generator) - 1)
        sign_x = torch.where(self._uniform((n_samples,), x, generator) < cfg.hflip_prob, -1.0, 1.0)
        sign_y = torch.ones_like(sign_x)
        if cfg.vflip_prob > 0:
            sign_y = torch.where(self._uniform((n_samples,), x, generator) < cfg.vflip_prob, -1.0, 1.0)
        linear = torch.zeros(n_samples, 2, 2, device=x.device)
        linear[:, 0, 0] = box_w * sign_x
        linear[:, 1, 1] = box_h * sign_y
        if cfg.rot90:
            if height != width:
                raise ValueError(f"rot90 needs square patches, got {height} × {width}: disable rot90")
            quarter_turns = torch.randint(4, (n_samples,), generator=generator, device=x.device)
            cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=x.device)[quarter_turns]
            sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=x.device)[quarter_turns]
            rotation = torch.stack([torch.stack([cos, -sin], dim=1), torch.stack([sin, cos], dim=1)], dim=1)
            linear = linear @ rotation
        theta = torch.cat([linear, torch.stack([centre_x, centre_y], dim=1)[:, :, None]], dim=2)  # (N, 2, 3)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _one_of(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Apply exactly one of the configured operations to each sample (chosen uniformly)."""
        cfg = self.config
        n_samples, n_channels, height, width = x.shape
        choice = torch.randint(len(cfg.one_of), (n_samples,), generator=generator, device=x.device)
        out = x
        for index, op in enumerate(cfg.one_of):  # at most 3 operations, each batched over samples
            chosen = (choice == index)[:, None, None, None]
            if op == "blur":
                apply = chosen & (self._uniform((n_samples, 1, 1, 1), x, generator) < cfg.blur_prob)
                lo, hi = cfg.blur_sigma
                sigma = lo + (hi - lo) * self._uniform((n_samples,), x, generator)
                out = torch.where(apply, gaussian_blur(out, sigma, kernel_size=cfg.blur_kernel_size), out)
            elif op == "pixel_mask":
                drop = self._uniform((n_samples, 1, height, width), x, generator) < cfg.pixel_mask_prob
                out = out.masked_fill(chosen & drop, 0.0)
            else:  # band_mask
                drop = self._uniform((n_samples, n_channels, 1, 1), x, generator) < cfg.band_mask_prob
                out = out.masked_fill(chosen & drop, 0.0)
        return out


def two_views(x: Tensor, augmenter: Augmenter, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Two independent augmentations of the same projected patches.

    Args:
        x: (N, C, p, p) projected patches.
        augmenter: the pool to draw from.
        generator: random source on ``x.device``, or None for the global one.

    Returns:
        (view1, view2), each (N, C, p, p).
    """
    return augmenter(x, generator), augmenter(x, generator)
