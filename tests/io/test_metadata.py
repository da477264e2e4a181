"""io/metadata directly: ENVI lists, units, band centres from each metadata domain, the inverse tags."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hsi_cluster.errors import MetadataWarning
from hsi_cluster.io.metadata import (
    band_metadata_tags,
    band_tolerance,
    mismatched_band,
    parse_envi_list,
    spectral_coords,
    unit_scale_to_nm,
)


def test_parse_envi_list() -> None:
    assert parse_envi_list("{ 400.5, 410.2 ,420 }") == ["400.5", "410.2", "420"]
    assert parse_envi_list("{ }") is None and parse_envi_list(None) is None


@pytest.mark.parametrize(("units", "values", "scale"), [
    ("Nanometers", [400.0], 1.0), ("micrometers", [0.4], 1000.0), ("µm", [0.4], 1000.0), ("mm", [4e-4], 1e6),
    (None, [0.4, 2.5], 1000.0), ("unknown", [400.0, 2500.0], 1.0), ("wavenumber", [4000.0], None),
])
def test_unit_scale_to_nm(units: str | None, values: list[float], scale: float | None) -> None:
    assert unit_scale_to_nm(units, np.asarray(values)) == scale


def test_mismatched_band_names_the_farthest_band_beyond_the_tolerance() -> None:
    reference = np.array([400.0, 500.0, 600.0])  # 100 nm apart: up to 3 nm (the cap) is the same band
    assert mismatched_band(reference + [0.5, -0.9, 0.2], reference) is None
    assert mismatched_band(reference + [2.9, -3.5, 0.2], reference) == 1
    assert mismatched_band(reference + [3.5, 0, 0], reference, tolerance_nm=4.0) is None
    narrow = 400.0 + 5 * np.arange(5)  # 5 nm apart: a quarter is 1.25 nm
    assert mismatched_band(narrow + [0, 1.2, 0, 0, 0], narrow) is None
    assert mismatched_band(narrow + [0, 1.3, 0, 0, 0], narrow) == 1
    assert band_tolerance(narrow).tolist() == [1.25] * 5 and band_tolerance(narrow[:1]).tolist() == [1.0]


def test_spectral_coords_from_the_envi_domain_in_micrometres() -> None:
    envi = {"wavelength": "{0.4, 0.5, 0.6}", "fwhm": "{0.01, 0.01, 0.02}", "wavelength_units": "Micrometers",
            "bbl": "{1, 0, 1}"}
    coords = spectral_coords(3, {}, envi, [{}, {}, {}], [{}, {}, {}])
    np.testing.assert_allclose(coords["wavelength"], [400, 500, 600])
    np.testing.assert_allclose(coords["fwhm"], [10, 10, 20])
    np.testing.assert_array_equal(coords["good_band"], [True, False, True])


def test_spectral_coords_from_per_band_tags_round_trip_through_band_metadata_tags() -> None:
    coords = {"wavelength": np.array([450.0, 550.0]), "fwhm": np.array([5.0, 6.0]),
              "good_band": np.array([True, False])}
    tags = [band_metadata_tags(coords, i) for i in range(2)]
    assert tags[0] == {"wavelength": "450.0", "wavelength_units": "nanometers", "fwhm": "5.0", "good_band": "1"}
    again = spectral_coords(2, {}, {}, tags, [{}, {}])
    for name, values in coords.items():
        np.testing.assert_array_equal(again[name], values)


def test_spectral_coords_without_metadata_and_with_a_wrong_count() -> None:
    assert spectral_coords(2, {}, {}, [{}, {}], [{}, {}]) == {}
    # a list of another length than the bands is not trusted, and the user is told which
    with pytest.warns(MetadataWarning, match=r"x.hdr: the header's 'wavelength' lists 2 values for 3 bands"):
        coords = spectral_coords(3, {}, {"wavelength": "{400, 500}"}, [{}, {}, {}], [{}, {}, {}], source="x.hdr")
    assert "wavelength" not in coords


def test_micrometres_labelled_nanometres_are_read_as_micrometres_with_a_warning() -> None:
    """A header saying 'Nanometers' over values 0.4–2.5 gave band centres of 0.4–2.5 nm without a word."""
    envi = {"wavelength": "{0.4, 1.0, 2.5}", "fwhm": "{0.01, 0.01, 0.02}", "wavelength_units": "Nanometers"}
    with pytest.warns(MetadataWarning, match=r"x.hdr: its wavelengths \(0.4–2.5\) are labelled nanometres, but every "
                                             r"band would lie below 100 nm, .* so they are read as micrometres"):
        coords = spectral_coords(3, {}, envi, [{}, {}, {}], [{}, {}, {}], source="x.hdr")
    np.testing.assert_allclose(coords["wavelength"], [400, 1000, 2500])
    np.testing.assert_allclose(coords["fwhm"], [10, 10, 20])


def test_nanometres_labelled_micrometres_are_read_as_nanometres_with_a_warning() -> None:
    """The reverse: 'Micrometers' over 400–2500 gave band centres of 400 000–2 500 000 nm without a word, and a
    model of the same sensor then refused the scene as another sensor's."""
    envi = {"wavelength": "{400, 1000, 2500}", "fwhm": "{10, 10, 20}", "wavelength_units": "Micrometers"}
    with pytest.warns(MetadataWarning, match=r"x.hdr: its wavelengths \(400–2500\) are labelled micrometres, but "
                                             r"every band would lie above 100 µm, .* so they are read as nanometres"):
        coords = spectral_coords(3, {}, envi, [{}, {}, {}], [{}, {}, {}], source="x.hdr")
    np.testing.assert_allclose(coords["wavelength"], [400, 1000, 2500])
    np.testing.assert_allclose(coords["fwhm"], [10, 10, 20])


