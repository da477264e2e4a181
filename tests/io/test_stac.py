"""STAC Items of label rasters (``predict --stac``) and a Collection over a batch (``batch --stac``).

Validated against the STAC core JSON schemas that pystac ships (offline); the projection and
classification extensions' schemas cannot be fetched here, so their fields are checked directly
(:func:`hsi_cluster.io.stac.extension_problems` plus the values expected).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
from click.testing import CliRunner
from pystac.errors import STACValidationError

from hsi_cluster.cli import main
from hsi_cluster.io.files import sha256_of
from hsi_cluster.io.label_raster import colour_table
from hsi_cluster.io.stac import extension_problems, item_path, validate_core
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
