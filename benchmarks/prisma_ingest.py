"""PRISMA L2D ingest throughput against the h5py floor, and peak memory.

Writes a synthetic PRISMA L2D ``.he5`` file of a real product's size — 1000 × 1000 pixels, a VNIR cube of 66
and a SWIR cube of 173 uint16 bands, each stored (lines, bands, samples) under the real dataset and root
attribute names — made from the bundled Salinas-A spectra (resampled onto PRISMA's band centres, mirrored
tiles, a little noise, fill corners outside a diamond-shaped swath). Whether ASI's files are HDF5-chunked and
compressed is not documented in anything found, so both layouts are measured: ``contiguous`` and ``gzip``
(chunks of one whole line of all bands, ``(1, bands, samples)``, deflate level 4). For each layout it then
alternates, in fresh subprocesses: (a) the floor — a plain h5py read of both cubes, 64 lines at a time — and
(b) ``hsicluster ingest`` of the file into a Zarr store (:func:`hsi_cluster.io.ingest`). Prints each run, the
medians, the ratio ingest / floor (target ≤ 2.5) and the ingest's peak RSS.

    python benchmarks/prisma_ingest.py [--lines 1000 --samples 1000 --layouts contiguous gzip --repeats 3 --work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import floor_against_ingest, real_cube  # noqa: E402

VNIR_BANDS, SWIR_BANDS = 66, 173
FIELDS = "HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields"
LAYOUTS = ("contiguous", "gzip")
BLOCK_LINES = 64

FLOOR = f"""
import sys, h5py
with h5py.File(sys.argv[1], "r") as handle:
    cubes = [handle["{FIELDS}/VNIR_Cube"], handle["{FIELDS}/SWIR_Cube"]]
    for start in range(0, cubes[0].shape[0], {BLOCK_LINES}):
        for cube in cubes:
            cube[start:start + {BLOCK_LINES}]
"""

INGEST = """
import sys
from hsi_cluster.io import ingest
ingest(sys.argv[1], sys.argv[2], overwrite=True)
"""


def band_centres() -> tuple[np.ndarray, np.ndarray]:
    """PRISMA-like ``List_Cw_Vnir`` / ``List_Cw_Swir``: descending, three / two unused bands at wavelength 0."""
    vnir = np.concatenate([np.zeros(3), np.linspace(1010.0, 402.0, VNIR_BANDS - 3)])
    swir = np.concatenate([np.linspace(2497.0, 920.0, SWIR_BANDS - 2), np.zeros(2)])
    return vnir.astype(np.float32), swir.astype(np.float32)


def write_prisma_l2d(path: Path, lines: int, samples: int, layout: str) -> Path:
    """Write the synthetic product one block of lines at a time (never the whole cube in memory)."""
    source = real_cube().astype(np.float32) / 10_000  # (204, y, x), ~reflectance
    source_cw = np.linspace(400.0, 2500.0, source.shape[0])
    spectra = source.reshape(source.shape[0], -1).T  # (pixels, 204)
    rows = np.pad(np.arange(source.shape[1]), (0, max(0, lines - source.shape[1])), mode="symmetric")[:lines]
    cols = np.pad(np.arange(source.shape[2]), (0, max(0, samples - source.shape[2])), mode="symmetric")[:samples]
    pixel = rows[:, None] * source.shape[2] + cols[None, :]  # mirrored tiles of the source image
    yy, xx = np.mgrid[:lines, :samples]
    fill = np.abs(yy - lines / 2) / lines + np.abs(xx - samples / 2) / samples > 0.8  # corners outside the swath
    scale = {"Vnir": (0.0, 0.9), "Swir": (0.01, 0.8)}
    vnir_cw, swir_cw = band_centres()
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        handle.attrs.update({
            "Processing_Level": np.bytes_("2D"), "Epsg_Code": np.int32(32633),
            "Product_ULcorner_easting": 500_015.0, "Product_ULcorner_northing": 4_100_985.0,
            "Product_LRcorner_easting": 500_015.0 + 30 * (samples - 1),
            "Product_LRcorner_northing": 4_100_985.0 - 30 * (lines - 1),
            "List_Cw_Vnir": vnir_cw, "List_Cw_Vnir_Flags": (vnir_cw > 0).astype(np.int8),
            "List_Fwhm_Vnir": np.where(vnir_cw > 0, 10.0, 0.0).astype(np.float32),
            "List_Cw_Swir": swir_cw, "List_Cw_Swir_Flags": (swir_cw > 0).astype(np.int8),
            "List_Fwhm_Swir": np.where(swir_cw > 0, 11.0, 0.0).astype(np.float32),
            **{f"L2Scale{name}{end}": np.float32(value) for name, (low, high) in scale.items()
               for end, value in (("Min", low), ("Max", high))}})
        for name, centres in (("Vnir", vnir_cw), ("Swir", swir_cw)):
            low, high = scale[name]
            library = np.stack([np.interp(centres, source_cw, spectrum) for spectrum in spectra])  # (pixels, bands)
            library = np.clip((library - low) / (high - low) * 65535, 1, 65535)
            library[:, centres == 0] = 0
            shape = (lines, centres.size, samples)
            options = {} if layout == "contiguous" else {"chunks": (1, centres.size, samples), "compression": "gzip",
                                                          "compression_opts": 4}
            cube = handle.create_dataset(f"{FIELDS}/{name.upper()}_Cube", shape=shape, dtype=np.uint16, **options)
            for start in range(0, lines, BLOCK_LINES):
                stop = min(start + BLOCK_LINES, lines)
                block = library[pixel[start:stop]]  # (block lines, samples, bands)
                noise = rng.integers(-3, 4, size=block.shape)
                block = np.where(library[pixel[start:stop]] > 0, np.clip(block + noise, 1, 65535), 0)
                block[fill[start:stop]] = 0
                cube[start:stop] = block.astype(np.uint16).transpose(0, 2, 1)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsic-prisma-", dir=args.work))
    raw_gb = args.lines * args.samples * (VNIR_BANDS + SWIR_BANDS) * 2 / 1e9
    try:
        for layout in args.layouts:
            scene = write_prisma_l2d(work / f"PRS_L2D_STD_{layout}.he5", args.lines, args.samples, layout)
            size_gb = scene.stat().st_size / 1e9
            print(f"{layout}: {args.lines}×{args.samples} PRISMA L2D, {VNIR_BANDS} VNIR + {SWIR_BANDS} SWIR uint16 "
                  f"bands, (lines, bands, samples), {raw_gb:.2f} GB of counts, {size_gb:.2f} GB on disk")
            floor_s, ingest_s, peak = floor_against_ingest(FLOOR, INGEST, scene, work / "scene.zarr",
                                                           repeats=args.repeats, gb=raw_gb, prefix="  ")
            print(f"  {layout} median: floor {floor_s:.2f} s, ingest {ingest_s:.2f} s, ratio ingest/floor "
                  f"{ingest_s / floor_s:.2f} (target ≤ 2.5), ingest peak RSS {peak:.0f} MB")
            scene.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
