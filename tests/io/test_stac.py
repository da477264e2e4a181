"""STAC Items of label rasters (``predict --stac``) and a Collection over a batch (``batch --stac``).

Validated against the STAC core JSON schemas that pystac ships (offline); the projection and
classification extensions' schemas cannot be fetched here, so their fields are checked directly
(:func:`hsi_cluster.io.stac.extension_problems` plus the values expected).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyproj
import pystac
import pytest
import rasterio
import rasterio.transform
from affine import Affine
from click.testing import CliRunner
from pystac.errors import STACValidationError
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from hsi_cluster.cli import main
from hsi_cluster.io.files import sha256_of
from hsi_cluster.io.label_raster import colour_table
from hsi_cluster.io.labels import LABELS_TAG
from hsi_cluster.io.stac import (
    batch_items,
    extension_problems,
    item_path,
    label_item,
    union_bbox,
    validate_core,
    write_collection,
    write_label_item,
)
from tests import helpers
from tests.predict_helpers import LABEL_NODATA, K, holey_cube, read_raster, train_tiny, write_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("stac")
    cube, valid = holey_cube()
    scenes = root / "scenes"
    (scenes / "north").mkdir(parents=True)
    (scenes / "south").mkdir()
    first = write_scene(scenes / "north" / "a.tif", cube).path
    second = write_scene(scenes / "south" / "b.tif", np.ascontiguousarray(cube[:, ::-1])).path
    model = train_tiny(first, root / "model.ckpt", root / "work", steps=8)
    return {"root": root, "scenes": [first, second], "model": model.checkpoint, "valid": valid}


def invoke(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def check_item(item: dict, labels: Path, *, model: Path, source: Path) -> None:
    """Core schema, extension fields, and the values they must hold for ``labels``."""
    assert validate_core(item).endswith("item-spec/json-schema/item.json")
    assert extension_problems(item) == []
    assert {PROJECTION, CLASSIFICATION} <= set(item["stac_extensions"])
    values, meta = read_raster(labels)
    props = item["properties"]
    assert props["proj:code"] == f"EPSG:{helpers.EPSG}" and "PROJCRS" in props["proj:wkt2"]
    assert props["proj:shape"] == list(values.shape)
    assert props["proj:transform"] == list(meta["transform"])[:6]
    assert props["hsicluster:model_sha256"] == sha256_of(model) and props["hsicluster:k"] == K
    west, south, east, north = item["bbox"]
    assert -180 <= west < east <= 180 and -90 <= south < north <= 90
    assert item["geometry"]["type"] == "Polygon"
    # the label COG as an asset, with one class per cluster and the nodata class
    asset = item["assets"]["labels"]
    assert (labels.parent / asset["href"]).resolve() == labels.resolve()
    assert asset["type"] == pystac.MediaType.COG and "data" in asset["roles"]
    classes = {c["value"]: c for c in asset["classification:classes"]}
    assert set(classes) == set(range(K)) | {LABEL_NODATA}
    colours = colour_table(K)
    for k in range(K):
        assert classes[k]["count"] == int((values == k).sum())
        assert classes[k]["name"] == f"cluster_{k}"
        assert classes[k]["title"].startswith(f"cluster {k} (") and classes[k]["title"].endswith("%)")
        assert classes[k]["color_hint"] == "".join(f"{c:02X}" for c in colours[k][:3])
    assert classes[LABEL_NODATA]["nodata"] is True
    assert classes[LABEL_NODATA]["count"] == int((values == LABEL_NODATA).sum()) > 0
    assert sum(c["count"] for c in classes.values()) == values.size
    # the source scene as a link, every other asset a file beside the labels
    derived = [link for link in item["links"] if link["rel"] == "derived_from"]
    assert [Path(link["href"]) for link in derived] == [source]
    for asset in item["assets"].values():
        assert (labels.parent / asset["href"]).is_file(), asset["href"]
    # pystac reads it back unchanged
    assert pystac.Item.from_dict(item).to_dict(include_self_link=False, transform_hrefs=False) == item


def test_predict_stac_writes_a_valid_item(tiny: dict, tmp_path: Path) -> None:
    scene, model = tiny["scenes"][0], tiny["model"]
    labels = tmp_path / "labels.tif"
    stdout = invoke("predict", scene, "-m", model, "-o", labels, "--quicklook", tmp_path / "labels.png",
                    "--confidence", tmp_path / "conf.tif", "--stac", "--tiles", 16)
    path = item_path(labels)
    assert path == tmp_path / "labels.stac.json" and f"wrote {path}" in stdout
    item = json.loads(path.read_text())
    check_item(item, labels, model=model, source=scene)
    assert set(item["assets"]) == {"labels", "attribute-table", "confidence", "quicklook"}
    assert item["id"] == "labels"


def test_labels_made_again_without_stac_remove_the_item_of_the_old_ones(tiny: dict, tmp_path: Path) -> None:
    """``predict --overwrite`` without ``--stac`` left the old Item beside the new labels: another model's hash,
    other counts and colours, assets that may be gone. It is removed, with a warning; another file is kept."""
    labels = tmp_path / "labels.tif"
    invoke("predict", tiny["scenes"][0], "-m", tiny["model"], "-o", labels, "--stac", "-q")
    result = CliRunner().invoke(main, [str(a) for a in ("predict", tiny["scenes"][0], "-m", tiny["model"], "-o",
                                                        labels, "--overwrite", "-q")])
    assert result.exit_code == 0 and not item_path(labels).exists()
    assert result.stderr == (f"hsicluster: warning: {item_path(labels)}: removed, the STAC Item of the labels this run "
                             "replaced; pass --stac to write a new one\n")
    item_path(labels).write_text('{"type": "Feature", "assets": {"labels": {"href": "./other.tif"}}}')
    invoke("predict", tiny["scenes"][0], "-m", tiny["model"], "-o", labels, "--overwrite", "-q")
    assert item_path(labels).is_file()  # an Item of another raster under that name is not ours to remove


def test_core_validation_rejects_a_broken_item(tiny: dict, tmp_path: Path) -> None:
    labels = tmp_path / "labels.tif"
    invoke("predict", tiny["scenes"][0], "-m", tiny["model"], "-o", labels, "--stac", "-q")
    item = json.loads(item_path(labels).read_text())
    broken = {k: v for k, v in item.items() if k != "assets"}
    with pytest.raises(STACValidationError):
        validate_core(broken)
    bad_class = json.loads(json.dumps(item))
    bad_class["assets"]["labels"]["classification:classes"][0]["name"] = "cluster 0"
    bad_class["properties"]["proj:shape"] = [10]
    problems = extension_problems(bad_class)
    assert any("name 'cluster 0'" in p for p in problems) and any("proj:shape" in p for p in problems)


def test_batch_stac_writes_items_and_a_collection(tiny: dict, tmp_path: Path) -> None:
    outdir, model = tmp_path / "out", tiny["model"]
    scenes_glob = str(tiny["root"] / "scenes" / "**" / "*.tif")
    stdout = invoke("batch", scenes_glob, "-m", model, "-o", outdir, "--workers", 1, "--tiles", 16, "--stac", "--json")
    records = json.loads(stdout)  # --json stays one document on stdout
    assert [r["status"] for r in records] == ["done", "done"]
    collection = json.loads((outdir / "collection.json").read_text())
    assert validate_core(collection).endswith("collection-spec/json-schema/collection.json")
    assert collection["type"] == "Collection" and collection["hsicluster:model_sha256"] == sha256_of(model)
    item_links = [link for link in collection["links"] if link["rel"] == "item"]
    assert len(item_links) == 2
    ids = set()
    for link, record, source in zip(item_links, records, tiny["scenes"], strict=True):
        path = (outdir / link["href"]).resolve()
        labels = Path(record["output"])
        assert path == item_path(labels).resolve()
        item = json.loads(path.read_text())
        check_item(item, labels, model=model, source=source)
        assert item["collection"] == collection["id"]
        for rel in ("collection", "parent", "root"):
            [back] = [l for l in item["links"] if l["rel"] == rel]
            assert (path.parent / back["href"]).resolve() == (outdir / "collection.json").resolve()
        ids.add(item["id"])
    assert ids == {"north-a_labels", "south-b_labels"}
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    assert west < east and south < north
    # pystac reads the catalogue from disk, items included
    read = pystac.Collection.from_file(str(outdir / "collection.json"))
    assert sorted(item.id for item in read.get_items()) == sorted(ids)


# --------------------------------------------------------------------------------------------
# Footprints: the pixel grid's outline through its transform, reprojected to WGS 84


def write_labels(path: Path, *, crs: CRS | None, transform: Affine, width: int = 40, height: int = 25) -> Path:
    """A small label raster as ``predict`` tags it (K clusters, nodata 255, a colour table), no model needed."""
    values = (np.arange(width * height).reshape(height, width) % (K + 1)).astype(np.uint8)
    values[values == K] = LABEL_NODATA
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=crs,
                       transform=transform, nodata=LABEL_NODATA) as dst:
        dst.write(values, 1)
        dst.write_colormap(1, colour_table(K))
        dst.update_tags(**{LABELS_TAG: str(K)})
    return path


def ring_of(geometry: dict) -> list[tuple[float, float]]:
    [ring] = geometry["coordinates"]
    return [(x, y) for x, y in ring]


def signed_area(ring: list[tuple[float, float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True))


def corners_wgs84(crs: CRS, transform: Affine, width: int, height: int) -> list[tuple[float, float]]:
    """The grid's four corners in WGS 84, computed apart from the code under test (rasterio.transform.xy + pyproj)."""
    to_wgs84 = pyproj.Transformer.from_crs(pyproj.CRS.from_wkt(crs.to_wkt()), "EPSG:4326", always_xy=True)
    corners = []
    for row, col in ((0, 0), (height, 0), (height, width), (0, width)):
        x, y = rasterio.transform.xy(transform, row, col, offset="ul")
        corners.append(tuple(float(v) for v in to_wgs84.transform(x, y)))
    return corners


