"""``describe``: a plain summary of an opened scene or store, for ``hsicluster info``."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from rasterio.crs import CRS

from hsi_cluster.errors import number_ranges
from hsi_cluster.geo import pixel_sides
from hsi_cluster.io.scene_array import GCPS, file_mask

if TYPE_CHECKING:
    from hsi_cluster.checkpoint import Checkpoint


def _crs_summary(wkt: str | None) -> dict[str, Any] | None:
    if not wkt:
        return None
    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    units = crs.linear_units if crs.is_projected else "degrees"
    return {"epsg": epsg, "units": units, "wkt": wkt}


def describe(scene: xr.DataArray) -> dict[str, Any]:
    """Size, type, spectral range, georeferencing, chunking and statistics of a scene.

    Args:
        scene: a DataArray from :func:`hsi_cluster.io.open_scene`.

    Returns:
        JSON-ready mapping.
    """
    n_bands, height, width = scene.shape
    a, b, c, d, e, f = scene.attrs["transform"]
    info: dict[str, Any] = {
        "source": scene.attrs["source"], "format": scene.attrs["format"],
        "bands": n_bands, "rows": height, "cols": width, "dtype": str(scene.dtype),
        "size_bytes": int(scene.size * scene.dtype.itemsize),
        "nodata": _json_number(scene.attrs.get("nodata")),
        "mask_band": file_mask(scene) is not None,  # the file marks unusable pixels in a mask band of its own
        "georeferenced": scene.attrs["georeferenced"],
        "crs": _crs_summary(scene.attrs.get("crs")),
        "transform": [a, b, c, d, e, f] if scene.attrs["georeferenced"] else None,
        **_grid_size(scene.attrs["transform"], scene.attrs["georeferenced"]),
        "bounds": None,
        "chunks": [int(ch[0]) for ch in scene.data.chunks],
    }
    if scene.attrs.get("file_block") and scene.attrs.get("format") != "zarr":  # a raster file's storage (a store: chunks)
        block_rows, block_cols = (int(v) for v in scene.attrs["file_block"])
        info["file_layout"] = {"block": [block_rows, block_cols], "compressed": bool(scene.attrs.get("file_compressed")),
                               "tiled": block_rows > 1 and block_cols < width,
                               "block_bytes": block_rows * block_cols * n_bands * scene.dtype.itemsize}
    if scene.attrs.get(GCPS):
        info["gcps"] = {"count": len(scene.attrs[GCPS]["points"]), "crs": _crs_summary(scene.attrs[GCPS]["crs"])}
    if scene.attrs["georeferenced"]:
        xs = [c, c + a * width, c + b * height, c + a * width + b * height]
        ys = [f, f + d * width, f + e * height, f + d * width + e * height]
        info["bounds"] = {"left": min(xs), "bottom": min(ys), "right": max(xs), "top": max(ys)}
    if "wavelength" in scene.coords:
        wavelengths = scene.coords["wavelength"].values
        info["wavelength_nm"] = {"min": float(np.min(wavelengths)), "max": float(np.max(wavelengths))}
    else:
        info["wavelength_nm"] = None
    info["fwhm"] = "fwhm" in scene.coords
    info["bad_bands"] = int((~scene.coords["good_band"].values).sum()) if "good_band" in scene.coords else None
    if info["bad_bands"]:
        info["bad_band_numbers"] = [int(i) + 1 for i in np.flatnonzero(~scene.coords["good_band"].values)]
    for key in ("variable", "statistics", "valid_pixels", "ingested_from", "empty_bands", "voiding_bands",
                "scaled_from", "reflectance_scale_factor"):
        if scene.attrs.get(key) is not None:
            info[key] = scene.attrs[key]
    return info


def format_info(info: dict[str, Any]) -> str:
    """Human-readable multi-line rendering of :func:`describe`'s mapping."""
    gib = info["size_bytes"] / 2**30
    lines = [
        f"source        {info['source']}  ({info['format']})",
        f"size          {info['rows']} rows × {info['cols']} cols × {info['bands']} bands, {info['dtype']}, "
        f"{gib:.3f} GiB uncompressed",
    ]
    if info.get("variable"):
        lines.append(f"variable      {info['variable']}")
    if info.get("scaled_from"):
        factor = info.get("reflectance_scale_factor")
        how = (f"÷ the header's reflectance scale factor {factor:g}" if factor
               else "× the bands' scale + offset (from the file or its product's metadata)")
        lines.append(f"values        stored as {info['scaled_from']}, read {how}")
    wl = info["wavelength_nm"]
    lines.append(f"wavelengths   {wl['min']:.1f}–{wl['max']:.1f} nm" + (" (with FWHM)" if info["fwhm"] else "")
                 if wl else "wavelengths   not in the file")
    if info["bad_bands"] is not None:
        empty = info.get("empty_bands") or []
        voiding = [int(b) for b in info.get("voiding_bands") or {}]
        numbers = info.get("bad_band_numbers") or []
        listed = len(empty) + len(voiding) < len(numbers)  # else the bands named below are all of them
        why = [f"{len(empty)} NaN or nodata in every pixel (bands {number_ranges(b + 1 for b in empty)})"] if empty else []
        why += [f"{len(voiding)} dropping out where most bands hold values (bands "
                f"{number_ranges(b + 1 for b in voiding)})"] if voiding else []
        lines.append(f"bad bands     {info['bad_bands']} flagged" + (f" (bands {number_ranges(numbers)})" if listed else "")
                     + (", of which " + ", ".join(why) if why else ""))
    if info["georeferenced"]:
        crs = info["crs"]
        crs_text = f"EPSG:{crs['epsg']}" if crs and crs["epsg"] else (crs["wkt"][:60] + "…" if crs else "none")
        lines.append(f"crs           {crs_text}" + (f" ({crs['units']})" if crs else ""))
        if info["resolution"]:
            lines.append(_resolution_line(info))
        bounds = info["bounds"]
        lines.append(f"bounds        left {bounds['left']:g}, bottom {bounds['bottom']:g}, "
                     f"right {bounds['right']:g}, top {bounds['top']:g}")
    elif info.get("gcps"):
        crs = info["gcps"]["crs"]
        crs_text = f"EPSG:{crs['epsg']}" if crs and crs["epsg"] else ("a CRS" if crs else "no CRS")
        lines.append(f"crs           none; located by {info['gcps']['count']} ground control points ({crs_text}), "
                     "which the label rasters carry (gdalwarp them to map them)")
    else:
        lines.append("crs           none: the file is not georeferenced (pixel grid, origin top-left, 1 unit/pixel)")
    lines.append(f"nodata        {info['nodata'] if info['nodata'] is not None else 'not set'}"
                 + (" (a mask band of the file marks the unusable pixels)" if info.get("mask_band") else ""))
    layout = info.get("file_layout")
    if layout:
        rows, cols = layout["block"]
        blocks = f"tiles of {rows} × {cols}" if layout["tiled"] else f"strips of {rows} row{'s' if rows > 1 else ''}"
        lines.append(f"file layout   {'compressed' if layout['compressed'] else 'uncompressed'} {blocks} "
                     f"({layout['block_bytes'] / 2**20:.3g} MiB each with all bands)")
    lines.append(f"chunks        {' × '.join(str(c) for c in info['chunks'])} (band × y × x)")
    if info.get("valid_pixels") is not None:
        total = info["rows"] * info["cols"]
        lines.append(f"valid pixels  {info['valid_pixels']} of {total} ({100 * info['valid_pixels'] / total:.1f} %)")
    stats = info.get("statistics")
    if stats:
        bad = {number - 1 for number in info.get("bad_band_numbers") or []}  # their values may be fill (3.4e38)

        def rng(values: list[float | None]) -> str:
            finite = [v for band, v in enumerate(values) if v is not None and band not in bad]
            return f"{min(finite):.4g}–{max(finite):.4g}" if finite else "n/a"
        lines.append(f"statistics    per-band mean {rng(stats['mean'])}, std {rng(stats['std'])}, "
                     f"min {rng(stats['min'])}, max {rng(stats['max'])}" + (" (good bands)" if bad else ""))
    return "\n".join(lines)


