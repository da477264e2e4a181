"""Helpers for the training tests: tiny ingested scenes, a tiny config and plain-numpy references.

Scenes are written as GeoTIFFs with :mod:`tests.helpers` and ingested with a 16-pixel chunk, so a
40 × 37 scene already has 3 × 3 blocks (the last ones shorter) and the sampler's block logic,
shuffle groups and borders are all exercised in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsi_cluster.config import TrainConfig, config_from_dict, preset_config
from hsi_cluster.io import ingest
from hsi_cluster.io.store import Store
from tests import helpers
from tests.helpers import SyntheticScene

NODATA = -9999.0
CHUNK = 16

#: Overrides that make the ``fast`` preset tiny: a dense backbone of depth 2 (5 × 5 patches).
TINY: dict[str, Any] = {"backbone_kwargs": {"width": 8, "depth": 2}, "patch_size": 5, "batch_size": 32,
                        "epochs": 2, "n_components": 4, "head_hidden": 16, "pca_samples": 2000}


#: What turns the tiny dense configuration into a tiny ResNet (one stage of one block). The
#: cluster-balance term keeps a briefly trained ResNet from putting every pixel into one cluster.
TINY_RESNET: dict[str, Any] = {"backbone": "resnet",
                               "backbone_kwargs": {"stem_width": 4, "widths": [8], "blocks_per_stage": 1},
                               "entropy_weight": 1.0}


def tiny_config(backbone: str = "dense", **overrides: Any) -> TrainConfig:
    """The ``fast`` preset shrunk by :data:`TINY` (with :data:`TINY_RESNET` for ``backbone="resnet"``),
    then ``overrides``: the one tiny training configuration of the tests."""
    resnet = TINY_RESNET if backbone == "resnet" else {}
    return config_from_dict({**TINY, **resnet, **overrides}, base=preset_config("fast"))


@dataclass
class IngestedScene:
    """A synthetic GeoTIFF, its ingested store and the plain-numpy truth about it."""

    scene: SyntheticScene
    store: Path
    valid: np.ndarray  # bool (y, x)

    @property
    def cube(self) -> np.ndarray:
        return self.scene.cube

    @property
    def path(self) -> Path:
        return self.scene.path


def structured_cube(bands: int = 12, height: int = 40, width: int = 37, *, seed: int = 0) -> np.ndarray:
    """float32 ``(band, y, x)``: three smooth latent factors with distinct variances plus noise.

    Neighbouring pixels are alike and the spectra have a clear principal-component structure,
    so PCA directions are well separated (unlike white noise).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    factors = np.stack([np.sin(yy / 5.0) * 3.0, np.cos(xx / 4.0) * 2.0, np.sin((yy + xx) / 7.0)])
    loadings = rng.normal(size=(bands, 3))
    cube = 500.0 + 40.0 * np.einsum("bk,kyx->byx", loadings, factors) + rng.normal(0, 2.0, (bands, height, width))
    return np.ascontiguousarray(cube.astype(np.float32))


def make_scene(folder: Path, name: str = "scene", *, bands: int = 12, height: int = 40, width: int = 37,
               seed: int = 0, nan_pixels: int = 0, nodata_pixels: int = 0, cube: np.ndarray | None = None,
               chunk: int = CHUNK, structured: bool = False) -> IngestedScene:
    """Write ``folder/name.tif`` (EPSG:32633, nodata −9999, wavelengths) and ingest it to ``name.zarr``."""
    folder.mkdir(parents=True, exist_ok=True)
    if cube is None:
        if structured:
            cube = structured_cube(bands, height, width, seed=seed)
            rng = np.random.default_rng(seed + 1)
            flat = rng.choice(height * width, size=nan_pixels + nodata_pixels, replace=False)
            rows, cols = np.unravel_index(flat, (height, width))
            cube[:, rows[:nan_pixels], cols[:nan_pixels]] = np.nan
            cube[0, rows[nan_pixels:], cols[nan_pixels:]] = NODATA
        else:
            cube = helpers.synthetic_cube(bands, height, width, "float32", seed=seed, nan_pixels=nan_pixels,
                                          nodata=NODATA, nodata_pixels=nodata_pixels)
    wavelengths, fwhm = helpers.spectral_axis(cube.shape[0])
    scene = helpers.write_geotiff(folder / f"{name}.tif", cube, nodata=NODATA, wavelength_nm=wavelengths,
                                  fwhm_nm=fwhm)
    store = ingest(scene.path, folder / f"{name}.zarr", chunk=chunk)
    return IngestedScene(scene=scene, store=store, valid=helpers.reference_valid_mask(cube, NODATA))


def store_arrays(store: Path) -> tuple[np.ndarray, np.ndarray]:
    """The store's ``data`` (band, y, x) and ``valid`` (y, x), read whole."""
    opened = Store.open(store)
    return opened.data[...], opened.valid[...]


def reference_filled(cube: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``cube`` with every invalid pixel replaced by the band means over valid pixels (plain numpy).

    This is what the network should see at invalid positions inside a valid pixel's patch: a
    neutral spectrum (the scene mean, which the spectral projection maps to zero), never NaN or
    the nodata value.
    """
    mean = cube[:, valid].astype(np.float64).mean(axis=1).astype(cube.dtype)
    return np.where(valid[None], cube, mean[:, None, None])


def reference_patch(padded: np.ndarray, row: int, col: int, patch_size: int) -> np.ndarray:
    """The ``patch_size`` square of ``padded`` (the scene reflect-padded by the halo) centred on (row, col)."""
    return padded[:, row:row + patch_size, col:col + patch_size]


def reflect_padded(cube: np.ndarray, halo: int) -> np.ndarray:
    """The whole scene padded by numpy's ``reflect`` (edge pixel not repeated) — the reference."""
    return np.pad(cube, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