def test_footprint_of_a_rotated_grid_is_its_real_outline(tmp_path: Path) -> None:
    # a 30° rotated UTM grid: the old axis-aligned box of its bounds has none of its corners as vertices
    transform = Affine.translation(500_000, 4_100_000) * Affine.rotation(30) * Affine.scale(30, -30)
    assert transform.b != 0 and transform.d != 0
    labels = write_labels(tmp_path / "rotated.tif", crs=helpers.utm_crs(), transform=transform)
    item = label_item(labels, model_sha256="0" * 64).to_dict(include_self_link=False, transform_hrefs=False)
    assert validate_core(item).endswith("item-spec/json-schema/item.json") and extension_problems(item) == []
    assert item["geometry"]["type"] == "Polygon"
    ring = ring_of(item["geometry"])
    assert ring[0] == ring[-1] and signed_area(ring) > 0  # closed, counter-clockwise (RFC 7946)
    assert len(ring) > 5  # the edges are densified
    for corner in corners_wgs84(helpers.utm_crs(), transform, 40, 25):
        assert min(np.hypot(x - corner[0], y - corner[1]) for x, y in ring) < 1e-9, corner
    lons, lats = [x for x, _ in ring], [y for _, y in ring]
    assert item["bbox"] == [min(lons), min(lats), max(lons), max(lats)]


