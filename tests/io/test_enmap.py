"""DLR EnMAP products: the spectral image reads with the wavelengths, FWHM, gain/offset and fill value of the
product's ``METADATA.XML``; a damaged XML warns and is not used; the XML is part of the scene's inputs, so that
editing it ingests the scene again; a product's quality layers are not scenes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hsi_cluster.cli import main
from hsi_cluster.errors import MetadataWarning
from hsi_cluster.io import open_scene
from hsi_cluster.io.paths import expand_scene_paths
from hsi_cluster.io.scene import scene_inputs
from hsi_cluster.stats import valid_pixel_mask
from tests import helpers

BASE = "ENMAP01-____L2A-DT0000001049_20220612T105735Z_001_V010111_20230101T120000Z"
WAVELENGTH = [418.416, 423.9, 1002.57, 1401.3, 2000.43, 2445.53]
FWHM = [6.99561, 6.6675, 10.12, 11.5, 9.87, 8.61]
# L2A products carry 1/10000 and 0; other values here so that a reader using one band's gain for all fails.
GAIN = [1e-4, 1e-4, 2e-4, 1e-4, 5e-5, 1e-4]
OFFSET = [0.0, 0.0, -0.01, 0.0, 0.5, 0.0]
FILL = -32768
ABSORPTION_BAND = 3  # fill in every pixel, as the water-vapour bands of an L2A product
FILL_PIXELS = np.s_[:, 0, :5]  # outside the swath: fill in every band
PARTIAL_FILL = (1, 7, 9)  # fill in one band of one pixel


def metadata_xml(*, level: str = "L2A", bands: int = len(WAVELENGTH), background: str | None = None,
                 replace: dict[tuple[int, str], str] | None = None) -> str:
    """A METADATA.XML with the element names of DLR's products (a small part of them)."""
    replace = replace or {}
    rows = []
    for i in range(bands):
        fields = {"wavelengthCenterOfBand": repr(WAVELENGTH[i]), "FWHMOfBand": repr(FWHM[i]),
                  "GainOfBand": repr(GAIN[i]), "OffsetOfBand": repr(OFFSET[i])}
        fields.update({tag: text for (band, tag), text in replace.items() if band == i})
        rows.append(f'      <bandID number="{i + 1}">'
                    + "".join(f"<{tag}>{text}</{tag}>" for tag, text in fields.items()) + "</bandID>")
    background_line = f"    <backgroundValue>{background}</backgroundValue>\n" if background is not None else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<level_X>\n  <metadata><name>{BASE}-METADATA.XML</name>'
            f"</metadata>\n  <base><level>{level}</level></base>\n  <specific>\n{background_line}"
            "    <bandCharacterisation>\n" + "\n".join(rows) + "\n    </bandCharacterisation>\n  </specific>\n"
            "</level_X>\n")


@dataclass
class Product:
    folder: Path
    image: Path
    xml: Path
    stored: np.ndarray  # int16 (band, y, x), as written

    def reflectance(self) -> np.ndarray:
        """stored × gain + offset in float32, fill → NaN, computed apart from the reader."""
        values = (self.stored.astype(np.float32) * np.float32(GAIN)[:, None, None]
                  + np.float32(OFFSET)[:, None, None])
        values[self.stored == FILL] = np.nan
        return values


