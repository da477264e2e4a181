"""Spectral metadata from GDAL/ENVI tags: wavelength, FWHM and bad-band list, normalised.

Wavelengths and FWHM are returned in nanometres.
"""

from __future__ import annotations

import re
import warnings

import numpy as np

from hsi_cluster.errors import MetadataWarning

#: Wavelength difference (nm) within which two scenes' bands always count as the same band.
WAVELENGTH_TOLERANCE_NM = 1.0
#: Beyond it, a band still counts as the same where its centre moved by at most this share of the spacing to its
#: neighbours (a recalibration between acquisitions moves the 5-10 nm bands of AVIRIS-NG, EnMAP or DESIS by a nm or
#: two), up to :data:`WAVELENGTH_SHIFT_MAX_NM`; such a shift is warned of.
WAVELENGTH_SHIFT_SHARE = 0.25
WAVELENGTH_SHIFT_MAX_NM = 3.0


def band_tolerance(reference: np.ndarray, tolerance_nm: float = WAVELENGTH_TOLERANCE_NM) -> np.ndarray:
    """float64 (B,): how far (nm) each band of ``reference`` (B,) may move and stay the same band: a quarter of its
    spacing to its neighbours, at least ``tolerance_nm`` and at most :data:`WAVELENGTH_SHIFT_MAX_NM`."""
    centres = np.asarray(reference, dtype=np.float64)
    if centres.size < 2:
        return np.full(centres.shape, tolerance_nm)
    spacing = np.abs(np.gradient(centres))
    return np.clip(WAVELENGTH_SHIFT_SHARE * spacing, tolerance_nm, max(tolerance_nm, WAVELENGTH_SHIFT_MAX_NM))