def test_footprint_of_a_north_up_grid_is_unchanged(tmp_path: Path) -> None:
    # in a geographic CRS: exactly the rectangle of the bounds, as before
    transform = Affine(0.01, 0, 14.5, 0, -0.01, 46.2)
    labels = write_labels(tmp_path / "lonlat.tif", crs=CRS.from_epsg(4326), transform=transform)
    item = label_item(labels, model_sha256="0" * 64).to_dict(include_self_link=False, transform_hrefs=False)
    west, south, east, north = item["bbox"]
    assert item["bbox"] == pytest.approx([14.5, 46.2 - 0.25, 14.9, 46.2], abs=1e-12)
    ring = ring_of(item["geometry"])
    assert len(ring) == 5 and ring[0] == ring[-1] and signed_area(ring) > 0
    assert set(ring) == {(west, south), (east, south), (east, north), (west, north)}
    # in UTM: the same bbox as GDAL's transform_bounds of the bounds (what the Item held before)
    labels = write_labels(tmp_path / "utm.tif", crs=helpers.utm_crs(), transform=helpers.utm_transform())
    item = label_item(labels, model_sha256="0" * 64).to_dict(include_self_link=False, transform_hrefs=False)
    with rasterio.open(labels) as dataset:
        expected = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds, densify_pts=21)
    assert item["bbox"] == pytest.approx(list(expected), abs=1e-12)
    ring = ring_of(item["geometry"])
    assert ring[0] == ring[-1] and signed_area(ring) > 0
    for cx, cy in corners_wgs84(helpers.utm_crs(), helpers.utm_transform(), 40, 25):
        assert min(np.hypot(x - cx, y - cy) for x, y in ring) < 1e-9


