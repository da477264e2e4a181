"""SpectralProjection (folded standardisation + PCA) and fit_pca."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hsi_cluster.model.projection import SpectralProjection, fit_mnf, fit_pca


def _correlated_samples(n: int = 500, n_bands: int = 6, seed: int = 0) -> np.ndarray:
    """Spectra with well-separated principal variances, offset and scaled per band like radiances."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, n_bands)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])[:n_bands]
    rotation, _ = np.linalg.qr(rng.normal(size=(n_bands, n_bands)))
    return latent @ rotation.T * rng.uniform(50, 500, n_bands) + rng.uniform(1000, 3000, n_bands)


def test_projection_equals_explicit_formula():
    rng = np.random.default_rng(1)
    n_bands, n_comp = 7, 3
    mean = rng.uniform(100, 200, n_bands)
    std = rng.uniform(5, 20, n_bands)
    components = rng.normal(size=(n_comp, n_bands))
    x = rng.uniform(50, 250, size=(2, n_bands, 5, 4))
    projection = SpectralProjection(torch.tensor(mean), torch.tensor(std), torch.tensor(components))

    got = projection(torch.tensor(x, dtype=torch.float32)).numpy()

    standardised = (x - mean[None, :, None, None]) / std[None, :, None, None]
    expected = np.einsum("cb,nbhw->nchw", components, standardised)
    assert got.shape == (2, n_comp, 5, 4)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (11, 11)])
def test_projection_any_spatial_size_and_integer_input(shape):
    projection = SpectralProjection(np.zeros(4), np.ones(4), np.eye(2, 4))
    x = torch.randint(0, 1000, (3, 4, *shape), dtype=torch.int16)
    out = projection(x)
    assert out.shape == (3, 2, *shape)
    assert torch.equal(out, x[:, :2].float())
    assert projection.in_bands == 4 and projection.out_channels == 2


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("layout", ["pixel rows", "transposed block"])
def test_pixel_map_is_the_projection_of_each_pixel_and_pickles(dtype, layout):
    """The sampler's numpy map of (n, B) pixels equals the module on a (1, B, H, W) block, whether the
    pixels come as rows or as the transposed view of a (B, H·W) block, and survives a trip to a
    DataLoader worker (pickle)."""
    rng = np.random.default_rng(2)
    samples = _correlated_samples(n_bands=6)
    projection = SpectralProjection(samples.mean(0), samples.std(0), fit_pca(samples, 3, samples.mean(0),
                                                                               samples.std(0)))
    block = rng.uniform(900, 3500, size=(6, 9, 7)).astype(dtype)
    pixels = block.reshape(6, -1).T
    if layout == "pixel rows":
        pixels = np.ascontiguousarray(pixels)
    pixel_map = pickle.loads(pickle.dumps(projection.pixel_map()))
    got = pixel_map(pixels)
    expected = projection(torch.from_numpy(block[None])).numpy()[0]  # (3, 9, 7)
    assert got.shape == (63, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got.T.reshape(3, 9, 7), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"expected pixels of shape \(n, 6\), got \(63, 5\)"):
        pixel_map(pixels[:, :5])


def test_projection_is_frozen_buffers():
    projection = SpectralProjection(np.arange(3.0), np.ones(3), np.eye(3))
    assert list(projection.parameters()) == []
    state = projection.state_dict()
    assert set(state) == {"weight", "bias"}
    assert state["weight"].shape == (3, 3, 1, 1) and state["bias"].shape == (3,)
    restored = SpectralProjection.placeholder(in_bands=3, out_channels=3)
    restored.load_state_dict(state)
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(restored(x), projection(x))


def test_projection_rejects_bad_inputs():
    with pytest.raises(ValueError, match="std"):
        SpectralProjection(np.zeros(3), np.array([1.0, 0.0, 1.0]), np.eye(3))
    with pytest.raises(ValueError, match="one value per band"):
        SpectralProjection(np.zeros(2), np.ones(3), np.eye(3))
    projection = SpectralProjection(np.zeros(3), np.ones(3), np.eye(2, 3))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        projection(torch.zeros(1, 4, 2, 2))


