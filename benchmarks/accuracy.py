"""Clustering accuracy of SSCC vs k-means on the development scenes, under the honest protocol.

Honest protocol (default): train on all pixels, K = number of classes, no ground truth for model,
epoch or hyperparameter selection; score labelled pixels (Hungarian ACC, NMI, Kappa, ARI); mean ±
std over seeds. scikit-learn KMeans on per-band standardised spectra runs in the same process as
the baseline. ``--protocol reference`` trains on labelled pixels only (the reference code's
protocol), reported as such.

Scenes (built from ../shared/data at run time into a temporary folder, see benchmarks/scenes.py):
indian_pines, salinas_a, samson, jasper_ridge, parcels_ip, parcels_sa, indian_pines_2x,
indian_pines_3x, salinas_a_2x, salinas_a_3x, indian_pines_raw, salinas_a_raw, jasper_ridge_striped,
indian_pines_striped. ``--scene all`` runs every one of them (the development benchmark); several
names may be given.

``--kmeans-smoothing 1 3 11`` also scores k-means on spectra box-averaged over s × s pixels
(scipy.ndimage.uniform_filter over y, x per band, valid pixels only): whether spatial context helps
or hurts on a scene. ``--no-sscc`` prints only the k-means baseline.

    python benchmarks/accuracy.py --scene salinas_a --seeds 0 1 2 [--preset fast] [--set key=value ...]
    python benchmarks/accuracy.py --scene all --no-sscc --kmeans-smoothing 1 3 11

``--k auto [--k-max N]`` trains with ``-k auto`` instead of K = the class count and prints the K chosen
beside the class count; the scores then match clusters to classes one to one (Hungarian on the
rectangular table), pixels of unmatched clusters counting as errors.

    python benchmarks/accuracy.py --scene salinas_a indian_pines --seeds 0 --k auto --no-kmeans
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_sets  # noqa: E402
from scenes import SCENE_NAMES, build_scene  # noqa: E402

#: What ``--scene all`` runs: the development benchmark of issue 11.
ALL_SCENES = SCENE_NAMES


def smoothed_pixels(store: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`hsi_cluster.baseline.standardised_pixels`, on spectra box-averaged over ``size × size``.

    The mean runs over valid pixels only (normalised convolution: box sum of the valid spectra over
    box count of valid pixels), edges reflected (``uniform_filter``'s default).
    """
    from scipy.ndimage import uniform_filter

    from hsi_cluster.baseline import standardised_pixels
    from hsi_cluster.io import open_scene, open_valid_mask

    if size <= 1:
        return standardised_pixels(store)
    cube = open_scene(store).values.astype(np.float64)
    valid = np.asarray(open_valid_mask(store).compute())
    weight = uniform_filter(valid.astype(np.float64), size=size)
    smooth = np.empty_like(cube)
    for band in range(cube.shape[0]):
        smooth[band] = uniform_filter(np.where(valid, cube[band], 0.0), size=size) / np.maximum(weight, 1e-12)
    pixels = smooth.reshape(smooth.shape[0], -1).T[valid.ravel()]
    return (pixels - pixels.mean(0)) / (pixels.std(0) + 1e-12), valid


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else "—"


def run_scene(name: str, args: argparse.Namespace, work: Path) -> dict:
    from hsi_cluster.baseline import kmeans_baseline
    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.config import config_from_dict, preset_config
    from hsi_cluster.evaluate import score_clustering
    from hsi_cluster.io.labels import read_label_map
    from hsi_cluster.predict import label_patches
    from hsi_cluster.train import prepare_store, train

    scene = build_scene(name, work / "scenes")
    truth, _ = read_label_map(scene.truth)
    k = scene.n_classes
    config = config_from_dict(parse_sets(args.sets), base=preset_config(args.preset))
    results = {"scene": name, "cube": str(scene.cube), "shape": list(truth.shape), "k": k,
               "labelled": int(np.count_nonzero(truth)), "preset": args.preset, "overrides": parse_sets(args.sets),
               "protocol": args.protocol, "runs": [], "kmeans": [], "kmeans_smoothing": {}}
    print(f"== {name}: {truth.shape[0]} x {truth.shape[1]} px, K = {k}, {results['labelled']} labelled "
          f"({scene.description})", flush=True)
    store = prepare_store(scene.cube, work / "stores")
    mask = truth != 0 if args.protocol == "reference" else None
    sizes = [] if args.no_kmeans else sorted(set(args.kmeans_smoothing) | {1})
    for size in sizes:
        prepared = smoothed_pixels(store, size)  # read once for all seeds
        runs = []
        for seed in args.seeds:
            km = kmeans_baseline(store, truth, k, seed=seed, prepared=prepared)
            runs.append({"seed": seed, **km.to_dict()})
            tag = "kmeans" if size == 1 else f"kmeans {size}x{size}"
            print(f"{tag} seed {seed}: ACC {km.acc:.3f} NMI {km.nmi:.3f} Kappa {km.kappa:.3f} ARI {km.ari:.3f}",
                  flush=True)
        results["kmeans_smoothing"][str(size)] = runs
        if size == 1:
            results["kmeans"] = runs
    if not args.no_sscc:
        for seed in args.seeds:
            start = time.perf_counter()
            result = train([store], n_clusters=args.k if args.k == "auto" else k, k_max=args.k_max,
                           output=work / f"{name}-seed{seed}.ckpt", config=config, seed=seed,
                           device="cpu", mask=mask, overwrite=True, work_dir=work / "stores", log=lambda m: None)
            seconds = time.perf_counter() - start
            model = load_checkpoint(result.checkpoint).build_model()
            labels, _ = label_patches(model, store, patch_size=config.patch_size)
            scores = score_clustering(labels, truth, invalid_pred=-1)
            chosen = model.n_clusters
            results["runs"].append({"seed": seed, "seconds": seconds, "samples_per_second": result.samples_per_second,
                                    "steps": result.steps, "k_chosen": chosen, **scores.to_dict()})
            print(f"sscc seed {seed}: ACC {scores.acc:.3f} NMI {scores.nmi:.3f} Kappa {scores.kappa:.3f} "
                  f"ARI {scores.ari:.3f}  train {seconds:.0f} s ({result.samples_per_second:.0f} samples/s, "
                  f"{result.steps} steps)" + (f"  K chosen {chosen} (classes {k})" if args.k == "auto" else ""),
                  flush=True)
    for metric in ("acc", "nmi", "kappa", "ari"):
        line = f"{metric.upper():5s}"
        if results["runs"]:
            line += f" sscc {mean_std([run[metric] for run in results['runs']])}  "
        if results["kmeans"]:
            line += f" kmeans {mean_std([run[metric] for run in results['kmeans']])}"
        print(line)
    if results["runs"]:
        times = [run["seconds"] for run in results["runs"]]
        print(f"train wall time per run: median {statistics.median(times):.0f} s (max {max(times):.0f} s)")
    return results


