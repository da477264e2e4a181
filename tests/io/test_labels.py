"""``read_label_map``: 2-D label maps from rasters, ``.npy`` and ``.mat`` (v5 and v7.3); ``read_label_pair``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hsi_cluster.errors import MetadataWarning, SceneError
from hsi_cluster.io.labels import (
    band_class_names,
    read_label_map,
    read_label_pair,
    truth_class_names,
    truth_unlabelled,
)
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


def test_an_empty_class_name_keeps_the_others_in_place(tmp_path: Path) -> None:
    """GDAL writes a class without a name as an empty item (``{A, B, , D}``): the list still has one item per class."""
    names = ["Unclassified", "Corn notill", "", "Soybean mintill", "Woods"]
    header = write_envi_classification(tmp_path / "gt.img", LABELS, names)
    assert "Corn notill, , Soybean" in header.read_text()
    assert truth_class_names(header) == {0: "Unclassified", 1: "Corn notill", 3: "Soybean mintill", 4: "Woods"}


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


# GDAL's PAM sidecar (TRUTH.aux.xml), as GDAL, QGIS and ArcGIS write a GeoTIFF's class names: element names as
# GDAL's gdalpamrasterband.cpp / gdal_rat.cpp serialise them; usages from gdal.h (2 Name, 3 Min, 4 Max, 5 MinMax).
CATEGORY_NAMES_PAM = """<PAMDataset>
  <PAMRasterBand band="1">
    <CategoryNames>
      <Category>Unclassified</Category>
      <Category>Corn notill</Category>
      <Category></Category>
      <Category>Soybean mintill</Category>
      <Category>Woods</Category>
    </CategoryNames>
  </PAMRasterBand>
</PAMDataset>
"""


def _rat_pam(fields: list[tuple[str, int, int]], rows: list[list[object]], binning: str = "") -> str:
    """A PAM sidecar whose band 1 has a thematic raster attribute table of ``fields`` (name, type, usage)."""
    defs = "".join(f'<FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
                   for i, (n, t, u) in enumerate(fields))
    cells = "".join(f'<Row index="{i}">' + "".join(f"<F>{v}</F>" for v in row) + "</Row>" for i, row in enumerate(rows))
    return (f'<PAMDataset><PAMRasterBand band="1"><GDALRasterAttributeTable tableType="thematic"{binning}>'
            f"{defs}{cells}</GDALRasterAttributeTable></PAMRasterBand></PAMDataset>")


RAT_NAMES = {1: "Corn notill", 3: "Soybean mintill", 4: "Woods"}
RAT_SIDECARS = {  # each names classes 1, 3 and 4 of LABELS (values 0..4), as a tool writes it
    "gdal-qgis": _rat_pam([("Value", 0, 5), ("Count", 0, 1), ("Class", 2, 2), ("Red", 0, 6)],
                          [[v, 10, n, 200] for v, n in RAT_NAMES.items()]),
    "arcgis": _rat_pam([("OID", 0, 0), ("Value", 0, 0), ("Count", 1, 0), ("Class_Name", 2, 0)],
                       [[i, v, 12.0, n] for i, (v, n) in enumerate(RAT_NAMES.items())]),
    "min-max": _rat_pam([("Min", 1, 3), ("Max", 1, 4), ("Name", 2, 2)],
                        [[v, v, n] for v, n in RAT_NAMES.items()]),
    "linear-binning": _rat_pam([("Name", 2, 2), ("Count", 0, 1)],
                               [["Corn notill", 1], ["", 0], ["Soybean mintill", 1], ["Woods", 1]],
                               binning=' Row0Min="1" BinSize="1"'),
}


def write_geotiff_truth(path: Path, sidecar: str | None) -> Path:
    """A uint8 GeoTIFF ground truth (EPSG:32633) of ``LABELS`` with ``sidecar`` as its ``.aux.xml``."""
    helpers.write_geotiff(path, LABELS[None])
    if sidecar is not None:
        path.with_name(path.name + ".aux.xml").write_text(sidecar, encoding="utf-8")
    return path


def gdal_band_xml(path: Path, tmp_path: Path):
    """Band 1 as GDAL itself reads it (sidecar included), serialised by GDAL's VRT driver (no gdalinfo needed)."""
    import xml.etree.ElementTree as ET

    import rasterio.shutil

    vrt = tmp_path / f"{path.stem}.gdal.vrt"
    rasterio.shutil.copy(path, vrt, driver="VRT")
    band = ET.parse(vrt).getroot().find("VRTRasterBand[@band='1']")
    assert band is not None
    return band