def test_fit_pca_orthonormal_sorted_and_matches_svd():
    samples = _correlated_samples()
    mean, std = samples.mean(axis=0), samples.std(axis=0)
    components = fit_pca(samples, 4, mean, std)

    assert components.shape == (4, 6) and components.dtype == np.float32
    np.testing.assert_allclose(components @ components.T, np.eye(4), atol=1e-5)

    # Reference: SVD of the centred standardised data (written independently of eigh on covariance).
    standardised = (samples - mean) / std
    centred = standardised - standardised.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    reference_variance = singular**2 / (len(samples) - 1)
    explained = np.var(centred @ components.T.astype(np.float64), axis=0, ddof=1)
    np.testing.assert_allclose(explained, reference_variance[:4], rtol=1e-4)
    assert np.all(np.diff(explained) < 0)
    # Same axes as the SVD, up to sign.
    np.testing.assert_allclose(np.abs(np.sum(components * vt[:4], axis=1)), 1.0, atol=1e-4)
    # Deterministic sign: the largest-magnitude entry of each component is positive.
    largest = components[np.arange(4), np.argmax(np.abs(components), axis=1)]
    assert np.all(largest > 0)


def test_fit_pca_with_projection_decorrelates():
    samples = _correlated_samples(n=400, seed=3)
    mean, std = samples.mean(axis=0), samples.std(axis=0)
    components = fit_pca(samples, 3, mean, std)
    projection = SpectralProjection(mean, std, components)
    scores = projection(torch.tensor(samples, dtype=torch.float32)[:, :, None, None])[:, :, 0, 0].double().numpy()
    covariance = np.cov(scores, rowvar=False)
    off_diagonal = covariance - np.diag(np.diag(covariance))
    assert np.abs(off_diagonal).max() < 1e-3 * np.diag(covariance).max()
    np.testing.assert_allclose(scores.mean(axis=0), 0.0, atol=1e-3)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9, 0.99, 0.999999])
def test_fit_pca_keeps_the_fewest_components_for_a_variance_fraction(fraction: float):
    samples = _correlated_samples(n=2000, seed=1)
    mean, std = samples.mean(axis=0), samples.std(axis=0)
    standardised = (samples - mean) / std
    singular = np.linalg.svd(standardised - standardised.mean(axis=0), compute_uv=False)
    share = np.cumsum(singular**2) / np.sum(singular**2)  # variance kept by the first 1, 2, … axes
    expected = int(np.argmax(share >= fraction)) + 1
    assert expected == 1 or share[expected - 2] < fraction
    components = fit_pca(samples, fraction, mean, std)
    assert components.shape == (expected, 6)
    np.testing.assert_array_equal(components, fit_pca(samples, expected, mean, std))  # the same leading axes


def test_fit_pca_validation():
    samples = _correlated_samples(n=50)
    mean, std = samples.mean(axis=0), samples.std(axis=0)
    with pytest.raises(ValueError, match="at most 6 components"):
        fit_pca(samples, 7, mean, std)
    with pytest.raises(ValueError, match="one value per band"):
        fit_pca(samples, 2, mean[:3], std)
    for fraction in (-0.5, 0.0, 1.0, 2.5):
        with pytest.raises(ValueError, match="fraction"):
            fit_pca(samples, fraction, mean, std)
    with pytest.raises(ValueError, match="2-D"):
        fit_pca(samples[0], 2, mean, std)
    bad = samples.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_pca(bad, 2, mean, std)


def test_bands_with_zero_weight_are_never_read():
    """A band the screen left out (zero column) may hold NaN or anything: neither the module nor the
    sampler's pixel map reads it, and both equal the projection of the other bands alone."""
    rng = np.random.default_rng(5)
    samples = _correlated_samples(n_bands=6)
    kept = [0, 1, 3, 4]
    components = np.zeros((2, 6))
    components[:, kept] = fit_pca(samples[:, kept], 2, samples[:, kept].mean(0), samples[:, kept].std(0))
    projection = SpectralProjection(samples.mean(0), samples.std(0), components)
    reference = SpectralProjection(samples[:, kept].mean(0), samples[:, kept].std(0), components[:, kept])
    block = rng.uniform(900, 3500, size=(1, 6, 5, 4)).astype(np.float32)
    block[:, 2] = np.nan
    block[:, 5] = -9999.0

    got = projection(torch.from_numpy(block)).numpy()
    pixels = projection.pixel_map()(block[0].reshape(6, -1).T)

    assert projection.left_out_bands().tolist() == [2, 5]
    expected = reference(torch.from_numpy(block[:, kept])).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(pixels.T.reshape(1, 2, 5, 4), expected, rtol=1e-5, atol=1e-4)
    assert np.isnan(block[:, 2]).all()  # the caller's input is left as it was
    with pytest.raises(ValueError, match="expected pixels"):
        projection.pixel_map()(block[0].reshape(6, -1).T[:, :4])


