"""STAC metadata for label rasters: one Item per label COG, a Collection over a batch.

An Item (``labels.tif`` → ``labels.stac.json`` beside it) describes one label raster written by
``predict``:

- the label COG as the ``labels`` asset, with the classification extension's ``classification:classes``:
  one class per cluster (value, name ``cluster_3``, title ``cluster 3 (12.4 %)``, colour of the colour
  table as ``color_hint``, pixel ``count`` and ``percentage``) and the nodata class;
- the projection extension on the Item: ``proj:code`` (``EPSG:32633``, null without a CRS), ``proj:wkt2``,
  ``proj:shape`` [rows, cols] and ``proj:transform`` (the six affine coefficients);
- the scene the labels were computed from as a ``derived_from`` link (and ``hsicluster:source``), the model's
  sha256 as ``hsicluster:model_sha256``, K as ``hsicluster:k``;
- the GDAL sidecar (attribute table), and the confidence raster and quicklook when there are, as assets.

Geometry and bbox are the raster's footprint in WGS 84 (:func:`footprint`: the outline of the pixel grid
through its transform, rotation and shear included, densified along the edges and reprojected; cut in two
at the antimeridian, with a bbox whose west > east there, by the ``antimeridian`` package), or null for a
raster without a CRS (the benchmark scenes). ``datetime`` is when the label raster was written (its
modification time): a scene file does not say when it was acquired.

Asset hrefs are relative (``./labels.tif``), so a folder of outputs can move as a whole; the ``derived_from``
link to the scene, which usually lies elsewhere, is absolute. Hrefs are file paths with
``/`` separators, written as pystac itself writes local hrefs (``pystac.utils.make_relative_href``) and not
percent-encoded: pystac (1.15) and GDAL resolve a local href as a path without decoding it, so
``./my%20labels.tif`` would name a file that does not exist for them, while a browser's URL parser encodes a
space or ``é`` itself when it resolves ``./my labels é.tif`` against the Item's URL. :func:`validate_core`
checks a document against the STAC core JSON schemas that pystac ships (offline); the extensions' schemas
live on the web, so :func:`extension_problems` checks their fields directly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import antimeridian
import numpy as np
import pystac
import rasterio
import shapely
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.errors import NotGeoreferencedWarning

from hsi_cluster.io.files import sha256_of, write_text_atomic
from hsi_cluster.io.label_raster import class_name, colour_table, count_labels, sidecar_path
from hsi_cluster.io.labels import LABELS_TAG

ITEM_SUFFIX = ".stac.json"
COLLECTION_NAME = "collection.json"
PREFIX = "hsicluster:"


def item_path(labels: str | os.PathLike[str]) -> Path:
    """Where the Item of a label raster goes: ``labels.tif`` → ``labels.stac.json``."""
    labels = Path(labels)
    return labels.with_name(labels.stem + ITEM_SUFFIX)


def _href(target: str | os.PathLike[str], base_dir: Path) -> str:
    """``target`` relative to ``base_dir`` (``./x.tif``, ``../scenes/a.tif``), absolute when on another drive.

    A path, not percent-encoded (see the module docstring): ``./scene 1.tif`` as pystac writes and reads it.
    """
    try:
        relative = os.path.relpath(Path(target).absolute(), base_dir.absolute())
    except ValueError:
        return str(Path(target).absolute())
    relative = relative.replace(os.sep, "/")
    return relative if relative.startswith("../") else f"./{relative}"


def _hex(rgba: Sequence[int]) -> str:
    return "".join(f"{int(c):02X}" for c in rgba[:3])


# ------------------------------------------------------------------------------------------------
# Footprints in WGS 84

#: Points per edge of the pixel grid, corners included, reprojected for a footprint (GDAL's own default
#: for ``transform_bounds``): straight edges of the grid curve in WGS 84.
EDGE_POINTS = 21


def footprint(crs: Any, transform: Sequence[float], *, width: int, height: int,
              edge_points: int = EDGE_POINTS) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The GeoJSON geometry and bbox in WGS 84 of a ``height`` × ``width`` pixel grid.

    The outline is the grid's four corners through the affine ``transform`` (rotation and shear included)
    with ``edge_points`` points along each edge, reprojected from ``crs`` with :func:`rasterio.warp.transform`.
    The antimeridian and the poles are left to :func:`antimeridian.fix_polygon` and :func:`antimeridian.bbox`:
    as RFC 7946 asks, rings are closed and counter-clockwise, a footprint that crosses the antimeridian is cut
    there into a MultiPolygon whose bbox has west > east (RFC 7946 §5.2, which the STAC Item spec follows), and
    an outline around a pole is closed along the pole, its bbox spanning every longitude. Edges are straight
    lines in longitude/latitude (RFC 7946 §3.1.1), also where they meet 180°; vertices on straight stretches
    (a north-up grid in a geographic CRS) are dropped. (None, None) when the points of the outline that can
    be projected enclose no area.
    """
    from rasterio.warp import transform as reproject

    a, b, c, d, e, f = (float(v) for v in list(transform)[:6])
    t = np.linspace(0.0, 1.0, edge_points)[:-1]
    # (col, row) around the grid: down the left edge, along the bottom, up the right edge, back along the top;
    # counter-clockwise in the CRS (the interior on the left, which tells a ring around a pole which pole)
    # unless the transform mirrors the grid (a * e - b * d > 0, e.g. south-up), then the other way round
    cols = np.concatenate([np.zeros_like(t), t * width, np.full_like(t, width), (1 - t) * width])
    rows = np.concatenate([t * height, np.full_like(t, height), (1 - t) * height, np.zeros_like(t)])
    if a * e - b * d > 0:
        cols, rows = cols[::-1], rows[::-1]
    lon, lat = (np.asarray(v, dtype=np.float64) for v in reproject(
        crs, "EPSG:4326", (a * cols + b * rows + c).tolist(), (d * cols + e * rows + f).tolist()))
    finite = np.isfinite(lon) & np.isfinite(lat)
    outline = shapely.Polygon(np.column_stack([lon[finite], lat[finite]])) if finite.sum() >= 3 else None
    if outline is None or outline.area == 0:
        return None, None
    shape = antimeridian.fix_polygon(outline, fix_winding=True, great_circle=False).simplify(0)
    return json.loads(shapely.to_geojson(shape)), antimeridian.bbox(shape)


