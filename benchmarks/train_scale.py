"""Training cost and accuracy against scene size: Indian Pines and mosaics of it (issue 12, "Scale").

Scenes (built in a temporary folder from ../shared/data/indian_pines):

``ip``
    Indian Pines as it is (145 × 145 = 21 025 px, 16 classes).
``ip4``, ``ip16``
    Mosaics of 2 × 2 and 4 × 4 copies (290² = 84 100 and 580² = 336 400 px). Each copy is flipped at
    random (up/down, left/right) and gets a little Gaussian noise (1 % of each band's standard
    deviation); the ground truth is mosaicked with the same flips, so the classes are those of
    Indian Pines and K stays 16.

Each scene is ingested first (timed apart), then trained with the ``fast`` preset's defaults (a
budget of 640 000 samples capped at 30 passes: Indian Pines trains 30 passes = 1 230 steps, the
mosaics 1 250 steps) for each seed, then every pixel is labelled with ``label_patches`` and scored
with Hungarian ACC and NMI against the mosaicked ground truth (as ``benchmarks/accuracy.py``
does). Printed per scene and seed: train wall time (ingest apart) and the process CPU time of the
training, steps, samples drawn, ACC and NMI; then the ratios to Indian Pines.

``--synthetic 1024 4096`` instead writes synthetic tiled scenes of those sides from real spectra
(``_common.write_tiled_scene``), ingests them, and trains each in a fresh interpreter for
``--steps`` steps of the default budget's sampling (the run's length and its share of each block
are those of the full budget): the mean and median time from one step to the next (sampling included:
the mean counts the bursts of block reads at the start of each shuffle group) and the median of the step
alone, and the child's peak RSS; ``--repeat R`` trains each R times, the sizes interleaved, and reports the
medians. A 4096² scene of
Salinas-A's 204 bands is a 6.8 GB GeoTIFF: check the free disk space first.

``--noise 0 --no-flips`` builds the mosaics of exact, unflipped copies instead (the scene itself repeated):
whether a gap to Indian Pines comes from the copies' noise and orientation or from the scene's size.

``--repeat-draws 16 [--draw-order shuffled|stacked]`` trains Indian Pines alone (``--scenes ip``) with each pass of
the sampler drawing 16 copies of every centre, at the budget's 1 250 steps: ``shuffled``, the copies in one
shuffle (the order in which a pass over 16 exact copies of the scene draws its spectra), or ``stacked``, 16
permutations one after the other (the order of 16 passes over the scene). Whether a gap of the mosaics comes
from the order in which their repeated content is drawn.

``--budget-scale 0.1`` runs the same comparison at a tenth of the budget and of the cap (64 000
samples, at most 3 passes: Indian Pines 123 steps, the mosaics 125), when the full runs take too long.

Measured 2026-12-02 at the full budget (``--scenes ip ip4 ip16 --seeds 0 1 2``, ``fast`` preset with
``centroid_features: auto``, 2 cores; Indian Pines seeds 1-2 contended, see docs/performance.md), means
of the three seeds:

======  =======  =====  =======  ======  =====  =====  =====
scene   pixels   steps  samples  wall s  CPU s  ACC    NMI
======  =======  =====  =======  ======  =====  =====  =====
ip      21 025   1230   629 760  242     346    0.477  0.534
ip4     84 100   1250   640 000  149     269    0.464  0.526
ip16    336 400  1250   640 000  153     272    0.438  0.509
======  =======  =====  =======  ======  =====  =====  =====

Seed 0 alone, both uncontended: ip 155 s, ip16 155 s (1.00×). ACC: ip4 −0.013, ip16 −0.038 against ip.

    python benchmarks/train_scale.py [--scenes ip ip4 ip16] [--seeds 0 1 2] [--budget-scale 1] [--json out.json]
    python benchmarks/train_scale.py --scenes ip16 --noise 0 --no-flips
    python benchmarks/train_scale.py --scenes ip --repeat-draws 16 --draw-order shuffled --seeds 0 1 2 3 4 5
    python benchmarks/train_scale.py --synthetic 1024 4096 [--steps 40] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, write_tiled_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "indian_pines"
CUBE = DATA / "Indian_pines_corrected.npy"
TRUTH = DATA / "Indian_pines_gt.npy"
K = 16
TILES = {"ip": 1, "ip4": 2, "ip16": 4}


def mosaic(cube: np.ndarray, truth: np.ndarray, n: int, *, seed: int = 0,
           noise: float = 0.01, flips: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``n × n`` copies of ``cube`` (y, x, band) and ``truth`` (y, x), each flipped at random alike (unless
    ``flips`` is False), the cube with Gaussian noise of ``noise`` × each band's standard deviation (n = 1:
    the scene as it is)."""
    if n == 1:
        return cube, truth
    rng = np.random.default_rng(seed)
    height, width, bands = cube.shape
    out = np.empty((n * height, n * width, bands), dtype=cube.dtype)
    labels = np.empty((n * height, n * width), dtype=truth.dtype)
    sigma = noise * cube.reshape(-1, bands).std(axis=0)
    for i in range(n):
        for j in range(n):
            flip_y, flip_x = rng.choice([-1, 1]), rng.choice([-1, 1])  # drawn either way: the same noise
            if not flips:
                flip_y = flip_x = 1
            tile = cube[::flip_y, ::flip_x].astype(np.float64) + rng.normal(0.0, 1.0, cube.shape) * sigma
            if np.issubdtype(cube.dtype, np.integer):
                info = np.iinfo(cube.dtype)
                tile = np.clip(np.rint(tile), info.min, info.max)
            out[i * height:(i + 1) * height, j * width:(j + 1) * width] = tile.astype(cube.dtype)
            labels[i * height:(i + 1) * height, j * width:(j + 1) * width] = truth[::flip_y, ::flip_x]
    return out, labels