def test_geotiff_category_names(tmp_path: Path) -> None:
    """GDAL category names in a GeoTIFF's PAM sidecar: the i-th names class value i; an empty one names none."""
    import rasterio

    truth = write_geotiff_truth(tmp_path / "gt.tif", CATEGORY_NAMES_PAM)
    expected = {0: "Unclassified", 1: "Corn notill", 3: "Soybean mintill", 4: "Woods"}
    assert truth_class_names(truth) == expected
    with rasterio.open(truth) as dataset:
        assert dataset.crs.to_epsg() == 32633
    # GDAL reads the fixture's names (GDALGetRasterCategoryNames, seen through its VRT serialisation)
    band = gdal_band_xml(truth, tmp_path)
    assert [c.text or "" for c in band.find("CategoryNames")] == ["Unclassified", "Corn notill", "", "Soybean mintill",
                                                                   "Woods"]
    assert band_class_names(band) == expected
    # names of another band are not the label band's
    other_band = CATEGORY_NAMES_PAM.replace('band="1"', 'band="2"')
    assert truth_class_names(write_geotiff_truth(tmp_path / "other.tif", other_band)) == {}


@pytest.mark.parametrize("style", list(RAT_SIDECARS))
def test_geotiff_raster_attribute_table_class_names(tmp_path: Path, style: str) -> None:
    """A raster attribute table in the sidecar: the Name column by the value column (MinMax, Min+Max, an
    ArcGIS 'Value' column of generic usage, or linear binning), read as GDAL reads the table."""
    truth = write_geotiff_truth(tmp_path / "gt.tif", RAT_SIDECARS[style])
    assert truth_class_names(truth) == RAT_NAMES
    band = gdal_band_xml(truth, tmp_path)  # GDAL parses the fixture's table into the same table
    assert band.find("GDALRasterAttributeTable") is not None
    assert band_class_names(band) == RAT_NAMES


def test_attribute_table_before_category_names(tmp_path: Path) -> None:
    categories = CATEGORY_NAMES_PAM[CATEGORY_NAMES_PAM.index("<CategoryNames>"):CATEGORY_NAMES_PAM.index("</PAMRasterBand>")]
    table = RAT_SIDECARS["gdal-qgis"].replace("</PAMRasterBand>", categories + "</PAMRasterBand>")
    assert "<CategoryNames>" in table
    assert truth_class_names(write_geotiff_truth(tmp_path / "gt.tif", table)) == RAT_NAMES
    # a table without a name column leaves the category names
    no_names = table.replace("<Usage>2</Usage>", "<Usage>0</Usage>").replace("<Type>2</Type>", "<Type>0</Type>")
    assert truth_class_names(write_geotiff_truth(tmp_path / "gt2.tif", no_names))[1] == "Corn notill"


@pytest.mark.parametrize("case", ["not-xml", "value-not-a-number", "no-value-column", "bad-binning", "binary"])
def test_malformed_sidecar_warns_and_names_nothing(tmp_path: Path, case: str) -> None:
    """A broken ``.aux.xml``: a warning, no names, and the ground truth is still scored."""
    from hsi_cluster.evaluate import score_label_files

    sidecar = {
        "not-xml": CATEGORY_NAMES_PAM.replace("</CategoryNames>", ""),
        "value-not-a-number": RAT_SIDECARS["gdal-qgis"].replace("<F>3</F>", "<F>three</F>"),
        "no-value-column": _rat_pam([("Class", 2, 2)], [["Corn"], ["Woods"]]),
        "bad-binning": RAT_SIDECARS["linear-binning"].replace('BinSize="1"', 'BinSize="0"'),
        "binary": "\x00\x01garbage",
    }[case]
    truth = write_geotiff_truth(tmp_path / "gt.tif", sidecar)
    with pytest.warns(MetadataWarning, match=r"gt\.tif\.aux\.xml: class names not read, so classes are shown by "
                                             r"number \(.+\); correct or remove this GDAL sidecar"):
        assert truth_class_names(truth) == {}
    np.save(tmp_path / "labels.npy", LABELS)
    with pytest.warns(MetadataWarning, match="class names not read"):
        scores = score_label_files(tmp_path / "labels.npy", truth)
    assert scores.acc == pytest.approx(1.0) and scores.class_names == {}