def summary(all_results: list[dict], sizes: list[int]) -> str:
    """The table printed at the end: per scene, SSCC and k-means ACC / NMI and their difference."""
    def mean(runs: list[dict], metric: str) -> float | None:
        return statistics.mean(run[metric] for run in runs) if runs else None

    def cell(runs: list[dict], metric: str) -> str:
        return mean_std([run[metric] for run in runs]) if runs else "—"

    def diff(a: float | None, b: float | None) -> str:
        return f"{a - b:+.3f}" if a is not None and b is not None else "—"

    extra = [s for s in sizes if s > 1]
    head = (f"{'scene':16s} {'size':>9s} {'K':>3s}  {'SSCC ACC':>13s} {'SSCC NMI':>13s}  {'k-means ACC':>13s} "
            f"{'k-means NMI':>13s}  {'dACC':>6s} {'dNMI':>6s}")
    head += "".join(f"  {f'km{s}x{s} ACC':>11s} {f'km{s}x{s} NMI':>11s}" for s in extra)
    lines = [head, "-" * len(head)]
    for res in all_results:
        runs, km = res["runs"], res["kmeans"]
        line = (f"{res['scene']:16s} {res['shape'][0]:>4d}x{res['shape'][1]:<4d} {res['k']:>3d}  "
                f"{cell(runs, 'acc'):>13s} {cell(runs, 'nmi'):>13s}  {cell(km, 'acc'):>13s} {cell(km, 'nmi'):>13s}  "
                f"{diff(mean(runs, 'acc'), mean(km, 'acc')):>6s} {diff(mean(runs, 'nmi'), mean(km, 'nmi')):>6s}")
        for s in extra:
            smooth = res["kmeans_smoothing"].get(str(s), [])
            line += f"  {mean(smooth, 'acc') or 0:>11.3f} {mean(smooth, 'nmi') or 0:>11.3f}" if smooth else f"  {'—':>11s} {'—':>11s}"
        lines.append(line)
    lines.append("dACC / dNMI: SSCC mean minus k-means mean (positive: SSCC better). "
                 "kmS×S: k-means on spectra box-averaged over S × S pixels.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", nargs="+", required=True, metavar="NAME",
                        help=f"one or more of {', '.join(SCENE_NAMES)}, or 'all'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override key=value (YAML value)")
    parser.add_argument("--protocol", choices=["honest", "reference"], default="honest")
    parser.add_argument("--no-kmeans", action="store_true", help="skip the k-means baseline")
    parser.add_argument("--no-sscc", action="store_true", help="only the k-means baseline (no training)")
    parser.add_argument("--kmeans-smoothing", type=int, nargs="+", default=[1], metavar="S",
                        help="also k-means on spectra box-averaged over S x S pixels (1 = per pixel, the baseline)")
    parser.add_argument("--k", default="classes", choices=["classes", "auto"],
                        help="train with K = the class count (default) or -k auto")
    parser.add_argument("--k-max", type=int, default=None, help="with --k auto: the largest K considered")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    names = list(ALL_SCENES) if "all" in args.scene else list(dict.fromkeys(args.scene))
    unknown = [n for n in names if n not in SCENE_NAMES]
    if unknown:
        parser.error(f"unknown scene {', '.join(unknown)}; choose from {', '.join(SCENE_NAMES)} or all")
    if args.no_kmeans and args.no_sscc:
        parser.error("--no-kmeans with --no-sscc leaves nothing to run")
    if any(s < 1 for s in args.kmeans_smoothing):
        parser.error("--kmeans-smoothing sizes must be ≥ 1")
    work = Path(tempfile.mkdtemp(prefix="hsic-acc-"))
    all_results = []
    try:
        for name in names:
            try:
                all_results.append(run_scene(name, args, work))
            except FileNotFoundError as exc:
                sys.exit(str(exc))
        sizes = [] if args.no_kmeans else sorted(set(args.kmeans_smoothing) | {1})
        print()
        print(summary(all_results, sizes))
        if args.json:
            # One scene keeps the former layout (a single object); several give a list.
            args.json.write_text(json.dumps(all_results[0] if len(all_results) == 1 else all_results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
