"""DLR EnMAP products: the band facts of a product's ``METADATA.XML``, for the GDAL reader of its spectral image.

An EnMAP Level-1C or Level-2A product is a folder of files named ``<base>-<part>``, ``<base>`` such as
``ENMAP01-____L2A-DT0000001049_20220612T105735Z_001_V010111_20230101T120000Z``: the cube
``<base>-SPECTRAL_IMAGE.TIF`` (or ``.BSQ``/``.BIL``/``.BIP`` with an ENVI ``.HDR``, ``.JP2``, or an EOLab
``_COG.TIF``), ``<base>-METADATA.XML``, quality layers ``<base>-QL_QUALITY_CLOUD.TIF``, ``<base>-QL_PIXELMASK.TIF``,
… and RGB quicklooks ``<base>-QL_VNIR.TIF`` / ``-QL_SWIR.TIF``. The cube's file holds the stored integers and
its georeferencing; the wavelengths, widths and calibration of its bands are in the XML. This module reads them
with :mod:`xml.etree` and returns arrays; :mod:`hsi_cluster.io.scene` applies them. The facts it relies on, as
read in the public readers EnMAP-Box/enmap-box (``enmapboxprocessing/algorithm/importenmapl2aalgorithm.py``,
``importenmapl1calgorithm.py``, ``importenmapl1balgorithm.py``, its example data's ``readme.txt`` and issue
#723), GFZ/enpt (``enpt/model/metadata/metadata_mapgeo.py``, ``metadata_sensorgeo.py``: EnPT writes L2A
products in DLR's format), senbox-org/optical-toolbox (SNAP's reader, ``opttbx-enmap-reader/…/EnmapMetadata.java``,
``EnmapL2AMetadata.java``, ``EnmapFileUtils.java``), opengeos/HyperCoast (``hypercoast/enmap.py``) and
microsoft/torchgeo (``torchgeo/datasets/enmap.py``):

- Names: the XML of a spectral image is found by putting ``METADATA.XML`` in place of ``SPECTRAL_IMAGE`` and
  what follows it (EnMAP-Box derives one from the other this way; SNAP's name patterns are the same). SNAP also
  accepts L2A products whose files carry no ``<base>-`` prefix (``SPECTRAL_IMAGE.TIF`` + ``METADATA.XML``).
- Layout: the root element is ``level_X`` (SNAP); the level is ``base/level`` (``L1B``, ``L1C``, ``L2A``).
  ``specific/bandCharacterisation`` holds one ``bandID`` per band of the cube, attribute ``number`` from 1, with
  children ``wavelengthCenterOfBand`` and ``FWHMOfBand`` (nm), ``GainOfBand`` and ``OffsetOfBand`` (all three
  readers and EnPT's writer).
- Values: physical value = stored × ``GainOfBand`` + ``OffsetOfBand``; EnMAP-Box sets them as the GDAL band
  scale/offset of the cube it imports, SNAP as the band's scaling. For L2A (surface reflectance) EnPT writes gain
  1/10000 and offset 0, so int16 values read as reflectance 0–1; L1C holds radiance (SNAP: W/m²/sr/nm).
- The delivered cube carries neither wavelengths nor scale in its GDAL metadata: EnMAP-Box builds a VRT to add
  them, HyperCoast takes the wavelengths from the sibling ``*METADATA.XML`` when the GeoTIFF has none, and in
  EnMAP-Box issue #723 a user's L2A download from DLR held large positive and negative integers, to which the
  maintainer answered that the gain 0.0001 must be applied. The file's own scale/offset or wavelengths, where it
  has them (a cube re-exported with them set), win over the XML's.
- Fill: SNAP reads ``specific/backgroundValue`` as the no-data value of the spectral bands, but for L2A uses
  -32768 instead (the XML's value being missing or wrong in the products it was tested on); so does this module.
- Bands: an L2A cube keeps all 224 bands (about 420–2445 nm) in ascending wavelength (EnPT sorts its L2A bands
  so; EnMAP-Box calls it the product's default order and refuses an unsorted list); the water-vapour absorption
  bands are in the file, filled (torchgeo's default leaves out bands 127–141 and 161–167 "due to presence of
  nodata"; EnMAP-Box's example L2A scene has "6 bad bands filled with no data value"). Such a band, fill in
  every pixel, is flagged bad by ``ingest`` like any band empty everywhere.
- L1B products store VNIR and SWIR in two cubes (``-SPECTRAL_IMAGE_VNIR`` / ``_SWIR``, in sensor geometry) while
  the XML lists the bands of both (EnPT: VNIR first); their band counts differ from the XML's, so they read as
  before, with a warning.

Problems with the XML never fail the read: the cube reads as it would without the XML (stored values, no
wavelengths), which is what the file itself says and what every reader before this one gave, and a
:class:`~hsi_cluster.errors.MetadataWarning` names the XML and what was not used. Refusing the cube would stop
a user over a companion file the cube does not need to be read (an L1B cube always differs in band count);
guessing (a gain of 0.0001 without the XML's word) could be wrong for L1C radiance. A field that is damaged in some band (missing, not a number, a gain of 0) is left
out alone; a band count other than the cube's, a band numbering other than 1…N or an XML that does not parse
leaves out the whole file.
"""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hsi_cluster.errors import MetadataWarning, first_line
from hsi_cluster.io.metadata import unit_scale_to_nm