def test_envi_classification_sidecar_names_when_its_header_has_none(tmp_path: Path) -> None:
    """Any GDAL raster's sidecar counts: an ENVI binary's ``.img.aux.xml`` (the header's names come first)."""
    helpers.write_envi(tmp_path / "plain.img", LABELS[None])
    (tmp_path / "plain.img.aux.xml").write_text(CATEGORY_NAMES_PAM, encoding="utf-8")
    assert truth_class_names(tmp_path / "plain.hdr")[4] == "Woods"
    header = write_envi_classification(tmp_path / "gt.img", LABELS, CLASS_NAMES)
    (tmp_path / "gt.img.aux.xml").write_text(RAT_SIDECARS["gdal-qgis"], encoding="utf-8")
    assert truth_class_names(header) == dict(enumerate(CLASS_NAMES))


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
    if case == "size":  # without georeferencing, only the size can be checked
        np.save(tmp_path / "gt.npy", LABELS[:, :5])
        truth, words = tmp_path / "gt.npy", "9×7 pixels but the ground truth gt.npy has 9×5"
    else:
        shifted = helpers.utm_transform(origin=(helpers.ORIGIN[0] + helpers.PIXEL_SIZE / 2, helpers.ORIGIN[1]))
        kwargs = {"crs": "EPSG:4326"} if case == "crs" else {"transform": shifted}
        truth = helpers.write_geotiff(tmp_path / "gt.tif", LABELS[None], **kwargs).path
        words = "not on the pixel grid of the ground truth gt.tif " + (
            r"\(CRS EPSG:32633 vs EPSG:4326\)" if case == "crs" else r"\(same CRS, geotransform \(30, 0, 500000, ")
    with pytest.raises(SceneError, match=words) as info:
        read_label_pair(labels, truth)
    assert str(info.value).startswith(str(labels))


def test_a_ground_truth_over_part_of_the_scene_on_its_grid_is_scored_where_they_overlap(tmp_path: Path) -> None:
    """A truth raster on the labels' pixel grid but another extent (a survey over part of the scene, or reaching
    past it): both are cut to their overlap; labelled truth pixels outside the labels are named in a warning."""
    from hsi_cluster.errors import MetadataWarning

    labels = helpers.write_geotiff(tmp_path / "labels.tif", LABELS[None]).path  # 9 × 7
    inside = helpers.utm_transform(origin=(helpers.ORIGIN[0] + 2 * helpers.PIXEL_SIZE,
                                           helpers.ORIGIN[1] - 3 * helpers.PIXEL_SIZE))
    part = helpers.write_geotiff(tmp_path / "part.tif", (LABELS[3:7, 2:5] + 1)[None], transform=inside).path
    read, _, reference = read_label_pair(labels, part)
    np.testing.assert_array_equal(read, LABELS[3:7, 2:5])
    np.testing.assert_array_equal(reference, LABELS[3:7, 2:5] + 1)
    past = helpers.utm_transform(origin=(helpers.ORIGIN[0] + 5 * helpers.PIXEL_SIZE, helpers.ORIGIN[1]))
    wider = np.ones((9, 4), np.uint8)  # columns 5, 6 lie on the labels, 7 and 8 past their edge
    beyond = helpers.write_geotiff(tmp_path / "beyond.tif", wider[None], transform=past).path
    with pytest.warns(MetadataWarning, match="beyond.tif: 18 labelled pixels lie outside the label raster labels.tif"):
        read, _, reference = read_label_pair(labels, beyond)
    np.testing.assert_array_equal(read, LABELS[:, 5:])
    assert reference.shape == (9, 2)