def test_footprint_across_the_antimeridian_is_cut_in_two(tmp_path: Path) -> None:
    # a 3 km scene in UTM 60N centred on 180° at 50°N: not a box belting the globe
    utm60 = CRS.from_epsg(32660)
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32660", always_xy=True).transform(180.0, 50.0)
    transform = Affine(30, 0, x - 1500, 0, -30, y + 1500)
    labels = write_labels(tmp_path / "dateline.tif", crs=utm60, transform=transform, width=100, height=100)
    item = label_item(labels, model_sha256="0" * 64).to_dict(include_self_link=False, transform_hrefs=False)
    assert validate_core(item).endswith("item-spec/json-schema/item.json")
    west, south, east, north = item["bbox"]
    assert 179.9 < west < 180 and -180 < east < -179.9 and 49.9 < south < north < 50.1  # west > east: crosses 180°
    geometry = item["geometry"]
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2
    sides = set()
    for [ring] in geometry["coordinates"]:
        lons = [p[0] for p in ring]
        assert ring[0] == ring[-1] and signed_area([tuple(p) for p in ring]) > 0
        assert -180 <= min(lons) and max(lons) <= 180 and max(lons) - min(lons) < 0.05
        sides.add(180.0 if max(lons) == 180.0 else -180.0 if min(lons) == -180.0 else None)
    assert sides == {180.0, -180.0}
    corners = corners_wgs84(utm60, transform, 100, 100)
    vertices = [tuple(p) for [ring] in geometry["coordinates"] for p in ring]
    for cx, cy in corners:
        assert min(np.hypot(((x - cx + 180) % 360) - 180, y - cy) for x, y in vertices) < 1e-9


def test_footprint_around_a_pole_spans_every_longitude(tmp_path: Path) -> None:
    # 20 km square centred on the North Pole (NSIDC polar stereographic)
    transform = Affine(1000, 0, -10_000, 0, -1000, 10_000)
    labels = write_labels(tmp_path / "pole.tif", crs=CRS.from_epsg(3413), transform=transform, width=20, height=20)
    item = label_item(labels, model_sha256="0" * 64).to_dict(include_self_link=False, transform_hrefs=False)
    assert validate_core(item).endswith("item-spec/json-schema/item.json")
    west, south, east, north = item["bbox"]
    corner_lats = [lat for _, lat in corners_wgs84(CRS.from_epsg(3413), transform, 20, 20)]
    assert (west, east, north) == (-180.0, 180.0, 90.0) and south == pytest.approx(min(corner_lats), abs=1e-9)
    ring = ring_of(item["geometry"])
    assert ring[0] == ring[-1] and signed_area(ring) > 0
    assert max(lat for _, lat in ring) == 90.0 and min(lon for lon, _ in ring) == -180.0
    assert max(lon for lon, _ in ring) == 180.0
    # the edges' midpoints lie nearer the pole than the corners: the outline follows them
    assert sum(1 for _, lat in ring if max(corner_lats) + 0.01 < lat < 90.0) > 4


def test_collection_extent_is_the_narrowest_union_on_the_circle() -> None:
    assert union_bbox([]) == [-180.0, -90.0, 180.0, 90.0]
    assert union_bbox([[10, 0, 11, 1], [12, -1, 13, 2]]) == [10, -1, 13, 2]
    # scenes either side of 180°, one across it: the union crosses it too (west > east), not 340° wide
    assert union_bbox([[170, 0, 171, 1], [179.9, 0, -179.9, 1], [-171, -2, -170, 1]]) == [170, -2, -170, 1]
    assert union_bbox([[170, 0, -170, 1], [-175, 0, -172, 1], [160, 0, 165, 3]]) == [160, 0, -170, 3]
    assert union_bbox([[170, 0, -170, 1], [-175, 0, 175, 1]]) == [-180.0, 0, 180.0, 1]