@pytest.mark.parametrize(("units", "fwhm", "read_as"), [
    ("Micrometers", "{9.5, 10, 12}", "nanometres"),  # the sensor's FWHM list kept in nm under a µm header
    ("Nanometers", "{0.0095, 0.01, 0.012}", "micrometres"),
])
def test_band_widths_in_other_units_than_the_centres_are_read_in_those_units_with_a_warning(
        units: str, fwhm: str, read_as: str) -> None:
    """FWHM 9.5 nm under 'Micrometers' was stored as 9 500 nm (a band wider than its centre), without a word."""
    scale = 1.0 if units == "Nanometers" else 1e-3
    envi = {"wavelength": "{" + ", ".join(str(v * scale) for v in (400, 1000, 2500)) + "}", "fwhm": fwhm,
            "wavelength_units": units}
    with pytest.warns(MetadataWarning, match=rf"x.hdr: its band widths \(FWHM, median .* nm as labelled\) do not fit "
                                             rf"its band centres .* so they are read as {read_as}"):
        coords = spectral_coords(3, {}, envi, [{}, {}, {}], [{}, {}, {}], source="x.hdr")
    np.testing.assert_allclose(coords["wavelength"], [400, 1000, 2500])
    np.testing.assert_allclose(coords["fwhm"], [9.5, 10, 12])


def test_plausible_band_widths_are_kept_as_labelled() -> None:
    envi = {"wavelength": "{0.4, 1.0, 2.5}", "fwhm": "{0.0095, 0.01, 0.012}", "wavelength_units": "Micrometers"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataWarning)
        coords = spectral_coords(3, {}, envi, [{}, {}, {}], [{}, {}, {}], source="x.hdr")
    np.testing.assert_allclose(coords["fwhm"], [9.5, 10, 12])


def test_a_wavelength_list_with_a_word_is_not_read_as_zero() -> None:
    """One 'n/a' in the header's list: GDAL's band tags hold 0 for it, and the scene got a 0 nm band."""
    envi = {"wavelength": "{400, n/a, 600}", "wavelength_units": "Nanometers"}
    gdal_bands = [{"wavelength": "400"}, {"wavelength": "0"}, {"wavelength": "600"}]
    with pytest.warns(MetadataWarning, match=r"x.hdr: the header's 'wavelength' holds 'n/a', not a number, so it is "
                                             r"not used"):
        coords = spectral_coords(3, {}, envi, gdal_bands, [{}, {}, {}], source="x.hdr")
    assert "wavelength" not in coords


def test_wavelengths_named_in_every_band_description_are_read() -> None:
    """GeoTIFFs whose writer kept the band centres only in the descriptions ("452.30 nm", "Band 1 (0.4523 µm)")."""
    from hsi_cluster.io.metadata import described_wavelengths

    np.testing.assert_allclose(described_wavelengths(["452.30 nm", "Band 2 (0.5 µm)", "B3: 2190 nanometers"]),
                               [452.3, 500.0, 2190.0])
    assert described_wavelengths(["Band 1", "452 nm"]) is None  # not every band
    assert described_wavelengths(["400 nm to 410 nm", "420 nm"]) is None  # two lengths: not a centre
    coords = spectral_coords(2, {}, {}, [{}, {}], [{}, {}], descriptions=["Band 1 (452.3 nm)", "Band 2 (560 nm)"])
    np.testing.assert_allclose(coords["wavelength"], [452.3, 560.0])
    tagged = spectral_coords(2, {}, {}, [{"wavelength": "400"}, {"wavelength": "500"}], [{}, {}],
                             descriptions=["452 nm", "560 nm"])
    np.testing.assert_allclose(tagged["wavelength"], [400, 500])  # the metadata items come first


def test_wavelengths_in_units_that_are_not_a_length_are_dropped_with_a_warning() -> None:
    """'Wavenumber' (or 'Index') made the wavelengths vanish, and info said they were not in the file."""
    envi = {"wavelength": "{25000, 10000, 4000}", "wavelength_units": "Wavenumber"}
    with pytest.warns(MetadataWarning, match=r"x.hdr: its wavelength units 'Wavenumber' are not a length, so its "
                                             r"wavelengths are not used"):
        coords = spectral_coords(3, {}, envi, [{}, {}, {}], [{}, {}, {}], source="x.hdr")
    assert "wavelength" not in coords
