"""Fitting the spectral projection from a store: band statistics, PCA, valid-pixel sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsi_cluster.data.spectral import sample_spectra_and_noise, sample_valid_spectra
from hsi_cluster.io.store import Store
from hsi_cluster.model.projection import MNF_SUBSPACE, SpectralProjection, fit_mnf, fit_pca
from hsi_cluster.train import fit_spectral_projection
from tests import helpers
from tests.train_helpers import NODATA, IngestedScene, make_scene, structured_cube

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def holed(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """Structured 40 × 37 × 12 scene with NaN and nodata pixels, 16-pixel chunks (3 × 3 blocks)."""
    return make_scene(tmp_path_factory.mktemp("spectral"), structured=True, seed=2, nan_pixels=25,
                      nodata_pixels=15)


def valid_pixels(scene: IngestedScene) -> np.ndarray:
    """(n, B) float64 spectra of the valid pixels."""
    return scene.cube[:, scene.valid].astype(np.float64).T


def test_band_stats_equal_numpy_over_valid_pixels(holed: IngestedScene) -> None:
    stats = Store.open(holed.store).band_stats()
    reference = helpers.reference_stats(holed.cube, holed.valid)
    assert reference["count"][0] == holed.valid.sum() == 40 * 37 - 40
    np.testing.assert_array_equal(stats.count, reference["count"])
    np.testing.assert_allclose(stats.mean, reference["mean"], rtol=1e-12)
    np.testing.assert_allclose(stats.std, reference["std"], rtol=1e-9)
    np.testing.assert_array_equal(stats.min, reference["min"])
    np.testing.assert_array_equal(stats.max, reference["max"])


def test_projection_statistics_and_orthonormal_components(holed: IngestedScene) -> None:
    fit = fit_spectral_projection([holed.store], 4, n_samples=5000, seed=0)
    pixels = valid_pixels(holed)
    np.testing.assert_allclose(fit.mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(fit.std, pixels.std(axis=0), rtol=1e-9)
    assert fit.components.shape == (4, 12) and fit.components.dtype == np.float32
    np.testing.assert_allclose(fit.components @ fit.components.T, np.eye(4), atol=1e-5)


def test_components_are_the_principal_axes_of_the_standardised_valid_pixels(holed: IngestedScene) -> None:
    """With a sample as large as the scene, the PCA equals numpy's SVD of all valid pixels."""
    fit = fit_spectral_projection([holed.store], 3, n_samples=100_000, seed=0)
    pixels = valid_pixels(holed)
    standardised = (pixels - pixels.mean(axis=0)) / pixels.std(axis=0)
    _, _, vt = np.linalg.svd(standardised - standardised.mean(axis=0), full_matrices=False)
    for got, want in zip(fit.components, vt[:3], strict=True):
        assert abs(float(got @ want)) == pytest.approx(1.0, abs=1e-4)
    # the projection built from the fit decorrelates the scene's pixels
    projection = SpectralProjection(fit.mean, fit.std, fit.components)
    scores = projection(torch.from_numpy(holed.cube[:, holed.valid].T.copy()[:, :, None, None])).numpy()[:, :, 0, 0]
    np.testing.assert_allclose(scores.mean(axis=0), 0.0, atol=1e-3)
    covariance = np.cov(scores.T)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 1e-3 * np.diag(covariance).max()


def test_fit_is_deterministic_for_a_seed(holed: IngestedScene) -> None:
    a = fit_spectral_projection([holed.store], 4, n_samples=300, seed=5)
    b = fit_spectral_projection([holed.store], 4, n_samples=300, seed=5)
    np.testing.assert_array_equal(a.components, b.components)


def test_constant_band_gets_std_one(tmp_path) -> None:
    cube = structured_cube(6, 20, 18, seed=1)
    cube[2] = 123.5
    cube[4, :, :] = 7.0
    scene = make_scene(tmp_path, cube=cube)
    fit = fit_spectral_projection([scene.store], 3, n_samples=1000)
    assert fit.std[2] == 1.0 and fit.std[4] == 1.0
    assert fit.mean[2] == pytest.approx(123.5) and fit.mean[4] == pytest.approx(7.0)
    assert np.all(fit.std[[0, 1, 3, 5]] > 1.0)
    assert np.isfinite(fit.components).all()
    SpectralProjection(fit.mean, fit.std, fit.components)  # a usable projection


