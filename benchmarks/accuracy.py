"""Clustering accuracy of SSCC vs k-means on the real scenes, under the honest protocol.

Honest protocol (default): train on all pixels, K = number of classes, no ground truth for model,
epoch or hyperparameter selection; score labelled pixels (Hungarian ACC, NMI, Kappa, ARI); mean ±
std over seeds. scikit-learn KMeans on per-band standardised spectra runs in the same process as
the baseline. ``--protocol reference`` trains on labelled pixels only (the reference code's
protocol), reported as such.

    python benchmarks/accuracy.py --scene salinas_a --seeds 0 1 2 [--preset fast] [--set key=value ...]
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

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SCENES = {
    "indian_pines": (DATA / "indian_pines" / "Indian_pines_corrected.npy", DATA / "indian_pines" / "Indian_pines_gt.npy", 16),
    "salinas_a": (REPO / "hsi_cluster" / "sample_data" / "salinas_a" / "SalinasA_corrected.hdr",
                  REPO / "hsi_cluster" / "sample_data" / "salinas_a" / "SalinasA_gt.mat", 6),
}


def parse_sets(pairs: list[str]) -> dict:
    overrides: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        target = overrides
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", choices=sorted(SCENES), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override key=value (YAML value)")
    parser.add_argument("--protocol", choices=["honest", "reference"], default="honest")
    parser.add_argument("--no-kmeans", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from hsi_cluster.baseline import kmeans_baseline, standardised_pixels
    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.config import config_from_dict, preset_config
    from hsi_cluster.evaluate import score_clustering
    from hsi_cluster.io.labels import read_label_map
    from hsi_cluster.predict import label_patches
    from hsi_cluster.train import prepare_store, train

    scene, gt_path, k = SCENES[args.scene]
    if not scene.exists():
        sys.exit(f"{scene} not found: the benchmark needs ../shared/data beside the repository")
    truth, _ = read_label_map(gt_path)
    config = config_from_dict(parse_sets(args.sets), base=preset_config(args.preset))
    work = Path(tempfile.mkdtemp(prefix="hsic-acc-"))
    results = {"scene": args.scene, "preset": args.preset, "overrides": parse_sets(args.sets),
               "protocol": args.protocol, "runs": [], "kmeans": []}
    try:
        store = prepare_store(scene, work)
        mask = truth != 0 if args.protocol == "reference" else None
        prepared = None  # standardised spectra for k-means, read at the first seed
        for seed in args.seeds:
            if not args.no_kmeans:
                prepared = prepared or standardised_pixels(store)  # read once for all seeds
                km = kmeans_baseline(store, truth, k, seed=seed, prepared=prepared)
                results["kmeans"].append(km.to_dict())
                print(f"kmeans seed {seed}: ACC {km.acc:.3f} NMI {km.nmi:.3f} Kappa {km.kappa:.3f} ARI {km.ari:.3f}", flush=True)
            start = time.perf_counter()
            result = train([store], n_clusters=k, output=work / f"seed{seed}.ckpt", config=config, seed=seed,
                           device="cpu", mask=mask, overwrite=True, work_dir=work, log=lambda m: None)
            seconds = time.perf_counter() - start
            model = load_checkpoint(result.checkpoint).build_model()
            labels, _ = label_patches(model, store, patch_size=config.patch_size)
            scores = score_clustering(labels, truth, invalid_pred=-1)
            results["runs"].append({"seed": seed, "seconds": seconds, "samples_per_second": result.samples_per_second,
                                    "steps": result.steps, **scores.to_dict()})
            print(f"sscc seed {seed}: ACC {scores.acc:.3f} NMI {scores.nmi:.3f} Kappa {scores.kappa:.3f} "
                  f"ARI {scores.ari:.3f}  train {seconds:.0f} s ({result.samples_per_second:.0f} samples/s, "
                  f"{result.steps} steps)", flush=True)
        for name in ("acc", "nmi", "kappa", "ari"):
            values = [run[name] for run in results["runs"]]
            line = f"{name.upper():5s} sscc {statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"
            if results["kmeans"]:
                km_values = [run[name] for run in results["kmeans"]]
                line += f"   kmeans {statistics.mean(km_values):.3f} ± {statistics.pstdev(km_values):.3f}"
            print(line)
        times = [run["seconds"] for run in results["runs"]]
        print(f"train wall time per run: median {statistics.median(times):.0f} s (max {max(times):.0f} s)")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
