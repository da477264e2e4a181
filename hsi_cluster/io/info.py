"""``describe``: a plain summary of an opened scene or store, for ``hsicluster info``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr
from rasterio.crs import CRS

from hsi_cluster.errors import number_ranges
from hsi_cluster.io.scene_array import GCPS, file_mask


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
        "resolution": [abs(a), abs(e)] if scene.attrs["georeferenced"] and b == 0 and d == 0 else None,
        "bounds": None,
        "chunks": [int(ch[0]) for ch in scene.data.chunks],
    }
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
        why += [f"{len(voiding)} NaN or nodata in more pixels than the other bands left valid (bands "
                f"{number_ranges(b + 1 for b in voiding)})"] if voiding else []
        lines.append(f"bad bands     {info['bad_bands']} flagged" + (f" (bands {number_ranges(numbers)})" if listed else "")
                     + (", of which " + ", ".join(why) if why else ""))
    if info["georeferenced"]:
        crs = info["crs"]
        crs_text = f"EPSG:{crs['epsg']}" if crs and crs["epsg"] else (crs["wkt"][:60] + "…" if crs else "none")
        lines.append(f"crs           {crs_text}" + (f" ({crs['units']})" if crs else ""))
        if info["resolution"]:
            lines.append(f"resolution    {info['resolution'][0]:g} × {info['resolution'][1]:g}")
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
    lines.append(f"chunks        {' × '.join(str(c) for c in info['chunks'])} (band × y × x)")
    if info.get("valid_pixels") is not None:
        total = info["rows"] * info["cols"]
        lines.append(f"valid pixels  {info['valid_pixels']} of {total} ({100 * info['valid_pixels'] / total:.1f} %)")
    stats = info.get("statistics")
    if stats:
        def rng(values: list[float | None]) -> str:
            finite = [v for v in values if v is not None]
            return f"{min(finite):.4g}–{max(finite):.4g}" if finite else "n/a"
        lines.append(f"statistics    per-band mean {rng(stats['mean'])}, std {rng(stats['std'])}, "
                     f"min {rng(stats['min'])}, max {rng(stats['max'])}")
    return "\n".join(lines)


def _json_number(value: float | None) -> float | str | None:
    """``value``, or its text for NaN and ±Inf, which JSON cannot hold (as ``gdalinfo -json`` writes them)."""
    return value if value is None or math.isfinite(value) else str(value)
