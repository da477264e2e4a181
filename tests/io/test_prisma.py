"""PRISMA L2D ``.he5``: VNIR + SWIR joined in ascending wavelength, counts scaled to reflectance, the 30 m
UTM grid from the corner attributes, fill pixels NaN, read lazily; other levels and other files refused."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from hsi_cluster.cli import main
from hsi_cluster.errors import MetadataWarning, SceneError
from hsi_cluster.io import open_scene
from tests import helpers
from tests.train_helpers import TINY

LINES, SAMPLES = 20, 24  # not square: a transposed reader fails
EPSG = 32633
UL = (500_015.0, 4_100_985.0)  # centre of the upper-left pixel
FIELDS = "HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields"
# Stored as delivered: descending wavelength, unused bands with wavelength 0 and flag 0. VNIR's 990 and
# 960 nm lie at or above SWIR's shortest used band (950 nm) and are left out; SWIR's 1400 nm band is
# flagged 0 but has a wavelength: kept, marked bad.
VNIR_CW = np.array([0.0, 990.0, 960.0, 930.0, 700.0, 550.0, 450.0, 400.0], np.float32)
VNIR_FLAGS = np.array([0, 1, 1, 1, 1, 1, 1, 1], np.uint8)
SWIR_CW = np.array([2400.0, 2000.0, 1400.0, 1200.0, 980.0, 950.0, 0.0], np.float32)
SWIR_FLAGS = np.array([1, 1, 0, 1, 1, 1, 0], np.uint8)
SCALE = {"L2ScaleVnirMin": np.float32(0.0), "L2ScaleVnirMax": np.float32(0.6234),
         "L2ScaleSwirMin": np.float32(0.0123), "L2ScaleSwirMax": np.float32(0.7654)}
EXPECTED_CW = [400.0, 450.0, 550.0, 700.0, 930.0, 950.0, 980.0, 1200.0, 1400.0, 2000.0, 2400.0]
VNIR_KEPT = [7, 6, 5, 4, 3]  # stored indices, ascending wavelength
SWIR_KEPT = [5, 4, 3, 2, 1, 0]
BORDER = np.s_[0, :5]  # 0 in every band of both cubes: outside the swath
VNIR_GAP = (4, 7)  # 0 in every VNIR band only
ZERO_BAND = (5, 5)  # a valid pixel with count 0 in one band (VNIR 550 nm): reflectance = min
FULL_BAND = (6, 6)  # count 65535 in one band (SWIR 2000 nm): reflectance = max


@dataclass
class Prisma:
    path: Path
    vnir: np.ndarray  # counts as stored, (lines, bands, samples)
    swir: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def reflectance(self) -> np.ndarray:
        """The expected ``(band, y, x)`` float32 cube, computed independently of the reader."""
        def scaled(counts: np.ndarray, kept: list[int], low: np.float32, high: np.float32) -> np.ndarray:
            values = float(low) + counts[:, kept, :].astype(np.float64) * (float(high) - float(low)) / 65535
            return values.transpose(1, 0, 2)
        cube = np.concatenate([
            scaled(self.vnir, VNIR_KEPT, SCALE["L2ScaleVnirMin"], SCALE["L2ScaleVnirMax"]),
            scaled(self.swir, SWIR_KEPT, SCALE["L2ScaleSwirMin"], SCALE["L2ScaleSwirMax"])]).astype(np.float32)
        fill = (self.vnir[:, VNIR_KEPT, :] == 0).all(axis=1) | (self.swir[:, [0, 1, 3, 4, 5], :] == 0).all(axis=1)
        cube[:, fill] = np.nan
        return cube


def write_prisma(path: Path, *, level: str = "L2D", chunks: tuple[int, int, int] | None = None,
                 drop: tuple[str, ...] = (), counts: tuple[np.ndarray, np.ndarray] | None = None,
                 **overrides: Any) -> Prisma:
    """A tiny PRISMA-structured HDF-EOS5 file: both cubes, real root attribute names, a UTM grid.

    ``counts``: the VNIR and SWIR cubes as stored (lines, bands, samples); by default random counts with
    the fill pixels and the extreme counts of the module constants.
    """
    if counts is None:
        rng = np.random.default_rng(7)
        vnir = rng.integers(1, 65535, size=(LINES, VNIR_CW.size, SAMPLES), dtype=np.uint16)
        swir = rng.integers(1, 65535, size=(LINES, SWIR_CW.size, SAMPLES), dtype=np.uint16)
        vnir[BORDER[0], :, BORDER[1]] = 0
        swir[BORDER[0], :, BORDER[1]] = 0
        vnir[VNIR_GAP[0], :, VNIR_GAP[1]] = 0
        vnir[ZERO_BAND[0], 5, ZERO_BAND[1]] = 0
        swir[FULL_BAND[0], 1, FULL_BAND[1]] = 65535
    else:
        vnir, swir = (cube.copy() for cube in counts)
    vnir[:, 0, :] = 0  # the unused bands hold nothing
    swir[:, -1, :] = 0
    attrs: dict[str, Any] = {
        "Processing_Level": np.bytes_(level[1:]), "Epsg_Code": np.int32(EPSG),
        "Product_ULcorner_easting": UL[0], "Product_ULcorner_northing": UL[1],
        "Product_LRcorner_easting": UL[0] + 30 * (SAMPLES - 1), "Product_LRcorner_northing": UL[1] - 30 * (LINES - 1),
        "Product_LLcorner_easting": UL[0], "Product_LLcorner_northing": UL[1] - 30 * (LINES - 1),
        "Product_URcorner_easting": UL[0] + 30 * (SAMPLES - 1), "Product_URcorner_northing": UL[1],
        "List_Cw_Vnir": VNIR_CW, "List_Cw_Vnir_Flags": VNIR_FLAGS, "List_Fwhm_Vnir": VNIR_CW / 50,
        "List_Cw_Swir": SWIR_CW, "List_Cw_Swir_Flags": SWIR_FLAGS, "List_Fwhm_Swir": SWIR_CW / 100, **SCALE}
    attrs.update(overrides)
    for key in drop:
        del attrs[key]
    swath = f"HDFEOS/SWATHS/PRS_{level}_HCO"
    with h5py.File(path, "w") as handle:
        handle.attrs.update(attrs)
        for name, cube in (("VNIR_Cube", vnir), ("SWIR_Cube", swir)):
            handle.create_dataset(f"{swath}/Data Fields/{name}", data=cube,
                                  chunks=None if chunks is None else (chunks[0], cube.shape[1], chunks[2]))
            handle.create_dataset(f"{swath}/Data Fields/{name[:4]}_PIXEL_L2_ERR_MATRIX",
                                  data=np.zeros_like(cube, np.uint8))
        handle.create_dataset(f"{swath}/Geolocation Fields/Latitude", data=np.zeros((LINES, SAMPLES), np.float32))
    return Prisma(path, vnir, swir, attrs)


@pytest.fixture
def prisma(tmp_path: Path) -> Prisma:
    return write_prisma(tmp_path / "PRS_L2D_STD_20240101101010_20240101101014_0001.he5")


def test_bands_join_in_ascending_wavelength_scaled_to_reflectance(prisma: Prisma) -> None:
    scene = open_scene(prisma.path, chunks=(8, 8))
    assert scene.dims == ("band", "y", "x") and scene.shape == (11, LINES, SAMPLES) and scene.dtype == np.float32
    assert scene.coords["wavelength"].values.tolist() == EXPECTED_CW
    np.testing.assert_allclose(scene.coords["fwhm"].values,
                               [cw / (50 if cw < 940 else 100) for cw in EXPECTED_CW], rtol=1e-6)
    assert scene.coords["good_band"].values.tolist() == [cw != 1400.0 for cw in EXPECTED_CW]
    values = scene.values
    np.testing.assert_allclose(values, prisma.reflectance(), rtol=1e-6, atol=0, equal_nan=True)
    # the ends of the count range are the file's min and max exactly
    assert values[2, ZERO_BAND[0], ZERO_BAND[1]] == SCALE["L2ScaleVnirMin"]
    assert values[EXPECTED_CW.index(2000.0), FULL_BAND[0], FULL_BAND[1]] == SCALE["L2ScaleSwirMax"]
    assert scene.attrs["format"] == "PRISMA-L2D" and scene.attrs["scaled_from"] == "uint16"


def test_grid_is_the_corner_pixel_centres_padded_by_half_a_pixel(prisma: Prisma) -> None:
    scene = open_scene(prisma.path)
    assert scene.attrs["georeferenced"]
    assert rasterio.crs.CRS.from_wkt(scene.attrs["crs"]).to_epsg() == EPSG
    assert scene.attrs["transform"] == (30.0, 0.0, UL[0] - 15, 0.0, -30.0, UL[1] + 15)
    # the corner attributes fall on the centres of the corner pixels
    assert (scene.x.values[0], scene.y.values[0]) == UL
    assert (scene.x.values[-1], scene.y.values[-1]) == (prisma.attrs["Product_LRcorner_easting"],
                                                        prisma.attrs["Product_LRcorner_northing"])


def test_fill_pixels_read_nan_and_a_single_zero_band_does_not(prisma: Prisma) -> None:
    values = open_scene(prisma.path).values
    assert np.isnan(open_scene(prisma.path).attrs["nodata"])
    assert np.isnan(values[:, BORDER[0], BORDER[1]]).all()
    assert np.isnan(values[:, VNIR_GAP[0], VNIR_GAP[1]]).all()  # a detector without data voids the pixel
    assert np.isfinite(values[:, ZERO_BAND[0], ZERO_BAND[1]]).all()
    assert np.isnan(values).any(axis=0).sum() == 5 + 1


@pytest.fixture
def cube_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every read of a ``*_Cube`` dataset while the test runs: (cube name, h5py key)."""
    reads: list[tuple[str, Any]] = []
    original = h5py.Dataset.__getitem__

    def recording(self: h5py.Dataset, key: Any) -> Any:
        if self.name.endswith("_Cube"):
            reads.append((self.name.rsplit("/", 1)[-1], key))
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    return reads


