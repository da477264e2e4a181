"""Helpers for the tiled-inference tests: tiny trained models, holey scenes, raster readers.

Models are trained for a handful of optimiser steps with the ``fast`` preset shrunk to a 5 × 5
patch (dense backbone of depth 2, or a one-stage ResNet), so that every test module trains each
backbone once in a few seconds on two CPU cores.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from hsi_cluster.checkpoint import load_checkpoint
from hsi_cluster.model.sscc import SSCC
from hsi_cluster.predict import NO_LABEL, label_patches
from hsi_cluster.train import prepare_store, train
from tests import helpers
from tests.train_helpers import structured_cube, tiny_config

PATCH = 5
K = 4
NODATA = -9999.0
#: Label value written for invalid pixels (uint8 labels: the dtype's maximum).
LABEL_NODATA = 255

#: The tiny training configuration (:func:`tests.train_helpers.tiny_config`) with the batch and length
#: the prediction tests' models are trained with.
PREDICT_TRAINING: dict[str, Any] = {"batch_size": 64, "epochs": 1}


@dataclass
class TrainedModel:
    """A checkpoint trained on ``scene`` and the store it was trained from."""

    checkpoint: Path
    scene: Path
    store: Path
    backbone: str

    def build(self) -> SSCC:
        return load_checkpoint(self.checkpoint).build_model()

    def reference_labels(self, store: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Patch-by-patch labels and confidence of ``store`` (default: the training store)."""
        return label_patches(self.build(), store or self.store, patch_size=PATCH, batch_size=2048)


def train_tiny(scene: Path, output: Path, work_dir: Path, *, backbone: str = "dense", n_clusters: int = K,
               seed: int = 0, **overrides: Any) -> TrainedModel:
    """Train a tiny model on ``scene`` (CPU) and return it with its store."""
    train([scene], n_clusters=n_clusters, output=output, config=tiny_config(backbone, **{**PREDICT_TRAINING, **overrides}), seed=seed,
          device="cpu", overwrite=True, work_dir=work_dir)
    return TrainedModel(checkpoint=output, scene=scene, store=prepare_store(scene, work_dir), backbone=backbone)


def holey_cube(bands: int = 12, height: int = 70, width: int = 53, *, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A structured float32 cube with NaN pixels, nodata pixels and a nodata border.

    Returns:
        ``(cube, valid)``: the cube ``(band, y, x)`` and the plain-numpy valid mask ``(y, x)``.
    """
    cube = structured_cube(bands, height, width, seed=seed)
    rng = np.random.default_rng(seed + 10)
    cube[:, :, :2] = NODATA  # a nodata border: the two leftmost columns, every band
    cube[:, -1, :] = np.nan  # and the last row
    cube[:, :10, -10:] = np.nan  # a corner with no valid pixel (whole 8 × 8 tiles of nothing)
    rows = rng.integers(1, height - 1, 12)
    cols = rng.integers(2, width, 12)
    cube[:, rows[:4], cols[:4]] = np.nan  # NaN in every band
    cube[rng.integers(bands), rows[4:8], cols[4:8]] = np.nan  # NaN in one band
    cube[0, rows[8:], cols[8:]] = NODATA  # nodata in one band
    cube[3, 10, 20] = np.inf
    return cube, helpers.reference_valid_mask(cube, NODATA)


def write_scene(path: Path, cube: np.ndarray, *, nodata: float | None = NODATA, shift_nm: float = 0.0,
                wavelengths: bool = True, **options: Any) -> helpers.SyntheticScene:
    """A GeoTIFF (EPSG:32633, 30 m) with the standard spectral axis of ``cube``'s band count (+ ``shift_nm``)."""
    wl, fw = helpers.spectral_axis(cube.shape[0])
    spectral = {"wavelength_nm": wl + shift_nm, "fwhm_nm": fw} if wavelengths else {}
    return helpers.write_geotiff(path, cube, nodata=nodata, **spectral, **options)


def read_raster(path: Path, band: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """A band of a raster and a summary of its metadata."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(band), {
                "crs": src.crs, "transform": src.transform, "shape": (src.height, src.width), "dtype": src.dtypes[0],
                "nodata": src.nodata, "profile": dict(src.profile), "tags": src.tags(),
                "structure": src.tags(ns="IMAGE_STRUCTURE"), "descriptions": src.descriptions,
                "overviews": src.overviews(band), "block_shapes": src.block_shapes, "driver": src.driver,
                "colormap": src.colormap(band) if src.dtypes[0] in ("uint8", "uint16") else None,
            }


def as_label_map(labels: np.ndarray) -> np.ndarray:
    """Patch-by-patch labels (int32, :data:`NO_LABEL` on invalid pixels) as the raster writes them (uint8, 255)."""
    return np.where(labels == NO_LABEL, LABEL_NODATA, labels).astype(np.uint8)


def mismatches(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> int:
    """Number of valid pixels where two label maps differ."""
    return int((a[valid] != b[valid]).sum())


def partial_store(output: Path) -> Path:
    """Where ``predict`` keeps the finished tiles of ``output`` while it runs."""
    return output.with_name(output.name + ".partial.zarr")


class CountingArray:
    """A read-only ``(band, y, x)`` array that counts the values read through it (for read-once tests)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.shape = values.shape
        self.dtype = values.dtype
        self.ndim = values.ndim
        self.read = 0

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.values[key]
        self.read += out.size
        return out


def untrained_checkpoint(store: Path, output: Path, *, n_clusters: int = K, n_components: int = 3,
                         wavelength: list[float] | None = None, seed: int = 0) -> Path:
    """A checkpoint of an untrained dense model (5 × 5 patches) whose projection is fitted on ``store``.

    For tests that need a model without the cost of training (any K, any dtype of scene).
    """
    import torch

    from hsi_cluster.checkpoint import make_payload, save_checkpoint
    from hsi_cluster.train import fit_spectral_projection

    fit = fit_spectral_projection([store], n_components, n_samples=500, seed=seed)
    torch.manual_seed(seed)
    model = SSCC.build(fit.mean, fit.std, fit.components, n_clusters=n_clusters,
                       backbone_kwargs={"width": 4, "depth": PATCH // 2}, head_hidden=8)
    spectral = {"mean": torch.from_numpy(fit.mean), "std": torch.from_numpy(fit.std),
                "components": torch.from_numpy(fit.components)}
    config = tiny_config(**{**PREDICT_TRAINING, "n_components": n_components}).to_dict()
    return save_checkpoint(make_payload(model.eval(), train_config=config, spectral=spectral, scenes=[],
                                        wavelength=wavelength, complete=True), output)
