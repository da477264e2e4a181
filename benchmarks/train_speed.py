"""Sampler throughput against what training consumes, on the CPU or a CUDA GPU, in one command.

In one process: (1) patches/s the streaming sampler delivers from a store on disk (a 1024 × 1024 ×
200 scene made from real spectra), projected per block as training does, in the main process and, with ``--workers N``, from N DataLoader
worker processes together; (2) samples/s of full training steps (projection, two augmented views,
forward, loss, backward, Adam; bf16 autocast on CUDA) for the ``dense`` (fast preset) and
``resnet`` (paper preset) backbones on ``--device``. Prints the ratio sampler / training. The sampler
is timed on full passes and, where the ``fast`` preset's sample budget is shorter than one pass over
the scene, at the share of each block's pixels that the budget draws (each block then serves fewer
patches: the slower case).

    python benchmarks/train_speed.py [--size 1024] [--steps 20] [--device cpu|cuda] [--workers 0]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_tiled_scene  # noqa: E402
from predict_speed import spectra_source  # noqa: E402

MEASURED_PATCHES = 200_000


def sampler_rate(sampler, workers: int) -> tuple[int, float]:
    """Patches and seconds to draw about :data:`MEASURED_PATCHES` of them after the first batch of each of
    ``workers`` DataLoader processes (0: in this process), so worker start-up is not counted."""
    import torch

    from hsi_cluster.data.sampler import collate_patches

    batches = iter(sampler if workers == 0 else torch.utils.data.DataLoader(
        sampler, batch_size=None, num_workers=workers, collate_fn=collate_patches))
    for _ in range(max(1, workers)):  # the clock starts once every worker is up and has read its first blocks
        next(batches)
    start, patches = time.perf_counter(), 0
    for batch in batches:
        patches += len(batch.patches if workers == 0 else batch["patches"])
        if patches >= MEASURED_PATCHES:
            break
    return patches, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the training steps run")
    parser.add_argument("--workers", type=int, default=0,
                        help="also time the sampler in this many DataLoader worker processes")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.config import config_from_dict, preset_config
    from hsi_cluster.data.sampler import PatchSampler
    from hsi_cluster.device import device_from
    from hsi_cluster.errors import HsiClusterError
    from hsi_cluster.io import ingest
    from hsi_cluster.model.projection import SpectralProjection
    from hsi_cluster.train import fit_spectral_projection, run_length, train

    try:
        device = device_from(args.device)
    except HsiClusterError as error:
        sys.exit(str(error))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    fast = preset_config("fast")
    work = Path(tempfile.mkdtemp(prefix="hsic-train-", dir=args.work))
    try:
        scene = write_tiled_scene(work / "scene.tif", args.size, args.size, source=spectra_source())
        store = ingest(scene, work / "scene.zarr")
        fit = fit_spectral_projection([store], fast.n_components, projection=fast.projection)  # as training projects
        pixel_map = SpectralProjection(fit.mean, fit.std, fit.components).pixel_map()
        probe = PatchSampler(store, patch_size=fast.patch_size, batch_size=fast.batch_size, seed=0)
        fraction = run_length(fast, probe.valid_centres()).fraction
        rates = []
        for share in sorted({1.0, fraction}, reverse=True):
            what = "full passes" if share == 1 else f"the fast budget's share of each block, {share:.1%}"
            for workers in sorted({0, args.workers}):
                sampler = PatchSampler(store, patch_size=fast.patch_size, batch_size=fast.batch_size, seed=0,
                                       fraction=share, transform=pixel_map)
                patches, seconds = sampler_rate(sampler, workers)
                rates.append(patches / seconds)
                print(f"sampler ({what}, {fast.patch_size} × {fast.patch_size} patches of "
                      f"{len(fit.components)} projected channels, "
                      f"{'in the main process' if workers == 0 else f'{workers} DataLoader workers'}): {patches} "
                      f"patches in {seconds:.1f} s = {rates[-1]:.0f} patches/s", flush=True)
        slowest = min(rates)
        for name, preset in (("dense", "fast"), ("resnet", "paper")):
            config = config_from_dict({"steps": args.steps, "batch_size": 512}, base=preset_config(preset))
            step_seconds: list[float] = []

            def progress(step: int, total: int, metrics: dict, step_seconds=step_seconds) -> None:
                step_seconds.append(metrics["step_s"])

            result = train([store], n_clusters=16, output=work / f"{name}.ckpt", config=config, seed=0,
                           device=args.device, overwrite=True, work_dir=work, progress=progress)
            # the first steps warm up the kernels; the run's samples/s would also count the centroid fit. (Step to
            # step, sampling included, see train_scale.py --synthetic: this short run draws ~1 % of each block.)
            step_rate = 512 / statistics.median(step_seconds[2:] or step_seconds)
            components = load_checkpoint(result.checkpoint).payload["spectral"]["components"].shape[0]
            precision = "bf16 autocast" if device.type == "cuda" and config.amp else "fp32"
            print(f"training ({name}, {preset} preset, {components} PCA components, {args.steps} steps of 512, "
                  f"{where}, {precision}): {step_rate:.0f} samples/s (median step); sampler / step: "
                  f"{rates[0] / step_rate:.1f}× in the main process on full passes, {slowest / step_rate:.1f}× the "
                  "slowest",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
