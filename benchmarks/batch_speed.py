"""Batch throughput on dask.distributed: scaling with workers, and the overhead of the batch layer.

Writes N scenes from real spectra (Indian Pines tiled with random flips, 200 bands, int16 tiled
GeoTIFF), trains a ``fast``-preset model for a few steps (speed does not depend on accuracy), then
measures in one run:

1. single-scene ``predict_scene`` of every scene, one after the other, in this process (the sum of
   their wall times is the baseline);
2. ``run_batch`` over the same scenes on a LocalCluster of 1 worker (all cores), then of 2 workers
   (one core each): total wall time including cluster start-up, scenes/min, Mpix/s;
3. the sum of ``hsicluster predict`` wall times run as separate commands (what a user would
   otherwise script), for reference.

Labels of the batch are compared pixel by pixel with the single predicts: with one thread per worker
the float sums of oneDNN run in another order than with two, which may flip near-ties.

Prints batch(1 worker) / sum(single predicts) — target ≤ 1.15 — and the 2-worker speed-up.

    python benchmarks/batch_speed.py [--scenes 6] [--size 1024] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_tiled_scene  # noqa: E402
from predict_speed import crop, spectra_source  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024, help="side of each scene in pixels")
    parser.add_argument("--tiles", type=int, default=512)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np

    from hsi_cluster.batch import run_batch
    from hsi_cluster.config import config_from_dict, preset_config
    from hsi_cluster.predict import predict_scene
    from hsi_cluster.train import train

    work = Path(tempfile.mkdtemp(prefix="hsic-batch-", dir=args.work))
    try:
        source = spectra_source()
        (work / "scenes").mkdir()
        scenes = []
        for index in range(args.scenes):
            rng = np.random.default_rng(index)
            flipped = source[:, ::-1] if rng.random() < 0.5 else source
            scenes.append(write_tiled_scene(work / "scenes" / f"scene{index}.tif", args.size, args.size,
                                            source=np.ascontiguousarray(flipped)))
        megapixels = args.scenes * args.size * args.size / 1e6
        print(f"{args.scenes} scenes of {args.size}×{args.size}×{source.shape[0]} int16 "
              f"({sum(s.stat().st_size for s in scenes) / 1e9:.2f} GB, {megapixels:.1f} Mpix)", flush=True)
        small = crop(scenes[0], work / "train.tif", 256)
        config = config_from_dict({"steps": 3, "batch_size": 64}, base=preset_config("fast"))
        model = train([small], n_clusters=16, output=work / "model.ckpt", config=config, seed=0, device="cpu",
                      overwrite=True, work_dir=work).checkpoint

        predict_scene(small, model, work / "warm.tif", tiles=args.tiles, device="cpu", overwrite=True)  # warm-up
        singles = []
        (work / "single").mkdir()
        for scene in scenes:
            start = time.perf_counter()
            predict_scene(scene, model, work / "single" / f"{scene.stem}.tif", tiles=args.tiles, device="cpu",
                          overwrite=True)
            singles.append(time.perf_counter() - start)
        single_total = sum(singles)
        print(f"single-scene predict_scene, one after the other: {single_total:.1f} s "
              f"({megapixels / single_total:.3f} Mpix/s; per scene {min(singles):.1f}–{max(singles):.1f} s)",
              flush=True)

        totals = {}
        for workers in (1, 2):
            out = work / f"batch{workers}"
            start = time.perf_counter()
            result = run_batch([str(work / "scenes" / "*.tif")], model, out, tiles=args.tiles, workers=workers)
            totals[workers] = time.perf_counter() - start
            assert len(result.done) == args.scenes, result.failed
            differing = sum(int((_read(Path(r["output"])) != _read(work / "single" / Path(r["source"]).name)).sum())
                            for r in result.records)  # the single outputs are named like their scenes
            inside = sum(r["seconds"] for r in result.records)
            print(f"batch, {workers} worker(s): {totals[workers]:.1f} s incl. cluster start-up, "
                  f"{args.scenes / totals[workers] * 60:.1f} scenes/min, {megapixels / totals[workers]:.3f} Mpix/s; "
                  f"predict inside the workers {inside:.1f} s in all; labels differing from the single predicts: "
                  f"{differing} of {megapixels * 1e6:.0f} pixels", flush=True)

        cli_total = 0.0
        for scene in scenes:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hsi_cluster", "predict", str(scene), "-m", str(model), "-o",
                            str(work / "cli.tif"), "--tiles", str(args.tiles), "--device", "cpu", "--overwrite",
                            "-q"], check=True)
            cli_total += time.perf_counter() - start
        print(f"hsicluster predict as {args.scenes} separate commands: {cli_total:.1f} s", flush=True)
        print(f"overhead: batch(1 worker) / sum(single predicts) = {totals[1] / single_total:.2f} (target ≤ 1.15); "
              f"batch(1 worker) / separate commands = {totals[1] / cli_total:.2f}; "
              f"2 workers vs 1: {totals[1] / totals[2]:.2f}× faster")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read(path: Path):
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


if __name__ == "__main__":
    main()
