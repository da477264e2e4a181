"""Sampler throughput vs training consumption, and training speed of both backbones (CPU).

In one process: (1) patches/s the streaming sampler delivers from a store on disk (a 1024 × 1024 ×
200 scene made from real spectra, or Indian Pines itself with ``--scene``); (2) samples/s of full
training steps (projection, two augmented views, forward, loss, backward, Adam) for the ``dense``
(fast preset) and ``resnet`` (paper preset) backbones. Prints the ratio sampler / training. The
sampler is timed on full passes and, where the ``fast`` preset's sample budget is shorter than one
pass over the scene, at the share of each block's pixels that the budget draws (each block is read
whole for fewer patches: the slower case).

    python benchmarks/train_speed.py [--size 1024] [--steps 10]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_tiled_scene  # noqa: E402
from predict_speed import spectra_source  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.config import config_from_dict, preset_config
    from hsi_cluster.data.sampler import PatchSampler
    from hsi_cluster.io import ingest
    from hsi_cluster.train import run_length, train

    work = Path(tempfile.mkdtemp(prefix="hsic-train-", dir=args.work))
    try:
        scene = write_tiled_scene(work / "scene.tif", args.size, args.size, source=spectra_source())
        store = ingest(scene, work / "scene.zarr")
        sampler = PatchSampler(store, patch_size=11, batch_size=512, seed=0)
        fraction = run_length(preset_config("fast"), sampler.valid_centres()).fraction
        rates = []
        for share in sorted({1.0, fraction}, reverse=True):
            sampler = PatchSampler(store, patch_size=11, batch_size=512, seed=0, fraction=share)
            start, patches = time.perf_counter(), 0
            for batch in sampler:
                patches += len(batch.patches)
                if patches >= 100_000:
                    break
            rates.append(patches / (time.perf_counter() - start))
            what = "full passes" if share == 1 else f"the fast budget's share of each block, {share:.1%}"
            print(f"sampler ({what}): {patches} patches in {time.perf_counter() - start:.1f} s = {rates[-1]:.0f} "
                  f"patches/s (from the store on disk, {torch.get_num_threads()} torch threads)", flush=True)
        sampler_rate = min(rates)
        for name, preset in (("dense", "fast"), ("resnet", "paper")):
            config = config_from_dict({"steps": args.steps, "batch_size": 512}, base=preset_config(preset))
            result = train([store], n_clusters=16, output=work / f"{name}.ckpt", config=config, seed=0,
                           device="cpu", overwrite=True, work_dir=work)
            rate = result.samples_per_second
            components = load_checkpoint(result.checkpoint).payload["spectral"]["components"].shape[0]
            print(f"training ({name}, {preset} preset, {components} PCA components, {args.steps} steps of 512): "
                  f"{rate:.0f} samples/s; sampler / training = {sampler_rate / rate:.1f}×", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
