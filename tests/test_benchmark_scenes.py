"""The development scenes of ``benchmarks/scenes.py``: fine parcels and coarse-resolution versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def scenes():
    yield from load_benchmark("scenes.py")


def test_majority_rule_on_a_hand_made_map(scenes) -> None:
    truth = np.array([[1, 1, 0, 0, 2, 3],
                      [2, 0, 0, 3, 3, 2],
                      [0, 0, 5, 0, 4, 4],
                      [0, 5, 0, 0, 4, 4]], dtype=np.uint8)
    # Blocks: {1,1,2,0} → 1; {0,0,0,3} → 0 (mostly unlabelled); {2,3,3,2} → 2 (tie, smallest id);
    # {0,0,0,5} → 0; {5,0,0,0} → 0; {4,4,4,4} → 4. The 2 × 2 tie of labelled vs unlabelled is labelled.
    assert scenes.majority_labels(truth, 2).tolist() == [[1, 0, 2], [0, 0, 4]]
    assert scenes.majority_labels(np.array([[0, 7], [7, 0]], dtype=np.uint8), 2).tolist() == [[7]]
    # Cropped to whole blocks.
    assert scenes.majority_labels(np.ones((7, 8), dtype=np.uint8), 3).shape == (2, 2)


def test_parcel_layout_cells_are_rectangles_of_1_to_6_px(scenes) -> None:
    cells = scenes.parcel_layout(40, 37, rng=np.random.default_rng(3))
    for cell in np.unique(cells):
        ys, xs = np.nonzero(cells == cell)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert h * w == ys.size, "a cell is not a filled rectangle"
        assert 1 <= h <= 6 and 1 <= w <= 6


def test_fine_parcel_scene(scenes, indian_pines: Path) -> None:
    cube, truth, cells = scenes.parcel_scene("indian_pines", size=48, seed=1)
    assert cube.shape == (48, 48, 200) and cube.dtype == np.uint16
    assert truth.shape == cells.shape == (48, 48) and truth.dtype == np.uint8
    classes = scenes.PARCEL_CLASSES["indian_pines"]
    assert set(np.unique(truth).tolist()) == set(range(1, len(classes) + 1))  # every pixel labelled, 1…K
    for cell in np.unique(cells):
        ys, xs = np.nonzero(cells == cell)
        h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
        assert 1 <= h <= 6 and 1 <= w <= 6 and h * w == ys.size
        assert np.unique(truth[ys, xs]).size == 1, "a cell holds one class"
    # A cell's class differs from that of the cell on its left.
    left_edge = cells[:, 1:] != cells[:, :-1]
    assert np.all(truth[:, 1:][left_edge] != truth[:, :-1][left_edge])
    # The small distinct class is small; spectra are real pixels of the right source class.
    small = len(classes)
    assert 0 < np.mean(truth == small) < 0.10
    source = np.load(indian_pines)
    source_truth = np.load(indian_pines.parent / "Indian_pines_gt.npy")
    for k, class_id in enumerate(classes, start=1):
        pool = {p.tobytes() for p in source[source_truth == class_id]}
        drawn = cube[truth == k][:20]
        assert all(p.tobytes() in pool for p in drawn)
    # Deterministic.
    again, truth_again, _ = scenes.parcel_scene("indian_pines", size=48, seed=1)
    assert np.array_equal(again, cube) and np.array_equal(truth_again, truth)


def test_coarse_scene_2x(scenes, indian_pines: Path, tmp_path: Path) -> None:
    cube, truth = scenes.coarse_scene("indian_pines", 2)
    source = np.load(indian_pines).astype(np.float64)
    source_truth = np.load(indian_pines.parent / "Indian_pines_gt.npy")
    assert cube.shape == (72, 72, 200) and cube.dtype == np.float32 and truth.shape == (72, 72)
    np.testing.assert_allclose(cube[10, 20], source[20:22, 40:42].mean(axis=(0, 1)), rtol=1e-6)
    assert set(np.unique(truth).tolist()) <= set(np.unique(source_truth).tolist())
    assert 0 in truth
    for y, x in np.ndindex(truth.shape):
        block = source_truth[2 * y:2 * y + 2, 2 * x:2 * x + 2].ravel()
        labelled = block[block != 0]
        if labelled.size * 2 < block.size:
            assert truth[y, x] == 0
        else:
            counts = np.bincount(labelled)
            assert counts[truth[y, x]] == counts.max()
    # build_scene writes a cube the pipeline opens and a ground truth it reads.
    from hsi_cluster.io import open_scene
    from hsi_cluster.io.labels import read_label_map

    built = scenes.build_scene("indian_pines_2x", tmp_path)
    assert built.cube.parent == tmp_path and open_scene(built.cube).shape == (200, 72, 72)
    assert np.array_equal(read_label_map(built.truth)[0], truth)
    assert built.n_classes == np.count_nonzero(np.unique(truth))


@pytest.mark.parametrize("name, k", [("samson", 3), ("jasper_ridge", 4)])
def test_every_pixel_labelled_scenes_start_at_1(scenes, shared_data: Path, tmp_path: Path, name: str, k: int) -> None:
    if not (shared_data / name / f"{name}.hdr").is_file():
        pytest.skip(f"{name} is missing from ../shared/data")
    built = scenes.build_scene(name, tmp_path)
    truth = np.load(built.truth)
    assert truth.min() >= 1 and built.n_classes == k
    # A copy that used 0 as a real class would be shifted, not half-scored.
    zero_based = tmp_path / "zero.npy"
    np.save(zero_based, truth - 1)
    assert np.array_equal(np.load(scenes.every_pixel_labelled(zero_based, tmp_path)), truth)


def test_raw_sensor_scene(scenes, indian_pines: Path, tmp_path: Path) -> None:
    """Indian Pines with noise-only runs inside the spectrum, dead bands at its end and NaN gaps; the
    real bands are kept in order and unchanged, and the truth is 0 where the data is missing."""
    cube, truth = scenes.raw_sensor_scene("indian_pines")
    source = np.load(indian_pines).astype(np.float32)
    source_truth = np.load(indian_pines.parent / "Indian_pines_gt.npy")
    noise, dead = sum(scenes.NOISE_BANDS), scenes.DEAD_BANDS
    assert cube.shape == (145, 145, 200 + noise + dead) and cube.dtype == np.float32
    gaps = np.isnan(cube).any(axis=-1)
    assert np.array_equal(gaps, np.isnan(cube).all(axis=-1))  # a nodata pixel is missing in every band
    assert gaps[48:51].all() and gaps[69:75, 69:75].all() and gaps.sum() == 3 * 145 + 36
    first, second = int(200 * 0.6), int(200 * 0.8)
    real = np.r_[0:first, first + 12:second + 12, second + noise:200 + noise]
    np.testing.assert_array_equal(cube[~gaps][:, real], source[~gaps])
    inserted = np.r_[first:first + 12, second + 12:second + noise]
    spectra = cube[~gaps]
    # noise only: no spatial structure, so a band is uncorrelated with its neighbouring pixels
    lag = [abs(np.corrcoef(cube[:40, :-1, b].ravel(), cube[:40, 1:, b].ravel())[0, 1]) for b in inserted]
    assert max(lag) < 0.1
    assert (spectra[:, -dead:] == 0).all()
    assert (truth[gaps] == 0).all() and np.array_equal(truth[~gaps], source_truth[~gaps])
    built = scenes.build_scene("indian_pines_raw", tmp_path)
    assert built.n_classes == 16


def test_striped_scene(scenes, indian_pines: Path, tmp_path: Path) -> None:
    """Indian Pines plus one offset per band and column, of about 0.1 band std; the truth is unchanged."""
    cube, truth = scenes.striped_scene("indian_pines")
    source = np.load(indian_pines).astype(np.float32)
    assert cube.shape == source.shape and cube.dtype == np.float32
    stripes = cube - source
    np.testing.assert_allclose(stripes, np.broadcast_to(stripes[:1], stripes.shape), atol=1e-2)  # constant down a column
    relative = stripes[0] / source.std(axis=(0, 1))  # (x, band)
    assert abs(relative.std() - scenes.STRIPE_STRENGTH) < 0.01 and abs(relative.mean()) < 0.01
    assert np.array_equal(truth, np.load(indian_pines.parent / "Indian_pines_gt.npy"))
    built = scenes.build_scene("indian_pines_striped", tmp_path)
    assert built.n_classes == 16 and np.load(built.cube).shape == source.shape