def label_item(labels: str | os.PathLike[str], *, model_sha256: str, source: str | os.PathLike[str] | None = None,
               counts: Mapping[int, int] | None = None, confidence: str | os.PathLike[str] | None = None,
               quicklook: str | os.PathLike[str] | None = None, item_id: str | None = None,
               href: str | os.PathLike[str] | None = None) -> pystac.Item:
    """The STAC Item of a label raster written by ``predict`` (see the module docstring).

    Args:
        labels: the label COG.
        model_sha256: sha256 (hex) of the checkpoint that made it.
        source: the scene it labels; default the source path recorded in the raster's tags.
        counts: pixels per cluster (``PredictResult.counts``); default: counted from the raster.
        confidence, quicklook: the confidence raster and quicklook PNG, when written.
        item_id: default the raster's file name without its suffix.
        href: where the Item will be written (relative hrefs are computed from it); default
            :func:`item_path`.
    """
    labels = Path(labels).absolute()
    where = Path(href).absolute() if href is not None else item_path(labels).absolute()
    base = where.parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(labels) as dataset:
            tags = dataset.tags()
            if LABELS_TAG not in tags:
                raise ValueError(f"{labels}: not a label raster written by hsicluster predict (no {LABELS_TAG} tag)")
            n_clusters = int(tags[LABELS_TAG])
            nodata = int(dataset.nodata)
            height, width = dataset.height, dataset.width
            crs, transform = dataset.crs, dataset.transform
            gcps, gcp_crs = dataset.gcps
            colormap = dataset.colormap(1)
            if counts is None:
                counts, _ = count_labels(dataset, n_clusters, nodata)
    counts = {k: int(counts.get(k, 0)) for k in range(n_clusters)}
    nodata_count = height * width - sum(counts.values())
    total = height * width
    source = Path(source).absolute() if source is not None else (Path(tags["HSICLUSTER_SOURCE"])
                                                                  if tags.get("HSICLUSTER_SOURCE") else None)

    geometry, bbox = footprint(crs, transform, width=width, height=height) if crs is not None else (None, None)
    if crs is None and gcps and gcp_crs is not None:  # a raw scene located by ground control points: the footprint
        # of the affine fit of its points, so that a search by place finds it (the raster keeps no geotransform)
        geometry, bbox = footprint(gcp_crs, rasterio.transform.from_gcps(gcps), width=width, height=height)
    written = dt.datetime.fromtimestamp(labels.stat().st_mtime, tz=dt.timezone.utc).replace(microsecond=0)
    properties: dict[str, Any] = {
        "title": f"{labels.name}: {n_clusters} clusters",
        "description": f"SSCC cluster labels (K = {n_clusters}) of {source.name if source else 'a scene'}; "
                       "cluster ids and colours are arbitrary and differ between models",
        "created": pystac.utils.datetime_to_str(written),
        f"{PREFIX}k": n_clusters, f"{PREFIX}model_sha256": model_sha256,
    }
    if tags.get("HSICLUSTER_VERSION"):
        properties[f"{PREFIX}version"] = tags["HSICLUSTER_VERSION"]
    if tags.get("HSICLUSTER_GAIN"):  # labelled at a matched brightness (--match-brightness)
        properties[f"{PREFIX}applied_gain"] = float(tags["HSICLUSTER_GAIN"])
        properties[f"{PREFIX}applied_tilt"] = float(tags.get("HSICLUSTER_TILT", 0.0))
    if source is not None:
        properties[f"{PREFIX}source"] = str(source)
    item = pystac.Item(id=item_id or labels.stem, geometry=geometry, bbox=bbox, datetime=written,
                       properties=properties)

    projection = ProjectionExtension.ext(item, add_if_missing=True)
    if crs is not None:
        import pyproj

        epsg = crs.to_epsg()
        projection.apply(epsg=epsg, wkt2=pyproj.CRS.from_wkt(crs.to_wkt()).to_wkt(), shape=[height, width],
                         transform=list(transform)[:6])
    else:  # a pixel grid without georeferencing: proj:code null, as the extension says for such data
        projection.apply(shape=[height, width])
    item.properties.setdefault("proj:code", None)

    asset = pystac.Asset(href=_href(labels, base), media_type=pystac.MediaType.COG, roles=["data"],
                         title=f"cluster labels 0 … {n_clusters - 1} (nodata {nodata})")
    item.add_asset("labels", asset)
    colours = colour_table(n_clusters)
    labelled = sum(counts[k] for k in range(n_clusters))  # a cluster's share of the labelled pixels, as its name
    classes = [Classification.create(value=k, name=f"cluster_{k}", title=class_name(k, counts[k], labelled),
                                     color_hint=_hex(colormap.get(k, colours[k])), count=counts[k],
                                     percentage=round(100 * counts[k] / max(labelled, 1), 4))
               for k in range(n_clusters)]
    classes.append(Classification.create(value=nodata, name="nodata", title="nodata", nodata=True,
                                         count=nodata_count, percentage=round(100 * nodata_count / max(total, 1), 4)))
    ClassificationExtension.ext(asset, add_if_missing=True).classes = classes
    if sidecar_path(labels).is_file():
        item.add_asset("attribute-table", pystac.Asset(href=_href(sidecar_path(labels), base),
                                                       media_type="application/xml", roles=["metadata"],
                                                       title="GDAL PAM sidecar: class names, raster attribute table"))
    if confidence is not None:
        item.add_asset("confidence", pystac.Asset(href=_href(confidence, base), media_type=pystac.MediaType.COG,
                                                  roles=["data"], title="maximum cluster probability (NaN = nodata)"))
    if quicklook is not None:
        item.add_asset("quicklook", pystac.Asset(href=_href(quicklook, base), media_type=pystac.MediaType.PNG,
                                                 roles=["overview"], title="quicklook with a legend"))
    if source is not None:
        item.add_link(pystac.Link(rel="derived_from", target=str(source), title="the scene labelled"))
    return item