def test_a_chunk_reads_only_its_window(prisma: Prisma, cube_reads: list[tuple[str, Any]]) -> None:
    reads = cube_reads
    scene = open_scene(prisma.path, chunks=(8, 8))
    assert reads == []  # opening reads no cube data
    assert scene.data.numblocks == (1, 3, 3)
    window = scene[:, 8:16, 16:24].values
    assert sorted(name for name, _ in reads) == ["SWIR_Cube", "VNIR_Cube"]
    for _, key in reads:
        rows, bands, cols = key
        assert (rows.start, rows.stop, cols.start, cols.stop) == (8, 16, 16, 24) and bands == slice(None)
    np.testing.assert_allclose(window, prisma.reflectance()[:, 8:16, 16:24], rtol=1e-6, equal_nan=True)


def test_dask_chunks_follow_the_files_hdf5_chunks(tmp_path: Path) -> None:
    written = write_prisma(tmp_path / "chunked.he5", chunks=(4, 0, SAMPLES))  # whole lines, 4 at a time
    scene = open_scene(written.path)
    rows, cols = scene.data.chunks[1:]
    assert cols == (SAMPLES,) and all(r % 4 == 0 for r in rows[:-1])
    np.testing.assert_allclose(scene.values, written.reflectance(), rtol=1e-6, equal_nan=True)