def mismatched_band(wavelength: np.ndarray, reference: np.ndarray, *,
                    tolerance_nm: float = WAVELENGTH_TOLERANCE_NM) -> int | None:
    """Index of the band that moved farthest beyond its :func:`band_tolerance` from ``reference`` (both (B,) in
    nm), else None (the bands match)."""
    offset = np.abs(np.asarray(wavelength, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    excess = offset / band_tolerance(reference, tolerance_nm)
    band = int(np.argmax(excess))
    return band if excess[band] > 1 else None

_MICROMETRE_UNITS = {"micrometers", "micrometer", "micrometres", "micrometre", "microns", "micron",
                     "um", "µm", "μm"}
_NANOMETRE_UNITS = {"nanometers", "nanometer", "nanometres", "nanometre", "nm"}
_MILLIMETRE_UNITS = {"millimeters", "millimeter", "mm"}

def parse_envi_list(text: str | None, *, keep_empty: bool = False) -> list[str] | None:
    """Split an ENVI header list such as ``"{ 400.5, 410.2 }"`` into its items (None for no item).

    ``keep_empty``: keep empty items in their places (``{A, , C}`` → ``["A", "", "C"]``, as in a ``class names``
    list whose positions are the class values); by default they are dropped.
    """
    if text is None:
        return None
    items = [item.strip() for item in text.strip().strip("{}").split(",")]
    if not any(items):
        return None
    return items if keep_empty else [item for item in items if item]

def unit_scale_to_nm(units: str | None, values: np.ndarray) -> float | None:
    """Factor that turns ``values`` given in ``units`` into nanometres, or None if not a length.

    Without units, values below 100 are taken as micrometres (no sensor lists band centres
    below 100 nm), larger ones as nanometres.
    """
    key = (units or "").strip().lower()
    if key in _NANOMETRE_UNITS:
        return 1.0
    if key in _MICROMETRE_UNITS:
        return 1000.0
    if key in _MILLIMETRE_UNITS:
        return 1e6
    if key in {"", "unknown", "none"}:
        return 1000.0 if np.nanmax(values) < 100 else 1.0
    return None  # wavenumber, index, ... : not a wavelength we can use

def _floats(items: list[str] | None, n_bands: int) -> np.ndarray | None:
    if not items or len(items) != n_bands:
        return None
    try:
        return np.array([float(item) for item in items], dtype=np.float64)
    except ValueError:
        return None

def _band_values(name: str, n_bands: int, envi_tags: dict[str, str], band_tags: list[dict[str, str]],
                 imagery_tags: list[dict[str, str]], *, units: str | None,
                 source: str) -> tuple[np.ndarray, str | None] | None:
    """``name`` ("wavelength" or "fwhm") of every band and its units, from the first domain that has them all."""
    listed = parse_envi_list(envi_tags.get(name))
    values = _floats(listed, n_bands)
    if listed is not None and len(listed) == n_bands and values is None:  # GDAL's band tags read it as 0
        word = next(item for item in listed if _floats([item], 1) is None)
        warnings.warn(MetadataWarning(f"{source}: the header's '{name}' holds {word!r}, not a number, so it is "
                                      "not used; correct the header"), stacklevel=3)
        return None
    if values is not None:
        return values, units
    values = _floats([tags.get(name, "") for tags in band_tags], n_bands)
    if values is not None:
        return values, next((t["wavelength_units"] for t in band_tags if "wavelength_units" in t), units)
    key = "CENTRAL_WAVELENGTH_UM" if name == "wavelength" else "FWHM_UM"
    values = _floats([tags.get(key, "") for tags in imagery_tags], n_bands)
    return None if values is None else (values, "micrometers")


#: A band description that names its centre: "452.3 nm", "Band 1 (0.4523 µm)", "B12: 2190 nanometers".
_DESCRIBED_WAVELENGTH = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(nm|nanometers?|nanometres?|µm|um|micrometers?|"
                                   r"micrometres?|microns?)\b", re.IGNORECASE)


def described_wavelengths(descriptions: list[str | None]) -> np.ndarray | None:
    """Band centres (nm) when every band's description names one length with its unit (GeoTIFFs written by
    tools that keep wavelengths nowhere else), else None."""
    values = []
    for text in descriptions:
        found = _DESCRIBED_WAVELENGTH.findall(text or "")
        if len(found) != 1:
            return None
        number, unit = found[0]
        values.append(float(number) * (1.0 if unit.lower().startswith("n") else 1000.0))
    return np.asarray(values, np.float64) if values else None


def _relabelled_scale(wavelengths: np.ndarray, scale: float | None, units: str | None, source: str) -> float | None:
    """The nm scale that wavelengths call for when their unit label contradicts them (with a warning), else None.

    No imaging spectrometer has a band below 100 nm, nor one above 100 µm (thermal bands end near 14 µm). Units
    that are not a length (``scale`` None: wavenumbers, an index) are warned of too: the wavelengths are dropped.
    """
    if scale is None:
        warnings.warn(MetadataWarning(f"{source}: its wavelength units {units!r} are not a length, so its "
                                      "wavelengths are not used; give them in nm or µm"), stacklevel=3)
        return None
    if scale == 1.0 and np.nanmax(wavelengths) < 100:
        label, read, scale_read = ("nanometres", "every band would lie below 100 nm, where no imaging spectrometer "
                                   "has one, so they are read as micrometres", 1000.0)
    elif scale == 1000.0 and np.nanmin(wavelengths) > 100:
        label, read, scale_read = ("micrometres", "every band would lie above 100 µm, where no imaging spectrometer "
                                   "has one, so they are read as nanometres", 1.0)
    else:
        return None
    warnings.warn(MetadataWarning(
        f"{source}: its wavelengths ({np.nanmin(wavelengths):g}–{np.nanmax(wavelengths):g}) are labelled {label}, "
        f"but {read}; correct the wavelength units"), stacklevel=3)
    return scale_read


#: No imaging spectrometer has bands narrower than this (nm): FWHMs below it are in micrometres, whatever their label.
MIN_FWHM_NM = 0.05


def _plausible_fwhm(fwhm: np.ndarray, wavelength: np.ndarray, source: str) -> np.ndarray:
    """``fwhm`` (nm, read with the wavelengths' unit label) rescaled by 1 000 when that label cannot hold for them,
    with a warning: a band is never wider than its centre (FWHM in nm under a micrometre label), nor narrower than
    :data:`MIN_FWHM_NM` (FWHM in µm under a nanometre label)."""
    typical, centre = float(np.nanmedian(fwhm)), float(np.nanmedian(wavelength))
    if typical > centre:
        factor, read = 1e-3, "nanometres"
    elif 0 < typical < MIN_FWHM_NM and typical * 1e3 < centre:
        factor, read = 1e3, "micrometres"
    else:
        return fwhm
    warnings.warn(MetadataWarning(
        f"{source}: its band widths (FWHM, median {typical:g} nm as labelled) do not fit its band centres (median "
        f"{centre:g} nm), so they are read as {read}; give the FWHM in the wavelengths' units"), stacklevel=3)
    return fwhm * factor


def _wavelength_scale(values: np.ndarray, units: str | None, source: str) -> float | None:
    """The nm scale of band centres labelled ``units``: the label's, unless the values contradict it (warned)."""
    scale = unit_scale_to_nm(units, values)
    relabelled = _relabelled_scale(values, scale, units, source)
    return relabelled if relabelled is not None and scale in (1.0, 1000.0) else scale


def _fwhm_scale(units: str | None, wavelength_nm: np.ndarray, read_as: tuple[str | None, float] | None) -> float | None:
    """The nm scale of FWHM values labelled ``units``: the wavelengths' own where the label is theirs (told, or
    guessed from their values: µm widths beside µm centres without a label), else the label's against the centres."""
    if read_as is not None and read_as[0] == units:
        return read_as[1]
    return unit_scale_to_nm(units, wavelength_nm)


def spectral_coords(n_bands: int, dataset_tags: dict[str, str], envi_tags: dict[str, str],
                    band_tags: list[dict[str, str]], imagery_tags: list[dict[str, str]], *,
                    source: str = "the scene", descriptions: list[str | None] | None = None,
                    fallback: dict[str, np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
    """Collect per-band ``wavelength`` (nm), ``fwhm`` (nm) and ``good_band`` (bool) where known.

    Looks, in order, at the ENVI header domain, GDAL per-band metadata (``wavelength``,
    ``fwhm``, ``wavelength_units``, ``bbl``/``good_band``) and GDAL's IMAGERY domain
    (``CENTRAL_WAVELENGTH_UM``, ``FWHM_UM``), then at ``fallback`` (nm, from a product's own metadata file
    such as an EnMAP ``METADATA.XML``): its ``wavelength`` and ``fwhm`` where the tags give no wavelengths, its
    ``fwhm`` alone where they give wavelengths but no FWHM; else at the band ``descriptions``
    (:func:`described_wavelengths`). An ENVI list whose length is not the band count is
    not used, with a :class:`~hsi_cluster.errors.MetadataWarning` naming ``source``.

    Returns:
        mapping from coordinate name to an array of shape (bands,); absent fields are omitted.
    """
    coords: dict[str, np.ndarray] = {}
    for key in ("wavelength", "fwhm", "bbl"):
        listed = parse_envi_list(envi_tags.get(key))
        if listed is not None and len(listed) != n_bands:
            warnings.warn(MetadataWarning(f"{source}: the header's '{key}' lists {len(listed)} values for {n_bands} "
                                          "bands, so it is not used; correct the header"), stacklevel=2)
    units = envi_tags.get("wavelength_units") or dataset_tags.get("wavelength_units")
    read_as: tuple[str | None, float] | None = None  # the wavelengths' unit label and the scale they were read with
    for name in ("wavelength", "fwhm"):
        found = _band_values(name, n_bands, envi_tags, band_tags, imagery_tags, units=units, source=source)
        if found is None:
            continue
        values, band_units = found
        scale = (_fwhm_scale(band_units, coords.get("wavelength", values), read_as) if name == "fwhm"
                 else _wavelength_scale(values, band_units, source))
        if scale is not None:
            coords[name] = values * scale
            if name == "wavelength":
                read_as = (band_units, scale)
    if "fwhm" in coords and "wavelength" in coords:
        coords["fwhm"] = _plausible_fwhm(coords["fwhm"], coords["wavelength"], source)
    extra = {name: np.asarray(values, np.float64) for name, values in (fallback or {}).items()
             if name in ("wavelength", "fwhm") and values is not None and len(values) == n_bands}
    if "wavelength" not in coords and "wavelength" not in extra and descriptions is not None \
            and len(descriptions) == n_bands:
        described = described_wavelengths(descriptions)
        if described is not None:
            coords["wavelength"] = described
    if "wavelength" not in coords and "wavelength" in extra:
        coords.pop("fwhm", None)  # the tags' widths were not read against the wavelengths used
        coords.update(extra)
    elif "wavelength" in coords and "fwhm" not in coords and "fwhm" in extra:
        coords["fwhm"] = extra["fwhm"]
    if "fwhm" in coords and "wavelength" not in coords:
        del coords["fwhm"]
    good = _good_bands(n_bands, envi_tags, band_tags)
    if good is not None:
        coords["good_band"] = good
    return coords


def _good_bands(n_bands: int, envi_tags: dict[str, str], band_tags: list[dict[str, str]]) -> np.ndarray | None:
    """bool (bands,) from the ENVI header's ``bbl``, else from every band's ``good_band``/``bbl`` tag; None without."""
    bbl = parse_envi_list(envi_tags.get("bbl"))
    if bbl is None:
        per_band = [tags.get("good_band", tags.get("bbl")) for tags in band_tags]
        present = [v for v in per_band if v is not None]
        bbl = present if per_band and len(present) == len(per_band) else None
    good = _floats(bbl, n_bands)
    return None if good is None else good != 0

def band_metadata_tags(coords: dict[str, np.ndarray], index: int) -> dict[str, str]:
    """GDAL per-band metadata for band ``index`` (0-based), the inverse of :func:`spectral_coords`."""
    tags: dict[str, str] = {}
    if "wavelength" in coords:
        tags["wavelength"] = repr(float(coords["wavelength"][index]))
        tags["wavelength_units"] = "nanometers"
    if "fwhm" in coords:
        tags["fwhm"] = repr(float(coords["fwhm"][index]))
    if "good_band" in coords:
        tags["good_band"] = "1" if coords["good_band"][index] else "0"
    return tags

