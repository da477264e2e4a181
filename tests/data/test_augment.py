"""The batched SSCC augmentation pool."""

from __future__ import annotations

import pytest
import torch

from hsi_cluster.data.augment import AugmentConfig, Augmenter, gaussian_blur, two_views

IDENTITY = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "hflip_prob": 0.0, "one_of": ()}


def _patches(n: int = 16, channels: int = 8, size: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_default_config_is_the_papers():
    cfg = AugmentConfig()
    assert cfg.crop_scale == (0.08, 1.0) and cfg.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert cfg.hflip_prob == 0.5 and cfg.vflip_prob == 0.0 and cfg.rot90 is False
    assert cfg.one_of == ("blur", "pixel_mask", "band_mask")
    assert cfg.blur_prob == 0.5 and cfg.blur_sigma == (0.1, 2.0) and cfg.blur_kernel_size == 3
    assert cfg.pixel_mask_prob == 0.5 and cfg.band_mask_prob == 0.5
    assert cfg.spectral_noise_std == 0.0 and cfg.spectral_scale is None
    mild = AugmentConfig.mild()
    assert mild.crop_scale == (0.5, 1.0) and mild.pixel_mask_prob == 0.2 and mild.band_mask_prob == 0.2


def test_config_validation_and_lists():
    assert AugmentConfig(crop_scale=[0.5, 1.0], one_of=["blur"]).crop_scale == (0.5, 1.0)
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(hflip_prob=1.5)
    with pytest.raises(ValueError, match="one_of"):
        AugmentConfig(one_of=("blur", "cutout"))
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="odd"):
        AugmentConfig(blur_kernel_size=4)
    with pytest.raises(TypeError):
        AugmentConfig((0.5, 1.0))  # keyword-only


