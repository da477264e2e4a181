"""Tests for hsi_cluster.evaluate (Hungarian-matched clustering scores)."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from hsi_cluster.evaluate import (
    ClusteringScores,
    EvaluationError,
    match_clusters,
    mean_std,
    score_clustering,
)

# Hand-worked example where greedy matching (largest cell first) is wrong.
#   cluster 0: 4 px of class 1, 3 px of class 2
#   cluster 1: 3 px of class 1, 0 px of class 2
# Greedy: 0->1 (4) then 1->2 (0) = 4 px.  Hungarian: 0->2 (3) + 1->1 (3) = 6 px.
# ACC = 6 / 10 = 0.6.  Purity = (4 + 3) / 10 = 0.7.
# Per class: class 1 -> 3/7 (only cluster 1's px), class 2 -> 3/3 = 1.
# Kappa: mapped pred is 2 on cluster 0, 1 on cluster 1.  p_o = 0.6;
#   truth marginals (1: 7, 2: 3), mapped marginals (1: 3, 2: 7)
#   p_e = (7*3 + 3*7) / 100 = 0.42;  kappa = (0.6 - 0.42) / (1 - 0.42) = 0.18 / 0.58.
HAND_TRUTH = np.array([1, 1, 1, 1, 2, 2, 2, 1, 1, 1])
HAND_PRED = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])


def test_hand_worked_example() -> None:
    assert match_clusters(HAND_PRED, HAND_TRUTH) == {0: 2, 1: 1}
    s = score_clustering(HAND_PRED, HAND_TRUTH, unlabelled=None)
    assert s.acc == pytest.approx(0.6)
    assert s.purity == pytest.approx(0.7)
    assert s.kappa == pytest.approx(0.18 / 0.58)
    assert s.per_class == pytest.approx({1: 3 / 7, 2: 1.0})
    assert s.class_counts == {1: 7, 2: 3}
    assert s.mapping == {0: 2, 1: 1}
    assert (s.n_scored, s.n_classes, s.n_clusters_predicted, s.n_invalid_pred) == (10, 2, 2, 0)


def test_perfect_clustering_with_permuted_ids() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 6, size=(20, 15))
    perm = {1: 42, 2: 7, 3: 0, 4: 3, 5: 19}
    pred = np.vectorize(perm.get)(truth)
    s = score_clustering(pred, truth, unlabelled=None)
    for v in (s.acc, s.nmi, s.ari, s.kappa, s.purity):
        assert v == pytest.approx(1.0)
    assert s.mapping == {v: k for k, v in perm.items()}
    assert all(a == pytest.approx(1.0) for a in s.per_class.values())


def test_more_clusters_than_classes() -> None:
    truth = np.array([1, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 5, 1, 1, 1])  # cluster 5 is left without a class
    mapping = match_clusters(pred, truth)
    assert mapping == {0: 1, 1: 2, 5: -1}
    s = score_clustering(pred, truth)
    assert s.acc == pytest.approx(5 / 6)
    assert s.n_clusters_predicted == 3 and s.n_classes == 2
    assert s.per_class == pytest.approx({1: 2 / 3, 2: 1.0})
    assert s.purity == pytest.approx(1.0)  # every cluster is pure
    assert s.kappa < 1.0


def test_fewer_clusters_than_classes() -> None:
    truth = np.array([1, 1, 1, 2, 2, 3])
    pred = np.zeros(6, dtype=int)
    s = score_clustering(pred, truth)
    assert s.mapping == {0: 1}
    assert s.acc == pytest.approx(0.5)
    assert s.per_class == pytest.approx({1: 1.0, 2: 0.0, 3: 0.0})


def test_non_contiguous_class_codes_salinas_a() -> None:
    rng = np.random.default_rng(1)
    codes = np.array([1, 10, 11, 12, 13, 14])
    truth = rng.choice(codes, size=300)
    to_cluster = {1: 3, 10: 0, 11: 5, 12: 1, 13: 4, 14: 2}
    pred = np.array([to_cluster[c] for c in truth])
    # Spoil a few pixels of class 12.
    spoiled = np.flatnonzero(truth == 12)[:4]
    pred[spoiled] = to_cluster[13]
    s = score_clustering(pred, truth)
    assert s.mapping == {v: k for k, v in to_cluster.items()}
    assert set(s.per_class) == set(codes.tolist())
    n12 = int((truth == 12).sum())
    assert s.per_class[12] == pytest.approx((n12 - 4) / n12)
    assert s.acc == pytest.approx(1 - 4 / 300)


def test_unlabelled_pixels_ignored() -> None:
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 4, size=(12, 12))  # 0 = unlabelled
    pred = rng.integers(0, 4, size=(12, 12))
    s1 = score_clustering(pred, truth)
    pred2 = pred.copy()
    unl = truth == 0
    pred2[unl] = rng.integers(0, 9, size=int(unl.sum()))
    s2 = score_clustering(pred2, truth)
    assert s1.to_dict() == s2.to_dict()
    assert s1.n_scored == int((truth != 0).sum())
    assert 0 not in s1.per_class


def test_custom_unlabelled_value() -> None:
    truth = np.array([-1, -1, 0, 0, 1, 1])
    pred = np.array([1, 0, 2, 2, 3, 3])
    s = score_clustering(pred, truth, unlabelled=-1)
    assert s.n_scored == 4 and s.acc == pytest.approx(1.0)
    assert set(s.per_class) == {0, 1}


def test_invalid_pred_counted_wrong() -> None:
    truth = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0, 0])
    pred = np.array([5, 5, 5, 255, 6, 6, 255, 255, 255, 5])  # last two are unlabelled
    s = score_clustering(pred, truth, invalid_pred=255)
    assert s.n_scored == 8
    assert s.n_invalid_pred == 3
    assert s.acc == pytest.approx(5 / 8)
    assert s.per_class == pytest.approx({1: 3 / 4, 2: 2 / 4})
    assert 255 not in s.mapping and s.mapping == {5: 1, 6: 2}
    assert s.n_clusters_predicted == 2
    assert s.purity == pytest.approx(5 / 8)
    assert s.kappa < 1.0
    # NMI / ARI: those of the labelled pixels, times the share labelled (5 of 8)
    lab = (truth != 0) & (pred != 255)
    assert s.nmi == pytest.approx(normalized_mutual_info_score(truth[lab], pred[lab]) * 5 / 8)
    assert s.ari == pytest.approx(adjusted_rand_score(truth[lab], pred[lab]) * 5 / 8)


def test_invalid_pred_is_never_matched() -> None:
    # Class 3 is wholly predicted as the nodata value: it must not be "matched" to it.
    truth = np.array([1, 1, 2, 2, 3, 3, 3, 3])
    pred = np.array([0, 0, 1, 1, -9, -9, -9, -9])
    s = score_clustering(pred, truth, invalid_pred=-9)
    assert s.acc == pytest.approx(0.5)
    assert s.per_class[3] == 0.0
    without = score_clustering(pred, truth)  # no invalid value: -9 is an ordinary cluster
    assert without.acc == pytest.approx(1.0)
    # nor is it a pure cluster for NMI and ARI: a class left wholly unlabelled scored them 1.0; they lose its share
    assert without.nmi == pytest.approx(1.0) and without.ari == pytest.approx(1.0)
    assert s.nmi == pytest.approx(0.5) and s.ari == pytest.approx(0.5)
    # no labels at all score nothing (as clusters of one pixel each, an all-nodata map scored NMI 0.4)
    classes = np.repeat(np.arange(1, 11), 100)
    nothing = score_clustering(np.full(classes.shape, 255, np.uint8), classes)
    assert (nothing.acc, nothing.nmi, nothing.ari) == (0.0, 0.0, 0.0)


def test_matches_sklearn_nmi_ari() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(1, 5, size=500)
    pred = rng.integers(0, 6, size=500)
    s = score_clustering(pred, truth)
    assert s.nmi == pytest.approx(normalized_mutual_info_score(truth, pred))
    assert s.ari == pytest.approx(adjusted_rand_score(truth, pred))


def _brute_force_acc(pred: np.ndarray, truth: np.ndarray) -> float:
    clusters, classes = np.unique(pred), np.unique(truth)
    best = 0
    # Every injective assignment of classes to clusters (clusters >= classes here).
    for chosen in itertools.permutations(clusters, len(classes)):
        hits = sum(int(np.sum((pred == k) & (truth == c))) for k, c in zip(chosen, classes, strict=True))
        best = max(best, hits)
    return best / pred.size


@pytest.mark.parametrize("seed", range(10))
def test_acc_against_brute_force_3x3(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 4, size=40)
    pred = rng.integers(0, 3, size=40)
    truth[:3] = [1, 2, 3]  # make sure all 3 classes / clusters occur
    pred[:3] = [0, 1, 2]
    s = score_clustering(pred, truth)
    assert s.acc == pytest.approx(_brute_force_acc(pred, truth))
    mapping = match_clusters(pred, truth)
    hits = sum(int(np.sum((pred == k) & (truth == c))) for k, c in mapping.items())
    assert hits / pred.size == pytest.approx(s.acc)


@pytest.mark.parametrize("seed", range(5))
def test_acc_against_brute_force_4_clusters_3_classes(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    truth = rng.integers(1, 4, size=40)
    pred = rng.integers(0, 4, size=40)
    truth[:4] = [1, 2, 3, 1]
    pred[:4] = [0, 1, 2, 3]
    s = score_clustering(pred, truth)
    assert s.acc == pytest.approx(_brute_force_acc(pred, truth))
    assert list(s.mapping.values()).count(-1) == 1


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        score_clustering(np.zeros((3, 4), int), np.zeros((4, 3), int))
    with pytest.raises(ValueError, match="shape"):
        match_clusters(np.zeros(5, int), np.zeros(6, int))


def test_no_labelled_pixels_raises() -> None:
    with pytest.raises(ValueError, match="no labelled pixels"):
        score_clustering(np.array([1, 2, 3]), np.zeros(3, int))
    with pytest.raises(ValueError, match="no labelled pixels"):
        score_clustering(np.array([], int), np.array([], int))


def test_non_integer_inputs_raise() -> None:
    with pytest.raises(ValueError, match="non-integer"):
        score_clustering(np.array([0.5, 1.0]), np.array([1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        score_clustering(np.array([0, 1]), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="dtype"):
        score_clustering(np.array(["a", "b"]), np.array([1, 2]))
    assert issubclass(EvaluationError, ValueError)
    # Integer-valued floats are accepted.
    assert score_clustering(np.array([0.0, 1.0]), np.array([1.0, 2.0])).acc == 1.0


def test_to_dict_json_and_format_table() -> None:
    s = score_clustering(HAND_PRED, HAND_TRUTH, unlabelled=None)
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["mapping"] == {"0": 2, "1": 1}
    assert d["per_class"]["1"] == pytest.approx(3 / 7)
    assert all(type(d[k]) is float for k in ("acc", "nmi", "kappa", "ari", "purity"))
    text = s.format_table()
    assert "ACC     0.6000" in text and "Purity" in text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert rows == [["1", "7", "0.4286", "1"], ["2", "3", "1.0000", "0"]]


def test_class_names_in_the_table_and_the_json() -> None:
    names = {0: "Unclassified", 1: "Corn notill", 2: "Grass", 9: "not in the scene"}
    s = score_clustering(HAND_PRED, HAND_TRUTH, unlabelled=None, class_names=names)
    assert s.class_names == {1: "Corn notill", 2: "Grass"}  # the scored classes only
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["class_names"] == {"1": "Corn notill", "2": "Grass"}
    lines = s.format_table().splitlines()
    assert lines[-3].split() == ["Class", "Name", "Pixels", "Accuracy", "Cluster"]
    assert lines[-2].split() == ["1", "Corn", "notill", "7", "0.4286", "1"]
    assert lines[-1].split() == ["2", "Grass", "3", "1.0000", "0"]
    assert lines[-2].index("7") == lines[-1].index("3")  # the columns stay aligned
    # without names: no Name column, and an empty mapping in the JSON
    plain = score_clustering(HAND_PRED, HAND_TRUTH, unlabelled=None)
    assert plain.to_dict()["class_names"] == {}
    assert "Name" not in plain.format_table()


def test_score_label_files_names_the_classes_of_an_envi_classification(tmp_path) -> None:
    from click.testing import CliRunner

    from hsi_cluster.cli import main
    from hsi_cluster.evaluate import score_label_files
    from tests import helpers

    labels, truth = _labels_and_truth()
    names = ["Unclassified", "Corn notill", "Grass-pasture", "Woods"]
    gt = helpers.write_envi(tmp_path / "gt.img", truth[None], header_fields={
        "file type": "ENVI Classification", "classes": 4, "class names": names}).header
    np.save(tmp_path / "labels.npy", labels)
    scores = score_label_files(tmp_path / "labels.npy", gt)
    assert scores.class_names == {1: "Corn notill", 2: "Grass-pasture", 3: "Woods"}  # 0 is unlabelled
    cli = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(gt)])
    assert cli.exit_code == 0, cli.stderr
    rows = {line.split()[0]: line for line in cli.stdout.splitlines()[-3:]}
    assert "Corn notill" in rows["1"] and "Grass-pasture" in rows["2"] and "Woods" in rows["3"]
    as_json = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(gt), "--json"])
    assert json.loads(as_json.stdout)["class_names"] == {"1": "Corn notill", "2": "Grass-pasture", "3": "Woods"}
    assert json.loads(as_json.stdout) == scores.to_dict()


def test_cli_names_the_classes_of_a_geotiff_ground_truth(tmp_path) -> None:
    """A GeoTIFF ground truth named by GDAL's PAM sidecar (category names, or a raster attribute table as QGIS
    and ArcGIS write it): the Name column and ``class_names``; names missing for a scored class: a warning."""
    from click.testing import CliRunner

    from hsi_cluster.cli import main
    from tests import helpers

    labels, truth = _labels_and_truth()
    np.save(tmp_path / "labels.npy", labels)
    gt = helpers.write_geotiff(tmp_path / "gt.tif", truth[None]).path  # EPSG:32633
    categories = "".join(f"<Category>{n}</Category>" for n in ["Unclassified", "Corn notill", "Grass-pasture", "Woods"])
    (tmp_path / "gt.tif.aux.xml").write_text(
        f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{categories}</CategoryNames></PAMRasterBand></PAMDataset>')
    cli = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(gt)])
    assert cli.exit_code == 0, cli.stderr
    assert cli.stdout.splitlines()[-4].split() == ["Class", "Name", "Pixels", "Accuracy", "Cluster"]
    rows = {line.split()[0]: line for line in cli.stdout.splitlines()[-3:]}
    assert "Corn notill" in rows["1"] and "Grass-pasture" in rows["2"] and "Woods" in rows["3"]
    assert "warning" not in cli.stderr
    as_json = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(gt), "--json"])
    assert json.loads(as_json.stdout)["class_names"] == {"1": "Corn notill", "2": "Grass-pasture", "3": "Woods"}
    # an attribute table (Value: MinMax, Class: Name) that names classes 1 and 3 only
    fields = [("Value", 0, 5), ("Count", 0, 1), ("Class", 2, 2)]
    table = "".join(f'<FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
                    for i, (n, t, u) in enumerate(fields))
    table += '<Row index="0"><F>1</F><F>9</F><F>Corn notill</F></Row><Row index="1"><F>3</F><F>9</F><F>Woods</F></Row>'
    (tmp_path / "gt.tif.aux.xml").write_text(f'<PAMDataset><PAMRasterBand band="1"><GDALRasterAttributeTable>{table}'
                                             "</GDALRasterAttributeTable></PAMRasterBand></PAMDataset>")
    cli = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(gt)])
    assert cli.exit_code == 0, cli.stderr
    rows = {line.split()[0]: line.split() for line in cli.stdout.splitlines()[-3:]}
    assert rows["1"][1:3] == ["Corn", "notill"] and rows["2"][1] == "-" and rows["3"][1] == "Woods"
    assert cli.stderr.strip() == ("hsicluster: warning: the ground truth's class names cover 2 of its 3 scored "
                                  "classes; class 2 is shown without a name")


def test_mean_std_population() -> None:
    truth = np.array([1, 1, 2, 2])
    runs = [
        score_clustering(np.array([0, 0, 1, 1]), truth),  # acc 1.0
        score_clustering(np.array([0, 1, 1, 1]), truth),  # acc 0.75
    ]
    ms = mean_std(runs)
    assert set(ms) == {"acc", "nmi", "kappa", "ari"}
    assert ms["acc"] == pytest.approx((0.875, 0.125))  # ddof=0
    assert isinstance(runs[0], ClusteringScores)
    with pytest.raises(ValueError):
        mean_std([])


# ---------------------------------------------------------------------------
# The nodata label of a label map is never a cluster: the function and `hsicluster evaluate` agree.


def _same(a: dict, b: dict) -> bool:
    """Score dicts equal up to float rounding (NMI depends on the order of the label values)."""
    return a.keys() == b.keys() and all(
        (_same(a[k], b[k]) if isinstance(a[k], dict) else a[k] == pytest.approx(b[k], rel=1e-12)) for k in a)


def _labels_and_truth() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 4, (20, 30)).astype(np.uint8)  # 0 = unlabelled
    labels = ((truth.astype(np.int64) + rng.integers(0, 2, truth.shape)) % 4).astype(np.int64)
    labels[:5, :] = -1  # no prediction
    return labels, truth


def test_score_clustering_default_matches_cli_for_a_label_raster(tmp_path) -> None:
    from click.testing import CliRunner

    from hsi_cluster.cli import main
    from hsi_cluster.io.labels import read_label_map
    from tests import helpers

    labels, truth = _labels_and_truth()
    raster = np.where(labels < 0, 255, labels).astype(np.uint8)  # as predict writes it: nodata 255
    helpers.write_geotiff(tmp_path / "labels.tif", raster[None], nodata=255)
    np.save(tmp_path / "gt.npy", truth)
    cli = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.tif"), str(tmp_path / "gt.npy"), "--json"])
    assert cli.exit_code == 0, cli.stderr
    from_cli = json.loads(cli.stdout)
    assert from_cli["n_invalid_pred"] == int((truth[:5] > 0).sum()) > 0
    assert "255" not in from_cli["mapping"]

    read, _ = read_label_map(tmp_path / "labels.tif")
    assert _same(score_clustering(read, truth).to_dict(), from_cli)  # 255 of a uint8 map: nodata by default
    assert _same(score_clustering(labels, truth).to_dict(), from_cli)  # -1 of in-memory labels: the same
    assert _same(score_clustering(raster, truth, invalid_pred=255).to_dict(), from_cli)
    assert not _same(score_clustering(raster, truth, invalid_pred=None).to_dict(), from_cli)  # asked to count it

    np.save(tmp_path / "labels.npy", labels)  # -1 in a .npy file: the CLI agrees too
    cli = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(tmp_path / "gt.npy"), "--json"])
    assert _same(json.loads(cli.stdout), from_cli)


def test_score_clustering_reads_the_nodata_of_a_dataarray() -> None:
    import xarray as xr

    labels, truth = _labels_and_truth()
    coded = np.where(labels < 0, 7, labels).astype(np.int16)
    expected = score_clustering(labels, truth).to_dict()
    assert _same(score_clustering(xr.DataArray(coded, dims=("y", "x"), attrs={"_FillValue": 7}), truth).to_dict(), expected)
    assert _same(score_clustering(xr.DataArray(coded, dims=("y", "x"), attrs={"nodata": 7}), truth).to_dict(), expected)
    with pytest.raises(EvaluationError, match="invalid_pred"):
        score_clustering(labels, truth, invalid_pred="nodata")


def test_a_ground_truth_without_nodata_that_holds_255_gets_a_hint(tmp_path) -> None:
    """0 is the default unlabelled value when the truth declares no nodata; a truth whose class 0 is real and whose
    unlabelled pixels hold 255 would be scored wrong without a word: a warning names the option to pass."""
    from click.testing import CliRunner

    from hsi_cluster.cli import main
    from tests import helpers

    labels, truth = _labels_and_truth()
    truth = truth.astype(np.uint8)
    truth[truth == 0] = 255  # unlabelled
    truth[:, :2] = 0  # class 0 is a real class here
    np.save(tmp_path / "labels.npy", labels)
    gt = helpers.write_geotiff(tmp_path / "gt.tif", truth[None]).path  # no nodata declared
    cli = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(gt), "--json"])
    assert cli.exit_code == 0, cli.stderr
    assert cli.stderr.strip() == (
        f"hsicluster: warning: {gt}: declares no nodata value, so 0 is taken as unlabelled "
        f"({int((truth == 0).sum())} pixels), but it also holds 255 ({int((truth == 255).sum())} pixels), which is "
        "scored as a class; if 255 marks unlabelled pixels, pass --unlabelled 255")
    told = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(gt), "--json", "--unlabelled", "255"])
    assert told.exit_code == 0 and told.stderr == ""
    assert json.loads(told.stdout)["n_scored"] == int((truth != 255).sum())
    declared = helpers.write_geotiff(tmp_path / "declared.tif", truth[None], nodata=255).path
    quiet = CliRunner().invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(declared), "--json"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.stdout) == json.loads(told.stdout)


def test_a_truth_numbered_from_zero_is_scored_whole_with_unlabelled_none(tmp_path) -> None:  # noqa: ANN001
    """Classes 0–2 over every pixel: by default 0 is left out as unlabelled (a third of the pixels, silently); the
    report now says so, and ``--unlabelled none`` scores them."""
    from click.testing import CliRunner

    from hsi_cluster.cli import main

    truth = np.repeat(np.arange(3), 4).reshape(3, 4)
    np.save(tmp_path / "truth.npy", truth)
    np.save(tmp_path / "labels.npy", (truth + 1) % 3)
    runner = CliRunner()
    default = runner.invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(tmp_path / "truth.npy")])
    assert default.exit_code == 0, default.stderr
    assert "Not scored: 4 pixels of ground-truth value 0 (unlabelled)" in default.stdout
    assert "Classes: 2" in default.stdout
    whole = runner.invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(tmp_path / "truth.npy"),
                                 "--unlabelled", "none", "--json"])
    assert whole.exit_code == 0, whole.stderr
    scores = json.loads(whole.stdout)
    assert scores["n_scored"] == 12 and scores["n_classes"] == 3 and scores["acc"] == 1.0
    assert scores["unlabelled"] is None and scores["n_unlabelled"] == 0
    bad = runner.invoke(main, ["evaluate", str(tmp_path / "labels.npy"), str(tmp_path / "truth.npy"),
                               "--unlabelled", "zero"])
    assert bad.exit_code == 2 and "neither a whole ground-truth value nor 'none'" in bad.stderr


def test_one_class_in_one_cluster_leaves_kappa_undefined_without_library_warnings() -> None:
    """A crop of a single field: kappa is NaN, said in the report; scikit-learn's warnings (naming its own files,
    printed even with -q) no longer reach the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = score_clustering(np.full(50, 4), np.full(50, 2), unlabelled=None)
    assert scores.acc == 1.0 and math.isnan(scores.kappa)
    assert "  Kappa   n/a (the scored pixels are one class, all in one cluster" in scores.format_table()