# --------------------------------------------------------------------------------------------
# Hrefs of files whose names hold spaces or non-ASCII letters


def test_hrefs_with_spaces_resolve_in_pystac(tmp_path: Path) -> None:
    # pystac resolves a local href as a path, without percent-decoding: the hrefs are written as paths
    outdir = tmp_path / "out dir"
    (outdir / "north side").mkdir(parents=True)
    scene = tmp_path / "scènes" / "scene 1.tif"
    scene.parent.mkdir()
    scene.write_bytes(b"")
    first = write_labels(outdir / "scene 1.tif", crs=helpers.utm_crs(), transform=helpers.utm_transform())
    second = write_labels(outdir / "north side" / "scène 2 é.tif", crs=helpers.utm_crs(),
                          transform=helpers.utm_transform())
    quicklook = outdir / "scene 1 quicklook.png"
    quicklook.write_bytes(b"")
    path = write_label_item(first, model_sha256="0" * 64, source=scene, quicklook=quicklook)
    item = pystac.Item.from_file(str(path))
    assert Path(item.assets["labels"].get_absolute_href()) == first
    assert Path(item.assets["quicklook"].get_absolute_href()) == quicklook
    [derived] = item.get_links("derived_from")
    assert Path(derived.get_absolute_href()) == scene and scene.is_file()
    # the batch catalogue: the Collection's item links and each Item's assets, read from disk by pystac
    records = [{"status": "done", "output": str(first), "source": str(scene)},
               {"status": "done", "output": str(second), "source": str(scene)}]
    items = batch_items(records, outdir, model_sha256="0" * 64)
    collection = pystac.Collection.from_file(str(write_collection(items, outdir, model_sha256="0" * 64)))
    read = sorted(collection.get_items(), key=lambda i: i.id)
    assert [i.id for i in read] == ["north-side-sc-ne-2", "scene-1"]
    assert sorted(Path(i.assets["labels"].get_absolute_href()) for i in read) == sorted([first, second])
    for i in read:
        assert Path(i.assets["labels"].get_absolute_href()).is_file()
        assert Path(i.get_single_link("collection").get_absolute_href()) == outdir / "collection.json"


def test_batch_item_ids_are_unique_when_paths_would_share_one(tmp_path: Path) -> None:
    """``north/s1`` and ``north-s1`` give the same id, as do ``ä/x`` and ``ö/x`` (an id keeps ASCII only): those
    get a hash of their path appended; an id no other path shares stays readable. The same set, the same ids."""
    outdir = tmp_path / "out"
    paths = ["north/s1_labels.tif", "north-s1_labels.tif", "ä/x_labels.tif", "ö/x_labels.tif", "south/y_labels.tif"]
    records = []
    for relative in paths:
        (outdir / relative).parent.mkdir(parents=True, exist_ok=True)
        records.append({"status": "done", "output": str(write_labels(outdir / relative, crs=helpers.utm_crs(),
                                                                     transform=helpers.utm_transform()))})
    ids = [item.id for _, item in batch_items(records, outdir, model_sha256="0" * 64)]
    assert len(set(ids)) == len(ids) == 5
    assert ids[4] == "south-y_labels"
    for identifier, stem in zip(ids[:4], ["north-s1_labels", "north-s1_labels", "x_labels", "x_labels"], strict=True):
        assert identifier.startswith(stem + "-") and len(identifier) == len(stem) + 9
    assert [item.id for _, item in batch_items(records, outdir, model_sha256="0" * 64)] == ids
    collection = pystac.Collection.from_file(str(write_collection(batch_items(records, outdir, model_sha256="0" * 64),
                                                                  outdir, model_sha256="0" * 64)))
    assert sorted(i.id for i in collection.get_items()) == sorted(ids)
