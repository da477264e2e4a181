"""Tiled inference (``hsicluster predict``): tile invariance against the patch-by-patch reference,
georeferencing and COG layout of the output, nodata, edges, model/scene mismatch, atomic output and
resume, the CLI, and evaluation of the written labels on a real scene.

Models are tiny (5 × 5 patches) and trained once per module for a few dozen steps on a 70 × 53 × 12
structured scene with NaN/nodata pixels, a nodata border and an empty corner.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

import hsi_cluster
import hsi_cluster.predict as predict_module
from hsi_cluster.checkpoint import load_checkpoint, save_checkpoint
from hsi_cluster.cli import main
from hsi_cluster.errors import HsiClusterError, MetadataWarning, OutputError
from hsi_cluster.evaluate import score_clustering
from hsi_cluster.geo import BlockGrid, Window
from hsi_cluster.io import ingest
from hsi_cluster.io.label_raster import TileStore, sidecar_path
from hsi_cluster.io.store import Store, invalid_fill, read_haloed
from hsi_cluster.model.spectral_range import radiometric_factors
from hsi_cluster.model.sscc import SSCC
from hsi_cluster.predict import (
    NO_LABEL,
    PredictResult,
    band_stats_length,
    label_patches,
    predict_scene,
    result_warnings,
    stats_length,
)
from tests import helpers
from tests.predict_helpers import (
    LABEL_NODATA,
    NODATA,
    PATCH,
    CountingArray,
    K,
    TrainedModel,
    as_label_map,
    holey_cube,
    mismatches,
    partial_store,
    read_raster,
    train_tiny,
    untrained_checkpoint,
    write_scene,
)
from tests.train_helpers import structured_cube

HEIGHT, WIDTH = 70, 53


# ------------------------------------------------------------------------------------------------
# fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("predict_tiled")


@pytest.fixture(scope="module")
def holey(workdir: Path) -> tuple[helpers.SyntheticScene, np.ndarray]:
    """The 70 × 53 × 12 GeoTIFF (EPSG:32633, nodata −9999) with holes, and its valid mask."""
    cube, valid = holey_cube(12, HEIGHT, WIDTH)
    assert 0.8 * valid.size < valid.sum() < valid.size
    return write_scene(workdir / "holey.tif", cube), valid


@pytest.fixture(scope="module")
def dense(workdir: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> TrainedModel:
    return train_tiny(holey[0].path, workdir / "dense.ckpt", workdir / "work", backbone="dense", steps=30)


@pytest.fixture(scope="module")
def resnet(workdir: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> TrainedModel:
    return train_tiny(holey[0].path, workdir / "resnet.ckpt", workdir / "work", backbone="resnet", steps=30)


@pytest.fixture(scope="module")
def reference(dense: TrainedModel, resnet: TrainedModel) -> Callable[[TrainedModel], tuple[np.ndarray, np.ndarray]]:
    """Patch-by-patch labels/confidence of the training store, computed once per model."""
    cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def get(model: TrainedModel) -> tuple[np.ndarray, np.ndarray]:
        if model.checkpoint not in cache:
            cache[model.checkpoint] = model.reference_labels()
        return cache[model.checkpoint]

    return get


@pytest.fixture(scope="module")
def tiled(workdir: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]):
    """``run(model, tiles)`` → (labels, confidence, result) of a complete predict of the holey scene, cached."""
    cache: dict[tuple[Path, int], tuple[np.ndarray, np.ndarray, PredictResult]] = {}
    out = workdir / "tiled"
    out.mkdir()

    def run(model: TrainedModel, tiles: int) -> tuple[np.ndarray, np.ndarray, PredictResult]:
        key = (model.checkpoint, tiles)
        if key not in cache:
            stem = f"{model.backbone}-{tiles}"
            result = predict_scene(holey[0].path, model.checkpoint, out / f"{stem}.tif", tiles=tiles, device="cpu",
                                   confidence_path=out / f"{stem}.conf.tif")
            cache[key] = (read_raster(result.output)[0], read_raster(result.confidence)[0], result)
        return cache[key]

    return run


def no_outputs_left(folder: Path, name: str) -> bool:
    return not any(p.name.startswith(name) or p.name.startswith(f".{name}") for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------
# 1. tile invariance


def check_against_reference(labels: np.ndarray, confidence: np.ndarray, reference: tuple[np.ndarray, np.ndarray],
                            valid: np.ndarray, what: str) -> int:
    ref_labels, ref_confidence = reference
    assert ((ref_labels == NO_LABEL) == ~valid).all(), "the reference disagrees with the plain-numpy valid mask"
    assert (labels[~valid] == LABEL_NODATA).all()
    count = mismatches(labels, as_label_map(ref_labels), valid)
    print(f"{what}: {count} of {int(valid.sum())} valid pixels differ from label_patches")
    assert count <= 1e-4 * valid.sum(), f"{what}: {count} labels differ from the patch-by-patch evaluation"
    same = labels[valid] == ref_labels[valid]
    np.testing.assert_allclose(confidence[valid][same], ref_confidence[valid][same], rtol=1e-4, atol=1e-6)
    return count


def test_dense_labels_do_not_depend_on_the_tile_size(dense: TrainedModel, tiled, reference,
                                                     holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    valid = holey[1]
    ref = reference(dense)
    assert len(np.unique(ref[0][valid])) >= 2, "degenerate test model: everything in one cluster"
    first = None
    for tiles in (8, 16, 32, 64, 200):  # 200: one tile bigger than the scene
        labels, confidence, result = tiled(dense, tiles)
        assert result.tiles == -(-HEIGHT // tiles) * -(-WIDTH // tiles)
        check_against_reference(labels, confidence, ref, valid, f"dense, --tiles {tiles}")
        if first is None:
            first = labels
        else:
            np.testing.assert_array_equal(labels, first, err_msg=f"--tiles {tiles} differs from --tiles 8")


def test_resnet_labels_do_not_depend_on_the_tile_size(resnet: TrainedModel, tiled, reference,
                                                      holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    valid = holey[1]
    ref = reference(resnet)
    assert len(np.unique(ref[0][valid])) >= 2, "degenerate test model: everything in one cluster"
    small, _, _ = tiled(resnet, 16)
    whole, _, _ = tiled(resnet, 200)
    np.testing.assert_array_equal(small, whole)
    for tiles in (16, 200):
        check_against_reference(*tiled(resnet, tiles)[:2], ref, valid, f"resnet, --tiles {tiles}")


def test_each_tile_is_read_once(dense: TrainedModel, holey: tuple[helpers.SyntheticScene, np.ndarray],
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scene is read tile by tile (plus halo) once, not once per use of the lazy tile."""
    opened: list[CountingArray] = []
    original = predict_module.open_scene

    def counting_open_scene(path, **kwargs):
        scene = original(path, **kwargs)
        source = CountingArray(np.asarray(scene.data))
        opened.append(source)
        return scene.copy(data=da.from_array(source, chunks=scene.data.chunks, asarray=False, fancy=False))

    monkeypatch.setattr(predict_module, "open_scene", counting_open_scene)
    tiles, halo = 16, PATCH // 2
    predict_scene(holey[0].path, dense.checkpoint, tmp_path / "labels.tif", tiles=tiles, device="cpu")
    (source,) = opened
    read_by_predict, source.read = source.read, 0
    data = counting_open_scene(holey[0].path).data
    (baseline,) = opened[1:]
    grid = BlockGrid(HEIGHT, WIDTH, tiles)
    for i, j in grid:  # what reading every tile with its halo exactly once costs (whole dask chunks)
        window = grid.window(i, j)
        np.asarray(read_haloed(data, window, halo))
    assert baseline.read > 0
    assert read_by_predict <= 1.5 * baseline.read, \
        f"predict read the scene {read_by_predict / baseline.read:.1f}× as much as reading each tile once"


