"""``read_label_map``: 2-D label maps from rasters, ``.npy`` and ``.mat`` (v5 and v7.3); ``read_label_pair``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hsi_cluster.errors import MetadataWarning, SceneError
from hsi_cluster.io.labels import read_label_map, read_label_pair, truth_class_names, truth_unlabelled
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


def test_envi_label_map_named_by_its_header(tmp_path: Path) -> None:
    helpers.write_geotiff(tmp_path / "gt.img", LABELS[None], driver="ENVI")
    assert (tmp_path / "gt.hdr").is_file()
    np.testing.assert_array_equal(read_label_map(tmp_path / "gt.hdr")[0], LABELS)


CLASS_NAMES = ["Unclassified", "Corn notill", "Grass-pasture", "Soybean mintill", "Woods"]


def write_envi_classification(path: Path, labels: np.ndarray, names: list[str], classes: int | None = None) -> Path:
    """A uint8 ENVI classification (``file type = ENVI Classification``) with ``class names``; returns its header."""
    header = helpers.write_envi(path, labels[None].astype(np.uint8), header_fields={
        "file type": "ENVI Classification", "classes": len(names) if classes is None else classes,
        "class names": names}).header
    assert header is not None
    return header


def test_envi_classification_class_names(tmp_path: Path) -> None:
    header = write_envi_classification(tmp_path / "gt.img", LABELS, CLASS_NAMES)
    expected = dict(enumerate(CLASS_NAMES))
    assert truth_class_names(header) == expected
    assert truth_class_names(tmp_path / "gt.img") == expected  # the binary names the same file
    np.testing.assert_array_equal(read_label_map(header)[0], LABELS)


def test_ground_truth_without_class_names_has_none(tmp_path: Path) -> None:
    np.save(tmp_path / "gt.npy", LABELS)
    helpers.write_geotiff(tmp_path / "gt.tif", LABELS[None])
    helpers.write_envi(tmp_path / "plain.img", LABELS[None])
    for name in ("gt.npy", "gt.tif", "plain.hdr", "missing.tif"):
        assert truth_class_names(tmp_path / name) == {}, name


def test_class_names_of_another_count_than_the_classes_are_not_used(tmp_path: Path) -> None:
    header = write_envi_classification(tmp_path / "gt.img", LABELS, CLASS_NAMES[:3], classes=5)
    with pytest.warns(MetadataWarning, match="'class names' lists 3 names for 5 classes"):
        assert truth_class_names(header) == {}


@pytest.mark.parametrize("case", ["missing", "multiband", "3d-npy", "text", "confidence-raster", "fractional-npy"])
def test_bad_label_maps(tmp_path: Path, case: str) -> None:
    if case == "missing":
        path = tmp_path / "nope.tif"
    elif case == "multiband":
        path = helpers.write_geotiff(tmp_path / "cube.tif", helpers.synthetic_cube(3, 4, 5, "uint8")).path
    elif case == "3d-npy":
        path = tmp_path / "cube.npy"
        np.save(path, np.zeros((2, 3, 4)))
    elif case == "confidence-raster":  # float32 with NaN nodata, as predict --confidence writes
        cube = np.full((1, 9, 7), 0.75, np.float32)
        cube[0, 0, 0] = np.nan
        path = helpers.write_geotiff(tmp_path / "conf.tif", cube, nodata=float("nan")).path
    elif case == "fractional-npy":
        path = tmp_path / "p.npy"
        np.save(path, LABELS / 2)
    else:
        path = tmp_path / "text.tif"
        path.write_text("not a raster")
    with pytest.raises(SceneError) as info:
        read_label_map(path)
    assert path.name in str(info.value) and "\n" not in str(info.value)
    if case in ("confidence-raster", "fractional-npy"):
        assert "non-integer values" in str(info.value)


def test_a_float_map_of_whole_numbers_reads(tmp_path: Path) -> None:
    np.save(tmp_path / "gt.npy", LABELS.astype(np.float64))
    np.testing.assert_array_equal(read_label_map(tmp_path / "gt.npy")[0], LABELS)


def test_label_pair_on_one_grid(tmp_path: Path) -> None:
    labels = helpers.write_geotiff(tmp_path / "labels.tif", LABELS[None], nodata=255).path
    truth = helpers.write_geotiff(tmp_path / "gt.tif", (LABELS + 1)[None]).path
    np.save(tmp_path / "gt.npy", LABELS + 1)  # no georeferencing: only the size is checked
    for gt in (truth, tmp_path / "gt.npy"):
        read, nodata, reference = read_label_pair(labels, gt)
        np.testing.assert_array_equal(read, LABELS)
        np.testing.assert_array_equal(reference, LABELS + 1)
        assert nodata == 255


@pytest.mark.parametrize("case", ["size", "crs", "transform"])
def test_label_pair_on_different_grids_is_refused(tmp_path: Path, case: str) -> None:
    labels = helpers.write_geotiff(tmp_path / "labels.tif", LABELS[None]).path
    if case == "size":
        truth = helpers.write_geotiff(tmp_path / "gt.tif", LABELS[None, :, :5]).path
        words = "9×7 pixels but the ground truth gt.tif has 9×5"
    else:
        shifted = helpers.utm_transform(origin=(helpers.ORIGIN[0] + helpers.PIXEL_SIZE, helpers.ORIGIN[1]))
        kwargs = {"crs": "EPSG:4326"} if case == "crs" else {"transform": shifted}
        truth = helpers.write_geotiff(tmp_path / "gt.tif", LABELS[None], **kwargs).path
        words = "not on the pixel grid of the ground truth gt.tif " + (
            r"\(CRS EPSG:32633 vs EPSG:4326\)" if case == "crs" else r"\(same CRS, geotransform \(30, 0, 500000, ")
    with pytest.raises(SceneError, match=words) as info:
        read_label_pair(labels, truth)
    assert str(info.value).startswith(str(labels))


def test_truth_nodata_and_nan_pixels_are_not_scored(tmp_path: Path) -> None:
    """A ground truth whose nodata is −1 (class 0 real) or a float one with NaN holes: those pixels become
    ``unlabelled`` instead of a class "-1" (or a refusal of the NaN)."""
    from hsi_cluster.evaluate import score_label_files

    labels = helpers.write_geotiff(tmp_path / "labels.tif", LABELS[None]).path
    truth = LABELS.astype(np.int16)
    truth[0] = -1
    with_nodata = helpers.write_geotiff(tmp_path / "gt.tif", truth[None], nodata=-1).path
    _, _, reference = read_label_pair(labels, with_nodata, unlabelled=-1)
    assert (reference[0] == -1).all() and np.array_equal(reference[1:], LABELS[1:])
    scores = score_label_files(labels, with_nodata, unlabelled=99)  # the nodata pixels take the unlabelled value
    assert -1 not in scores.per_class and scores.n_scored == LABELS[1:].size
    assert scores.acc == pytest.approx(1.0)
    # by default the truth's own nodata is its unlabelled value, so class 0 is scored as the class it is
    assert score_label_files(labels, with_nodata).per_class.keys() == set(np.unique(LABELS[1:]))
    assert truth_unlabelled(with_nodata, "auto") == -1 and truth_unlabelled(labels, 7) == 7
    assert truth_unlabelled(tmp_path / "gt.npy", "auto") == 0
    holes = (LABELS + 1).astype(np.float32)
    holes[:, 0] = np.nan
    with_nan = helpers.write_geotiff(tmp_path / "gt_nan.tif", holes[None]).path
    _, _, reference = read_label_pair(labels, with_nan, unlabelled=0)
    assert reference.dtype == np.int64 and (reference[:, 0] == 0).all()
    with pytest.raises(SceneError, match="pixels are nodata or NaN"):
        read_label_pair(labels, with_nan, unlabelled=None)
