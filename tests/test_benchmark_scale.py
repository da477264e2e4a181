"""The mosaics of ``benchmarks/train_scale.py``: copies flipped with their ground truth, or exact copies."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def scale():
    yield from load_benchmark("train_scale.py", imports=("_common",))


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    cube = rng.integers(100, 4000, size=(6, 7, 3)).astype(np.uint16)
    truth = np.arange(42).reshape(6, 7)  # every pixel its own class: a flip shows in the labels
    return cube, truth


def test_flipped_copies_carry_their_ground_truth_along(scale, scene) -> None:
    cube, truth = scene
    mosaic, labels = scale.mosaic(cube, truth, 3, noise=0.0)
    assert mosaic.shape == (18, 21, 3) and mosaic.dtype == cube.dtype and labels.shape == (18, 21)
    orientations = set()
    for i in range(3):
        for j in range(3):
            copy, copy_truth = mosaic[i * 6:(i + 1) * 6, j * 7:(j + 1) * 7], labels[i * 6:(i + 1) * 6, j * 7:(j + 1) * 7]
            flip = next((fy, fx) for fy in (1, -1) for fx in (1, -1) if (copy_truth == truth[::fy, ::fx]).all())
            np.testing.assert_array_equal(copy, cube[::flip[0], ::flip[1]])
            orientations.add(flip)
    assert len(orientations) > 1  # the default flips some copies


def test_no_flips_and_no_noise_repeat_the_scene_exactly(scale, scene) -> None:
    cube, truth = scene
    mosaic, labels = scale.mosaic(cube, truth, 2, noise=0.0, flips=False)
    np.testing.assert_array_equal(mosaic, np.tile(cube, (2, 2, 1)))
    np.testing.assert_array_equal(labels, np.tile(truth, (2, 2)))
    noisy, _ = scale.mosaic(cube, truth, 2, noise=0.05, flips=False)
    assert 0 < np.abs(noisy.astype(float) - mosaic).mean() < 0.1 * cube.std(axis=(0, 1)).max()


@pytest.mark.parametrize("order", ["shuffled", "stacked"])
def test_repeated_draws_give_each_centre_that_many_times_per_pass(scale, tmp_path, order) -> None:
    from hsi_cluster.data.sampler import PatchSampler
    from hsi_cluster.train import CENTROID_PLAN_EPOCH
    from tests.train_helpers import make_scene

    scene = make_scene(tmp_path, seed=3)  # 40 × 37, every pixel valid: 1 480 centres
    width, n = scene.valid.shape[1], int(scene.valid.sum())

    def pass_centres(epoch: int = 0) -> np.ndarray:
        sampler = PatchSampler(scene.store, patch_size=5, batch_size=40, seed=0, epoch=epoch)
        return np.concatenate([batch.rows * width + batch.cols for batch in sampler])

    plain = pass_centres()
    with scale.repeated_draws(3, order):
        repeated = pass_centres()
        assert np.array_equal(np.sort(pass_centres(CENTROID_PLAN_EPOCH)), np.sort(plain))  # the centroid plan as usual
    assert len(plain) == n and len(repeated) == 3 * n
    np.testing.assert_array_equal(np.bincount(repeated), np.full(n, 3))
    thirds = [np.sort(repeated[i * n:(i + 1) * n]) for i in range(3)]
    stacked = all(np.array_equal(third, np.arange(n)) for third in thirds)
    assert stacked == (order == "stacked")  # three permutations one after the other, or one shuffle of the copies
    np.testing.assert_array_equal(pass_centres(), plain)  # the sampler is itself again afterwards
