"""``read_label_map``: 2-D label maps from rasters, ``.npy`` and ``.mat`` (v5 and v7.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hsi_cluster.errors import SceneError
from hsi_cluster.io.labels import read_label_map
from tests import helpers

LABELS = np.arange(9 * 7, dtype=np.uint8).reshape(9, 7) % 5  # y != x catches a transpose


def test_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "l.npy", LABELS)
    labels, nodata = read_label_map(tmp_path / "l.npy")
    np.testing.assert_array_equal(labels, LABELS)
    assert nodata is None


def test_geotiff_with_nodata(tmp_path: Path) -> None:
    helpers.write_geotiff(tmp_path / "l.tif", LABELS[None], nodata=255)
    labels, nodata = read_label_map(tmp_path / "l.tif")
    np.testing.assert_array_equal(labels, LABELS)
    assert nodata == 255


@pytest.mark.parametrize("writer", [helpers.write_mat_v5, helpers.write_mat_v73], ids=["v5", "v7.3"])
def test_mat(tmp_path: Path, writer) -> None:
    writer(tmp_path / "gt.mat", None, extra={"gt": LABELS})
    labels, _ = read_label_map(tmp_path / "gt.mat")
    np.testing.assert_array_equal(labels, LABELS)
    writer(tmp_path / "two.mat", None, extra={"a": LABELS, "b": LABELS + 1})
    with pytest.raises(SceneError, match="--var"):
        read_label_map(tmp_path / "two.mat")
    np.testing.assert_array_equal(read_label_map(tmp_path / "two.mat", var="b")[0], LABELS + 1)


def test_salinas_a_ground_truth(sample_salinas_a: Path) -> None:
    labels, _ = read_label_map(sample_salinas_a.parent / "SalinasA_gt.mat")
    assert labels.shape == (83, 86)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 10, 11, 12, 13, 14]
    assert int((labels > 0).sum()) == 5348


def test_indian_pines_ground_truth(shared_data: Path) -> None:
    labels, _ = read_label_map(shared_data / "indian_pines" / "Indian_pines_gt.npy")
    assert labels.shape == (145, 145)
    assert int((labels > 0).sum()) == 10249
    assert len(np.unique(labels[labels > 0])) == 16


@pytest.mark.parametrize("case", ["missing", "multiband", "3d-npy", "text"])
def test_bad_label_maps(tmp_path: Path, case: str) -> None:
    if case == "missing":
        path = tmp_path / "nope.tif"
    elif case == "multiband":
        path = helpers.write_geotiff(tmp_path / "cube.tif", helpers.synthetic_cube(3, 4, 5, "uint8")).path
    elif case == "3d-npy":
        path = tmp_path / "cube.npy"
        np.save(path, np.zeros((2, 3, 4)))
    else:
        path = tmp_path / "text.tif"
        path.write_text("not a raster")
    with pytest.raises(SceneError) as info:
        read_label_map(path)
    assert path.name in str(info.value)
