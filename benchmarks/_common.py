"""Shared helpers for the benchmarks: synthetic large scenes made from real spectra, timing in subprocesses."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.crs import CRS
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "hsi_cluster" / "sample_data" / "salinas_a" / "SalinasA_corrected.hdr"


def parse_sets(pairs: list[str]) -> dict:
    """``--set`` overrides ``key=value`` (``a.b=value`` for a nested key; YAML values) as a config mapping."""
    overrides: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        target = overrides
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    return overrides


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


_REPORT_PEAK = """
import json as _json
for _line in open("/proc/self/status"):
    if _line.startswith("VmHWM:"):
        print(_json.dumps({"peak_rss_mb": int(_line.split()[1]) / 1024}))
"""


def run_measured(code: str, *args: str) -> dict[str, float]:
    """Run Python ``code`` in a fresh interpreter; return wall seconds and that child's own peak RSS (MB).

    The peak is the child's VmHWM read just before it exits (``wait4``'s ru_maxrss would also count
    the parent's pages inherited at fork). JSON lines the child prints are merged into the result.
    """
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + _REPORT_PEAK, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr}")
    result: dict[str, float] = {"wall_s": wall}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def floor_against_ingest(floor: str, ingest: str, scene: Path, store: Path, *, repeats: int, gb: float,
                         prefix: str = "", after_run: Callable[[], str] | None = None) -> tuple[float, float, float]:
    """Time the ``floor`` code (a plain read of ``scene``) and the ``ingest`` code (``scene`` → ``store``) in fresh
    interpreters, interleaved ``repeats`` times after one warm-up read, printing each run (rates on ``gb``
    gigabytes; ``after_run()`` appends to the line). Returns the median floor and ingest seconds and the
    ingest's largest peak RSS (MB)."""
    run_measured(floor, str(scene))  # warm the page cache so both sides read from memory
    floors, ingests, peaks = [], [], []
    for repeat in range(repeats):
        read = run_measured(floor, str(scene))
        result = run_measured(ingest, str(scene), str(store))
        floors.append(read["wall_s"])
        ingests.append(result["wall_s"])
        peaks.append(result["peak_rss_mb"])
        print(f"{prefix}run {repeat + 1}: floor {read['wall_s']:.2f} s ({gb / read['wall_s']:.2f} GB/s), ingest "
              f"{result['wall_s']:.2f} s ({gb / result['wall_s']:.2f} GB/s), ratio {result['wall_s'] / read['wall_s']:.2f}, "
              f"ingest peak RSS {result['peak_rss_mb']:.0f} MB, floor peak RSS {read['peak_rss_mb']:.0f} MB"
              + (f", {after_run()}" if after_run else ""), flush=True)
    return statistics.median(floors), statistics.median(ingests), max(peaks)
