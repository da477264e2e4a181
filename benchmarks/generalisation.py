"""Generalisation to unseen pixels: train on Indian Pines' left half, label its right half.

Issue 5: "train on Indian Pines' left half, predict the right half; report ACC/NMI on the unseen
half next to the model trained on the whole scene". The scene (145 × 145 × 200) is cut at column
72 into a left half (145 × 72) and a right half (145 × 73), written as ``.npy`` cubes in a
temporary folder. For each seed:

* **left → right**: the ``fast`` preset is trained on the left half only (no ground truth), and
  ``predict_scene`` labels the right half as a scene of its own (reflect padding at the cut, holes
  filled with the left half's mean, exactly as for any new scene);
* **whole → right**: the same preset trained on the whole scene (the usual honest protocol), its
  labels of the whole scene cropped to the right half — the reference for the same pixels;
* also printed: the whole-scene model labelling the cropped right half as a scene of its own (so
  the cut's border effect is visible apart from the unseen-data effect) and the left-half model on
  its own training half.

Every row is scored on the right half's labelled pixels (the left-half row on the left half's)
with Hungarian-matched ACC, NMI, Kappa and ARI; the matching is computed per row, K = 16.

    python benchmarks/generalisation.py [--seeds 0 1 2] [--preset fast] [--json out.json]
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

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "indian_pines"
CUBE = DATA / "Indian_pines_corrected.npy"
TRUTH = DATA / "Indian_pines_gt.npy"
K = 16
METRICS = ("acc", "nmi", "kappa", "ari")


def read_labels(path: Path) -> np.ndarray:
    """A label COG from ``predict_scene`` as int64 (y, x), nodata → −1."""
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # Indian Pines has no CRS
        with rasterio.open(path) as src:
            labels = src.read(1).astype(np.int64)
            nodata = src.nodata
    if nodata is not None:
        labels[labels == int(nodata)] = -1
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps only (a smoke test)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not CUBE.exists() or not TRUTH.exists():
        sys.exit(f"{DATA} not found: the benchmark needs ../shared/data/indian_pines beside the repository")

    from hsi_cluster.config import config_from_dict, preset_config
    from hsi_cluster.evaluate import score_clustering
    from hsi_cluster.predict import predict_scene
    from hsi_cluster.train import train

    cube = np.load(CUBE)  # (y, x, band)
    truth = np.load(TRUTH).astype(np.int64)
    cut = cube.shape[1] // 2
    config = preset_config(args.preset)
    if args.steps:
        config = config_from_dict({"steps": args.steps}, base=config)
    work = Path(tempfile.mkdtemp(prefix="hsic-gen-"))
    results: dict = {"preset": args.preset, "cut_column": cut, "runs": []}
    rows: dict[str, list] = {}
    try:
        left, right = work / "left.npy", work / "right.npy"
        np.save(left, np.ascontiguousarray(cube[:, :cut]))
        np.save(right, np.ascontiguousarray(cube[:, cut:]))
        truth_left, truth_right = truth[:, :cut], truth[:, cut:]
        print(f"Indian Pines cut at column {cut}: left {cube.shape[0]}×{cut} "
              f"({int((truth_left != 0).sum())} labelled), right {cube.shape[0]}×{cube.shape[1] - cut} "
              f"({int((truth_right != 0).sum())} labelled); {args.preset} preset, K = {K}", flush=True)

        def fit(scene: Path, name: str, seed: int) -> tuple[Path, float]:
            start = time.perf_counter()
            result = train([scene], n_clusters=K, output=work / f"{name}-{seed}.ckpt", config=config, seed=seed,
                           device="cpu", overwrite=True, work_dir=work / "cache", log=lambda m: None)
            return result.checkpoint, time.perf_counter() - start

        def label(scene: Path, checkpoint: Path, name: str) -> np.ndarray:
            out = work / f"{name}.tif"
            predict_scene(scene, checkpoint, out, device="cpu", overwrite=True)
            return read_labels(out)

        for seed in args.seeds:
            left_model, left_s = fit(left, "left", seed)
            whole_model, whole_s = fit(CUBE, "whole", seed)
            whole_labels = label(CUBE, whole_model, f"whole-whole-{seed}")
            scored = {
                "left model → right half (unseen)": score_clustering(label(right, left_model, f"left-right-{seed}"),
                                                                     truth_right, invalid_pred=-1),
                "whole model → whole scene, right half scored": score_clustering(whole_labels[:, cut:], truth_right,
                                                                                 invalid_pred=-1),
                "whole model → right half as its own scene": score_clustering(
                    label(right, whole_model, f"whole-right-{seed}"), truth_right, invalid_pred=-1),
                "left model → left half (its training pixels)": score_clustering(
                    label(left, left_model, f"left-left-{seed}"), truth_left, invalid_pred=-1),
            }
            print(f"seed {seed}: training {left_s:.0f} s on the left half, {whole_s:.0f} s on the whole scene",
                  flush=True)
            run = {"seed": seed, "train_seconds_left": left_s, "train_seconds_whole": whole_s}
            for name, scores in scored.items():
                print(f"  {name:46s} ACC {scores.acc:.3f}  NMI {scores.nmi:.3f}  Kappa {scores.kappa:.3f}  "
                      f"ARI {scores.ari:.3f}  ({scores.n_scored} px)", flush=True)
                run[name] = scores.to_dict()
                rows.setdefault(name, []).append(scores)
            results["runs"].append(run)
        if len(args.seeds) > 1:
            print(f"mean ± std over seeds {' '.join(map(str, args.seeds))}:")
            for name, scores in rows.items():
                parts = [f"{m.upper()} {statistics.mean(getattr(s, m) for s in scores):.3f} ± "
                         f"{statistics.pstdev(getattr(s, m) for s in scores):.3f}" for m in METRICS]
                print(f"  {name:46s} " + "  ".join(parts))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