def remove_stale_item(labels: str | os.PathLike[str]) -> Path | None:
    """Remove the Item beside ``labels`` that describes the label raster a new run just replaced (its ``labels``
    asset names this file), and return its path; None when there is none (or the file there is not such an Item).

    Its model hash, class counts and colours are those of the replaced labels, and its other assets may be gone.
    """
    path = item_path(labels)
    try:
        document = json.loads(path.read_text())
        href = document["assets"]["labels"]["href"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (path.parent / href).resolve() != Path(labels).resolve():
        return None
    path.unlink()
    return path


def write_label_item(labels: str | os.PathLike[str], *, model_sha256: str | None = None,
                     model: str | os.PathLike[str] | None = None, **options: Any) -> Path:
    """Write the Item of ``labels`` beside it (:func:`item_path`) and return its path.

    Give the model's hash, or the checkpoint ``model`` to hash; ``options`` as for :func:`label_item`.
    """
    if model_sha256 is None:
        if model is None:
            raise ValueError("write_label_item: pass model_sha256 or model")
        model_sha256 = sha256_of(model)
    path = item_path(labels)
    item = label_item(labels, model_sha256=model_sha256, href=path, **options)
    write_text_atomic(path, json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2) + "\n")
    return path


def write_collection(items: Sequence[tuple[Path, pystac.Item]], outdir: str | os.PathLike[str], *,
                     model_sha256: str, collection_id: str | None = None) -> Path:
    """Write ``items`` (each with the path it goes to) and a Collection over them, ``OUTDIR/collection.json``.

    Each Item links to the Collection (``collection``, ``parent``, ``root``) and the Collection to each Item.
    Its extent is the union of the Items' bboxes (:func:`union_bbox`) and the span of their datetimes.
    """
    outdir = Path(outdir).absolute()
    path = outdir / COLLECTION_NAME
    spatial = union_bbox([item.bbox for _, item in items if item.bbox])
    times = sorted(item.datetime for _, item in items if item.datetime) or [dt.datetime.now(dt.timezone.utc)]
    collection_id = collection_id or _identifier(outdir.name) or "hsicluster-labels"
    collection = pystac.Collection(
        id=collection_id, license="other",
        description=f"Cluster label rasters written by hsicluster batch with one SSCC model "
                    f"(sha256 {model_sha256}); cluster ids and colours are arbitrary and differ between models",
        extent=pystac.Extent(pystac.SpatialExtent([spatial]), pystac.TemporalExtent([[times[0], times[-1]]])),
        extra_fields={f"{PREFIX}model_sha256": model_sha256},
        stac_extensions=[ProjectionExtension.get_schema_uri(), ClassificationExtension.get_schema_uri()])
    collection.add_link(pystac.Link(rel="root", target=f"./{COLLECTION_NAME}", media_type=pystac.MediaType.JSON))
    for item_file, item in items:
        collection.add_link(pystac.Link(rel="item", target=_href(item_file, outdir), media_type=pystac.MediaType.GEOJSON,
                                        title=item.id))
        back = _href(path, item_file.parent)
        item.collection_id = collection_id
        item.clear_links("collection")
        for rel in ("collection", "parent", "root"):
            item.add_link(pystac.Link(rel=rel, target=back, media_type=pystac.MediaType.JSON))
        write_text_atomic(item_file, json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False),
                                                indent=2) + "\n")
    write_text_atomic(path, json.dumps(collection.to_dict(include_self_link=False, transform_hrefs=False),
                                       indent=2) + "\n")
    return path


