"""Shared fixtures: tiny synthetic scenes (via :mod:`tests.helpers`) and the real benchmark scenes."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import helpers
from tests.helpers import SyntheticScene

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for the tests of a module that asks for it (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``); the previous setting is restored afterwards.

    Tiny networks gain nothing from intra-op threads: on two cores shared with other jobs, two OpenMP
    threads made their many tiny convolutions several (up to ten) times slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (relative to the repository root); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark scenes not found at {SHARED_DATA} (the ../shared/data folder beside the "
                    "repository); these tests need Indian Pines and Salinas-A there")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data_optional() -> Path | None:
    """``../shared/data`` when it holds Indian Pines, else None (for tests that only add a real scene)."""
    return SHARED_DATA if (SHARED_DATA / "indian_pines" / "Indian_pines_corrected.npy").is_file() else None


def _shared_file(shared_data: Path, relative: str) -> Path:
    path = shared_data / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing from ../shared/data")
    return path


@pytest.fixture(scope="session")
def indian_pines(shared_data: Path) -> Path:
    """The Indian Pines cube (.npy, y × x × band) in ../shared/data."""
    return _shared_file(shared_data, "indian_pines/Indian_pines_corrected.npy")


@pytest.fixture(scope="session")
def salinas_a(shared_data: Path) -> Path:
    """The Salinas-A ENVI binary in ../shared/data."""
    return _shared_file(shared_data, "salinas_a/SalinasA_corrected.img")


@pytest.fixture(scope="session")
def sample_salinas_a() -> Path:
    """The Salinas-A copy shipped inside the package (always present)."""
    return Path(str(importlib.resources.files("hsi_cluster.sample_data") / "salinas_a" / "SalinasA_corrected.img"))


@pytest.fixture
def geotiff(tmp_path: Path) -> SyntheticScene:
    """float32 GeoTIFF, EPSG:32633, 30 m, nodata -9999, NaN/Inf/nodata pixels, wavelengths in µm."""
    wl, fw = helpers.spectral_axis(6)
    cube = helpers.synthetic_cube(6, 21, 23, "float32", seed=1, nan_pixels=6, inf_pixels=3, nodata=-9999.0,
                                  nodata_pixels=5)
    return helpers.write_geotiff(tmp_path / "scene.tif", cube, nodata=-9999.0, wavelength_nm=wl, fwhm_nm=fw,
                                 wavelength_units="micrometers")


@pytest.fixture
def envi_bsq(tmp_path: Path) -> SyntheticScene:
    """int16 ENVI BSQ with map info (EPSG:32633), µm wavelengths, fwhm, bbl, data ignore value."""
    wl, fw = helpers.spectral_axis(7)
    cube = helpers.synthetic_cube(7, 19, 22, "int16", seed=2, nodata=-9999, nodata_pixels=4)
    return helpers.write_envi(tmp_path / "scene.img", cube, interleave="bsq", wavelength_nm=wl, fwhm_nm=fw,
                              wavelength_units="Micrometers", bbl=[1, 1, 0, 1, 1, 0, 1], nodata=-9999)


@pytest.fixture
def npy_scene(tmp_path: Path) -> SyntheticScene:
    return helpers.write_npy(tmp_path / "cube.npy", helpers.synthetic_cube(5, 17, 13, "uint16", seed=3))


@pytest.fixture
def scene_factory(tmp_path: Path) -> Callable[..., SyntheticScene]:
    """``make(fmt, cube=None, **options)`` → a synthetic scene of format ``fmt`` under ``tmp_path``.

    ``fmt`` is one of :func:`tests.helpers.iter_formats`. Without ``cube``, a small float32 cube
    with wavelengths is used.
    """
    counter = iter(range(10_000))

    def make(fmt: str, cube: np.ndarray | None = None, **options) -> SyntheticScene:
        n = next(counter)
        if cube is None:
            cube = helpers.synthetic_cube(6, 18, 20, "float32", seed=n)
        wl, fw = helpers.spectral_axis(cube.shape[0])
        if fmt == "geotiff":
            return helpers.write_geotiff(tmp_path / f"s{n}.tif", cube,
                                         **{"wavelength_nm": wl, "fwhm_nm": fw, **options})
        if fmt == "geotiff-tiled":
            return helpers.write_geotiff(tmp_path / f"s{n}.tif", cube,
                                         **{"wavelength_nm": wl, "fwhm_nm": fw, "tiled": True, **options})
        if fmt.startswith("envi-"):
            return helpers.write_envi(tmp_path / f"s{n}.img", cube, interleave=fmt[5:],
                                      **{"wavelength_nm": wl, "fwhm_nm": fw, **options})
        if fmt == "npy":
            return helpers.write_npy(tmp_path / f"s{n}.npy", cube)
        if fmt == "mat-v5":
            return helpers.write_mat_v5(tmp_path / f"s{n}.mat", cube, **options)
        if fmt == "mat-v7.3":
            return helpers.write_mat_v73(tmp_path / f"s{n}.mat", cube, **options)
        if fmt == "netcdf":  # bands last, as many NetCDF products store them
            path = helpers.write_netcdf(tmp_path / f"s{n}.nc", {"cube": (("y", "x", "band"), cube.transpose(1, 2, 0))})
            return helpers.SyntheticScene(path=path, cube=cube)
        if fmt == "emit":  # a swath mirrored onto a map of the same size by its lookup table
            return helpers.write_emit_netcdf(tmp_path / f"s{n}.nc", cube, map_shape=cube.shape[1:], offset=(0, 0))
        raise ValueError(f"unknown synthetic format {fmt!r}")

    return make