#: The root element of an EnMAP product's metadata file.
ROOT_TAG = "level_X"
#: Where the per-band elements live, below the root.
BANDS_PATH = "specific/bandCharacterisation/bandID"
#: Fill value of the spectral image of an L2A product (SNAP's EnMAP reader).
L2A_FILL = -32768.0
#: Where an L1B/L1C product's metadata gives the fill value of its spectral bands, below the root (SNAP's reader).
BACKGROUND_PATH = "specific/backgroundValue"

_IMAGE_NAME = re.compile(r"^(?P<prefix>(?:ENMAP.*?[-_])?)SPECTRAL_IMAGE(?:[._].*)?$", re.IGNORECASE)
_LAYER_NAME = re.compile(r"^(?P<prefix>(?:ENMAP.*?[-_])?)QL_[A-Z0-9_]+(?:\.[A-Z0-9]+)+$", re.IGNORECASE)
_LEVEL_IN_NAME = re.compile(r"_(L1B|L1C|L2A)-", re.IGNORECASE)
_METADATA_NAMES = ("METADATA.XML", "METADATA.xml")


@dataclass(frozen=True)
class EnmapBands:
    """What an EnMAP ``METADATA.XML`` says about the bands of its spectral image; a field is None where the XML
    does not give it for every band.

    Attributes:
        path: the XML file.
        level: ``L1B``, ``L1C``, ``L2A`` or None.
        wavelength: band centres (nm), float64 (B,).
        fwhm: band widths (nm), float64 (B,).
        gain: physical value = stored × ``gain`` + ``offset``, float64 (B,); ``gain`` and ``offset`` are both set
            or both None.
        offset: see ``gain``.
        fill: the stored value of pixels without a measurement.
    """

    path: Path
    level: str | None
    wavelength: np.ndarray | None
    fwhm: np.ndarray | None
    gain: np.ndarray | None
    offset: np.ndarray | None
    fill: float | None


def is_enmap_image_name(path: Path) -> bool:
    """Whether ``path`` is named as an EnMAP product's spectral image (``…SPECTRAL_IMAGE.TIF``, its ENVI files)."""
    return _IMAGE_NAME.match(path.name) is not None


def metadata_file(image: Path) -> Path | None:
    """The ``METADATA.XML`` of the EnMAP product whose spectral image is ``image`` (any of its files: the ``.TIF``,
    an ENVI binary or ``.HDR``), or None when ``image`` is not named as one or the XML is not beside it."""
    match = _IMAGE_NAME.match(image.name)
    if match is None:
        return None
    for name in _METADATA_NAMES:
        candidate = image.with_name(match["prefix"] + name)
        if candidate.is_file():
            return candidate
    return None


def is_product_layer(path: Path) -> bool:
    """Whether ``path`` is a quality layer or quicklook of an EnMAP product (``<base>-QL_….TIF``), not a scene."""
    match = _LAYER_NAME.match(path.name)
    if match is None:
        return False
    return bool(match["prefix"]) or any((path.parent / name).is_file() for name in _METADATA_NAMES)


