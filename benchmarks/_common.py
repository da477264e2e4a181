"""Shared helpers for the benchmarks: synthetic large scenes made from real spectra, timing in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "hsi_cluster" / "sample_data" / "salinas_a" / "SalinasA_corrected.hdr"


def real_cube() -> np.ndarray:
    """The bundled Salinas-A cube as (band, y, x) int16."""
    with rasterio.open(SAMPLE.with_suffix(".img")) as src:
        return src.read()


def write_tiled_scene(path: Path, height: int, width: int, *, tile: int = 256, source: np.ndarray | None = None) -> Path:
    """Write a tiled, pixel-interleaved GeoTIFF (EPSG:32611, 3.7 m) of ``height × width`` pixels.

    Tiles are mosaics of the real cube with random flips plus a little noise, written one tile at a
    time, so the scene is never held in memory.
    """
    cube = real_cube() if source is None else source
    n_bands = cube.shape[0]
    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=width, height=height, count=n_bands, dtype=cube.dtype.name, tiled=True,
                   blockxsize=tile, blockysize=tile, interleave="pixel", crs=CRS.from_epsg(32611),
                   transform=from_origin(600000.0, 4_100_000.0, 3.7, 3.7), BIGTIFF="YES")
    reps = (1, -(-tile // cube.shape[1]), -(-tile // cube.shape[2]))
    with rasterio.open(path, "w", **profile) as dst:
        for _, window in dst.block_windows(1):
            mosaic = np.tile(cube[:, :: rng.choice([-1, 1]), :: rng.choice([-1, 1])], reps)
            block = mosaic[:, : window.height, : window.width]
            noise = rng.integers(-3, 4, size=block.shape, dtype=np.int16)
            dst.write((block + noise).astype(cube.dtype), window=window)
    return path


def run_measured(code: str, *args: str) -> dict[str, float]:
    """Run Python ``code`` in a fresh interpreter; return wall seconds and that child's peak RSS (MB).

    The child's last stdout line, if any, is JSON merged into the result.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{stderr}")
    result = {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}
    if stdout.strip():
        result.update(json.loads(stdout.strip().splitlines()[-1]))
    return result