def test_tile_input_matches_training_patches_for_integer_scenes(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The network sees a tile exactly as training saw patches: reflect padding, holes of an int16 scene
    filled with the training store's band means cast to int16 (:func:`invalid_fill`)."""

    rng = np.random.default_rng(4)
    cube = np.round(structured_cube(6, 20, 19, seed=4) * 3 + rng.normal(0, 3, (6, 20, 19))).astype(np.int16)
    cube[:, 5, 5] = -9999
    cube[2, 12, 3] = -9999
    valid = helpers.reference_valid_mask(cube, -9999)
    n = int(valid.sum())
    for band in cube:  # make every band mean end in .7: the rounded mean is not the truncated one
        band[15, 15] += (round(0.7 * n) - int(band[valid].astype(np.int64).sum()) % n) % n
    scene = helpers.write_geotiff(tmp_path / "int.tif", cube, nodata=-9999)
    store = ingest(scene.path, tmp_path / "int.zarr", chunk=16)
    opened = Store.open(store)
    fill = invalid_fill([opened])
    mean = opened.band_stats().mean
    assert (np.abs(mean - np.round(mean)) > 0.2).all()  # rounding and truncating the mean differ
    untrained_checkpoint(store, tmp_path / "int.ckpt")
    seen: list[np.ndarray] = []
    original = SSCC.tile_probabilities

    def spy(model, padded, **kwargs):
        seen.append(np.array(padded))
        return original(model, padded, **kwargs)

    monkeypatch.setattr(SSCC, "tile_probabilities", spy)
    predict_scene(scene.path, tmp_path / "int.ckpt", tmp_path / "labels.tif", tiles=32, device="cpu")
    expected = opened.read_window(Window(0, 0, 20, 19), PATCH // 2, fill)
    (padded,) = seen
    np.testing.assert_array_equal(padded, expected)


# ------------------------------------------------------------------------------------------------
# 2. georeferencing, COG layout, metadata


def test_output_keeps_the_georeferencing_of_a_geotiff(dense: TrainedModel, tiled,
                                                      holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    scene = holey[0]
    labels, _, result = tiled(dense, 16)
    _, meta = read_raster(result.output)
    assert meta["crs"] == helpers.utm_crs() and meta["crs"].to_epsg() == 32633
    assert meta["transform"] == scene.transform
    assert meta["shape"] == (HEIGHT, WIDTH) == labels.shape
    assert meta["dtype"] == "uint8" and labels.dtype == np.uint8
    assert meta["nodata"] == LABEL_NODATA
    assert meta["driver"] == "GTiff" and meta["profile"]["tiled"]
    assert meta["structure"].get("LAYOUT") == "COG"
    colormap = meta["colormap"]
    assert all(k in colormap for k in range(K)) and len({colormap[k] for k in range(K)}) == K
    digest = load_checkpoint(dense.checkpoint).sha256()
    assert meta["tags"]["HSICLUSTER_K"] == str(K) and meta["tags"]["HSICLUSTER_MODEL_SHA256"] == digest
    assert f"K={K}" in meta["descriptions"][0] and digest in meta["descriptions"][0]
    _, conf_meta = read_raster(result.confidence)
    assert conf_meta["crs"] == meta["crs"] and conf_meta["transform"] == meta["transform"]
    assert conf_meta["dtype"] == "float32" and np.isnan(conf_meta["nodata"])


def test_overviews_on_a_scene_larger_than_a_block(dense: TrainedModel, tmp_path: Path) -> None:
    cube = structured_cube(12, 600, 530, seed=8)
    scene = write_scene(tmp_path / "big.tif", cube)
    result = predict_scene(scene.path, dense.checkpoint, tmp_path / "big-labels.tif", tiles=512, device="cpu")
    labels, meta = read_raster(result.output)
    assert meta["shape"] == (600, 530) and meta["transform"] == scene.transform and meta["crs"] == scene.crs
    assert meta["structure"].get("LAYOUT") == "COG"
    assert meta["block_shapes"] == [(512, 512)]
    assert meta["overviews"], "no overviews on a 600 × 530 COG"
    assert ((labels >= 0) & (labels < K)).all()
    with rasterio.open(result.output) as src:  # nearest resampling: the overview holds only labels
        overview = src.read(1, out_shape=(600 // meta["overviews"][0], 530 // meta["overviews"][0]))
    assert set(np.unique(overview)) <= set(np.unique(labels))


def test_a_store_predicts_like_its_raster(dense: TrainedModel, tiled, tmp_path: Path) -> None:
    """SCENE may be the store made by ``hsicluster ingest``: same labels, nodata and georeferencing."""
    labels, _, result = tiled(dense, 16)
    from_store = predict_scene(dense.store, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu")
    store_labels, meta = read_raster(from_store.output)
    np.testing.assert_array_equal(store_labels, labels)
    _, raster_meta = read_raster(result.output)
    assert (meta["crs"], meta["transform"], meta["nodata"]) == (raster_meta["crs"], raster_meta["transform"],
                                                                raster_meta["nodata"])


def test_more_than_254_clusters_give_uint16_labels(tmp_path: Path) -> None:
    cube = structured_cube(6, 30, 27, seed=6)
    cube[:, 0, :] = np.nan
    scene = write_scene(tmp_path / "scene.tif", cube)
    store = ingest(scene.path, tmp_path / "scene.zarr", chunk=16)
    checkpoint = untrained_checkpoint(store, tmp_path / "k300.ckpt", n_clusters=300)
    result = predict_scene(scene.path, checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu")
    labels, meta = read_raster(result.output)
    assert meta["dtype"] == "uint16" and meta["nodata"] == 65535
    assert (labels[0] == 65535).all() and (labels[1:] < 300).all()
    assert meta["tags"]["HSICLUSTER_K"] == "300" and meta["structure"].get("LAYOUT") == "COG"
    assert meta["colormap"] is not None and all(k in meta["colormap"] for k in range(300))
    ref, _ = label_patches(load_checkpoint(checkpoint).build_model(), store, patch_size=PATCH)
    np.testing.assert_array_equal(labels, np.where(ref == NO_LABEL, 65535, ref))


@pytest.fixture(scope="module")
def salinas_model(workdir: Path, sample_salinas_a: Path) -> TrainedModel:
    return train_tiny(sample_salinas_a.with_suffix(".hdr"), workdir / "salinas.ckpt", workdir / "work", steps=2,
                      n_clusters=6)


def test_real_envi_scene_without_georeferencing(salinas_model: TrainedModel, tmp_path: Path) -> None:
    scene = salinas_model.scene
    with rasterio.open(scene.with_suffix(".img")) as src:
        height, width = src.height, src.width
        assert src.crs is None  # the input is not georeferenced either
    result = predict_scene(scene, salinas_model.checkpoint, tmp_path / "salinas.tif", tiles=32, device="cpu")
    labels, meta = read_raster(result.output)
    assert meta["crs"] is None and meta["transform"].is_identity
    assert meta["shape"] == (height, width) == (83, 86)
    assert meta["dtype"] == "uint8" and meta["nodata"] == LABEL_NODATA
    assert meta["structure"].get("LAYOUT") == "COG" and meta["profile"]["tiled"]
    assert meta["tags"]["HSICLUSTER_K"] == "6" and all(k in meta["colormap"] for k in range(6))
    ref_labels, _ = salinas_model.reference_labels()
    valid = ref_labels != NO_LABEL
    count = mismatches(labels, as_label_map(ref_labels), valid)
    print(f"Salinas-A, --tiles 32: {count} of {int(valid.sum())} valid pixels differ from label_patches")
    assert count <= 1e-4 * valid.sum()
    assert (labels[~valid] == LABEL_NODATA).all()


# ------------------------------------------------------------------------------------------------
# 3. nodata, confidence, quicklook


def test_invalid_pixels_get_nodata_and_no_confidence(dense: TrainedModel, tmp_path: Path,
                                                     holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    valid = holey[1]
    result = predict_scene(holey[0].path, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu",
                           confidence_path=tmp_path / "conf.tif", quicklook_path=tmp_path / "labels.png")
    labels, _ = read_raster(result.output)
    assert (labels[~valid] == LABEL_NODATA).all()
    assert ((labels[valid] >= 0) & (labels[valid] < K)).all()
    confidence, meta = read_raster(result.confidence)
    assert confidence.dtype == np.float32 and meta["dtype"] == "float32"
    assert np.isnan(confidence[~valid]).all()
    assert ((confidence[valid] >= 1 / K - 1e-6) & (confidence[valid] <= 1.0)).all()
    assert result.valid_pixels == int(valid.sum()) and result.pixels == HEIGHT * WIDTH
    assert sum(result.counts.values()) == result.valid_pixels
    assert result.counts == {k: int((labels == k).sum()) for k in range(K)}
    png = result.quicklook
    assert png == (tmp_path / "labels.png").absolute() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and min(image.shape[:2]) > 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.tif", "labels.png", "labels.tif",
                                                           "labels.tif.aux.xml"]


def test_pixels_the_files_mask_band_hides_are_nodata(dense: TrainedModel, tmp_path: Path,
                                                    holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """A GeoTIFF that marks its holes with an internal mask band (no nodata value) is read as one with nodata:
    the store's valid mask and the labels are those of the same holes given as nodata/NaN."""
    cube, valid = holey[0].cube.copy(), holey[1]
    cube[:, ~valid] = np.random.default_rng(0).normal(50.0, 30.0, (cube.shape[0], int((~valid).sum())))
    masked = write_scene(tmp_path / "masked.tif", cube.astype(np.float32), nodata=None)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked.path, "r+") as dst:
        dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    store = ingest(masked.path, tmp_path / "masked.zarr")
    assert np.array_equal(np.asarray(Store.open(store).valid[...]), valid)
    expected = predict_scene(holey[0].path, dense.checkpoint, tmp_path / "holey.tif", tiles=16, device="cpu")
    result = predict_scene(masked.path, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu")
    labels, _ = read_raster(result.output)
    assert (labels[~valid] == LABEL_NODATA).all() and result.valid_pixels == int(valid.sum())
    assert np.array_equal(labels, read_raster(expected.output)[0])


def test_a_scene_in_other_units_than_the_training_scenes_is_warned_of(dense: TrainedModel, tmp_path: Path,
                                                                     holey: tuple[helpers.SyntheticScene, np.ndarray],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The training scene itself varies as the model expects; the same ground scaled by 1e-4 (reflectance against
    digital numbers) is labelled, with a warning naming the scene and the factor, and only that one: a band whose
    training spread is narrow lies far from the training mean in such a scene too, and was also set aside as a
    band 'where the other bands fit', with every tile labelled twice."""
    deviations = predict_module.band_deviations

    def one_band_far(*args: np.ndarray) -> np.ndarray:  # a narrow band, as the 200th of Indian Pines in fractions
        far = deviations(*args)
        far[-1] = 1e4
        return far

    same = predict_scene(holey[0].path, dense.checkpoint, tmp_path / "same.tif", tiles=16, device="cpu")
    assert same.spread is not None and 0.1 < same.spread < 10 and not same.units_differ
    monkeypatch.setattr(predict_module, "band_deviations", one_band_far)
    reflectance = np.where(holey[1], holey[0].cube * 1e-4, np.nan).astype(np.float32)
    scaled = write_scene(tmp_path / "reflectance.tif", reflectance, nodata=None)
    result = CliRunner().invoke(main, ["predict", str(scaled.path), "-m", str(dense.checkpoint), "-o",
                                       str(tmp_path / "labels.tif"), "--tiles", "16", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hsicluster: warning: {scaled.path}: its values vary ")
    assert float(lines[0].split("its values vary ")[1].split("×")[0]) < 1e-3
    assert "other units or scaling" in lines[0]


def test_a_scene_outside_the_training_spectra_is_warned_of_and_its_share_reported(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """The training scene lies within the range the checkpoint keeps; the same ground 1.5× brighter (another
    acquisition, far below the units check's 100×) lies outside it: one warning, naming the scene and the share,
    and the share in the result. Tiles that kept an earlier version's statistics give no share, but the band
    screen still reads them."""
    same = predict_scene(holey[0].path, dense.checkpoint, tmp_path / "same.tif", tiles=16, device="cpu")
    assert same.outside_share is not None and same.outside_share < 0.05 and not result_warnings("s", same)
    assert same.matching_gain is not None and abs(np.log(same.matching_gain)) < 0.05
    brighter = np.where(holey[1], holey[0].cube * 1.5, NODATA).astype(np.float32)
    scene = write_scene(tmp_path / "brighter.tif", brighter)
    output = tmp_path / "labels.tif"
    result = CliRunner().invoke(main, ["predict", str(scene.path), "-m", str(dense.checkpoint), "-o", str(output),
                                       "--tiles", "16", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hsicluster: warning: {scene.path}: ")
    share = float(lines[0].split(f"{scene.path}: ")[1].split("%")[0])
    assert share > 90 and "lie outside the spectra the model was trained on" in lines[0]
    gain = float(lines[0].split("fit the training spectra best at ")[1].split("×")[0])
    assert abs(np.log(gain * 1.5)) < 0.05 and "(it looks 1.5× as bright as the training scenes)" in lines[0]
    assert "Train on scenes like this one" in lines[0]

    grid = BlockGrid(*brighter.shape[1:], 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TileStore.open_or_create(tmp_path / "old.tif", grid=grid, dtype=np.dtype(np.uint8), nodata=255,
                                 with_confidence=False, identity={}, resume=False)
    store = TileStore(partial_store(tmp_path / "old.tif"))
    n_bands = brighter.shape[0]
    store.write(0, 0, slice(0, 16), slice(0, 16), np.zeros((16, 16), np.uint8), None,
                stats=np.ones(band_stats_length(n_bands), np.int64))  # an earlier version's: no range counts
    store.write(0, 1, slice(0, 16), slice(16, 32), np.zeros((16, 16), np.uint8), None,
                stats=np.ones(stats_length(n_bands), np.int64))
    assert store.summed_stats([(0, 0), (0, 1)], length=stats_length(n_bands)) is None  # no range check
    assert store.summed_stats([(0, 1)], length=stats_length(n_bands)) is not None
    both = store.summed_stats([(0, 0), (0, 1)], length=band_stats_length(n_bands))  # the band screen reads both
    assert both is not None and both.tolist() == [2] * band_stats_length(n_bands)


def test_the_checked_pixels_meet_every_row_and_column_whatever_the_tiles() -> None:
    """One pixel in 16, in every row and every column (a scene valid only in rows 97–111 of a large one went
    unchecked when every 16th row was read), and the same pixels whether read whole or in tiles of any size."""
    whole = predict_module._lattice((290, 300), 0, 0, 16)
    assert whole.any(axis=1).all() and whole.any(axis=0).all() and abs(whole.mean() - 1 / 16) < 0.01
    for tile in (16, 37, 100):
        tiled_lattice = np.zeros_like(whole)
        for row in range(0, 290, tile):
            for col in range(0, 300, tile):
                window = tiled_lattice[row:row + tile, col:col + tile]
                window[:] = predict_module._lattice(window.shape, row, col, 16)
        assert np.array_equal(tiled_lattice, whole)


def test_match_brightness_labels_a_brighter_acquisition_at_the_gain_that_fits(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """The scene 1.5× brighter: without the option the warning offers it; with it the scene is labelled at the gain
    that fits (about 1 / 1.5), its labels are those of the scene as trained on, the raster's tags and the result
    carry the gain, and a one-line notice says what was done. The training scene itself is labelled as it is."""
    reference = predict_scene(holey[0].path, dense.checkpoint, tmp_path / "ref.tif", tiles=16, device="cpu",
                              match_brightness=True)
    assert reference.applied_gain == 1.0 and "HSICLUSTER_GAIN" not in read_raster(reference.output)[1]["tags"]
    # asked for and not needed: one line says so (it said nothing)
    told = result_warnings(holey[0].path, reference, match_brightness=True)
    assert len(told) == 1 and told[0].startswith(f"{holey[0].path}: --match-brightness changed nothing: it fits the "
                                                 "training spectra as delivered (")
    assert result_warnings(holey[0].path, reference) == []
    brighter = write_scene(tmp_path / "brighter.tif", np.where(holey[1], holey[0].cube * 1.5, NODATA).astype(np.float32))
    plain = predict_scene(brighter.path, dense.checkpoint, tmp_path / "plain.tif", tiles=16, device="cpu")
    assert "label it at that brightness with --match-brightness" in result_warnings(brighter.path, plain)[0]
    output = tmp_path / "matched.tif"
    run = CliRunner().invoke(main, ["predict", str(brighter.path), "-m", str(dense.checkpoint), "-o", str(output),
                                    "--tiles", "16", "--device", "cpu", "-q", "--match-brightness", "--stac"])
    assert run.exit_code == 0, run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hsicluster: warning: {brighter.path}: labelled at 0.6")
    assert "× its values (--match-brightness): they fit the training spectra best there" in lines[0]
    labels, meta = read_raster(output)
    gain = float(meta["tags"]["HSICLUSTER_GAIN"])
    assert abs(np.log(gain * 1.5)) < 0.05
    # the gain is told wherever the labels are described: `info` and the STAC Item
    info = CliRunner().invoke(main, ["info", str(output), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["applied_gain"] == pytest.approx(gain)
    assert f"labels of     {brighter.path} at 0.6" in CliRunner().invoke(main, ["info", str(output)]).stdout
    item = json.loads(output.with_suffix(".stac.json").read_text())
    assert item["properties"]["hsicluster:applied_gain"] == pytest.approx(gain)
    assert json.loads(CliRunner().invoke(main, ["info", str(reference.output), "--json"]).stdout)["applied_gain"] == 1
    valid = holey[1]
    agree = (labels[valid] == read_raster(reference.output)[0][valid]).mean()
    assert agree > 0.95 > (read_raster(plain.output)[0][valid] == read_raster(reference.output)[0][valid]).mean()


def _kill_in_second_pass() -> Callable[[int, int], None]:
    """A progress callback that stops a ``match_brightness`` run (Ctrl-C) after three tiles of its second pass."""
    calls: list[int] = []

    def kill(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) > total + 1 and done >= 3:  # the first pass reported 0 … total
            raise KeyboardInterrupt("simulated kill")

    return kill


def _killed_in_second_pass_then_resumed(scene: Path, checkpoint: Path, output: Path) -> PredictResult:
    """A matched run of ``scene`` into ``output`` killed in its second pass, then resumed."""
    with pytest.raises(KeyboardInterrupt):
        predict_scene(scene, checkpoint, output, tiles=16, device="cpu", match_brightness=True,
                      progress=_kill_in_second_pass())
    return predict_scene(scene, checkpoint, output, tiles=16, device="cpu", match_brightness=True, resume=True)


def test_match_brightness_undoes_a_tilt_across_the_bands(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """The scene tilted by +15 % from its first band to its last (another calibration or atmosphere): the warning
    names the tilt, ``--match-brightness`` labels it at the inverse tilt (the labels of the scene as trained on), and
    the raster, ``info`` and the result carry it."""
    reference = predict_scene(holey[0].path, dense.checkpoint, tmp_path / "ref.tif", tiles=16, device="cpu")
    factors = radiometric_factors(1.0, 0.15, 12)[:, None, None]
    tilted = write_scene(tmp_path / "tilted.tif", np.where(holey[1], holey[0].cube * factors, NODATA).astype(np.float32))
    plain = predict_scene(tilted.path, dense.checkpoint, tmp_path / "plain.tif", tiles=16, device="cpu")
    assert plain.range_fit is not None and plain.range_fit.another_acquisition, plain.range_fit
    assert abs(plain.matching_tilt + 0.15) < 0.051 and abs(np.log(plain.matching_gain)) < 0.05, plain.range_fit
    notice = result_warnings(tilted.path, plain)[0]
    assert "with a tilt of -15% across its bands" in notice and "as bright" not in notice
    assert "its values run ×0.85 at its first band to ×1.15 at its last against theirs" in notice
    matched = predict_scene(tilted.path, dense.checkpoint, tmp_path / "matched.tif", tiles=16, device="cpu",
                            match_brightness=True)
    assert matched.applied_tilt == plain.matching_tilt and matched.range_fit == plain.range_fit
    valid = holey[1]
    truth = read_raster(reference.output)[0][valid]
    agree = (read_raster(matched.output)[0][valid] == truth).mean()
    assert agree > 0.95 and agree > (read_raster(plain.output)[0][valid] == truth).mean()
    assert float(read_raster(matched.output)[1]["tags"]["HSICLUSTER_TILT"]) == matched.applied_tilt
    info = json.loads(CliRunner().invoke(main, ["info", str(matched.output), "--json"]).stdout)
    assert info["applied_tilt"] == matched.applied_tilt
    # killed in the pass at the matched tilt, the run resumes there; in memory the labels and attributes are the same
    output = tmp_path / "resumed.tif"
    resumed = _killed_in_second_pass_then_resumed(tilted.path, dense.checkpoint, output)
    assert resumed.tiles_resumed >= 3 and resumed.applied_tilt == matched.applied_tilt
    np.testing.assert_array_equal(read_raster(output)[0], read_raster(matched.output)[0])
    with pytest.warns(UserWarning, match="with a tilt of -15% across its bands"):
        in_memory = hsi_cluster.load_model(dense.checkpoint).predict(hsi_cluster.open_scene(tilted.path), tiles=16,
                                                                     device="cpu", match_brightness=True)
    assert in_memory.attrs["applied_tilt"] == in_memory.attrs["matching_tilt"] == matched.applied_tilt
    np.testing.assert_array_equal(in_memory.values, read_raster(matched.output)[0])


def test_a_scene_brighter_than_the_gains_corrected_is_warned_of_and_not_matched(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """2.3 times as bright: the best gain lies at the edge of those tried, which is not the one that undoes it; the
    warning says so, and ``--match-brightness`` labels the scene as delivered (it matched at 0.50× before)."""
    brighter = write_scene(tmp_path / "bright.tif", np.where(holey[1], holey[0].cube * 2.3, NODATA).astype(np.float32))
    result = predict_scene(brighter.path, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu",
                           match_brightness=True)
    assert result.applied_gain == 1.0 and result.range_fit is not None and result.range_fit.beyond_range
    notice = result_warnings(brighter.path, result)[0]
    assert "it looks over twice as bright as the training scenes" in notice
    assert "further than --match-brightness corrects" in notice


def test_the_gain_is_found_when_bands_read_as_the_training_mean(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """Bands the scene flags bad read as the training mean, which a gain on the scene does not scale: with a quarter
    of the bands so read, the best gain of a 1.5× brighter scene is still about 1 / 1.5. (With half of them read so,
    no gain fits: the estimate is then unreliable, see docs/commands.md.)"""
    flags = [True] * 12
    flags[3] = flags[7] = flags[10] = False
    brighter = write_scene(tmp_path / "brighter.tif", np.where(holey[1], holey[0].cube * 1.5, NODATA).astype(np.float32),
                           good_band=flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetadataWarning)  # the bands flagged bad that the model reads
        result = predict_scene(brighter.path, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu")
    assert result.range_fit is not None and result.range_fit.another_acquisition
    assert abs(np.log(result.range_fit.gain * 1.5)) < 0.05, result.range_fit


def test_an_interrupted_matched_run_resumes_at_its_gain(dense: TrainedModel, tmp_path: Path,
                                                        holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """Killed during the pass at the matched gain: ``--resume --match-brightness`` continues it (its tiles kept),
    gives the file of an unbroken run and reports the scene as delivered (best gain, share outside), not the
    scaled one; without ``--match-brightness`` the tiles are discarded, saying why."""
    brighter = write_scene(tmp_path / "brighter.tif", np.where(holey[1], holey[0].cube * 1.5, NODATA).astype(np.float32))
    unbroken = predict_scene(brighter.path, dense.checkpoint, tmp_path / "unbroken.tif", tiles=16, device="cpu",
                             match_brightness=True)
    output = tmp_path / "labels.tif"
    resumed = _killed_in_second_pass_then_resumed(brighter.path, dense.checkpoint, output)
    assert resumed.tiles_resumed >= 3 and resumed.applied_gain == unbroken.applied_gain != 1.0
    assert resumed.range_fit == unbroken.range_fit and resumed.outside_share > 0.9
    np.testing.assert_array_equal(read_raster(output)[0], read_raster(unbroken.output)[0])
    with pytest.raises(KeyboardInterrupt):
        predict_scene(brighter.path, dense.checkpoint, output, tiles=16, device="cpu", match_brightness=True,
                      progress=_kill_in_second_pass(), overwrite=True)
    with pytest.warns(MetadataWarning, match="made with --match-brightness \\(another gain or tilt\\); they are discarded"):
        plain = predict_scene(brighter.path, dense.checkpoint, output, tiles=16, device="cpu", resume=True)
    assert plain.applied_gain == 1.0 and plain.tiles_resumed == 0


def test_bands_the_scene_flags_bad_that_the_model_reads_read_as_the_training_mean(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """A scene whose metadata flags three bands bad (garbage in them) that the model's training scene had good: they
    read as the training mean, with a warning naming them (they were fed to the network: ACC 0.83 → 0.29 on a
    Salinas-A copy with 20 such bands)."""
    cube = holey[0].cube.copy()
    flags = np.ones(cube.shape[0], bool)
    flags[[2, 5, 9]] = False
    cube[[2, 5, 9]] = np.random.default_rng(0).uniform(-5e3, 5e3, cube[[2, 5, 9]].shape)
    flagged = write_scene(tmp_path / "flagged.tif", cube, good_band=flags.tolist())
    mean = load_checkpoint(dense.checkpoint).spectral_mean
    imputed = holey[0].cube.copy()
    imputed[[2, 5, 9]] = mean[[2, 5, 9], None, None]
    imputed = np.where(np.isnan(holey[0].cube) | (holey[0].cube == NODATA), holey[0].cube, imputed)
    expected = predict_scene(write_scene(tmp_path / "imputed.tif", imputed).path, dense.checkpoint,
                             tmp_path / "expected.tif", tiles=16, device="cpu")
    result = CliRunner().invoke(main, ["predict", str(flagged.path), "-m", str(dense.checkpoint), "-o",
                                       str(tmp_path / "labels.tif"), "--tiles", "16", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "flags 3 bands bad (" in lines[0] and "that the model reads" in lines[0], lines
    np.testing.assert_array_equal(read_raster(tmp_path / "labels.tif")[0], read_raster(expected.output)[0])


@pytest.mark.parametrize("case", ["empty", "dropout", "scattered"])
def test_a_band_that_voids_most_of_a_raw_scene_reads_as_the_training_mean(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray], case: str) -> None:
    """A raw raster whose band 4 is NaN in every pixel (or in 97 % of them) was labelled all (or 97 %) nodata by
    predict, where its ingested store labels every pixel (ingest flags such a band bad): the raw path now finds the
    band in its first pass, reads it as the training mean and labels every tile again, as the store path does. Two
    bands NaN in an independent 30 % of pixels each (no band alone voiding as many as stay valid) left half the
    scene nodata in silence on both paths (validity rules 8); both now flag them (rules 9)."""
    cube, valid = holey[0].cube.copy(), holey[1]
    rng = np.random.default_rng(1)
    gone = np.ones(cube.shape[1:], bool) if case == "empty" else rng.random(cube.shape[1:]) < 0.97
    if case == "scattered":
        gone = rng.random(cube.shape[1:]) < 0.3
        cube[7][rng.random(cube.shape[1:]) < 0.3] = np.nan
    cube[3][gone] = np.nan
    raw = write_scene(tmp_path / "raw.tif", cube)
    store = tmp_path / "raw.zarr"
    with pytest.warns(MetadataWarning, match="bands? 4"):
        ingest(raw.path, store)
    expected = predict_scene(store, dense.checkpoint, tmp_path / "store.tif", tiles=16, device="cpu")
    assert expected.valid_pixels >= valid.sum()  # and those that only band 4 made invalid
    with pytest.warns(MetadataWarning) as said:
        result = predict_scene(raw.path, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu")
    notices = [str(w.message) for w in said if "training mean" in str(w.message)]
    why = "is NaN or nodata in every pixel" if case == "empty" else "made"
    named = "bands 4, 8 (973 nm, 1736 nm)" if case == "scattered" else "band 4 (973 nm)"
    assert len(notices) == 1 and notices[0].startswith(f"{raw.path}: {named} {why}"), notices
    assert result.valid_pixels == expected.valid_pixels
    np.testing.assert_array_equal(read_raster(result.output)[0], read_raster(expected.output)[0])
    # the in-memory API the same
    in_memory = hsi_cluster.load_model(dense.checkpoint).predict(raw.path, tiles=16, device="cpu")
    np.testing.assert_array_equal(in_memory.values, read_raster(expected.output)[0])


@pytest.mark.parametrize("garbage", ["noise", "saturated"])
def test_a_band_far_outside_the_training_values_reads_as_the_training_mean(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray], garbage: str) -> None:
    """One band of uniform ±5e4 noise (or stuck at a saturated 65 535) among bands that fit the model: its
    standardised values dwarfed the others, every pixel got the same label, with exit 0 and no warning (the units
    check takes the median over bands). The band now reads as the training mean, with a warning naming it, and the
    labels are those of the scene whose band holds that mean; on the raw file, its store, and in memory."""
    cube = holey[0].cube.copy()
    usable = np.isfinite(cube[4]) & (cube[4] != NODATA)
    noise = np.random.default_rng(0).uniform(-5e4, 5e4, cube.shape[1:]) if garbage == "noise" else 65535.0
    cube[4] = np.where(usable, noise, cube[4])
    scene = write_scene(tmp_path / "garbage.tif", cube)
    mean = hsi_cluster.load_model(dense.checkpoint).checkpoint.spectral_mean
    fitting = holey[0].cube.copy()
    fitting[4] = mean[4]
    expected = predict_scene(write_scene(tmp_path / "mean.tif", fitting).path, dense.checkpoint,
                             tmp_path / "expected.tif", tiles=16, device="cpu")
    ingest(scene.path, tmp_path / "garbage.zarr")
    for source, output in ((scene.path, "labels.tif"), (tmp_path / "garbage.zarr", "store.tif")):
        with pytest.warns(MetadataWarning) as said:
            result = predict_scene(source, dense.checkpoint, tmp_path / output, tiles=16, device="cpu")
        notices = [str(w.message) for w in said if "training standard deviations" in str(w.message)]
        assert len(notices) == 1 and notices[0].startswith(f"{source}: band 5 ("), notices
        assert "it reads as the training mean" in notices[0]
        assert result.valid_pixels == expected.valid_pixels
        np.testing.assert_array_equal(read_raster(result.output)[0], read_raster(expected.output)[0])
    with pytest.warns(MetadataWarning, match="band 5 .* training standard deviations"):
        in_memory = hsi_cluster.load_model(dense.checkpoint).predict(scene.path, tiles=16, device="cpu")
    np.testing.assert_array_equal(in_memory.values, read_raster(expected.output)[0])


def test_many_bands_far_outside_the_training_values_are_warned_of_not_set_aside(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """Four of twelve bands of garbage: too many to read as the mean (a fifth at most), and the units check (the
    median over bands) saw nothing, so the labels were meaningless in silence."""
    cube = holey[0].cube.copy()
    usable = np.isfinite(cube) & (cube != NODATA)
    cube[:4] = np.where(usable[:4], np.random.default_rng(0).uniform(-5e5, 5e5, cube[:4].shape), cube[:4])
    scene = write_scene(tmp_path / "garbage.tif", cube)
    with pytest.warns(MetadataWarning) as said:
        result = predict_scene(scene.path, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu")
    notices = [str(w.message) for w in said if "training standard deviations" in str(w.message)]
    assert len(notices) == 1 and "4 of the 12 bands the model reads lie over 100" in notices[0], notices
    assert "too many to set aside: the labels are likely meaningless" in notices[0]
    assert not result.units_differ and result.valid_pixels == holey[1].sum()


@pytest.mark.parametrize("layout", ["tiles", "strips", "one strip"])
def test_a_raster_in_large_compressed_tiles_or_strips_is_decoded_once_per_block(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray],
        monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """Each tile's halo reads a sliver of its neighbours, and GDAL decodes a compressed block whole for it: a 512²-tiled
    file of 100 bands took 8.8× as long as a 256²-tiled one, and compressed strips (GDAL's default) were read in
    square chunks, each decoding its full-width strips again (a strip holding the whole image: from its start for
    each chunk, 7× slower, 2.3× the memory). Predict and the in-memory API now read strips in chunks of whole strips and keep the reads of about three tile rows, so each chunk is decoded once, with the
    same labels and no slow-layout warning; without the memory for it, chunks are decoded again and the warning
    says to ingest first."""
    from hsi_cluster.io.scene import RasterioWindowReader

    cube = holey[0].cube
    options = {"tiles": {"tiled": True, "blocksize": 16}, "strips": {}, "one strip": {"rows_per_strip": HEIGHT}}[layout]
    raw = write_scene(tmp_path / "file.tif", cube, compress="deflate", **options)
    monkeypatch.setattr("hsi_cluster.io.scene.auto_chunk_size", lambda *args, **kwargs: 16)  # 16² chunks or 4 rows
    monkeypatch.setattr("hsi_cluster.io.checks.SLOW_BLOCK_BYTES", 1024)  # 16² blocks of 12 float32 bands: 12 KB
    scene = hsi_cluster.open_scene(raw.path)
    assert scene.data.chunks[2] == ((16, 16, 16, 5) if layout == "tiles" else (WIDTH,))
    assert layout != "one strip" or scene.data.chunks[1] == (HEIGHT,)  # decoded from its start for any piece
    decoded: list[tuple[int, ...]] = []
    read = RasterioWindowReader._read
    monkeypatch.setattr(RasterioWindowReader, "_read", lambda self, *span: decoded.append(span) or read(self, *span))
    blocks = len(scene.data.chunks[1]) * len(scene.data.chunks[2])
    expected = predict_scene(holey[0].path, dense.checkpoint, tmp_path / "plain.tif", tiles=16, device="cpu")
    decoded.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataWarning)  # no slow-layout warning
        result = predict_scene(raw.path, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu")
        assert sorted(decoded) == sorted(set(decoded)) and len(decoded) == blocks
        np.testing.assert_array_equal(read_raster(result.output)[0], read_raster(expected.output)[0])
        decoded.clear()
        in_memory = hsi_cluster.load_model(dense.checkpoint).predict(raw.path, tiles=16, device="cpu")
        assert len(decoded) == blocks
        np.testing.assert_array_equal(in_memory.values, read_raster(expected.output)[0])
    decoded.clear()
    monkeypatch.setattr("hsi_cluster.io.checks.KEPT_READS_MAX", 0)
    with pytest.warns(MetadataWarning, match="decoded again for each piece read.*hsicluster ingest it first"):
        again = predict_scene(raw.path, dense.checkpoint, tmp_path / "again.tif", tiles=16, device="cpu")
    assert len(decoded) > 2 * blocks
    np.testing.assert_array_equal(read_raster(again.output)[0], read_raster(expected.output)[0])


@pytest.mark.parametrize("failure", ["oserror", "gdal"])
def test_a_full_disk_is_one_line_that_says_to_free_space_and_resume(dense: TrainedModel, tmp_path: Path,
                                                                      holey: tuple[helpers.SyntheticScene, np.ndarray],
                                                                      monkeypatch: pytest.MonkeyPatch, failure: str
                                                                      ) -> None:
    """The disk fills while the quicklook is written (the last output): exit code 2, the file named where the
    error names one, and after space is freed ``--resume`` finishes the job."""
    import errno

    png = tmp_path / "labels.png"

    def full_disk(*args, **kwargs):
        if failure == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", str(png))
        raise RuntimeError("TIFFWriteDirectoryTagData: _tiffSeekProc: No space left on device")

    monkeypatch.setattr(predict_module, "write_quicklook", full_disk)
    args = ["predict", str(holey[0].path), "-m", str(dense.checkpoint), "-o", str(tmp_path / "labels.tif"),
            "--quicklook", str(png), "--tiles", "16", "--device", "cpu", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsicluster: error: no space left on the device")
    assert "free some space, then rerun it with --resume" in lines[0] and "unexpected" not in lines[0]
    assert (f"(writing {png})" in lines[0]) == (failure == "oserror")
    monkeypatch.undo()
    resumed = CliRunner().invoke(main, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert png.is_file() and (tmp_path / "labels.tif").is_file()


def test_label_cog_carries_class_names_and_counts_for_gis(dense: TrainedModel, tmp_path: Path,
                                                          holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """Category names and a raster attribute table in GDAL's PAM sidecar, read back by GDAL (through rasterio)
    and parsed as GDAL's XML."""
    import json
    import shutil
    import subprocess
    import xml.etree.ElementTree as ET

    import rasterio

    valid = holey[1]
    result = predict_scene(holey[0].path, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu")
    labelled = int(valid.sum())  # a cluster's share of the labelled pixels, not of the scene (its nodata included)
    assert result.valid_pixels == labelled < HEIGHT * WIDTH
    names = [f"cluster {k} ({100 * result.counts[k] / labelled:.1f} %)" for k in range(K)]
    with rasterio.open(result.output) as dataset:  # GDAL reads the sidecar: its band metadata reach rasterio
        band_tags = dataset.tags(1)
        assert dataset.tags()["HSICLUSTER_K"] == str(K)
    assert json.loads(band_tags["CLUSTER_PIXELS"]) == {str(k): n for k, n in result.counts.items()}
    assert int(band_tags["NODATA_PIXELS"]) == int((~valid).sum())
    band = ET.parse(tmp_path / "labels.tif.aux.xml").getroot().find("PAMRasterBand[@band='1']")
    assert [c.text for c in band.find("CategoryNames")] == names
    rat = band.find("GDALRasterAttributeTable")
    assert rat.get("tableType") == "thematic"
    columns = [(f.findtext("Name"), f.findtext("Type"), f.findtext("Usage")) for f in rat.findall("FieldDefn")]
    assert columns[:3] == [("Value", "0", "5"), ("Count", "0", "1"), ("Name", "2", "2")]  # MinMax, PixelCount, Name
    rows = [[f.text for f in row.findall("F")] for row in rat.findall("Row")]
    assert [(int(r[0]), int(r[1]), r[2]) for r in rows] == [(k, result.counts[k], names[k]) for k in range(K)]
    assert all(r[1] == str(n) for r, n in zip(rows, result.counts.values(), strict=True))
    if shutil.which("gdalinfo"):  # where GDAL's tools are installed: they list the names and the table
        info = subprocess.run(["gdalinfo", str(result.output)], capture_output=True, text=True).stdout
        assert names[0] in info and "Categories" in info


# ------------------------------------------------------------------------------------------------
# 4. edges


@pytest.mark.parametrize("shape", [(PATCH, PATCH), (PATCH, 41), (33, 7), (17, 25)])
def test_small_and_thin_scenes(dense: TrainedModel, tmp_path: Path, shape: tuple[int, int]) -> None:
    """Scenes down to the patch size, one tile row or column, sizes not divisible by the tile."""
    cube = structured_cube(12, *shape, seed=sum(shape))
    scene = write_scene(tmp_path / "small.tif", cube)
    result = predict_scene(scene.path, dense.checkpoint, tmp_path / "labels.tif", tiles=8, device="cpu")
    labels, meta = read_raster(result.output)
    assert meta["shape"] == shape and meta["transform"] == scene.transform
    store = ingest(scene.path, tmp_path / "small.zarr", chunk=16)
    ref_labels, _ = dense.reference_labels(store)
    np.testing.assert_array_equal(labels, as_label_map(ref_labels))


@pytest.mark.parametrize("shape", [(1, 30), (PATCH - 1, PATCH), (PATCH, PATCH - 1), (1, 1), (2, 40), (40, 2)])
def test_scenes_narrower_than_the_patch_are_labelled_from_their_reflection(
        dense: TrainedModel, tmp_path: Path, shape: tuple[int, int]) -> None:
    """A sliver at a tiled archive's edge was refused ("smaller than the model's patch"), so one such tile failed
    a whole batch; dask's reflection of a window narrower than the halo gave too few pixels (1 and 2 wide)."""
    cube = structured_cube(12, *shape, seed=1)
    scene = write_scene(tmp_path / "tiny.tif", cube)
    labels = {}
    for tiles in (8, 64):
        result = predict_scene(scene.path, dense.checkpoint, tmp_path / f"labels{tiles}.tif", tiles=tiles, device="cpu")
        labels[tiles], meta = read_raster(result.output)
        assert meta["shape"] == shape and meta["transform"] == scene.transform
    np.testing.assert_array_equal(labels[8], labels[64])
    assert (labels[8] < K).all()
    in_memory = hsi_cluster.load_model(dense.checkpoint).predict(hsi_cluster.open_scene(scene.path), device="cpu")
    np.testing.assert_array_equal(in_memory.values, labels[8])
    # each pixel's label is that of the patch cut from the scene reflected as np.pad reflects it
    halo = PATCH // 2
    mirrored = np.pad(cube, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    patches = np.stack([mirrored[:, r:r + PATCH, c:c + PATCH] for r in range(shape[0]) for c in range(shape[1])])
    model = load_checkpoint(dense.checkpoint).build_model().eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(patches.astype(np.float32))).argmax(1).numpy().reshape(shape)
    np.testing.assert_array_equal(labels[8], expected)


# ------------------------------------------------------------------------------------------------
# 5. model/scene mismatch


def test_band_count_mismatch_fails_before_any_output(dense: TrainedModel, tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "ten.tif", structured_cube(10, 20, 20, seed=2))
    with pytest.raises(HsiClusterError, match="10 bands.*12"):
        predict_scene(scene.path, dense.checkpoint, tmp_path / "labels.tif", tiles=8, device="cpu",
                      confidence_path=tmp_path / "conf.tif", quicklook_path=tmp_path / "q.png")
    assert not partial_store(tmp_path / "labels.tif").exists()
    assert no_outputs_left(tmp_path, "labels") and no_outputs_left(tmp_path, "conf")


def test_wavelength_mismatch_fails(dense: TrainedModel, tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "shifted.tif", structured_cube(12, 20, 20, seed=2), shift_nm=10.0)
    with pytest.raises(HsiClusterError, match="nm"):
        predict_scene(scene.path, dense.checkpoint, tmp_path / "labels.tif", tiles=8, device="cpu")
    assert no_outputs_left(tmp_path, "labels")
    # the same cube with the training wavelengths is accepted; with none, only its band count can be checked,
    # which is said
    for name, options in (("same.tif", {}), ("none.tif", {"wavelengths": False})):
        ok = write_scene(tmp_path / name, structured_cube(12, 20, 20, seed=2), **options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predict_scene(ok.path, dense.checkpoint, tmp_path / f"labels-{name}", tiles=32, device="cpu")
        said = [str(w.message) for w in caught if "carries no wavelengths" in str(w.message)]
        assert said == ([] if name == "same.tif" else [
            f"{ok.path}: carries no wavelengths, so only its band count can be checked against the model "
            f"{dense.checkpoint.name} (400–2500 nm); its bands are taken to be the model's in the same order (an "
            "ENVI header's 'wavelength' or the GeoTIFF's band metadata would let them be checked)"])


# ------------------------------------------------------------------------------------------------
# 6. atomic output and resume


class Crash:
    """A progress callback that raises KeyboardInterrupt once ``after`` tiles are finished."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        if done >= self.after:
            raise KeyboardInterrupt("simulated kill")


def test_existing_output_needs_overwrite(dense: TrainedModel, tmp_path: Path,
                                         holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    output = tmp_path / "labels.tif"
    output.write_bytes(b"precious")
    with pytest.raises(OutputError, match="--overwrite"):
        predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu")
    assert output.read_bytes() == b"precious" and not partial_store(output).exists()
    predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu", overwrite=True)
    assert read_raster(output)[1]["shape"] == (HEIGHT, WIDTH)


def test_stopped_while_writing_over_an_earlier_run_never_leaves_new_labels_beside_its_companions(
        dense: TrainedModel, resnet: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """Stopped after the new labels were in place, a run with --overwrite left the old model's class sidecar (names,
    counts) and confidence raster beside them."""
    output, confidence = tmp_path / "labels.tif", tmp_path / "conf.tif"
    predict_scene(holey[0].path, resnet.checkpoint, output, tiles=32, device="cpu", confidence_path=confidence)
    old_labels = output.read_bytes()
    assert sidecar_path(output).is_file() and confidence.is_file()
    written = predict_module.write_cog

    def stop_after_the_labels(array, path, **options):  # noqa: ANN001, ANN202 — the writer's own signature
        result = written(array, path, **options)
        if path == output:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(predict_module, "write_cog", stop_after_the_labels)
    with pytest.raises(KeyboardInterrupt):
        predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu", confidence_path=confidence,
                      overwrite=True)
    assert output.read_bytes() != old_labels  # the new labels, without the old run's companions
    assert not sidecar_path(output).exists() and not confidence.exists()
    monkeypatch.setattr(predict_module, "write_cog", written)
    predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu", confidence_path=confidence,
                  resume=True)
    assert sidecar_path(output).is_file() and confidence.is_file()


def test_an_existing_stac_item_needs_overwrite(dense: TrainedModel, tmp_path: Path,
                                               holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    output, item = tmp_path / "mine.tif", tmp_path / "mine.stac.json"
    item.write_text('{"hand": "curated"}')
    result = CliRunner().invoke(main, ["predict", str(holey[0].path), "-m", str(dense.checkpoint), "-o", str(output),
                                       "--tiles", "32", "--stac"])
    assert result.exit_code != 0 and "mine.stac.json" in result.stderr and "--overwrite" in result.stderr
    assert item.read_text() == '{"hand": "curated"}' and not output.exists()
    result = CliRunner().invoke(main, ["predict", str(holey[0].path), "-m", str(dense.checkpoint), "-o", str(output),
                                       "--tiles", "32", "--stac", "--overwrite"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(item.read_text())["type"] == "Feature"


def test_the_summary_counts_one_tile_in_the_singular(dense: TrainedModel, tmp_path: Path,
                                                     holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    result = CliRunner().invoke(main, ["predict", str(holey[0].path), "-m", str(dense.checkpoint), "-o",
                                       str(tmp_path / "labels.tif")])  # the default 512-pixel tile holds the scene
    assert result.exit_code == 0, result.stderr
    assert f"wrote {tmp_path / 'labels.tif'} (1 tile, " in result.stdout  # it said "1 tiles"


def test_the_data_file_of_an_envi_scene_given_by_its_header_is_an_input(dense: TrainedModel, tmp_path: Path) -> None:
    helpers.write_geotiff(tmp_path / "scene.img", holey_cube(12, 40, 40)[0], driver="ENVI")
    before = helpers.tree_snapshot(tmp_path)
    for scene, output in ((tmp_path / "scene.hdr", tmp_path / "scene.img"), (tmp_path / "scene.img", tmp_path / "scene.hdr")):
        with pytest.raises(OutputError, match="is the scene's ENVI companion file"):
            predict_scene(scene, dense.checkpoint, output, tiles=32, device="cpu", overwrite=True)
    assert helpers.tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["scene", "model", "link-to-the-scene", "a-folder"])
def test_an_input_or_a_folder_as_output_is_refused_even_with_overwrite(dense: TrainedModel, tmp_path: Path,
                                                                      target: str,
                                                                      holey: tuple[helpers.SyntheticScene, np.ndarray]
                                                                      ) -> None:
    scene, model = tmp_path / "scene.tif", tmp_path / "model.ckpt"
    scene.write_bytes(holey[0].path.read_bytes())
    model.write_bytes(dense.checkpoint.read_bytes())
    output = {"scene": scene, "model": model, "link-to-the-scene": tmp_path / "link.tif",
              "a-folder": tmp_path / "a-folder"}[target]
    if target == "link-to-the-scene":
        output.symlink_to(scene)
    if target == "a-folder":
        output.mkdir()
    before = helpers.tree_snapshot(tmp_path)
    with pytest.raises(OutputError, match="is a folder" if target == "a-folder" else "an input of this command"):
        predict_scene(scene, model, output, tiles=32, device="cpu", overwrite=True)
    assert helpers.tree_snapshot(tmp_path) == before


def test_an_output_inside_the_input_store_is_refused_even_with_overwrite(dense: TrainedModel, tmp_path: Path,
                                                                        holey: tuple[helpers.SyntheticScene,
                                                                                     np.ndarray]) -> None:
    """``-o scene.zarr/zarr.json --overwrite`` wrote a label COG over the store's own metadata (the store was
    unreadable after)."""
    from hsi_cluster.io import ingest

    store = ingest(holey[0].path, tmp_path / "scene.zarr")
    before = helpers.tree_snapshot(tmp_path)
    for inside in (store / "zarr.json", store / "data" / "zarr.json", store / "new.tif"):
        with pytest.raises(OutputError, match=r"lies inside the scene \(.*scene\.zarr\), an input of this command"):
            predict_scene(store, dense.checkpoint, inside, tiles=32, device="cpu", overwrite=True)
    assert helpers.tree_snapshot(tmp_path) == before


def test_a_second_command_writing_the_same_output_is_refused(dense: TrainedModel, tmp_path: Path,
                                                             holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """Two predicts to one output at once interleaved their tiles: one crashed (KeyError), the other wrote an
    all-nodata COG and exited 0. The second is refused before any work; the lock goes with the run."""
    from hsi_cluster.io.files import busy_output, exclusive_lock, output_lock_path
    from hsi_cluster.io.label_raster import TileStore

    output = tmp_path / "labels.tif"
    with exclusive_lock(output_lock_path(output), busy_output(output), remove=True):  # the first command, running
        with pytest.raises(OutputError, match=r"labels.tif: another hsicluster command is writing it \(pid \d+\)"):
            predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu")
        assert not output.exists() and not TileStore.partial_path(output).exists()
    predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu")
    assert output.is_file() and not output_lock_path(output).exists()


def test_two_outputs_on_one_path_are_refused(dense: TrainedModel, tmp_path: Path,
                                             holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    output = tmp_path / "labels.tif"
    with pytest.raises(OutputError, match="given as both -o and --confidence"):
        predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu", confidence_path=output)
    with pytest.raises(OutputError, match=r"labels.tif.aux.xml: given as both --confidence and -o \(its class sidecar\)"):
        predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu",
                      confidence_path=tmp_path / "labels.tif.aux.xml")
    assert list(tmp_path.iterdir()) == []


def test_resume_with_nothing_to_resume_does_not_replace_an_existing_file(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    output = tmp_path / "labels.tif"
    output.write_bytes(b"precious")
    with pytest.raises(OutputError, match="--overwrite"):
        predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu", resume=True)
    assert output.read_bytes() == b"precious" and not partial_store(output).exists()


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_finished_tile_that_cannot_be_read_back_is_labelled_again(dense: TrainedModel, tiled, tmp_path: Path,
                                                                    holey: tuple[helpers.SyntheticScene, np.ndarray],
                                                                    damage: str) -> None:
    """A finished tile's chunk truncated behind its marker (a machine that crashed): every ``--resume`` failed with
    "unexpected RuntimeError: Zstd decompression error"; deleted, the tile read as nodata and the file had a hole
    of nodata. It is said, labelled again, and the file is the same."""
    scene, output = holey[0].path, tmp_path / "labels.tif"
    with pytest.raises(KeyboardInterrupt):
        predict_scene(scene, dense.checkpoint, output, tiles=16, device="cpu", progress=Crash(3))
    chunk = next(path for path in sorted((partial_store(output) / "labels" / "c").rglob("*")) if path.is_file())
    if damage == "truncated":
        chunk.write_bytes(chunk.read_bytes()[:5])
    else:
        chunk.unlink()
    with pytest.warns(MetadataWarning, match=r"labels.tif: 1 finished tile of the interrupted run could not be read "
                                             r"back or was lost \(tile \d+, \d+\); labelling them again"):
        result = predict_scene(scene, dense.checkpoint, output, tiles=16, device="cpu", resume=True)
    assert result.tiles_resumed == 2
    np.testing.assert_array_equal(read_raster(output)[0], tiled(dense, 16)[0])


def test_interrupted_run_resumes_to_the_same_result(dense: TrainedModel, resnet: TrainedModel, tiled,
                                                    tmp_path: Path,
                                                    holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    scene = holey[0].path
    output, confidence = tmp_path / "labels.tif", tmp_path / "conf.tif"
    crash = Crash(3)
    with pytest.raises(KeyboardInterrupt):
        predict_scene(scene, dense.checkpoint, output, tiles=16, device="cpu", confidence_path=confidence,
                      progress=crash)
    assert crash.calls[-1] == (3, 20)
    assert not output.exists() and not confidence.exists()
    assert partial_store(output).is_dir()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tif" or p.name.endswith(".tmp")]

    calls: list[tuple[int, int]] = []
    result = predict_scene(scene, dense.checkpoint, output, tiles=16, device="cpu", confidence_path=confidence,
                           resume=True, progress=lambda done, total: calls.append((done, total)))
    assert result.tiles == 20 and result.tiles_resumed == 3
    assert calls[0] == (3, 20) and calls[-1] == (20, 20)
    expected_labels, expected_confidence, _ = tiled(dense, 16)
    labels, _ = read_raster(output)
    assert np.array_equal(labels, expected_labels)
    np.testing.assert_array_equal(read_raster(confidence)[0], expected_confidence)
    assert not partial_store(output).exists()

    # interrupted again, then "resumed" with another model: nothing of the old run is reused
    output.unlink()
    with pytest.raises(KeyboardInterrupt):
        predict_scene(scene, dense.checkpoint, output, tiles=16, device="cpu", confidence_path=confidence,
                      overwrite=True, progress=Crash(5))
    assert partial_store(output).is_dir() and not output.exists()
    result = predict_scene(scene, resnet.checkpoint, output, tiles=16, device="cpu", confidence_path=confidence,
                           resume=True)
    assert result.tiles_resumed == 0
    assert np.array_equal(read_raster(output)[0], tiled(resnet, 16)[0])
    assert not partial_store(output).exists()


def test_killed_after_the_last_tile_resumes_without_computing(
        dense: TrainedModel, tiled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """Every tile finished, killed before the raster was written: resume only writes the raster."""
    expected = tiled(dense, 32)[0]
    output = tmp_path / "labels.tif"
    with pytest.raises(KeyboardInterrupt):
        predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu", progress=Crash(6))
    assert not output.exists() and partial_store(output).is_dir()
    monkeypatch.setattr(SSCC, "tile_probabilities", lambda *a, **k: pytest.fail("a finished tile was recomputed"))
    result = predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu", resume=True)
    assert result.tiles == result.tiles_resumed == 6
    assert np.array_equal(read_raster(output)[0], expected)
    assert not partial_store(output).exists()


def test_resume_with_another_tile_size_starts_afresh(dense: TrainedModel, tiled, tmp_path: Path,
                                                     holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    output = tmp_path / "labels.tif"
    with pytest.raises(KeyboardInterrupt):
        predict_scene(holey[0].path, dense.checkpoint, output, tiles=16, device="cpu", progress=Crash(2))
    with pytest.warns(MetadataWarning) as said:  # the finished tiles were discarded in silence
        result = predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu", resume=True)
    assert [str(w.message) for w in said] == [
        f"{output}: the interrupted run's 2 finished tiles were made with --tiles 16 (pass it again to continue them); "
        "they are discarded and every tile is labelled again"]
    assert result.tiles_resumed == 0
    assert np.array_equal(read_raster(output)[0], tiled(dense, 32)[0])


def test_resume_after_the_envi_header_changed_starts_afresh(dense: TrainedModel, tiled, tmp_path: Path,
                                                           holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """The finished tiles were made from the scene as its header then described it: an edited header is another
    scene, whose labels are computed anew; an unchanged one resumes."""
    wl, fw = helpers.spectral_axis(holey[0].cube.shape[0])
    scene = helpers.write_envi(tmp_path / "holey.img", holey[0].cube, nodata=-9999.0, wavelength_nm=wl, fwhm_nm=fw)
    output = tmp_path / "labels.tif"
    for edit, resumed in [(False, 3), (True, 0)]:
        with pytest.raises(KeyboardInterrupt):
            predict_scene(scene.path, dense.checkpoint, output, tiles=16, device="cpu", overwrite=True,
                          progress=Crash(3))
        if edit:
            helpers.edit_file(scene.header)
        result = predict_scene(scene.path, dense.checkpoint, output, tiles=16, device="cpu", resume=True)
        assert result.tiles_resumed == resumed
        assert np.array_equal(read_raster(output)[0], tiled(dense, 16)[0])


# ------------------------------------------------------------------------------------------------
# 7. command line


def test_cli_predict_then_evaluate(dense: TrainedModel, tmp_path: Path,
                                   holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    runner = CliRunner()
    output = tmp_path / "labels.tif"
    result = runner.invoke(main, ["predict", str(holey[0].path), "-m", str(dense.checkpoint), "-o", str(output),
                                  "--tiles", "16", "--device", "cpu", "-q"])
    assert result.exit_code == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    assert output.is_file() and result.stdout == ""
    labels, _ = read_raster(output)

    truth = np.zeros((HEIGHT, WIDTH), dtype=np.int64)  # three "classes" in bands, some unlabelled pixels
    truth[5:30, 4:40], truth[30:50, 10:50], truth[50:68, 2:30] = 1, 2, 3
    np.save(tmp_path / "gt.npy", truth)
    result = runner.invoke(main, ["evaluate", str(output), str(tmp_path / "gt.npy"), "--json"])
    assert result.exit_code == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    reported = json.loads(result.stdout)
    expected = score_clustering(labels, truth, invalid_pred=LABEL_NODATA)
    assert reported["acc"] == expected.acc
    assert reported == json.loads(json.dumps(expected.to_dict()))
    assert reported["n_invalid_pred"] > 0  # the nodata border and holes inside labelled areas count as wrong


def test_cli_bad_model_path_is_a_one_line_error(holey: tuple[helpers.SyntheticScene, np.ndarray],
                                                tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["predict", str(holey[0].path), "-m", str(tmp_path / "missing.ckpt"),
                                       "-o", str(tmp_path / "labels.tif")])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsicluster: error: "), result.stderr
    assert "missing.ckpt" in lines[0]
    assert no_outputs_left(tmp_path, "labels")


# ------------------------------------------------------------------------------------------------
# 8. a real scene, end to end


def test_evaluate_indian_pines_reproduces_the_patch_by_patch_scores(indian_pines: Path, workdir: Path,
                                                                    tmp_path: Path) -> None:
    truth_path = indian_pines.with_name("Indian_pines_gt.npy")
    if not truth_path.is_file():
        pytest.skip(f"{truth_path} is missing from ../shared/data")
    model = train_tiny(indian_pines, workdir / "indian_pines.ckpt", workdir / "work", steps=4, n_clusters=16)
    output = tmp_path / "indian_pines.tif"
    result = predict_scene(indian_pines, model.checkpoint, output, tiles=64, device="cpu")
    assert result.tiles == 9
    ref_labels, _ = model.reference_labels()
    labels, meta = read_raster(output)
    assert meta["crs"] is None and meta["shape"] == (145, 145)
    valid = ref_labels != NO_LABEL
    count = mismatches(labels, as_label_map(ref_labels), valid)
    print(f"Indian Pines, --tiles 64: {count} of {int(valid.sum())} valid pixels differ from label_patches")
    # The tiled and patch paths run the convolutions in other layouts (float rounding ~1e-6): a pixel
    # whose two nearest centroids are that close may flip. An untrained 4-step model has many such ties.
    assert count <= valid.sum() // 10_000
    cli = CliRunner().invoke(main, ["evaluate", str(output), str(truth_path), "--json"])
    assert cli.exit_code == 0, cli.stderr
    truth = np.load(truth_path)
    reported = json.loads(cli.stdout)
    assert reported == json.loads(json.dumps(score_clustering(labels, truth).to_dict()))
    patch_scores = score_clustering(ref_labels, truth, invalid_pred=NO_LABEL)
    assert abs(reported["acc"] - patch_scores.acc) <= count / patch_scores.n_scored


def test_cli_warns_when_no_pixel_could_be_labelled(dense: TrainedModel, tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "empty.tif", np.full((12, 20, 20), np.nan, np.float32))
    output = tmp_path / "labels.tif"
    result = CliRunner().invoke(main, ["predict", str(scene.path), "-m", str(dense.checkpoint), "-o", str(output),
                                       "--tiles", "16", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (f"hsicluster: warning: {scene.path}: every pixel is nodata, NaN or fill in at least "
                             "one band the model reads; check the scene's nodata value, and whether one of those "
                             "bands is empty in this scene (hsicluster ingest flags such a band bad, and predict then "
                             "reads it as the training mean); every label is nodata\n")
    assert (read_raster(output)[0] == LABEL_NODATA).all()


def test_cli_warns_about_an_output_name_that_is_not_a_geotiff_name(dense: TrainedModel, tmp_path: Path,
                                                                   holey: tuple[helpers.SyntheticScene, np.ndarray]
                                                                   ) -> None:
    output = tmp_path / "labels.png"
    result = CliRunner().invoke(main, ["predict", str(holey[0].path), "-m", str(dense.checkpoint), "-o", str(output),
                                       "--tiles", "32", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (f"hsicluster: warning: {output}: -o is written as a GeoTIFF whatever its name; name it "
                             ".tif so that other tools recognise it\n")
    with rasterio.open(output) as written:
        assert written.driver == "GTiff"
    picture = tmp_path / "labels.jpg"
    result = CliRunner().invoke(main, ["predict", str(holey[0].path), "-m", str(dense.checkpoint), "-o",
                                       str(tmp_path / "labels.tif"), "--quicklook", str(picture), "--tiles", "32",
                                       "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (f"hsicluster: warning: {picture}: --quicklook is written as a PNG whatever its name; "
                             "name it .png so that other tools recognise it\n")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_scene_located_by_ground_control_points_gives_labels_that_carry_them(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """A raw (L1) scene without a geotransform but with GCPs: the label and confidence rasters carry the same
    points and their CRS (so gdalwarp can map them), from the file and from its store; ``info`` says so."""
    from rasterio.control import GroundControlPoint

    cube = holey[0].cube
    raw = write_scene(tmp_path / "raw.tif", cube, crs=None, transform=rasterio.Affine.identity())
    points = [GroundControlPoint(row=r, col=c, x=15.0 + c * 1e-4, y=45.0 - r * 1e-4, z=0.0)
              for r, c in ((0, 0), (0, WIDTH), (HEIGHT, 0), (HEIGHT, WIDTH))]
    with rasterio.open(raw.path, "r+") as dst:
        dst.gcps = (points, rasterio.crs.CRS.from_epsg(4326))
    store = ingest(raw.path, tmp_path / "raw.zarr")
    for source in (raw.path, store):
        out = tmp_path / f"labels_{Path(source).suffix[1:]}.tif"
        result = predict_scene(source, dense.checkpoint, out, tiles=16, device="cpu",
                               confidence_path=out.with_name(out.stem + "_conf.tif"))
        for written in (result.output, result.confidence):
            with rasterio.open(written) as labels:
                carried, crs = labels.gcps
                assert crs.to_epsg() == 4326 and labels.transform.is_identity
                assert [(g.row, g.col, g.x, g.y) for g in carried] == [(g.row, g.col, g.x, g.y) for g in points]
        info = CliRunner().invoke(main, ["info", str(source)])
        assert "located by 4 ground control points (EPSG:4326), which the label rasters carry" in info.stdout
    assert np.array_equal(read_raster(tmp_path / "labels_tif.tif")[0], read_raster(tmp_path / "labels_zarr.tif")[0])
    # its STAC Item is found by place: the footprint of the points (it had null geometry and bbox)
    from hsi_cluster.io.stac import label_item

    item = label_item(tmp_path / "labels_tif.tif", model_sha256="0" * 64).to_dict()
    assert item["bbox"] == pytest.approx([15.0, 45.0 - HEIGHT * 1e-4, 15.0 + WIDTH * 1e-4, 45.0])
    assert item["geometry"]["type"] == "Polygon" and item["properties"]["proj:code"] is None


def test_a_scene_found_corrupt_while_labelling_leaves_no_partial_output(
        dense: TrainedModel, tmp_path: Path, holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """The first tiles read, a later one does not (a truncated download): a one-line error with GDAL's reason,
    and nothing left behind, not even the resumable tiles (a file fetched again is another input)."""
    cube = np.tile(holey[0].cube, (1, 8, 1))  # 560 rows: more than one 256-row chunk of the lazy scene
    cut = write_scene(tmp_path / "cut.tif", cube, wavelengths=False).path  # its header first: it opens
    helpers.truncate_file(cut, 0.6)  # rows from about 330 on are gone
    out = tmp_path / "out" / "labels.tif"
    out.parent.mkdir()
    done: list[int] = []
    with pytest.raises(HsiClusterError, match="cut.tif") as info:
        predict_scene(cut, dense.checkpoint, out, tiles=64, device="cpu", progress=lambda d, t: done.append(d))
    assert max(done) > 0, "the truncation should be found after some tiles were labelled"
    assert "previous exception" not in str(info.value) and "truncated or corrupt" in str(info.value)
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_the_quicklook_of_a_south_up_scene_is_drawn_north_up(dense: TrainedModel, tmp_path: Path,
                                                             holey: tuple[helpers.SyntheticScene, np.ndarray],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The label raster keeps the file's south-up grid; the quicklook shows the map the right way up."""
    south_up = rasterio.Affine(30.0, 0.0, 500000.0, 0.0, 30.0, 3_900_000.0)
    scene = write_scene(tmp_path / "south.tif", holey[0].cube, transform=south_up)
    drawn: list[np.ndarray] = []
    real = predict_module.write_quicklook
    monkeypatch.setattr(predict_module, "write_quicklook", lambda labels, *a, **k: (drawn.append(labels),
                                                                                     real(labels, *a, **k))[1])
    result = predict_scene(scene.path, dense.checkpoint, tmp_path / "labels.tif", tiles=16, device="cpu",
                           quicklook_path=tmp_path / "labels.png")
    labels, meta = read_raster(result.output)
    assert meta["transform"] == south_up
    assert np.array_equal(drawn[0], labels[::-1]) and result.quicklook.is_file()


def test_info_describes_a_checkpoint(dense: TrainedModel) -> None:
    """``hsicluster info model.ckpt`` says what the model needs and holds (it said "not a raster")."""
    result = CliRunner().invoke(main, ["info", str(dense.checkpoint)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"source        {dense.checkpoint}  (hsicluster checkpoint, library {hsi_cluster.__version__})"
    assert lines[1] == f"sha256        {load_checkpoint(dense.checkpoint).sha256()} (label rasters it writes carry it)"
    assert lines[2:5] == ["state         finished", f"clusters      {K}", "bands         12, 400.0–2500.0 nm"]
    assert lines[5] == ("network       PCA to 4 components, dense backbone, 5 × 5 patches, labels from centroids of "
                        "its 1 × 1, 3 × 3, 5 × 5 features")
    assert lines[-1] == f"trained on    {dense.scene} ({HEIGHT} × {WIDTH} px, {helpers.PIXEL_SIZE:g} metre pixels)"
    summary = json.loads(CliRunner().invoke(main, ["info", "--json", str(dense.checkpoint)]).stdout)
    assert (summary["clusters"], summary["bands"], summary["complete"], summary["k_choice"]) == (K, 12, True, None)
    assert summary["wavelength_nm"] == {"min": 400.0, "max": 2500.0}
    assert [scene["source"] for scene in summary["scenes"]] == [str(dense.scene)]
    assert summary["training_range"] is True and not any(line.startswith("range") for line in lines)


def test_info_and_predict_on_a_checkpoint_without_a_training_range(dense: TrainedModel, tmp_path: Path,
                                                                   holey: tuple[helpers.SyntheticScene, np.ndarray]
                                                                   ) -> None:
    """A checkpoint trained before the range was kept: info says predict cannot check, and predict labels as before,
    with no share and no warning, even of a scene twice as bright."""
    payload = dict(load_checkpoint(dense.checkpoint).payload)
    payload["spectral"] = {key: value for key, value in payload["spectral"].items() if not key.startswith("range_")}
    older = save_checkpoint(payload, tmp_path / "older.ckpt")
    lines = CliRunner().invoke(main, ["info", str(older)]).stdout.splitlines()
    assert "range         none kept (trained before 2026-12-07): predict cannot warn of scenes outside its training " \
           "spectra" in lines
    brighter = write_scene(tmp_path / "brighter.tif", np.where(holey[1], holey[0].cube * 2, NODATA).astype(np.float32))
    result = predict_scene(brighter.path, older, tmp_path / "labels.tif", tiles=16, device="cpu")
    assert result.outside_share is None and not result_warnings(brighter.path, result)
    np.testing.assert_array_equal(read_raster(result.output)[0], read_raster(predict_scene(
        brighter.path, dense.checkpoint, tmp_path / "ranged.tif", tiles=16, device="cpu").output)[0])


def test_info_describes_a_label_raster_and_its_confidence(dense: TrainedModel, tmp_path: Path,
                                                         holey: tuple[helpers.SyntheticScene, np.ndarray]) -> None:
    """``hsicluster info labels.tif`` said "has a single band, i.e. a 2-D image; hyperspectral clustering needs a
    cube" of predict's own output."""
    output, confidence = tmp_path / "labels.tif", tmp_path / "conf.tif"
    result = predict_scene(holey[0].path, dense.checkpoint, output, tiles=32, device="cpu", confidence_path=confidence)
    described = CliRunner().invoke(main, ["info", str(output)])
    assert described.exit_code == 0, described.output
    lines = described.stdout.splitlines()
    digest = load_checkpoint(dense.checkpoint).sha256()
    assert lines[0] == f"source        {output}  (hsicluster label raster, library {hsi_cluster.__version__})"
    assert lines[1] == f"model         sha256 {digest}…, K {K}"
    assert lines[2] == f"labels of     {holey[0].path}"
    assert lines[3] == f"size          {HEIGHT} rows × {WIDTH} cols, uint8, nodata {LABEL_NODATA}"
    assert lines[4] == f"crs           EPSG:{helpers.EPSG} (metre)"
    summary = json.loads(CliRunner().invoke(main, ["info", "--json", str(output)]).stdout)
    assert summary["cluster_pixels"] == {str(k): v for k, v in result.counts.items()}
    assert summary["nodata_pixels"] == int((~holey[1]).sum())
    assert summary["transform"] == list(helpers.utm_transform())[:6]
    sidecar_path(output).unlink()  # without its class sidecar the labels are counted
    assert json.loads(CliRunner().invoke(main, ["info", "--json", str(output)]).stdout)["cluster_pixels"] == \
        summary["cluster_pixels"]
    conf = json.loads(CliRunner().invoke(main, ["info", "--json", str(confidence)]).stdout)
    assert conf["format"] == "hsicluster confidence raster" and conf["model_sha256"] == digest
    assert conf["cluster_pixels"] is None


def test_a_scene_of_finer_pixels_than_the_training_scene_is_warned_of(dense: TrainedModel, tmp_path: Path,
                                                                      holey: tuple[helpers.SyntheticScene, np.ndarray]
                                                                      ) -> None:
    """The same ground resampled to a third of the pixel size (a 10 m tile, a 30 m model): labelled, with a warning
    (train warned of mixed pixel sizes; predict and batch did not)."""
    fine = write_scene(tmp_path / "fine.tif", holey[0].cube,
                       transform=helpers.utm_transform(helpers.PIXEL_SIZE / 3))
    result = CliRunner().invoke(main, ["predict", str(fine.path), "-m", str(dense.checkpoint), "-o",
                                       str(tmp_path / "labels.tif"), "--tiles", "16", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"its pixels are {helpers.PIXEL_SIZE / 3:g} metre across" in lines[0], lines