def read_band_metadata(xml: Path, n_bands: int, *, image: Path) -> EnmapBands | None:
    """The band metadata of ``xml`` for the ``n_bands`` bands of ``image`` (see the module docstring).

    Warns with a :class:`~hsi_cluster.errors.MetadataWarning` naming ``xml`` and what is not used when the file
    does not parse, is not an EnMAP metadata file, lists another number of bands, or holds a damaged field.

    Returns:
        the usable fields, or None when nothing of the file can be used.
    """
    whole = f"none of it is used: {image.name} reads as the file alone describes it"
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as exc:
        _warn(xml, f"cannot be read as XML ({first_line(exc)})", whole)
        return None
    if root.tag != ROOT_TAG:
        _warn(xml, f"is not an EnMAP metadata file (its root element is <{root.tag}>, not <{ROOT_TAG}>)", whole)
        return None
    bands = root.findall(BANDS_PATH)
    if len(bands) != n_bands:
        _warn(xml, f"describes {len(bands)} bands ({BANDS_PATH}) and the spectral image has {n_bands} (an L1B "
                   "product's VNIR and SWIR cubes each hold part of the XML's bands)", whole)
        return None
    numbers = [band.get("number") for band in bands]
    if any(number is not None for number in numbers):
        try:
            ranks = [int(number or "") for number in numbers]
        except ValueError:
            ranks = []
        if sorted(ranks) != list(range(1, n_bands + 1)):
            _warn(xml, "numbers its bandID elements otherwise than 1, 2, …, N", whole)
            return None
        bands = [bands[i] for i in np.argsort(ranks, kind="stable")]
    level = (root.findtext("base/level") or "").strip().upper() or None
    if level is None and (named := _LEVEL_IN_NAME.search(xml.name)):
        level = named[1].upper()
    problems: list[str] = []
    wavelength = _band_values(bands, "wavelengthCenterOfBand", problems, positive=True)
    scale = 1.0 if wavelength is None else unit_scale_to_nm(None, wavelength) or 1.0
    wavelength = None if wavelength is None else wavelength * scale
    fwhm = _band_values(bands, "FWHMOfBand", problems, positive=True)
    fwhm = None if fwhm is None else fwhm * scale
    gain = _band_values(bands, "GainOfBand", problems, nonzero=True)
    offset = _band_values(bands, "OffsetOfBand", problems)
    if gain is None or offset is None:
        gain = offset = None
    fill = L2A_FILL if level == "L2A" else _background(root, problems)
    if problems:
        unused = [name for name, value in (("wavelengths", wavelength), ("FWHM", fwhm), ("gains and offsets", gain))
                  if value is None]
        unused += ["fill value"] if fill is None and any(p.startswith("backgroundValue") for p in problems) else []
        _warn(xml, "; ".join(problems), f"so {image.name} reads without its {' and '.join(unused)}"
              + (" (values as stored)" if "gains and offsets" in unused else ""))
    if wavelength is None and fwhm is None and gain is None and fill is None:
        return None
    return EnmapBands(path=xml, level=level, wavelength=wavelength, fwhm=fwhm, gain=gain, offset=offset, fill=fill)


def _band_values(bands: list[ET.Element], tag: str, problems: list[str], *, positive: bool = False,
                 nonzero: bool = False) -> np.ndarray | None:
    """The number ``tag`` of every band as float64 (B,), or None (with a line in ``problems``) when a band lacks it
    or holds something else; ``positive`` / ``nonzero``: values that must be > 0 / ≠ 0."""
    values = np.empty(len(bands), np.float64)
    for i, band in enumerate(bands):
        text = (band.findtext(tag) or "").strip()
        try:
            values[i] = float(text)
        except ValueError:
            values[i] = np.nan
        if not np.isfinite(values[i]) or (positive and values[i] <= 0) or (nonzero and values[i] == 0):
            what = f"holds {text!r}" if text else "is missing"
            problems.append(f"{tag} of band {band.get('number', i + 1)} {what}")
            return None
    return values


def _background(root: ET.Element, problems: list[str]) -> float | None:
    text = (root.findtext(BACKGROUND_PATH) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        problems.append(f"{BACKGROUND_PATH.rsplit('/', 1)[-1]} holds {text!r}")
        return None
    return value


def _warn(xml: Path, problem: str, consequence: str) -> None:
    warnings.warn(MetadataWarning(f"{xml}: {problem}; {consequence}"), stacklevel=3)