def test_sample_valid_spectra_returns_only_valid_pixels(holed: IngestedScene) -> None:
    spectra = sample_valid_spectra([Store.open(holed.store)], 400, seed=1)
    assert 0 < len(spectra) <= 400 + 9  # per-block rounding may add one per block
    assert spectra.shape[1] == 12 and spectra.dtype == holed.cube.dtype
    assert np.isfinite(spectra).all() and not (spectra == NODATA).any()
    valid = {tuple(p) for p in holed.cube[:, holed.valid].T.tolist()}
    invalid = {tuple(p) for p in holed.cube[:, ~holed.valid].T.tolist()}
    rows = [tuple(p) for p in spectra.tolist()]
    assert all(p in valid for p in rows)
    assert not any(p in invalid for p in rows)
    assert len(set(rows)) == len(rows)  # no pixel twice


def test_sample_valid_spectra_everything_when_asked_for_more(holed: IngestedScene) -> None:
    spectra = sample_valid_spectra([Store.open(holed.store)], 100_000, seed=0)
    assert len(spectra) == holed.valid.sum()


def test_sample_valid_spectra_skips_all_invalid_blocks(tmp_path) -> None:
    cube = structured_cube(5, 32, 32, seed=3)
    cube[:, :16, :] = np.nan  # the two top blocks have no valid pixel
    scene = make_scene(tmp_path, cube=cube)
    spectra = sample_valid_spectra([Store.open(scene.store)], 200, seed=0)
    assert len(spectra) > 0 and np.isfinite(spectra).all()
    fit = fit_spectral_projection([scene.store], 2, n_samples=200)
    np.testing.assert_allclose(fit.mean, cube[:, 16:, :].reshape(5, -1).astype(np.float64).mean(axis=1),
                               rtol=1e-10)