def union_bbox(boxes: Sequence[Sequence[float]]) -> list[float]:
    """The narrowest bbox ``[west, south, east, north]`` holding every one of ``boxes`` (the whole globe for none).

    Longitudes are taken on the circle: a box with west > east crosses the antimeridian, and so does the
    union when that is the narrower way round (scenes on either side of 180°). The union is the circle less
    its widest stretch that no box covers. (:func:`antimeridian.bbox` of the boxes would not do: it cuts
    a MultiPolygon across 180° at the westmost east and eastmost west of its parts.)
    """
    if not boxes:
        return [-180.0, -90.0, 180.0, 90.0]
    west, south, east, north = np.asarray(boxes, dtype=np.float64).T
    start = (west + 180.0) % 360.0 - 180.0  # in [-180, 180)
    span = np.where(east >= west, east - west, east - west + 360.0)
    order = np.argsort(start)
    reach = np.maximum.accumulate(start[order] + span[order])  # covered up to, by the boxes starting so far
    # the uncovered stretch just west of each start, past the boxes before it and those wrapping past 180°
    gaps = start[order] - np.maximum(np.concatenate([[-np.inf], reach[:-1]]), reach[-1] - 360.0)
    if gaps.max() <= 0:
        return [-180.0, float(south.min()), 180.0, float(north.max())]
    first = order[np.argmax(gaps)]
    last = np.argmax((start - start[first]) % 360.0 + span)  # the box reaching furthest east of ``first``
    return [float(west[first]), float(south.min()), float(east[last]), float(north.max())]


