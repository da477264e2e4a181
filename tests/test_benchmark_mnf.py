"""The MNF of ``benchmarks/mnf.py``: it finds a smooth signal that band-dependent noise hides from PCA."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def mnf():
    yield from load_benchmark("mnf.py", imports=("scenes",))


def test_mnf_finds_the_signal_that_pca_misses(mnf) -> None:
    rng = np.random.default_rng(0)
    bands, height, width = 6, 40, 40
    signal = np.sin(np.linspace(0, 3, height))[:, None] * np.cos(np.linspace(0, 2, width))[None, :]  # smooth in space
    direction = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]) / np.sqrt(3)
    noise_std = np.array([0.05, 0.05, 0.05, 3.0, 2.0, 1.0])  # loud noise on bands without signal
    image = direction[:, None, None] * signal + noise_std[:, None, None] * rng.normal(size=(bands, height, width))
    pixels = image.reshape(bands, -1).T
    noise = mnf.neighbour_noise_covariance(image)
    np.testing.assert_allclose(np.sqrt(np.diag(noise))[3:], noise_std[3:], rtol=0.1)
    components, snr = mnf.mnf_components(pixels, noise, 2)
    first = (pixels - pixels.mean(0)) @ components[0]
    assert abs(np.corrcoef(first, signal.ravel())[0, 1]) > 0.95
    assert snr[0] > 10 * snr[1]
    centred = pixels - pixels.mean(0)
    pca_first = centred @ np.linalg.eigh(centred.T @ centred)[1][:, -1]
    assert abs(np.corrcoef(pca_first, signal.ravel())[0, 1]) < 0.3  # PCA's first component is the loudest noise


def test_pca_count_is_the_presets_variance_rule(mnf) -> None:
    pixels = np.random.default_rng(1).normal(size=(5000, 3)) * np.array([2.0, 1.0, 0.01])  # variances 4, 1, 1e-4
    assert mnf.pca_count(pixels, 0.99) == 2
    assert mnf.pca_count(pixels, 0.5) == 1


def test_nearest_neighbour_noise_leaves_edges_out(mnf) -> None:
    """Vertical stripes 3 pixels wide, 10 units apart, noise of std 0.2: half the covariance of all
    4-neighbour differences takes the edges for noise, each pixel's closest neighbour does not."""
    rng = np.random.default_rng(2)
    stripes = np.repeat((np.arange(14) % 2) * 10.0, 3)[:40]
    image = np.stack([stripes[None, :] * np.ones((40, 1))] * 3) + 0.2 * rng.normal(size=(3, 40, 40))
    image[:, 0, 0] = np.nan  # a pixel without a value is left out
    all_pairs = np.sqrt(np.diag(mnf.neighbour_noise_covariance(image)))
    nearest = np.sqrt(np.diag(mnf.nearest_neighbour_noise_covariance(image)))
    assert (all_pairs > 2.5).all()
    # under the noise by a factor common to every band (the closest of up to four differences is kept);
    # the MNF axes depend only on the covariance's shape
    assert (0.1 < nearest).all() and (nearest < 0.2).all()
    np.testing.assert_allclose(nearest / nearest.mean(), 1.0, rtol=0.1)


def test_axis_noise_counts_column_stripes(mnf) -> None:
    """A flat image with one offset per band and column (std 1) and faint noise: the closest of four
    neighbours is the one in the same column and hides the stripes; one neighbour per axis does not."""
    rng = np.random.default_rng(3)
    image = mnf.add_column_stripes(0.01 * rng.normal(size=(3, 40, 60)), 1.0, seed=4)
    offsets = image[:, 0, :]  # (B, W): the image is constant down each column up to the noise
    assert np.abs(image - image[:, :1, :]).max() < 0.1 and 0.8 < offsets.std() < 1.2
    nearest = np.diag(mnf.nearest_neighbour_noise_covariance(image))
    axes = np.diag(mnf.axis_nearest_noise_covariance(image))
    assert (nearest < 1e-3).all() and (axes > 0.05).all()


def test_mnf_within_principal_axes_stays_in_their_span(mnf) -> None:
    rng = np.random.default_rng(5)
    pixels = rng.normal(size=(2000, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.1, 0.01])
    noise = np.diag([1.0, 1.0, 1.0, 1.0, 1e-4, 1e-8])  # the faint last bands look noiseless
    everywhere, _ = mnf.mnf_components(pixels, noise, 1)
    assert np.argmax(np.abs(everywhere[0])) == 5  # the faintest direction wins on all bands
    inside, _ = mnf.mnf_components(pixels, noise, 2, subspace=4)
    assert np.abs(inside[:, 4:]).max() < 1e-2 * np.abs(inside).max()  # not in the four leading axes
