"""Patch-by-patch labelling of a store, against the model run on hand-cut reflect-padded patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hsi_cluster.model.sscc import SSCC
from hsi_cluster.predict import NO_LABEL, label_patches
from hsi_cluster.train import fit_spectral_projection
from tests.train_helpers import IngestedScene, make_scene, reference_filled, reflect_padded, structured_cube

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATCH = 5
K = 4


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """Structured 40 × 37 × 12 scene with NaN and nodata pixels, 16-pixel chunks."""
    return make_scene(tmp_path_factory.mktemp("predict"), structured=True, seed=5, nan_pixels=30,
                      nodata_pixels=20)


@pytest.fixture(scope="module", params=["dense", "resnet"])
def model(request: pytest.FixtureRequest, scene: IngestedScene) -> SSCC:
    """An untrained but non-degenerate model (random weights, BatchNorm statistics from the scene)."""
    fit = fit_spectral_projection([scene.store], 4, n_samples=2000)
    torch.manual_seed(0)
    kwargs = {"width": 8, "depth": 2} if request.param == "dense" else {"stem_width": 8, "widths": [8, 8], "blocks_per_stage": 1}
    try:
        net = SSCC.build(fit.mean, fit.std, fit.components, n_clusters=K, backbone=request.param,
                         backbone_kwargs=kwargs, head_hidden=16)
    except TypeError:
        pytest.skip(f"resnet backbone does not take {kwargs}")
    padded = reflect_padded(reference_filled(scene.cube, scene.valid), PATCH // 2)
    patches = np.stack([padded[:, r:r + PATCH, c:c + PATCH] for r in range(0, 40, 3) for c in range(0, 37, 3)])
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.from_numpy(patches))
    return net.eval()


def cut(scene: IngestedScene, rows: list[int], cols: list[int]) -> torch.Tensor:
    padded = reflect_padded(reference_filled(scene.cube, scene.valid), PATCH // 2)
    return torch.from_numpy(np.stack([padded[:, r:r + PATCH, c:c + PATCH] for r, c in zip(rows, cols, strict=True)]))


def test_labels_valid_pixels_and_marks_invalid_ones(model: SSCC, scene: IngestedScene) -> None:
    calls: list[tuple[int, int]] = []
    labels, confidence = label_patches(model, scene.store, patch_size=PATCH, batch_size=100,
                                       progress=lambda done, total: calls.append((done, total)))
    assert labels.shape == confidence.shape == (40, 37)
    assert labels.dtype == np.int32 and confidence.dtype == np.float32
    assert (labels[~scene.valid] == NO_LABEL).all() and np.isnan(confidence[~scene.valid]).all()
    assert ((labels[scene.valid] >= 0) & (labels[scene.valid] < K)).all()
    assert np.isfinite(confidence[scene.valid]).all(), "NaN neighbours leaked into a valid pixel's patch"
    assert ((confidence[scene.valid] >= 1 / K - 1e-6) & (confidence[scene.valid] <= 1 + 1e-6)).all()
    if model.config["backbone"] == "dense":  # (a random ResNet averages everything into one cluster)
        assert len(np.unique(labels[scene.valid])) > 1  # the test model is not degenerate
    assert calls == [(k, 9) for k in range(1, 10)]


def test_equals_predict_patches_on_hand_cut_patches(model: SSCC, scene: IngestedScene) -> None:
    labels, confidence = label_patches(model, scene.store, patch_size=PATCH, batch_size=64)
    rows, cols = np.nonzero(scene.valid)
    picks = [(0, 0), (0, 36), (39, 0), (39, 36), (1, 1), (15, 16), (16, 15), (31, 32), (38, 2), (20, 36)]
    # and some valid pixels with an invalid neighbour inside their patch
    near_hole = [(r, c) for r, c in zip(rows, cols, strict=True)
                 if not scene.valid[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].all()][::7][:8]
    assert len(near_hole) == 8
    picks = [p for p in picks if scene.valid[p]] + near_hole
    assert len(picks) >= 14
    expected_labels, expected_confidence = model.predict_patches(cut(scene, *map(list, zip(*picks, strict=True))))
    for (r, c), label, conf in zip(picks, expected_labels.tolist(), expected_confidence.tolist(), strict=True):
        assert labels[r, c] == label, (r, c)
        assert confidence[r, c] == pytest.approx(conf, rel=1e-5), (r, c)


def test_batch_size_does_not_change_the_result(model: SSCC, scene: IngestedScene) -> None:
    a = label_patches(model, scene.store, patch_size=PATCH, batch_size=97)
    b = label_patches(model, scene.store, patch_size=PATCH, batch_size=4096)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)


def test_all_pixels_of_a_whole_scene(model: SSCC, scene: IngestedScene) -> None:
    """Every valid pixel, compared with the model on the whole scene's hand-cut patches."""
    labels, confidence = label_patches(model, scene.store, patch_size=PATCH)
    rows, cols = np.nonzero(scene.valid)
    expected, expected_confidence = model.predict_patches(cut(scene, rows.tolist(), cols.tolist()))
    np.testing.assert_array_equal(labels[rows, cols], expected.numpy())
    np.testing.assert_allclose(confidence[rows, cols], expected_confidence.numpy(), rtol=1e-5)