def test_windows_of_a_line_chunked_file_decompress_each_chunk_once(tmp_path: Path,
                                                                     cube_reads: list[tuple[str, Any]]) -> None:
    written = write_prisma(tmp_path / "chunked.he5", chunks=(4, 0, SAMPLES))  # whole lines, 4 at a time
    reads = cube_reads
    scene = open_scene(written.path, chunks=(4, 8))  # three windows across each strip of chunks
    assert scene.attrs["file_block"] == (4, SAMPLES)
    np.testing.assert_allclose(scene.values, written.reflectance(), rtol=1e-6, equal_nan=True)
    for name in ("VNIR_Cube", "SWIR_Cube"):
        strips = sorted((key[0].start, key[0].stop, key[2].start, key[2].stop) for cube, key in reads if cube == name)
        assert strips == [(row, row + 4, 0, SAMPLES) for row in range(0, LINES, 4)]
    restored = pickle.loads(pickle.dumps(scene))  # the kept block stays behind
    np.testing.assert_array_equal(restored[:, 5:11, 3:19].values, scene[:, 5:11, 3:19].values)


def test_the_scene_pickles_for_dask_workers(prisma: Prisma) -> None:
    scene = open_scene(prisma.path, chunks=(8, 8))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(scene)).values, scene.values)


def test_corner_mismatch_and_missing_epsg_warn(tmp_path: Path) -> None:
    shifted = write_prisma(tmp_path / "shifted.he5", Product_LRcorner_easting=UL[0] + 30 * SAMPLES + 100)
    with pytest.warns(MetadataWarning, match=r"lower-right corner .* upper-left corner and 30 m pixels are used"):
        scene = open_scene(shifted.path)
    assert scene.attrs["transform"][2] == UL[0] - 15
    bare = write_prisma(tmp_path / "bare.he5", drop=("Epsg_Code",))
    with pytest.warns(MetadataWarning, match=r"without Epsg_Code; read without georeferencing"):
        assert not open_scene(bare.path).attrs["georeferenced"]


