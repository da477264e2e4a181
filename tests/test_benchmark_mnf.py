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