def test_several_stores_weigh_every_valid_pixel_alike(holed: IngestedScene, tmp_path) -> None:
    """Statistics pooled over all valid pixels; the PCA sample shared in proportion to valid pixels.

    The second scene is a 24 × 20 cut of the first shifted by +5000 (an offset no pixel of the first
    reaches), so each sampled spectrum tells which scene it came from.
    """
    cube = np.where(holed.cube == NODATA, NODATA, holed.cube + np.float32(5000))[:, :24, :20]
    second = make_scene(tmp_path, cube=np.ascontiguousarray(cube, dtype=np.float32))
    np.testing.assert_array_equal(second.valid, holed.valid[:24, :20])
    n_first, n_second = int(holed.valid.sum()), int(second.valid.sum())
    assert n_first > 2.5 * n_second
    fit = fit_spectral_projection([holed.store, second.store], 4, n_samples=600, seed=0)
    pooled = np.concatenate([valid_pixels(holed), valid_pixels(second)])
    np.testing.assert_allclose(fit.mean, pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(fit.std, pooled.std(axis=0), rtol=1e-9)
    spectra = sample_valid_spectra([Store.open(holed.store), Store.open(second.store)], 600, seed=0)
    from_second = int((spectra[:, 0] > 3000).sum())
    # shares 600 · n / N, then per-block rounding: at most ±0.5 per block (9 + 4 blocks)
    assert abs(from_second - 600 * n_second / (n_first + n_second)) <= 2 + 1
    assert abs(len(spectra) - from_second - 600 * n_first / (n_first + n_second)) <= 4.5 + 1


def test_bands_flagged_bad_are_left_out_whatever_they_hold(tmp_path) -> None:
    """An ENVI delivery whose ``bbl`` flags two bands, one NaN everywhere and one at the nodata value:
    the fit leaves both out (zero columns, recorded in the screen), and the projection built from it
    is finite on every valid pixel."""
    cube = structured_cube(12, 30, 34, seed=4).astype(np.float32)
    cube[4] = np.nan
    cube[7] = NODATA
    good = np.ones(12, bool)
    good[[4, 7]] = False
    wavelength, fwhm = helpers.spectral_axis(12)
    written = helpers.write_envi(tmp_path / "scene.img", cube, wavelength_nm=wavelength, fwhm_nm=fwhm,
                                 bbl=good.astype(int).tolist(), nodata=NODATA)
    from hsi_cluster.io.ingest import ingest
    store = ingest(written.path, tmp_path / "scene.zarr")
    assert Store.open(store).valid[...].all()  # validity is decided by the good bands only

    fit = fit_spectral_projection([store], 3, n_samples=5000, seed=0)

    assert fit.screen.to_record()["flagged"] == [4, 7]
    assert not fit.components[:, [4, 7]].any() and fit.components[:, good].any(axis=0).all()
    projected = SpectralProjection(fit.mean, fit.std, fit.components)(torch.from_numpy(cube[None]))
    assert torch.isfinite(projected).all()


def test_noise_sample_is_each_pixel_minus_its_closer_neighbour_on_each_axis(tmp_path) -> None:
    """Two fields with a straight edge between them, a little noise, and one valid pixel whose four
    neighbours are nodata: the spectra are those of :func:`sample_valid_spectra` (same draw); each
    pixel gives two differences, to the closer valid neighbour (same block) along its row and along
    its column (so no difference crosses the edge), and the lone pixel's two rows are NaN."""
    rng = np.random.default_rng(0)
    cube = np.where(np.arange(32)[None, None, :] < 11, 100.0, 400.0) * np.ones((5, 32, 1))
    cube = (cube + rng.normal(size=cube.shape)).astype(np.float32)
    cube[:, 5, 20] = 250.0  # the lone valid pixel
    for r, c in ((4, 20), (6, 20), (5, 19), (5, 21)):
        cube[:, r, c] = np.nan
    scene = make_scene(tmp_path, cube=cube)
    stores = [Store.open(scene.store)]
    scale = 1 / cube[:, scene.valid].std(axis=1)

    spectra, differences = sample_spectra_and_noise(stores, 100_000, scale, seed=3)

    np.testing.assert_array_equal(spectra, sample_valid_spectra(stores, 100_000, seed=3))
    assert len(spectra) == scene.valid.sum() and differences.shape == (2 * len(spectra), 5)
    assert differences.dtype == np.float32
    missing = np.isnan(differences).all(axis=1)
    assert missing.sum() == 2 and np.isfinite(differences[~missing]).all()
    assert np.abs(differences[~missing]).max() < 10  # never across the 300-unit edge

    def closer(pixel: np.ndarray, r: int, c: int, steps: tuple[tuple[int, int], ...]) -> np.ndarray | None:
        candidates = [cube[:, r + dy, c + dx] for dy, dx in steps
                      if (r + dy) // 16 == r // 16 and (c + dx) // 16 == c // 16 and 0 <= r + dy < 32
                      and 0 <= c + dx < 32 and scene.valid[r + dy, c + dx]]
        if not candidates:
            return None
        return pixel - min(candidates, key=lambda n: float((((pixel - n) * scale) ** 2).sum()))

    position = {tuple(cube[:, r, c].tolist()): (r, c) for r, c in zip(*np.nonzero(scene.valid), strict=True)}
    expected = []
    for pixel in spectra:
        r, c = position[tuple(pixel.tolist())]
        expected += [closer(pixel, r, c, ((0, 1), (0, -1))), closer(pixel, r, c, ((1, 0), (-1, 0)))]
    assert sum(d is None for d in expected) == 2
    expected_rows = np.array([d for d in expected if d is not None])
    got = differences[~missing]
    np.testing.assert_allclose(got[np.lexsort(got.T)], expected_rows[np.lexsort(expected_rows.T)], rtol=1e-5)


def test_noise_sample_counts_column_stripes(tmp_path) -> None:
    """A flat scene with one offset per band and column (std 1) and faint noise (std 0.01): half the
    covariance of the differences holds the stripes (the closest of all four neighbours, the one in
    the same column, would leave them out)."""
    rng = np.random.default_rng(1)
    cube = (50.0 + rng.normal(size=(4, 1, 32)) + 0.01 * rng.normal(size=(4, 32, 32))).astype(np.float32)
    stores = [Store.open(make_scene(tmp_path, cube=cube).store)]

    _, differences = sample_spectra_and_noise(stores, 100_000, np.ones(4), seed=0)

    noise_variance = np.nanmean(differences.astype(np.float64) ** 2, axis=0) / 2
    assert (noise_variance > 0.05).all()


def test_mnf_projection_is_fitted_from_the_noise_sample(holed: IngestedScene) -> None:
    """``projection="mnf"``: same statistics and band screen as PCA, as many components, and the
    components fit_mnf gives on the sampled spectra and their neighbour differences."""
    pca = fit_spectral_projection([holed.store], 0.9, n_samples=100_000, seed=0)
    mnf = fit_spectral_projection([holed.store], 0.9, n_samples=100_000, seed=0, projection="mnf")
    np.testing.assert_array_equal(mnf.mean, pca.mean)
    np.testing.assert_array_equal(mnf.std, pca.std)
    assert mnf.components.shape == pca.components.shape
    assert not np.allclose(np.abs(mnf.components), np.abs(pca.components), atol=1e-2)
    stores = [Store.open(holed.store)]
    spectra, differences = sample_spectra_and_noise(stores, 100_000, 1 / pca.std, seed=0)
    count = pca.components.shape[0]
    subspace = fit_pca(spectra, min(MNF_SUBSPACE * count, spectra.shape[1]), pca.mean, pca.std)
    expected = fit_mnf(spectra, differences, count, pca.mean, pca.std, subspace)
    np.testing.assert_allclose(mnf.components, expected, rtol=1e-4, atol=1e-5)