def _signal_and_noise(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four bands: a weak clean signal in band 0 (std 1, noise 0.05), band 1 pure noise of std 10,
    bands 2-3 a moderate signal with noise 1. Returns the spectra and one noise difference per pixel
    (the difference of two noise draws, as between two pixels of one field)."""
    rng = np.random.default_rng(seed)
    noise_std = np.array([0.05, 10.0, 1.0, 1.0])
    signal = np.stack([rng.normal(size=n), np.zeros(n), 3 * rng.normal(size=n), 3 * rng.normal(size=n)], axis=1)
    spectra = signal + rng.normal(size=(n, 4)) * noise_std + 100.0
    differences = (rng.normal(size=(n, 4)) - rng.normal(size=(n, 4))) * noise_std
    return spectra, differences


def test_mnf_ranks_components_by_signal_to_noise_not_variance():
    spectra, differences = _signal_and_noise()
    mean, std = spectra.mean(axis=0), spectra.std(axis=0)
    first_pca = fit_pca(spectra, 1, mean, std)[0]
    first_mnf = fit_mnf(spectra, differences, 1, mean, std)[0]
    assert np.argmax(np.abs(first_pca)) != 0  # PCA's first axis is not the clean band
    assert np.argmax(np.abs(first_mnf)) == 0 and first_mnf[0] > 0  # MNF's is, sign fixed positive
    # scores come out in noise units: the noise of each component has unit variance
    components = fit_mnf(spectra, differences, 4, mean, std).astype(np.float64)
    noise_scores = differences / std @ components.T
    np.testing.assert_allclose(noise_scores.var(axis=0) / 2, 1.0, rtol=0.1)


def test_mnf_within_a_subspace_ignores_a_faint_direction_without_noise():
    """Band 4 repeats band 0 plus a faint pattern (std 0.05) that no neighbour difference holds, as a
    stripe pattern can be built when bands outnumber columns: on all bands MNF ranks that direction
    first; within the leading four principal axes it cannot, and the clean signal comes first."""
    spectra, differences = _signal_and_noise()
    faint = 0.05 * np.random.default_rng(5).normal(size=len(spectra))
    spectra = np.column_stack([spectra, spectra[:, 0] + faint])
    differences = np.column_stack([differences, differences[:, 0]])
    mean, std = spectra.mean(axis=0), spectra.std(axis=0)
    everywhere = fit_mnf(spectra, differences, 1, mean, std)[0]
    assert everywhere[0] * everywhere[4] < 0  # band 4 minus band 0: the faint pattern
    subspace = fit_pca(spectra, 4, mean, std)
    inside = fit_mnf(spectra, differences, 2, mean, std, subspace)
    assert inside[0, 0] * inside[0, 4] > 0 and np.argmax(np.abs(inside[0])) in (0, 4)  # the clean signal
    np.testing.assert_allclose(inside @ subspace.T @ subspace, inside, atol=1e-5)  # in the span
    with pytest.raises(ValueError, match="between 1 and the number of bands or subspace dimensions \\(4\\)"):
        fit_mnf(spectra, differences, 5, mean, std, subspace)


def test_mnf_skips_non_finite_differences_and_refuses_too_few():
    spectra, differences = _signal_and_noise(n=300)
    mean, std = spectra.mean(axis=0), spectra.std(axis=0)
    holed = differences.copy()
    holed[::2] = np.nan  # pixels without a valid neighbour
    np.testing.assert_allclose(fit_mnf(spectra, holed, 2, mean, std), fit_mnf(spectra, differences[1::2], 2, mean, std))
    with pytest.raises(ValueError, match="only 4 neighbour differences are valid.*projection 'pca'"):
        fit_mnf(spectra, differences[:4], 2, mean, std)
    with pytest.raises(ValueError, match="must agree"):
        fit_mnf(spectra, differences[:, :3], 2, mean, std)