def test_a_ground_truth_from_the_labels_corner_is_scored_on_the_overlap(tmp_path: Path) -> None:
    """A survey cut from the same top-left corner has the labels' geotransform and another size: it was refused
    as "9×7 pixels but the ground truth has 4×3" (the overlap was sought only for differing geotransforms)."""
    labels = helpers.write_geotiff(tmp_path / "labels.tif", LABELS[None]).path
    corner = helpers.write_geotiff(tmp_path / "corner.tif", (LABELS[:4, :3] + 1)[None]).path
    read, _, reference = read_label_pair(labels, corner)
    np.testing.assert_array_equal(read, LABELS[:4, :3])
    np.testing.assert_array_equal(reference, LABELS[:4, :3] + 1)


def test_a_ground_truth_off_the_grid_or_beside_it_is_refused_saying_so(tmp_path: Path) -> None:
    """Half a pixel off and of another size, the error named the sizes instead of the grids; on the grid but
    beside the labels, it names the missing overlap."""
    labels = helpers.write_geotiff(tmp_path / "labels.tif", LABELS[None]).path
    half = helpers.utm_transform(origin=(helpers.ORIGIN[0] + helpers.PIXEL_SIZE / 2, helpers.ORIGIN[1]))
    off = helpers.write_geotiff(tmp_path / "off.tif", LABELS[None, :4, :3], transform=half).path
    with pytest.raises(SceneError, match=r"not on the pixel grid of the ground truth off.tif \(same CRS, geotransform"):
        read_label_pair(labels, off)
    beside = helpers.utm_transform(origin=(helpers.ORIGIN[0] + 7 * helpers.PIXEL_SIZE, helpers.ORIGIN[1]))
    apart = helpers.write_geotiff(tmp_path / "apart.tif", LABELS[None], transform=beside).path
    with pytest.raises(SceneError, match=r"no pixel in common with the ground truth apart.tif \(one pixel grid, "
                                         r"disjoint extents\)"):
        read_label_pair(labels, apart)


def test_south_up_labels_are_scored_against_a_north_up_truth_of_the_same_pixels(tmp_path: Path) -> None:
    """Labels of a south-up scene (predict keeps its transform) against the survey's north-up raster were refused
    as "not on the pixel grid": the same CRS, pixel size and footprint, the rows stored the other way up."""
    from affine import Affine

    labels = LABELS[::-1]  # row 0 is the southernmost
    bottom = helpers.ORIGIN[1] - LABELS.shape[0] * helpers.PIXEL_SIZE
    south_up = Affine(helpers.PIXEL_SIZE, 0.0, helpers.ORIGIN[0], 0.0, helpers.PIXEL_SIZE, bottom)
    written = helpers.write_geotiff(tmp_path / "labels.tif", labels[None], transform=south_up).path
    truth = helpers.write_geotiff(tmp_path / "gt.tif", (LABELS + 1)[None]).path
    read, _, reference = read_label_pair(written, truth)
    np.testing.assert_array_equal(read, LABELS)
    np.testing.assert_array_equal(reference, LABELS + 1)


def test_a_float_truth_declaring_nan_as_nodata_is_read(tmp_path: Path) -> None:
    """QGIS and GDAL rasterise vector truth to float with nodata NaN: it was refused as "nodata value nan is not
    an integer"; its NaN pixels are unlabelled, as without the declaration."""
    labels = helpers.write_geotiff(tmp_path / "labels.tif", LABELS[None]).path
    holes = (LABELS + 1).astype(np.float32)
    holes[:, 0] = np.nan
    truth = helpers.write_geotiff(tmp_path / "gt_nan.tif", holes[None], nodata=float("nan")).path
    _, _, reference = read_label_pair(labels, truth, unlabelled=0)
    assert (reference[:, 0] == 0).all() and np.array_equal(reference[:, 1:], LABELS[:, 1:] + 1)
    with pytest.raises(SceneError, match="holds non-integer values"):  # a cluster-label raster holds no NaN
        read_label_map(helpers.write_geotiff(tmp_path / "l_nan.tif", holes[None], nodata=float("nan")).path)


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