def _identifier(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def batch_items(records: Sequence[Mapping[str, Any]], outdir: str | os.PathLike[str], *,
                model_sha256: str) -> list[tuple[Path, pystac.Item]]:
    """Items of a batch's finished scenes (manifest records with status ``done`` or ``skipped``), ids from
    their paths under OUTDIR (``north/scene3_labels.tif`` → ``north-scene3_labels``). Paths that give the
    same id (``north/s1`` and ``north-s1``; ``ä/x`` and ``ö/x``, whose letters an id leaves out) get the
    first 8 hex digits of their path's sha256 appended, so that every id in the Collection is unique."""
    outdir = Path(outdir).absolute()
    finished = []
    for record in records:
        if record.get("status") not in ("done", "skipped") or not record.get("output"):
            continue
        output = Path(record["output"]).absolute()
        if not output.is_file():
            continue
        try:
            relative = output.relative_to(outdir).with_suffix("").as_posix()
        except ValueError:
            relative = output.stem
        finished.append((record, output, relative, _identifier(relative.replace("/", "-"))))
    shared = Counter(identifier for *_, identifier in finished)
    items = []
    for record, output, relative, identifier in finished:
        if shared[identifier] > 1:
            identifier += "-" + hashlib.sha256(relative.encode()).hexdigest()[:8]
        counts = record.get("counts")
        where = item_path(output)
        item = label_item(output, model_sha256=model_sha256, source=record.get("source"),
                          counts={int(k): int(v) for k, v in counts.items()} if counts else None,
                          item_id=identifier, href=where)
        items.append((where, item))
    return items


def write_batch_catalog(records: Sequence[Mapping[str, Any]], outdir: str | os.PathLike[str], *,
                        model: str | os.PathLike[str]) -> Path:
    """An Item beside each finished label raster of a batch and ``OUTDIR/collection.json`` over them."""
    digest = sha256_of(model)
    return write_collection(batch_items(records, outdir, model_sha256=digest), outdir, model_sha256=digest)


# ------------------------------------------------------------------------------------------------
# Checks (offline)


def validate_core(document: Mapping[str, Any]) -> str:
    """Validate an Item or Collection dict against the STAC core JSON schema that pystac ships.

    Offline: only the core schemas (item, collection, their GeoJSON parts) are read, from pystac's
    package data. Returns the schema URI checked.

    Raises:
        pystac.errors.STACValidationError: the document does not conform.
    """
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    kind = pystac.STACObjectType.COLLECTION if document.get("type") == "Collection" else pystac.STACObjectType.ITEM
    validator = JsonSchemaSTACValidator()
    uri = validator.validate_core(dict(document), kind, document["stac_version"])
    assert uri is not None
    return uri


_NAME = re.compile(r"^[0-9A-Za-z-_]+$")
_COLOUR = re.compile(r"^[0-9A-F]{6}$")


def extension_problems(item: Mapping[str, Any]) -> list[str]:
    """What is wrong with an Item's projection and classification fields (empty: nothing), checked against
    the rules of their schemas (projection v2.0.0, classification v2.0.0), which cannot be fetched offline."""
    problems = []
    extensions = item.get("stac_extensions", [])
    for uri in (ProjectionExtension.get_schema_uri(), ClassificationExtension.get_schema_uri()):
        if uri not in extensions:
            problems.append(f"stac_extensions lacks {uri}")
    problems += _projection_problems(item.get("properties", {}))
    problems += _classification_problems(item)
    return problems


def _projection_problems(props: Mapping[str, Any]) -> list[str]:
    """The projection extension's rules on an Item's properties."""
    problems = []
    code = props.get("proj:code", "missing")
    if code == "missing":
        problems.append("proj:code missing (null for a raster without a CRS)")
    elif code is not None and not re.match(r"^[A-Z]+:\S+$", str(code)):
        problems.append(f"proj:code {code!r} is not AUTHORITY:CODE")
    if code is not None and code != "missing" and not isinstance(props.get("proj:wkt2"), str):
        problems.append("proj:wkt2 missing")
    shape = props.get("proj:shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
        problems.append(f"proj:shape {shape!r} is not [rows, cols]")
    transform = props.get("proj:transform")
    if transform is not None and not (isinstance(transform, list) and len(transform) in (6, 9)
                                      and all(isinstance(v, (int, float)) for v in transform)):
        problems.append(f"proj:transform {transform!r} is not 6 or 9 numbers")
    return problems


def _classification_problems(item: Mapping[str, Any]) -> list[str]:
    """The classification extension's rules on the labels asset."""
    problems: list[str] = []
    labels = item.get("assets", {}).get("labels")
    if labels is None:
        return problems + ["no labels asset"]
    classes = labels.get("classification:classes")
    if not isinstance(classes, list) or not classes:
        return problems + ["labels asset has no classification:classes"]
    values = [c.get("value") for c in classes]
    if len(set(values)) != len(values):
        problems.append("classification:classes values repeat")
    for c in classes:
        if not isinstance(c.get("value"), int):
            problems.append(f"class {c!r}: value is not an integer")
        if not isinstance(c.get("name"), str) or not _NAME.match(c["name"]):
            problems.append(f"class {c.get('value')}: name {c.get('name')!r} is not letters, digits, - or _")
        if "color_hint" in c and not _COLOUR.match(str(c["color_hint"])):
            problems.append(f"class {c.get('value')}: color_hint {c['color_hint']!r} is not six upper-case hex digits")
        if "count" in c and not (isinstance(c["count"], int) and c["count"] >= 0):
            problems.append(f"class {c.get('value')}: count {c['count']!r} is not a non-negative integer")
        if "percentage" in c and not (isinstance(c["percentage"], (int, float)) and 0 <= c["percentage"] <= 100):
            problems.append(f"class {c.get('value')}: percentage {c['percentage']!r} is not in 0-100")
    return problems