def test_shape_dtype_determinism_and_input_untouched():
    x = _patches()
    original = x.clone()
    augment = Augmenter(AugmentConfig(vflip_prob=0.5, rot90=True, spectral_noise_std=0.1, spectral_scale=(0.8, 1.2)))
    a = augment(x, _gen(1))
    b = augment(x, _gen(1))
    c = augment(x, _gen(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(x, original)
    assert augment(x.double(), _gen(1)).dtype == torch.float64


def test_identity_configuration():
    x = _patches(n=8, size=11)
    out = Augmenter(AugmentConfig(**IDENTITY))(x, _gen(0))
    assert (out - x).abs().max().item() <= 1e-5


def test_flips_and_rotations_are_exact():
    x = _patches(n=6, size=7)
    hflip = Augmenter(AugmentConfig(**{**IDENTITY, "hflip_prob": 1.0}))(x, _gen(0))
    assert (hflip - x.flip(-1)).abs().max().item() <= 1e-5
    vflip = Augmenter(AugmentConfig(**{**IDENTITY, "vflip_prob": 1.0}))(x, _gen(0))
    assert (vflip - x.flip(-2)).abs().max().item() <= 1e-5
    rotated = Augmenter(AugmentConfig(**{**IDENTITY, "rot90": True}))(_patches(n=32, size=7), _gen(0))
    source = _patches(n=32, size=7)
    turns = set()
    for i in range(32):  # test-side loop: every sample is one of the four exact rotations
        errors = [(rotated[i] - torch.rot90(source[i], k, dims=(-2, -1))).abs().max().item() for k in range(4)]
        assert min(errors) <= 1e-5
        turns.add(errors.index(min(errors)))
    assert len(turns) > 1


def test_crop_zooms_with_per_sample_boxes():
    # A horizontal ramp (value = column index): a box of relative width 0.5 is a ramp of slope 0.5
    # (away from the outermost output columns, whose samples may fall in the border half-pixel).
    size = 11
    ramp = torch.arange(size, dtype=torch.float32).expand(20, 2, size, size).clone()
    cfg = AugmentConfig(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), hflip_prob=0.0, one_of=())
    out = Augmenter(cfg)(ramp, _gen(3))
    steps = out.diff(dim=-1)[..., 1:-1]
    assert torch.allclose(steps, torch.full_like(steps, 0.5), atol=1e-4)
    assert torch.allclose(out.diff(dim=-2), torch.zeros_like(out.diff(dim=-2)), atol=1e-4)
    starts = out[:, 0, 0, 0]
    assert (starts >= 0).all() and (out[:, 0, 0, -1] <= size - 1 + 1e-4).all()
    assert starts.unique().numel() > 1  # boxes differ between samples


def test_pixel_masking_zeroes_all_channels_at_a_position():
    x = torch.rand(32, 8, 11, 11) + 1.0  # no natural zeros
    cfg = AugmentConfig(**{**IDENTITY, "one_of": ("pixel_mask",), "pixel_mask_prob": 0.5})
    out = Augmenter(cfg)(x, _gen(0))
    zero = out == 0
    position_zero = zero.all(dim=1)
    assert torch.equal(zero.any(dim=1), position_zero)  # never a partial spectrum
    assert torch.allclose(out[~zero], x[~zero], atol=1e-5)
    fraction = position_zero.float().mean().item()
    assert 0.4 < fraction < 0.6


def test_band_masking_zeroes_whole_channels():
    x = torch.rand(64, 8, 5, 5) + 1.0
    cfg = AugmentConfig(**{**IDENTITY, "one_of": ("band_mask",), "band_mask_prob": 0.5})
    out = Augmenter(cfg)(x, _gen(0))
    zero = out == 0
    channel_zero = zero.all(dim=(2, 3))
    assert torch.equal(zero.any(dim=(2, 3)), channel_zero)  # never a partial band
    assert 0.35 < channel_zero.float().mean().item() < 0.65
    assert torch.allclose(out[~zero], x[~zero], atol=1e-5)


def test_exactly_one_operation_per_sample():
    # Blur always (when chosen) vs band masking of every band: each sample is either blurred or all zero.
    x = torch.rand(200, 4, 7, 7) + 1.0
    cfg = AugmentConfig(**{**IDENTITY, "one_of": ("blur", "band_mask"), "blur_prob": 1.0, "band_mask_prob": 1.0})
    out = Augmenter(cfg)(x, _gen(0))
    all_zero = (out == 0).flatten(1).all(dim=1)
    none_zero = (out != 0).flatten(1).all(dim=1)
    assert torch.equal(all_zero | none_zero, torch.ones(200, dtype=torch.bool))
    assert 0.35 < all_zero.float().mean().item() < 0.65
    blurred = out[none_zero]
    assert not torch.allclose(blurred, x[none_zero], atol=1e-3)


def test_blur_is_spatial_normalised_and_per_sample():
    constant = torch.full((3, 4, 6, 6), 2.5)
    sigma = torch.tensor([0.1, 1.0, 2.0])
    assert torch.allclose(gaussian_blur(constant, sigma), constant, atol=1e-6)
    # A constant image stays constant through the full augmenter too.
    cfg = AugmentConfig(**{**IDENTITY, "one_of": ("blur",), "blur_prob": 1.0})
    assert torch.allclose(Augmenter(cfg)(constant, _gen(0)), constant, atol=1e-5)
    # An impulse becomes the sample's normalised 3 × 3 Gaussian, in every channel separately.
    impulse = torch.zeros(3, 2, 5, 5)
    impulse[:, :, 2, 2] = 1.0
    blurred = gaussian_blur(impulse, sigma)
    for i, s in enumerate(sigma.tolist()):
        g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * s * s))
        kernel = torch.outer(g, g) / torch.outer(g, g).sum()
        for c in range(2):
            assert torch.allclose(blurred[i, c, 1:4, 1:4], kernel, atol=1e-6)
            assert blurred[i, c].sum().item() == pytest.approx(1.0, abs=1e-6)
    # Channels are not mixed: a channel that is zero stays zero.
    mixed = torch.rand(2, 3, 5, 5)
    mixed[:, 1] = 0
    assert (gaussian_blur(mixed, torch.tensor([1.0, 2.0]))[:, 1] == 0).all()