def test_leaves_the_model_in_eval_mode_and_unchanged(model: SSCC, scene: IngestedScene) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    label_patches(model, scene.store, patch_size=PATCH)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm stats untouched
    model.eval()


def test_empty_blocks_are_skipped(tmp_path: Path) -> None:
    cube = structured_cube(6, 32, 20, seed=2)
    cube[:, :16, :] = np.nan  # the first row of blocks has no valid pixel
    scene = make_scene(tmp_path, cube=cube)
    fit = fit_spectral_projection([scene.store], 3, n_samples=500)
    net = SSCC.build(fit.mean, fit.std, fit.components, n_clusters=2, backbone_kwargs={"width": 4, "depth": 2},
                     head_hidden=8).eval()
    labels, confidence = label_patches(net, scene.store, patch_size=PATCH)
    assert (labels[:16] == NO_LABEL).all() and (labels[16:] >= 0).all()
    assert np.isfinite(confidence[16:]).all()


def test_fill_decides_what_holes_read_as(model: SSCC, scene: IngestedScene) -> None:
    """Default fill = the store's band means = the training mean a checkpoint holds for its own scene."""
    default = label_patches(model, scene.store, patch_size=PATCH)
    mean = scene.cube[:, scene.valid].astype(np.float64).mean(axis=1)
    explicit = label_patches(model, scene.store, patch_size=PATCH, fill=mean)
    np.testing.assert_array_equal(default[0], explicit[0])
    np.testing.assert_array_equal(default[1], explicit[1])
    other = label_patches(model, scene.store, patch_size=PATCH, fill=mean + 3 * scene.cube[:, scene.valid].std(axis=1))
    clean = np.zeros_like(scene.valid)
    padded_valid = np.pad(scene.valid, PATCH // 2, mode="reflect")
    for r in range(40):
        for c in range(37):
            clean[r, c] = padded_valid[r:r + PATCH, c:c + PATCH].all()
    np.testing.assert_array_equal(other[1][clean], default[1][clean])  # patches without holes: unchanged
    near_hole = scene.valid & ~clean
    assert not np.allclose(other[1][near_hole], default[1][near_hole])


def test_the_rate_of_a_resumed_run_counts_the_tiles_it_labelled() -> None:
    """After --resume the rate divided every pixel, resumed tiles included, by this run's time (8.6 Mpix/s when only
    the COG was left to write)."""
    from hsi_cluster.predict import PredictResult

    fresh = PredictResult(output=Path("l.tif"), confidence=None, quicklook=None, tiles=16, tiles_resumed=0,
                          pixels=1_600_000, valid_pixels=1_500_000, seconds=8.0, counts={})
    resumed = PredictResult(output=Path("l.tif"), confidence=None, quicklook=None, tiles=16, tiles_resumed=12,
                            pixels=1_600_000, valid_pixels=1_500_000, seconds=2.0, counts={})
    assert fresh.megapixels_per_second == pytest.approx(0.2)
    assert resumed.megapixels_per_second == pytest.approx(0.2)