def write_product(folder: Path, *, base: str = BASE, xml_text: str | None = None, envi: bool = False) -> Product:
    """An EnMAP-like product: int16 spectral image (UTM 33N, 30 m) without spectral metadata, plus its XML and a
    quality layer and quicklook that a glob must not take for scenes."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"{base}-" if base else ""
    stored = helpers.synthetic_cube(len(WAVELENGTH), 20, 24, "int16", seed=3, nodata=FILL)
    stored[ABSORPTION_BAND] = FILL
    stored[FILL_PIXELS] = FILL
    stored[PARTIAL_FILL] = FILL
    if envi:
        image = folder / f"{prefix}SPECTRAL_IMAGE.BSQ"
        helpers.write_envi(image, stored)
        image.with_suffix(".hdr").rename(image.with_suffix(".HDR"))  # as delivered: upper-case names
    else:
        image = folder / f"{prefix}SPECTRAL_IMAGE.TIF"
        helpers.write_geotiff(image, stored)
    helpers.write_geotiff(folder / f"{prefix}QL_PIXELMASK.TIF", np.zeros((2, 20, 24), np.uint8))
    helpers.write_geotiff(folder / f"{prefix}QL_VNIR.TIF", np.zeros((3, 20, 24), np.uint8))
    xml = folder / f"{prefix}METADATA.XML"
    xml.write_text(metadata_xml() if xml_text is None else xml_text)
    return Product(folder=folder, image=image, xml=xml, stored=stored)


@pytest.fixture
def product(tmp_path: Path) -> Product:
    return write_product(tmp_path / BASE)


@pytest.mark.parametrize("variant", ["geotiff", "envi", "no prefix"])
def test_spectral_image_reads_as_reflectance_with_wavelengths(tmp_path: Path, variant: str) -> None:
    product = write_product(tmp_path / "product", base="" if variant == "no prefix" else BASE,
                            envi=variant == "envi")
    scene = open_scene(product.image)
    np.testing.assert_array_equal(scene.coords["wavelength"].values, WAVELENGTH)
    np.testing.assert_array_equal(scene.coords["fwhm"].values, FWHM)
    assert scene.dtype == np.float32 and scene.attrs["scaled_from"] == "int16"
    assert np.isnan(scene.attrs["nodata"])
    values = scene.values
    np.testing.assert_array_equal(values, product.reflectance())  # the same float32 operations, exactly
    exact = product.stored.astype(np.float64) * np.array(GAIN)[:, None, None] + np.array(OFFSET)[:, None, None]
    keep = product.stored != FILL
    np.testing.assert_allclose(values[keep], exact[keep], rtol=2e-7, atol=1e-7)


def test_fill_reads_as_nan_and_marks_pixels_invalid(product: Product) -> None:
    scene = open_scene(product.image)
    values = scene.values
    assert np.isnan(values[FILL_PIXELS]).all() and np.isnan(values[PARTIAL_FILL])
    assert np.isnan(values[ABSORPTION_BAND]).all()
    others = [b for b in range(len(WAVELENGTH)) if b != ABSORPTION_BAND]
    valid = np.asarray(valid_pixel_mask(values[others], nodata=scene.attrs["nodata"]))
    expected = np.ones(valid.shape, bool)
    expected[FILL_PIXELS[1:]] = False
    expected[PARTIAL_FILL[1:]] = False
    np.testing.assert_array_equal(valid, expected)


def test_ingest_flags_the_filled_absorption_band_and_keeps_reflectance(product: Product, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ingest", str(product.image), "-o", str(tmp_path / "s.zarr"), "-q"])
    assert result.exit_code == 0, result.output
    store = open_scene(tmp_path / "s.zarr")
    assert store.coords["good_band"].values.tolist() == [b != ABSORPTION_BAND for b in range(len(WAVELENGTH))]
    assert store.attrs["valid_pixels"] == 20 * 24 - 5 - 1
    np.testing.assert_array_equal(store.values[:, 5:, :], product.reflectance()[:, 5:, :])


def test_the_files_own_metadata_wins(tmp_path: Path) -> None:
    """A cube re-exported with its own wavelengths, scale and nodata keeps them; the XML fills in the FWHM."""
    folder = tmp_path / "product"
    product = write_product(folder)
    own_wavelength = [w + 1 for w in WAVELENGTH]
    helpers.write_geotiff(product.image, product.stored, wavelength_nm=own_wavelength, nodata=-9999,
                          scales=[1e-4] * len(WAVELENGTH), offsets=[0.0] * len(WAVELENGTH))
    scene = open_scene(product.image)
    np.testing.assert_array_equal(scene.coords["wavelength"].values, own_wavelength)
    np.testing.assert_array_equal(scene.coords["fwhm"].values, FWHM)
    values = scene.values
    assert not np.isnan(values[PARTIAL_FILL])  # -32768 is not this file's nodata
    np.testing.assert_array_equal(values[0], product.stored[0].astype(np.float32) * np.float32(1e-4))


def test_without_the_xml_the_image_reads_as_stored(product: Product) -> None:
    assert "wavelength" in open_scene(product.image).coords
    product.xml.unlink()
    with pytest.warns(MetadataWarning, match=r"SPECTRAL_IMAGE\.TIF: is named as an EnMAP spectral image, but its "
                      r"product's METADATA\.XML is not beside it"):  # it read as stored in silence
        scene = open_scene(product.image)
    assert scene.dtype == np.int16 and scene.attrs["nodata"] is None and "scaled_from" not in scene.attrs
    assert "wavelength" not in scene.coords and "fwhm" not in scene.coords
    np.testing.assert_array_equal(scene.values, product.stored)


@pytest.mark.parametrize(("xml_text", "message"), [
    ("<level_X><specific><bandCharacterisation>", r"METADATA\.XML: cannot be read as XML .*none of it is used"),
    ("<root/>", r"is not an EnMAP metadata file \(its root element is <root>"),
    (metadata_xml(bands=4), r"describes 4 bands .* the spectral image has 6 .*; none of it is used: .*SPECTRAL_IMAGE\.TIF reads"),
    (metadata_xml().replace('number="2"', 'number="9"'), r"numbers its bandID elements otherwise"),
])
def test_an_unusable_xml_warns_and_the_image_reads_as_stored(tmp_path: Path, xml_text: str, message: str) -> None:
    product = write_product(tmp_path / "product", xml_text=xml_text)
    with pytest.warns(MetadataWarning, match=message):
        scene = open_scene(product.image)
    assert scene.dtype == np.int16 and "wavelength" not in scene.coords and scene.attrs["nodata"] is None
    np.testing.assert_array_equal(scene.values, product.stored)


def test_a_damaged_gain_leaves_out_the_gains_only(tmp_path: Path) -> None:
    product = write_product(tmp_path / "product", xml_text=metadata_xml(replace={(2, "GainOfBand"): "0"}))
    with pytest.warns(MetadataWarning, match=r"GainOfBand of band 3 holds '0'; so .* reads without its gains and "
                                             r"offsets \(values as stored\)"):
        scene = open_scene(product.image)
    np.testing.assert_array_equal(scene.coords["wavelength"].values, WAVELENGTH)
    assert scene.dtype == np.int16 and scene.attrs["nodata"] == FILL
    np.testing.assert_array_equal(scene.values, product.stored)


def test_l1c_takes_its_fill_from_the_background_value(tmp_path: Path) -> None:
    base = BASE.replace("L2A", "L1C")
    product = write_product(tmp_path / "product", base=base, xml_text=metadata_xml(level="L1C", background="0"))
    stored = product.stored.copy()
    stored[stored == FILL] = 7
    stored[0, 3, 3] = 0  # one band at 0: ground (validity rules 7)
    stored[:, 4, 4] = 0  # every band: background
    helpers.write_geotiff(product.image, stored)
    scene = open_scene(product.image)
    assert scene.attrs["nodata"] == 0
    values = scene.values
    assert values[0, 3, 3] == 0 and np.isfinite(values[1, 3, 3]) and (values[:, 4, 4] == 0).all()
    valid = valid_pixel_mask(values, nodata=scene.attrs["nodata"])
    assert valid[3, 3] and not valid[4, 4]


def test_cli_info_shows_wavelengths_and_scaling(product: Product) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(product.image)])
    assert result.exit_code == 0, result.output
    assert "wavelengths   418.4–2445.5 nm (with FWHM)" in result.output
    assert "values        stored as int16, read × the bands' scale + offset (from the file or its product's metadata)" in result.output
    assert "nodata        nan" in result.output
    result = runner.invoke(main, ["info", str(product.image), "--json"])
    info = json.loads(result.stdout)
    assert info["scaled_from"] == "int16" and info["wavelength_nm"] == {"min": 418.416, "max": 2445.53}


def test_the_xml_is_an_input_of_the_scene(tmp_path: Path) -> None:
    product = write_product(tmp_path / "product", envi=True)
    header = product.image.with_suffix(".HDR")
    assert set(scene_inputs(product.image).values()) == {product.image, header, product.xml}
    assert set(scene_inputs(header).values()) == {header, product.image, product.xml}
    result = CliRunner().invoke(main, ["ingest", str(product.image), "-o", str(product.xml), "--overwrite"])
    assert result.exit_code != 0 and "METADATA.XML" in result.output
    assert product.xml.read_text() == metadata_xml()


def test_a_glob_over_a_product_finds_only_its_spectral_image(tmp_path: Path) -> None:
    product = write_product(tmp_path / "geotiff")
    envi = write_product(tmp_path / "envi", envi=True)
    assert expand_scene_paths([str(tmp_path / "*" / "*")]) == [envi.image, product.image]


def test_editing_the_xml_ingests_the_scene_again(product: Product, tmp_path: Path) -> None:
    from hsi_cluster.train import prepare_store

    work = tmp_path / "work"
    first = prepare_store(product.image, work)
    assert prepare_store(product.image, work) == first
    product.xml.write_text(metadata_xml().replace("<GainOfBand>0.0001</GainOfBand>", "<GainOfBand>0.001</GainOfBand>"))
    stat = product.xml.stat()
    os.utime(product.xml, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = prepare_store(product.image, work)
    assert again != first
    np.testing.assert_allclose(open_scene(again).values[0, 10, 10], product.stored[0, 10, 10] * 1e-3, rtol=1e-6)
