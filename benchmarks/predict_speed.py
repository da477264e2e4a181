"""Tiled inference speed and memory: dense vs patch-by-patch, vs k-means, resnet, RSS flatness.

Builds scenes from real spectra (Indian Pines tiled with random flips, 200 bands, int16 GeoTIFF,
written tile by tile), trains small models for a few steps (speed does not depend on accuracy), and
measures in one run:

1. dense fully convolutional ``predict`` of the whole N × N scene: Mpix/s;
2. patch-by-patch evaluation of the same dense weights on a sub-window: Mpix/s, the speed-up of 1,
   and the share of identical labels on that window;
3. scikit-learn ``KMeans.predict`` over the same scene read tile by tile the same way: Mpix/s;
4. the ``resnet`` backbone through ``predict`` on a sub-window: Mpix/s;
5. peak RSS of ``hsicluster predict`` in subprocesses for a small and a large scene.

    python benchmarks/predict_speed.py [--size 2048] [--rss-sizes 1024 4096] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, run_measured, write_tiled_scene  # noqa: E402

INDIAN_PINES = REPO.parent / "shared" / "data" / "indian_pines" / "Indian_pines_corrected.npy"

PREDICT = """
import sys
from hsi_cluster.predict import predict_scene
predict_scene(sys.argv[1], sys.argv[2], sys.argv[3], tiles=512, device="cpu", overwrite=True)
"""


def spectra_source() -> np.ndarray:
    """Indian Pines as (band, y, x) int16 if available, else the bundled Salinas-A."""
    if INDIAN_PINES.exists():
        return np.load(INDIAN_PINES).transpose(2, 0, 1).astype(np.int16)
    from _common import real_cube

    return real_cube()


def crop(scene: Path, out: Path, size: int) -> Path:
    with rasterio.open(scene) as src:
        profile = src.profile | {"width": size, "height": size}
        with rasterio.open(out, "w", **profile) as dst:
            for _, window in dst.block_windows(1):
                dst.write(src.read(window=window), window=window)
    return out


def multiply_adds(model, x) -> int:
    """Multiply-accumulates of every Conv2d and Linear layer in ``model.predict_patches(x)`` or a dense
    forward of ``x``, counted from the layers' output sizes (hooks; no timing involved)."""
    import torch

    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * module.in_channels // module.groups * kh * kw
        else:
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model.predict_patches(x) if x.shape[-1] == model.patch_size else model.predict_dense(x)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="side of the throughput scene")
    parser.add_argument("--window", type=int, default=128, help="side of the patch-by-patch / resnet sub-window")
    parser.add_argument("--resnet-window", type=int, default=64, help="side of the resnet sub-scene")
    parser.add_argument("--rss-sizes", type=int, nargs=2, default=[1024, 4096])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    from sklearn.cluster import KMeans

    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.config import config_from_dict, preset_config
    from hsi_cluster.geo import Window as PixelWindow
    from hsi_cluster.io import open_scene
    from hsi_cluster.io.store import read_haloed
    from hsi_cluster.predict import predict_scene
    from hsi_cluster.train import train

    work = Path(tempfile.mkdtemp(prefix="hsic-pred-", dir=args.work))
    try:
        source = spectra_source()
        n_bands = source.shape[0]
        max_side = max(args.size, *args.rss_sizes)
        big = write_tiled_scene(work / "big.tif", max_side, max_side, source=source)
        scene = big if args.size == max_side else crop(big, work / "scene.tif", args.size)
        print(f"scene {args.size}×{args.size}×{n_bands} int16 ({scene.stat().st_size / 1e9:.2f} GB)", flush=True)
        small = crop(big, work / "train.tif", 256)
        models = {}
        for name, overrides in (("dense", {}), ("resnet", {"backbone": "resnet", "backbone_kwargs": {}})):
            config = config_from_dict({"steps": 3, "batch_size": 64, **overrides}, base=preset_config("fast"))
            models[name] = train([small], n_clusters=16, output=work / f"{name}.ckpt", config=config, seed=0,
                                 device="cpu", overwrite=True, work_dir=work).checkpoint

        # 1. dense, whole scene
        result = predict_scene(scene, models["dense"], work / "labels.tif", tiles=512, device="cpu", overwrite=True)
        dense_rate = result.megapixels_per_second
        print(f"dense predict: {result.seconds:.1f} s, {dense_rate:.3f} Mpix/s", flush=True)

        # 2. patch by patch on a sub-window, same weights, same reading path
        checkpoint = load_checkpoint(models["dense"])
        model = checkpoint.build_model()
        halo, p, w = checkpoint.patch_size // 2, checkpoint.patch_size, args.window
        import torch

        def patch_by_patch(at: int) -> tuple[float, float, float]:
            """Seconds to label a w × w window patch by patch and densely (the model alone, the window read
            before), and the share of the patch labels equal to those ``predict`` wrote."""
            padded = np.asarray(read_haloed(open_scene(scene).data, PixelWindow(at, at, w, w), halo))
            with rasterio.open(work / "labels.tif") as out:
                dense_labels = out.read(1, window=Window(at, at, w, w))
            start = time.perf_counter()
            patches = torch.from_numpy(padded.astype(np.float32)).unfold(1, p, 1).unfold(2, p, 1)
            patches = patches.permute(1, 2, 0, 3, 4).reshape(w * w, n_bands, p, p)
            labels = torch.cat([model.predict_patches(patches[s:s + 1024])[0] for s in range(0, w * w, 1024)])
            patch_s = time.perf_counter() - start
            start = time.perf_counter()
            model.tile_probabilities(padded, patch_size=p, device=torch.device("cpu")).argmax(dim=0)
            return patch_s, time.perf_counter() - start, float((labels.numpy().reshape(w, w) == dense_labels).mean())

        patch_by_patch(0)  # warm-up: oneDNN creates its primitives on the first calls
        runs = [patch_by_patch(at) for at in np.linspace(0, args.size - w, 3).astype(int)]
        patch_seconds = float(np.median([seconds for seconds, _, _ in runs]))
        model_seconds = float(np.median([seconds for _, seconds, _ in runs]))
        same = min(share for _, _, share in runs)
        patch_rate = w * w / 1e6 / patch_seconds
        print(f"patch-by-patch (median of 3 windows of {w}×{w}, after a warm-up): {patch_seconds:.2f} s, "
              f"{patch_rate:.4f} Mpix/s; dense predict (reading and writing included) is {dense_rate / patch_rate:.1f}× "
              f"faster; identical labels {100 * same:.3f} % (lowest of the windows)", flush=True)
        print(f"dense model alone on the same windows: {model_seconds:.2f} s, {patch_seconds / model_seconds:.1f}× "
              "faster than patch by patch", flush=True)
        tile = 512  # arithmetic per labelled pixel: one patch vs an interior pixel of a tile with its halo
        per_patch = multiply_adds(model.eval(), torch.zeros(1, n_bands, p, p))
        per_dense = multiply_adds(model, torch.zeros(1, n_bands, tile + 2 * halo, tile + 2 * halo)) / tile**2
        print(f"arithmetic per pixel (Conv2d + Linear multiply-adds): patch {per_patch / 1e6:.2f} M, dense "
              f"{per_dense / 1e6:.3f} M → ratio {per_patch / per_dense:.1f}× (the speed-up the dense path can reach "
              f"if both run at the same FLOP rate; measured {patch_seconds / model_seconds:.1f}× model against model, "
              f"{patch_seconds / model_seconds / (per_patch / per_dense):.2f} of the ratio)", flush=True)

        # 3. k-means predict over the same scene read tile by tile
        with rasterio.open(scene) as src:
            sample = src.read(window=Window(0, 0, 256, 256)).reshape(n_bands, -1).T.astype(np.float32)
            mean, std = sample.mean(0), sample.std(0) + 1e-6
            kmeans = KMeans(16, n_init=1, random_state=0).fit((sample - mean) / std)
            start = time.perf_counter()
            for _, window in src.block_windows(1):
                block = src.read(window=window).reshape(n_bands, -1).T.astype(np.float32)
                kmeans.predict((block - mean) / std)
            kmeans_rate = args.size**2 / 1e6 / (time.perf_counter() - start)
        print(f"k-means predict: {kmeans_rate:.3f} Mpix/s; dense SSCC / k-means = {dense_rate / kmeans_rate:.2f}",
              flush=True)

        # 4. resnet through predict on a sub-window scene
        side = args.resnet_window
        resnet_scene = crop(big, work / "resnet.tif", side)
        result = predict_scene(resnet_scene, models["resnet"], work / "resnet_labels.tif", tiles=side, device="cpu",
                               overwrite=True)
        print(f"resnet predict ({side}×{side}): {result.seconds:.1f} s, {result.megapixels_per_second:.4f} Mpix/s "
              f"({dense_rate / result.megapixels_per_second:.0f}× slower than dense)", flush=True)

        # 5. RSS flatness in subprocesses
        peaks = {}
        for size in args.rss_sizes:
            path = big if size == max_side else crop(big, work / f"rss{size}.tif", size)
            measured = run_measured(PREDICT, str(path), str(models["dense"]), str(work / f"rss{size}_labels.tif"))
            peaks[size] = measured["peak_rss_mb"]
            print(f"predict {size}×{size}: {measured['wall_s']:.1f} s, peak RSS {measured['peak_rss_mb']:.0f} MB",
                  flush=True)
            if path != big:
                path.unlink()
        lo, hi = args.rss_sizes
        print(f"peak RSS ratio {hi}² / {lo}² = {peaks[hi] / peaks[lo]:.2f} (target ≤ 1.25), "
              f"largest {peaks[hi]:.0f} MB (target < 2048 MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