def _json_number(value: float | None) -> float | str | None:
    """``value``, or its text for NaN and ±Inf, which JSON cannot hold (as ``gdalinfo -json`` writes them)."""
    return value if value is None or math.isfinite(value) else str(value)


def is_checkpoint_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a torch zip archive (what ``hsicluster train`` writes), whatever its name, truncated
    ones too (loading them says so); rasters and stores never are (a zipped Zarr store has no pickled part)."""
    if not Path(path).is_file():
        return False
    if not zipfile.is_zipfile(path):  # a truncated one has lost the zip's directory, not its first entry's header
        with open(path, "rb") as file:
            start = file.read(4096)
        return start.startswith(b"PK\x03\x04") and b"/data.pkl" in start
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/data.pkl") for name in archive.namelist())


def describe_model(checkpoint: Checkpoint) -> dict[str, Any]:
    """What a checkpoint holds, for ``hsicluster info model.ckpt``: K and how it was chosen, the bands a scene
    must have, the projection and network, the length of training and the scenes it read. JSON-ready."""
    payload = checkpoint.payload
    training = payload.get("training") or {}
    config = payload.get("train_config") or {}
    wavelength = checkpoint.wavelength
    screen = payload["spectral"].get("band_screen") or {}
    left_out = sorted({int(b) for bands in screen.values() if isinstance(bands, (list, tuple)) for b in bands})
    return {
        "source": str(checkpoint.path), "format": "hsicluster checkpoint", "sha256": checkpoint.sha256(),
        "library_version": payload.get("library_version"),
        "complete": checkpoint.complete,
        "clusters": checkpoint.n_clusters, "k_choice": training.get("k_choice"),
        "bands": checkpoint.in_bands,
        "wavelength_nm": {"min": float(min(wavelength)), "max": float(max(wavelength))} if wavelength else None,
        "bands_left_out": [b + 1 for b in left_out],
        "projection": config.get("projection", "pca"),
        "components": int(payload["spectral"]["components"].shape[0]) if "components" in payload["spectral"] else None,
        "backbone": checkpoint.backbone, "patch_size": checkpoint.patch_size,
        "centroid_fields": _centroid_fields(checkpoint),
        "training_range": checkpoint.spectral_range is not None,
        "steps": training.get("step"), "total_steps": training.get("total_steps"),
        "samples_drawn": training.get("samples_drawn"), "seed": training.get("seed"),
        "device": training.get("device"), "train_seconds": training.get("seconds"),
        "scenes": [{"source": scene.get("source"), "shape": scene.get("shape"), "dtype": scene.get("dtype"),
                    "pixel_side": scene.get("pixel_side"), "pixel_unit": scene.get("pixel_unit")}
                   for scene in payload.get("scenes") or [] if isinstance(scene, dict)],
    }


def _centroid_fields(checkpoint: Checkpoint) -> list[int] | None:
    """Receptive-field sides (pixels) of the features the centroid head reads; None without a (fitted) centroid
    head."""
    config = checkpoint.payload["model_config"]
    if config.get("assignment") != "centroids" or checkpoint.backbone != "dense" or not checkpoint.complete:
        return None
    from hsi_cluster.model.backbones import DenseBackbone

    kwargs = {key: value for key, value in (config.get("backbone_kwargs") or {}).items() if key in ("depth", "stem")}
    fields = DenseBackbone(in_channels=1, width=1, **kwargs).scale_fields
    if config.get("centroid_features") == "last":
        return fields[-1:]
    stages = (checkpoint.payload.get("training", {}).get("scale_choice") or {}).get("stages")
    return [fields[s] for s in stages] if stages is not None else fields


def format_model_info(info: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`describe_model`'s mapping."""
    choice = info["k_choice"]
    steps = f"{info['steps']} of {info['total_steps']} steps" if info["total_steps"] else f"{info['steps']} steps"
    lines = [
        f"source        {info['source']}  (hsicluster checkpoint, library {info['library_version']})",
        f"sha256        {info['sha256'][:16]} (label rasters it writes carry it)",
        "state         " + ("finished" if info["complete"] else
                            f"unfinished ({steps}; continue it with hsicluster train … --resume)"),
        f"clusters      {info['clusters']}" + (f" (chosen by -k auto among 2..{choice['k_max']})" if choice else ""),
    ]
    wl = info["wavelength_nm"]
    lines.append(f"bands         {info['bands']}" + (f", {wl['min']:.1f}–{wl['max']:.1f} nm" if wl else
                                                      ", wavelengths unknown (only the band count is checked)"))
    if info["bands_left_out"]:
        lines.append(f"left out      {len(info['bands_left_out'])} bands (bad, constant or noisy in its training "
                     f"scenes: {number_ranges(info['bands_left_out'])})")
    lines.append(f"network       {info['projection'].upper()} to {info['components']} components, {info['backbone']} "
                 f"backbone, {info['patch_size']} × {info['patch_size']} patches"
                 + (", labels from centroids of its " + ", ".join(f"{side} × {side}" for side in info["centroid_fields"])
                    + " features" if info["centroid_fields"] else ""))
    if not info["training_range"]:
        lines.append("range         none kept (trained before 2026-12-07): predict cannot warn of scenes outside its "
                     "training spectra")
    if info["complete"]:
        drawn = f", {info['samples_drawn']} samples" if info["samples_drawn"] else ""
        took = f", {info['train_seconds']:.0f} s on {info['device']}" if info["train_seconds"] else ""
        lines.append(f"training      {steps}{drawn}, seed {info['seed']}{took}")
    for i, scene in enumerate(info["scenes"]):
        shape = scene["shape"]
        size = f" ({shape[1]} × {shape[2]} px" + (f", {scene['pixel_side']:g} {scene['pixel_unit']} pixels"
                                                  if scene["pixel_side"] else "") + ")" if shape else ""
        lines.append(f"{'trained on' if i == 0 else '':<14}{scene['source']}{size}")
    return "\n".join(lines)


