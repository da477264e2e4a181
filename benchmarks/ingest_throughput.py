"""Ingest throughput against the I/O floor, and peak memory.

Writes a ≥ 1 GB tiled GeoTIFF made from the bundled Salinas-A spectra, then alternates, in fresh
subprocesses: (a) the floor — a plain rasterio block-by-block read of every band of the file —
and (b) ``hsicluster ingest`` of the same file into a Zarr store. Prints each run, the medians,
the ratio ingest / floor (target ≤ 2) and the ingest's peak RSS (target < 600 MB).

    python benchmarks/ingest_throughput.py [--rows 2048 --cols 1280 --repeats 3 --work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import floor_against_ingest, write_tiled_scene  # noqa: E402

FLOOR = """
import sys, rasterio
with rasterio.open(sys.argv[1]) as src:
    for _, window in src.block_windows(1):
        src.read(window=window)
"""

INGEST = """
import sys
from hsi_cluster.io import ingest
ingest(sys.argv[1], sys.argv[2], overwrite=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsic-bench-", dir=args.work))
    try:
        scene = write_tiled_scene(work / "scene.tif", args.rows, args.cols)
        size_gb = scene.stat().st_size / 1e9
        print(f"scene: {args.rows}×{args.cols}×204 int16 GeoTIFF, {size_gb:.2f} GB on disk")
        store = work / "scene.zarr"

        def stored() -> str:
            return f"store {sum(f.stat().st_size for f in store.rglob('*') if f.is_file()) / 1e9:.2f} GB"

        floor_s, ingest_s, peak = floor_against_ingest(FLOOR, INGEST, scene, store, repeats=args.repeats, gb=size_gb,
                                                       after_run=stored)
        print(f"median: floor {floor_s:.2f} s, ingest {ingest_s:.2f} s, ratio ingest/floor {ingest_s / floor_s:.2f} "
              f"(target ≤ 2.0), peak RSS {peak:.0f} MB (target < 600 MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