def test_two_views_differ():
    x = _patches(n=8)
    generator = _gen(0)
    view1, view2 = two_views(x, Augmenter(), generator)
    assert view1.shape == view2.shape == x.shape
    assert not torch.allclose(view1, view2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_shapes_and_is_deterministic():
    x = _patches().cuda()
    augment = Augmenter()
    a = augment(x, torch.Generator(device="cuda").manual_seed(0))
    b = augment(x, torch.Generator(device="cuda").manual_seed(0))
    assert a.device.type == "cuda" and torch.equal(a, b)
    with pytest.raises(ValueError, match="generator"):
        augment(x, torch.Generator().manual_seed(0))


def _projection(bands: int, components: int, seed: int = 0):
    """A random projection: per-band mean and std (B,), orthonormal components (C, B)."""
    rng = torch.Generator().manual_seed(seed)
    mean = 1000 + 500 * torch.rand(bands, generator=rng, dtype=torch.float64)
    std = 50 + 100 * torch.rand(bands, generator=rng, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(bands, bands, generator=rng, dtype=torch.float64))
    return mean, std, q[:, :components].T.contiguous()


def _project(x: torch.Tensor, mean, std, comp) -> torch.Tensor:
    """(N, B, p, p) raw → (N, C, p, p) projected, as SpectralProjection does."""
    return torch.einsum("cb,nbhw->nchw", comp, (x - mean[None, :, None, None]) / std[None, :, None, None])


def test_radiometric_basis_matches_a_gain_on_the_raw_spectrum():
    from hsi_cluster.data.augment import RadiometricBasis

    bands = 12
    mean, std, comp = _projection(bands, bands)  # every component: the tilt is exact too
    basis = RadiometricBasis.from_projection(mean, std, comp)
    raw = mean[None, :, None, None] + std[None, :, None, None] * torch.randn(3, bands, 5, 5, dtype=torch.float64)
    brightness = torch.tensor([0.8, 1.0, 1.25], dtype=torch.float64)
    tilt = torch.tensor([0.05, -0.1, 0.0], dtype=torch.float64)
    slope = torch.linspace(-1, 1, bands, dtype=torch.float64)
    gain = brightness[:, None] * (1 + tilt[:, None] * slope[None, :])  # (N, B)
    expected = _project(raw * gain[:, :, None, None], mean, std, comp)
    got = basis.apply(_project(raw, mean, std, comp).float(), brightness.float(), tilt.float())
    assert torch.allclose(got.double(), expected, atol=1e-3)
    # With fewer components, brightness alone stays exact (a scaling about the projection of 0).
    mean, std, comp = _projection(bands, 4, seed=1)
    basis = RadiometricBasis.from_projection(mean, std, comp)
    expected = _project(raw * brightness[:, None, None, None], mean, std, comp)
    got = basis.apply(_project(raw, mean, std, comp).float(), brightness.float(), torch.zeros(3))
    assert torch.allclose(got.double(), expected, atol=1e-3)


def test_radiometric_change_draws_per_sample_and_needs_the_basis():
    from hsi_cluster.data.augment import RadiometricBasis

    config = AugmentConfig(**IDENTITY, brightness=(0.8, 1.25), spectral_tilt=0.05)
    assert config.radiometric and not AugmentConfig().radiometric
    with pytest.raises(ValueError, match="RadiometricBasis"):
        Augmenter(config)
    with pytest.raises(ValueError, match="brightness"):
        AugmentConfig(brightness=(0.0, 1.2))
    with pytest.raises(ValueError, match="spectral_tilt"):
        AugmentConfig(spectral_tilt=-0.1)
    mean, std, comp = _projection(10, 4)
    augment = Augmenter(config, RadiometricBasis.from_projection(mean, std, comp))
    x = _patches(n=64, channels=4, size=5)
    out = augment(x, _gen(3))
    assert torch.equal(out, augment(x, _gen(3)))
    # Each sample gets one change for all its pixels: an affine map per sample, not the identity.
    changed = (out - x).abs().flatten(1).amax(dim=1)
    assert (changed > 1e-3).float().mean() > 0.9
    assert AugmentConfig.mild(brightness=[0.9, 1.1]).to_dict()["brightness"] == [0.9, 1.1]