def describe_label_raster(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a raster written by ``hsicluster predict`` holds, for ``hsicluster info labels.tif``: the model (its
    hash prefix and K), the scene it labelled, the grid, and per cluster its pixel count (from the band's
    ``CLUSTER_PIXELS`` metadata, else counted); for a ``--confidence`` raster, the grid and the model only."""
    import json
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    from hsi_cluster.io.label_raster import count_labels
    from hsi_cluster.io.labels import LABELS_TAG

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            tags, band_tags = dataset.tags(), dataset.tags(1)
            confidence = np.dtype(dataset.dtypes[0]).kind == "f"
            transform = tuple(dataset.transform)[:6]
            georeferenced = dataset.crs is not None or not dataset.transform.is_identity
            info: dict[str, Any] = {
                "source": str(path), "format": f"hsicluster {'confidence' if confidence else 'label'} raster",
                "model_sha256": tags.get("HSICLUSTER_MODEL_SHA256"), "clusters": int(tags[LABELS_TAG]),
                "labelled_scene": tags.get("HSICLUSTER_SOURCE"), "library_version": tags.get("HSICLUSTER_VERSION"),
                "applied_gain": float(tags.get("HSICLUSTER_GAIN", 1.0)),
                "applied_tilt": float(tags.get("HSICLUSTER_TILT", 0.0)),
                "rows": dataset.height, "cols": dataset.width, "dtype": dataset.dtypes[0],
                "nodata": (int(dataset.nodata) if dataset.nodata is not None and not confidence
                           else _json_number(dataset.nodata)), "georeferenced": georeferenced,
                "crs": _crs_summary(dataset.crs.to_wkt() if dataset.crs is not None else None),
                "transform": list(transform) if georeferenced else None,
                **_grid_size(transform, georeferenced),
                "bounds": dict(zip(("left", "bottom", "right", "top"), dataset.bounds, strict=True))
                if georeferenced else None,
                "cluster_pixels": None, "nodata_pixels": None,
            }
            if confidence:
                return info
            if "CLUSTER_PIXELS" in band_tags and "NODATA_PIXELS" in band_tags:
                counts = {int(k): int(v) for k, v in json.loads(band_tags["CLUSTER_PIXELS"]).items()}
                nodata_pixels = int(band_tags["NODATA_PIXELS"])
            else:  # the class sidecar is gone: count the labels
                counts, nodata_pixels = count_labels(dataset, info["clusters"], int(dataset.nodata))
    info["cluster_pixels"] = {str(k): v for k, v in sorted(counts.items())}
    info["nodata_pixels"] = nodata_pixels
    return info


def format_label_raster_info(info: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`describe_label_raster`'s mapping."""
    lines = [f"source        {info['source']}  ({info['format']}, library {info['library_version']})",
             f"model         sha256 {info['model_sha256']}…, K {info['clusters']}",
             f"labels of     {info['labelled_scene']}" + _matched(info),
             f"size          {info['rows']} rows × {info['cols']} cols, {info['dtype']}, nodata "
             f"{info['nodata'] if info['nodata'] is not None else 'not set'}"]
    if info["georeferenced"]:
        crs = info["crs"]
        lines.append("crs           " + (f"EPSG:{crs['epsg']} ({crs['units']})" if crs and crs["epsg"] else
                                         (crs["wkt"][:60] + "…" if crs else "none")))
        if info["resolution"]:
            lines.append(_resolution_line(info))
        bounds = info["bounds"]
        lines.append(f"bounds        left {bounds['left']:g}, bottom {bounds['bottom']:g}, "
                     f"right {bounds['right']:g}, top {bounds['top']:g}")
    else:
        lines.append("crs           none (as the scene it labelled; one located by ground control points passes them on)")
    if info["cluster_pixels"] is not None:
        labelled = sum(info["cluster_pixels"].values())
        total = labelled + info["nodata_pixels"]
        shares = ", ".join(f"{k}: {v} ({100 * v / max(labelled, 1):.1f} %)" for k, v in info["cluster_pixels"].items())
        lines.append(f"clusters      {shares} (shares of the labelled pixels)")
        lines.append(f"nodata        {info['nodata_pixels']} pixels ({100 * info['nodata_pixels'] / max(total, 1):.1f} %)")
    return "\n".join(lines)


def _matched(info: dict[str, Any]) -> str:
    """`` at 0.67× its values, tilt +10% (--match-brightness)``, or nothing for labels of the scene as delivered."""
    gain, tilt = info["applied_gain"], info["applied_tilt"]
    if gain == 1 and tilt == 0:
        return ""
    return f" at {gain:.2f}× its values" + (f", tilt {tilt:+.0%}" if tilt else "") + " (--match-brightness)"


def _resolution_line(info: dict[str, Any]) -> str:
    """``resolution    30 × 30``, with the grid's rotation where it has one (an airborne swath's ENVI map info)."""
    width, height = info["resolution"]
    rotation = info.get("rotation_deg") or 0.0
    turned = f" (grid rotated {rotation:.4g}° from north-up: pixel sides along its own axes)" if rotation else ""
    return f"resolution    {width:g} × {height:g}{turned}"


def _grid_size(transform: tuple[float, ...], georeferenced: bool) -> dict[str, Any]:
    """``resolution`` (pixel width, height along the grid's axes) and ``rotation_deg``; None without georeferencing."""
    if not georeferenced:
        return {"resolution": None, "rotation_deg": None}
    width, height, rotation = pixel_sides(tuple(transform))
    return {"resolution": [width, height], "rotation_deg": rotation}