def _not_prisma(tmp: Path) -> Path:
    with h5py.File(tmp / "other.he5", "w") as handle:
        handle.create_dataset("HDFEOS/GRIDS/MODIS/Data Fields/NDVI", data=np.zeros((4, 5, 6), np.int16))
    return tmp / "other.he5"


def _garbage(tmp: Path) -> Path:
    path = tmp / "junk.he5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    return path


def _truncated(tmp: Path) -> Path:
    path = write_prisma(tmp / "cut.he5").path
    helpers.truncate_file(path, 0.5)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: write_prisma(tmp / "PRS_L1_STD_OFFL.he5", level="L1").path,
     r"a PRISMA L1 product \(top-of-atmosphere radiance in sensor geometry\); hsicluster reads PRISMA L2D"),
    (lambda tmp: write_prisma(tmp / "PRS_L2C_STD.he5", level="L2C").path,
     r"a PRISMA L2C product \(surface reflectance in sensor geometry, located only by latitude/longitude grids\); "
     r"hsicluster reads PRISMA L2D .* order the L2D product"),
    (_not_prisma, r"other.he5: not a PRISMA L2D product \(no HDFEOS/SWATHS/PRS_L2D_HCO group\)"),
    (_garbage, r"junk.he5: not a readable HDF5 file \(.*\); the file is truncated or corrupt"),
    (_truncated, r"cut.he5: .*the file is truncated or corrupt — download it again"),
    (lambda tmp: write_prisma(tmp / "noscale.he5", drop=("L2ScaleSwirMax",)).path,
     r"noscale.he5: PRISMA L2D file without its root attribute L2ScaleSwirMax"),
    (lambda tmp: write_prisma(tmp / "short.he5", List_Cw_Swir=SWIR_CW[:-1]).path,
     r"short.he5: the root attribute List_Cw_Swir holds 6 values for 7"),
])
def test_bad_he5_files_are_refused_in_one_line(tmp_path: Path, make: Any, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(SceneError, match=message) as caught:
        open_scene(path).compute()  # a truncated file may open and fail on reading
    assert "\n" not in str(caught.value)
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_cli_info_and_ingest(tmp_path: Path, prisma: Prisma) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(prisma.path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["bands"], info["rows"], info["cols"]) == (11, LINES, SAMPLES)
    assert info["crs"]["epsg"] == EPSG and info["transform"] == [30.0, 0.0, UL[0] - 15, 0.0, -30.0, UL[1] + 15]
    assert info["wavelength_nm"] == {"min": 400.0, "max": 2400.0} and info["bad_bands"] == 1
    assert info["nodata"] == "nan" and info["format"] == "PRISMA-L2D"
    store = tmp_path / "prisma.zarr"
    result = runner.invoke(main, ["ingest", str(prisma.path), "-o", str(store), "-q"])
    assert result.exit_code == 0, result.output
    ingested = open_scene(store)
    assert ingested.attrs["valid_pixels"] == LINES * SAMPLES - 6
    np.testing.assert_allclose(ingested.values, prisma.reflectance(), rtol=1e-6, equal_nan=True)
    assert ingested.coords["wavelength"].values.tolist() == EXPECTED_CW


def _grouped_counts() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counts of three spectrally distinct groups laid out so that no flip or transpose of the grid keeps the
    partition: a top stripe (group 0), a narrow lower-left block (1), a wide lower-right block (2). Fill pixels:
    :data:`BORDER` and a lower-right corner (0 in both cubes) and :data:`VNIR_GAP` (0 in VNIR only).

    Returns the VNIR and SWIR counts as stored (lines, bands, samples), the group of each pixel and the fill mask.
    """
    groups = np.full((LINES, SAMPLES), 2)
    groups[:6] = 0
    groups[6:, :8] = 1
    # reflectance spectra: vegetation (red edge), bright soil rising with wavelength, dark water falling
    spectra = [lambda cw: np.interp(cw, [400, 550, 680, 750, 1300, 2400], [0.04, 0.10, 0.04, 0.45, 0.40, 0.15]),
               lambda cw: np.interp(cw, [400, 2400], [0.12, 0.45]),
               lambda cw: np.interp(cw, [400, 550, 700, 900, 2400], [0.15, 0.10, 0.05, 0.03, 0.02])]
    rng = np.random.default_rng(3)
    cubes = []
    for centre, title in ((VNIR_CW, "Vnir"), (SWIR_CW, "Swir")):
        low, high = float(SCALE[f"L2Scale{title}Min"]), float(SCALE[f"L2Scale{title}Max"])
        reflectance = np.stack([spectrum(centre) for spectrum in spectra])[groups]  # (lines, samples, bands)
        reflectance += rng.normal(0, 0.004, reflectance.shape)
        counts = np.clip(np.rint((reflectance - low) / (high - low) * 65535), 1, 65535).astype(np.uint16)
        cubes.append(np.ascontiguousarray(counts.transpose(0, 2, 1)))
    vnir, swir = cubes
    fill = np.zeros((LINES, SAMPLES), bool)
    fill[BORDER] = True
    fill[-3:, -4:] = True
    for cube in (vnir, swir):
        cube.transpose(0, 2, 1)[fill] = 0  # a view: every band of the fill pixels
    vnir[VNIR_GAP[0], :, VNIR_GAP[1]] = 0
    fill[VNIR_GAP] = True
    return vnir, swir, groups, fill


def test_prisma_file_trains_and_predicts_its_groups_on_its_grid(tmp_path: Path) -> None:
    vnir, swir, groups, fill = _grouped_counts()
    written = write_prisma(tmp_path / "PRS_L2D_STD_20240101101010_20240101101014_0001.he5", counts=(vnir, swir))
    assert (np.isnan(written.reflectance()).all(axis=0) == fill).all()  # the fill as the reader must see it
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    model, labels = tmp_path / "m.ckpt", tmp_path / "labels.tif"
    runner = CliRunner()
    for args in (["train", written.path, "-k", "3", "-o", model, "--config", config, "--work", tmp_path / "work",
                  "-q"],
                 ["predict", written.path, "-m", model, "-o", labels, "-q"]):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    with rasterio.open(labels) as raster:
        assert raster.crs.to_epsg() == EPSG and raster.shape == (LINES, SAMPLES)
        assert tuple(raster.transform)[:6] == (30.0, 0.0, UL[0] - 15, 0.0, -30.0, UL[1] + 15)
        assert raster.xy(0, 0) == UL  # the corner attributes are the corner pixels' centres
        mapped = raster.read(1)
        nodata = raster.nodata
        np.testing.assert_array_equal(raster.read_masks(1) == 0, fill)
    assert (mapped[fill] == nodata).all()
    # the three groups get three different labels, each over (nearly) all of its own pixels: the layout of
    # the label map is the layout of the groups, which a transposed or flipped read would not give
    majority = [np.bincount(mapped[(groups == g) & ~fill]).argmax() for g in range(3)]
    assert len(set(majority)) == 3, majority
    agree = mapped[~fill] == np.asarray(majority)[groups[~fill]]
    assert agree.mean() >= 0.95, f"{agree.mean():.3f} of the valid pixels carry their group's label"


def test_cubes_stored_as_float_read_as_stored_with_a_warning(tmp_path: Path) -> None:
    """A re-export holding float reflectance in the cubes was scaled as 16-bit counts (values ÷ 65 535 · 0.62)."""
    rng = np.random.default_rng(3)
    vnir = rng.uniform(0.01, 0.6, (LINES, VNIR_CW.size, SAMPLES)).astype(np.float32)
    swir = rng.uniform(0.01, 0.6, (LINES, SWIR_CW.size, SAMPLES)).astype(np.float32)
    product = write_prisma(tmp_path / "PRS_L2D_STD_20240101101010_20240101101014_0001.he5", counts=(vnir, swir))
    with pytest.warns(MetadataWarning, match=r"VNIR_Cube \(float32\) and SWIR_Cube \(float32\) hold "
                                             r"floating-point values, not the 16-bit counts of an ASI product, so "
                                             r"they are read as stored"):
        scene = open_scene(product.path)
    expected = np.concatenate([vnir[:, VNIR_KEPT, :].transpose(1, 0, 2), swir[:, SWIR_KEPT, :].transpose(1, 0, 2)])
    np.testing.assert_array_equal(scene.values, expected)
    assert scene.attrs["scaled_from"] is None