@contextlib.contextmanager
def repeated_draws(copies: int, order: str = "shuffled"):
    """While active, each training pass of :class:`~hsi_cluster.data.sampler.PatchSampler` draws ``copies`` copies
    of every centre: ``shuffled`` in one shuffle (the sampler's own plan over the repeated centres), ``stacked``
    as ``copies`` permutations one after the other. Full passes only; the centroid sample is drawn as usual."""
    from hsi_cluster.data.sampler import PatchSampler
    from hsi_cluster.train import CENTROID_PLAN_EPOCH

    if order not in ("shuffled", "stacked"):
        raise ValueError(f"order must be 'shuffled' or 'stacked', got {order!r}")
    draw, epoch_centres, plan = PatchSampler._draw, PatchSampler._epoch_centres, PatchSampler._plan

    def training(sampler) -> bool:
        return sampler.epoch != CENTROID_PLAN_EPOCH and sampler.fraction >= 1

    def repeated_draw(sampler, block_id):
        centres, count = draw(sampler, block_id)
        return (centres, count * copies) if training(sampler) else (centres, count)

    def repeated_centres(sampler, block_id):
        centres = epoch_centres(sampler, block_id)
        return np.tile(centres, copies) if training(sampler) and order == "shuffled" else centres

    def stacked_plan(sampler, shard, shards):
        if not training(sampler) or order == "shuffled":
            yield from plan(sampler, shard, shards)
            return
        rng = np.random.default_rng([sampler.seed, sampler.epoch, 77])
        every = np.concatenate([draw(sampler, b)[0] for b in range(int(sampler._block_offsets[-1]))])
        pool = np.concatenate([rng.permutation(every) for _ in range(copies)])
        for k in range(len(pool) // sampler.batch_size):
            yield pool[k * sampler.batch_size:(k + 1) * sampler.batch_size]

    PatchSampler._draw, PatchSampler._epoch_centres, PatchSampler._plan = repeated_draw, repeated_centres, stacked_plan
    try:
        yield
    finally:
        PatchSampler._draw, PatchSampler._epoch_centres, PatchSampler._plan = draw, epoch_centres, plan


def scaled_config(scale: float):
    """The ``fast`` preset with its budget and epochs cap multiplied by ``scale`` (1: the preset itself)."""
    from hsi_cluster.config import config_from_dict, preset_config

    fast = preset_config("fast")
    if scale == 1:
        return fast
    return config_from_dict({"samples": round(fast.samples * scale), "epochs": max(1, round(fast.epochs * scale))},
                            base=fast)


def run_scene(name: str, seeds: list[int], work: Path, scale: float = 1.0, *, noise: float = 0.01,
              flips: bool = True) -> dict:
    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.evaluate import score_clustering
    from hsi_cluster.predict import label_patches
    from hsi_cluster.train import prepare_store, train

    cube, truth = mosaic(np.load(CUBE), np.load(TRUTH).astype(np.int64), TILES[name], noise=noise, flips=flips)
    path = work / f"{name}.npy"
    np.save(path, np.ascontiguousarray(cube))
    started = time.perf_counter()
    store = prepare_store(path, work / "stores")
    ingest_s = time.perf_counter() - started
    config = scaled_config(scale)
    result = {"scene": name, "samples_budget": config.samples, "epochs_cap": config.epochs, "shape": list(truth.shape), "pixels": int(truth.size), "ingest_s": ingest_s, "runs": []}
    print(f"== {name}: {truth.shape[0]} × {truth.shape[1]} = {truth.size:,} px, {int((truth != 0).sum()):,} labelled; "
          f"ingest {ingest_s:.1f} s; budget {config.samples:,} samples, at most {config.epochs} epochs", flush=True)
    for seed in seeds:
        cpu, wall = time.process_time(), time.perf_counter()
        trained = train([store], n_clusters=K, output=work / f"{name}-{seed}.ckpt", config=config, seed=seed,
                        device="cpu", overwrite=True, work_dir=work / "stores",
                        log=lambda m, tag=f"{name} seed {seed}": print(f"  {tag}: {m}", flush=True))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        model = load_checkpoint(trained.checkpoint).build_model()
        labels, _ = label_patches(model, store, patch_size=config.patch_size)
        scores = score_clustering(labels, truth, invalid_pred=-1)
        run = {"seed": seed, "train_wall_s": wall, "train_cpu_s": cpu, "steps": trained.steps,
               "samples": trained.samples, "acc": scores.acc, "nmi": scores.nmi}
        result["runs"].append(run)
        print(f"{name} seed {seed}: train {wall:.0f} s wall ({cpu:.0f} s CPU), {trained.steps} steps, "
              f"{trained.samples:,} samples drawn; ACC {scores.acc:.3f} NMI {scores.nmi:.3f}", flush=True)
    return result


def summary(results: list[dict]) -> str:
    def mean(res: dict, key: str) -> float:
        return statistics.mean(run[key] for run in res["runs"])

    base = next((res for res in results if res["scene"] == "ip"), None)
    head = (f"{'scene':6s} {'pixels':>9s} {'steps':>6s} {'samples':>9s} {'wall s':>8s} {'CPU s':>8s} {'ACC':>6s} "
            f"{'NMI':>6s}" + (f"  {'wall/IP':>8s} {'CPU/IP':>7s} {'dACC':>7s} {'dNMI':>7s}" if base else ""))
    lines = [head, "-" * len(head)]
    for res in results:
        line = (f"{res['scene']:6s} {res['pixels']:>9,d} {mean(res, 'steps'):>6.0f} {mean(res, 'samples'):>9,.0f} "
                f"{mean(res, 'train_wall_s'):>8.0f} {mean(res, 'train_cpu_s'):>8.0f} {mean(res, 'acc'):>6.3f} "
                f"{mean(res, 'nmi'):>6.3f}")
        if base:
            line += (f"  {mean(res, 'train_wall_s') / mean(base, 'train_wall_s'):>8.2f} "
                     f"{mean(res, 'train_cpu_s') / mean(base, 'train_cpu_s'):>7.2f} "
                     f"{mean(res, 'acc') - mean(base, 'acc'):>+7.3f} {mean(res, 'nmi') - mean(base, 'nmi'):>+7.3f}")
        lines.append(line)
    lines.append("means over the seeds run; wall and CPU time of training only (ingest apart, labelling apart)")
    return "\n".join(lines)


def synthetic(sizes: list[int], steps: int, work: Path, repeats: int = 1) -> list[dict]:
    from hsi_cluster.io import ingest

    code = """
import json, statistics, sys, time
from hsi_cluster.config import preset_config
from hsi_cluster.train import train
store, output, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
ticks, compute, totals = [], [], []
try:
    train([store], n_clusters=16, output=output, config=preset_config("fast"), seed=0, device="cpu",
          overwrite=True, stop_after_steps=steps,
          progress=lambda step, total, m: (ticks.append(time.perf_counter()), compute.append(m["step_s"]),
                                           totals.append(total)))
except KeyboardInterrupt:
    pass
between = [b - a for a, b in zip(ticks, ticks[1:])]  # sampling + step, as the run sees it
# the mean counts the block reads, which come in bursts (the first batch of each shuffle group reads its blocks)
print(json.dumps({"mean_step_s": statistics.mean(between[3:] or between),
                  "median_step_s": statistics.median(between[3:] or between),
                  "median_compute_s": statistics.median(compute[3:] or compute), "total_steps": totals[-1],
                  "steps_run": len(ticks)}))
"""
    stores = {}
    for size in sizes:
        scene = write_tiled_scene(work / f"synthetic{size}.tif", size, size)
        started = time.perf_counter()
        stores[size] = ingest(scene, work / f"synthetic{size}.zarr")
        print(f"{size} × {size}: ingest {time.perf_counter() - started:.0f} s", flush=True)
        scene.unlink()  # the store is what training reads
    runs: dict[int, list[dict]] = {size: [] for size in sizes}
    for repeat in range(repeats):  # the sizes interleaved, so that a slow spell of the machine hits both
        for size in sizes:
            measured = run_measured(code, str(stores[size]), str(work / f"synthetic{size}.ckpt"), str(steps))
            runs[size].append(measured)
            print(f"{size} × {size}, run {repeat + 1}: {measured['steps_run']} steps of a {measured['total_steps']}-step "
                  f"run: mean {measured['mean_step_s']:.3f} s/step with sampling (median "
                  f"{measured['median_step_s']:.3f}; the step itself {measured['median_compute_s']:.3f}), peak RSS "
                  f"{measured['peak_rss_mb']:.0f} MB (child wall {measured['wall_s']:.0f} s)", flush=True)
    rows = [{"size": size, "runs": runs[size],
             **{key: statistics.median(run[key] for run in runs[size])
                for key in ("mean_step_s", "median_step_s", "median_compute_s", "peak_rss_mb")}} for size in sizes]
    for row in rows:
        print(f"{row['size']} × {row['size']}, median of {repeats}: mean {row['mean_step_s']:.3f} s/step with sampling, "
              f"the step itself {row['median_compute_s']:.3f}, peak RSS {row['peak_rss_mb']:.0f} MB")
    first = rows[0]
    for row in rows[1:]:
        print(f"{row['size']}² / {first['size']}²: time per step ×{row['mean_step_s'] / first['mean_step_s']:.2f} "
              f"(the step itself ×{row['median_compute_s'] / first['median_compute_s']:.2f}), "
              f"peak RSS ×{row['peak_rss_mb'] / first['peak_rss_mb']:.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", choices=list(TILES), default=list(TILES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--synthetic", type=int, nargs="+", default=None, metavar="SIDE",
                        help="time per step and peak RSS on synthetic scenes of these sides instead")
    parser.add_argument("--steps", type=int, default=40, help="steps timed per synthetic scene")
    parser.add_argument("--repeat", type=int, default=1, metavar="R",
                        help="train each synthetic scene R times, interleaved, and report the medians")
    parser.add_argument("--budget-scale", type=float, default=1.0, metavar="F",
                        help="multiply the fast preset's budget and epochs cap by F (a quicker, shorter comparison)")
    parser.add_argument("--noise", type=float, default=0.01, metavar="F",
                        help="Gaussian noise on each mosaic copy, as a share of each band's standard deviation")
    parser.add_argument("--no-flips", dest="flips", action="store_false", help="mosaic the copies unflipped")
    parser.add_argument("--repeat-draws", type=int, default=1, metavar="R",
                        help="each training pass draws R copies of every centre (with --scenes ip: the draw order of R copies)")
    parser.add_argument("--draw-order", choices=("shuffled", "stacked"), default="shuffled",
                        help="with --repeat-draws: the copies in one shuffle, or R permutations one after the other")
    parser.add_argument("--work", type=Path, default=None, help="folder for the temporary files")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsic-scale-", dir=args.work))
    os.environ.setdefault("HSICLUSTER_WORK", str(work / "stores"))
    try:
        if args.synthetic:
            results: list[dict] = synthetic(args.synthetic, args.steps, work, args.repeat)
        else:
            if not CUBE.exists() or not TRUTH.exists():
                sys.exit(f"{DATA} not found: the benchmark needs ../shared/data/indian_pines beside the repository")
            order = (repeated_draws(args.repeat_draws, args.draw_order) if args.repeat_draws > 1
                     else contextlib.nullcontext())
            with order:
                results = [run_scene(name, args.seeds, work, args.budget_scale, noise=args.noise, flips=args.flips)
                           for name in args.scenes]
            print()
            print(summary(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
