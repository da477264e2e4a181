"""Generalisation to unseen pixels and scenes: Indian Pines cut into halves (issue 5) or quadrants (issue 12).

``--mode halves`` (issue 5, the default): train on Indian Pines' left half, label its right half.

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

``--mode archive`` (issue 12, "Archive"): the archive workflow, "train on a sample of scenes, label
them all with ``batch``". Indian Pines is cut into its four quadrants (rows and columns at 72: NW
72 × 72, NE 72 × 73, SW 73 × 72, SE 73 × 73), each written as a GeoTIFF of its own in EPSG:32616
(UTM 16N) with 20 m pixels and a transform that places it where it lies in the original grid (the
origin, 500 000 E / 4 480 000 N, is nominal: Indian Pines ships without georeferencing). Their
ground-truth quadrants stay in memory. For each seed:

* **diagonal → unseen**: the preset trained on the two diagonal quadrants (NW and SE, one
  multi-scene ``train``), all four quadrants labelled by ``run_batch`` (the ``hsicluster batch``
  path: a LocalCluster of one worker, label COGs and a manifest), and the two unseen quadrants (NE
  and SW) scored with **one** Hungarian matching over their labelled pixels pooled, since a label
  must mean the same thing in every scene;
* **all four → same quadrants**: the preset trained on all four quadrants, labelled and scored alike
  (the reference: a model that saw those pixels);
* **k-means diagonal → unseen**: k-means (K = 16, 10 restarts, ``random_state`` = seed) fitted on
  the diagonal quadrants' spectra standardised with their own band statistics, applied to the
  unseen quadrants standardised with the same statistics (``baseline.kmeans_transfer``), one matching;
* also printed: the diagonal model on its own training quadrants (one matching over NW and SE).

Targets (issue 12): the mean unseen ACC is within 0.03 of the all-quadrant model's, and beats
k-means by at least 0.05. ``--mode all`` runs both benchmarks.

``--shift`` makes the unseen quadrants another acquisition: the four quadrants of one flight share
their radiometry, an archive's scenes do not (sun angle, atmosphere, calibration). NE and SW are
written after a radiometric change of every pixel, ``x' = a · g(b) · x`` for band b of B (see
:data:`ARCHIVE_SHIFTS`): a brightness ``a`` (0.85 and 1.12) and a smooth spectral gain ``g`` of ±5 %
(a sine over the bands for NE, a half cosine for SW). Every model and k-means then read the shifted
quadrants as delivered (the all-quadrant model trains on them too).

    python benchmarks/generalisation.py [--mode halves|archive|all] [--seeds 0 1 2] [--preset fast]
        [--set key=value ...] [--shift] [--json out.json]
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_sets  # noqa: E402

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


def preset(args: argparse.Namespace) -> Any:
    """The training configuration: the named preset with the ``--set`` overrides, cut to ``--steps`` for a smoke test."""
    from hsi_cluster.config import config_from_dict, preset_config

    config = config_from_dict(parse_sets(args.sets), base=preset_config(args.preset))
    return config_from_dict({"steps": args.steps}, base=config) if args.steps else config


def record_scores(scored: dict, run: dict, rows: dict, width: int) -> dict:
    """Print one seed's scores, a line per row; add them to ``run`` (returned) and to the per-row lists ``rows``."""
    for name, scores in scored.items():
        print(f"  {name:{width}s} ACC {scores.acc:.3f}  NMI {scores.nmi:.3f}  Kappa {scores.kappa:.3f}  "
              f"ARI {scores.ari:.3f}  ({scores.n_scored} px)", flush=True)
        run[name] = scores.to_dict()
        rows.setdefault(name, []).append(scores)
    return run


def print_means(rows: dict[str, list], seeds: list[int], width: int) -> None:
    """Mean ± population std of every metric of every row over the seeds."""
    print(f"mean ± std over seeds {' '.join(map(str, seeds))}:")
    for name, scores in rows.items():
        parts = [f"{m.upper()} {statistics.mean(getattr(s, m) for s in scores):.3f} ± "
                 f"{statistics.pstdev(getattr(s, m) for s in scores):.3f}" for m in METRICS]
        print(f"  {name:{width}s} " + "  ".join(parts))


def halves(args: argparse.Namespace) -> dict:
    """Issue 5: left half → right half, against the whole-scene model (see the module docstring)."""
    from hsi_cluster.evaluate import score_clustering
    from hsi_cluster.predict import predict_scene
    from hsi_cluster.train import train

    cube = np.load(CUBE)  # (y, x, band)
    truth = np.load(TRUTH).astype(np.int64)
    cut = cube.shape[1] // 2
    config = preset(args)
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
            results["runs"].append(record_scores(scored, run, rows, 46))
        if len(args.seeds) > 1:
            print_means(rows, args.seeds, 46)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results




#: EPSG code, pixel size (m) and nominal upper-left corner of the quadrant GeoTIFFs.
ARCHIVE_CRS = 32616
ARCHIVE_PIXEL = 20.0
ARCHIVE_ORIGIN = (500_000.0, 4_480_000.0)
#: Quadrant names in the order written; the diagonal (NW, SE) trains, the other two are unseen.
QUADRANTS = ("nw", "ne", "sw", "se")
SEEN, UNSEEN = ("nw", "se"), ("ne", "sw")
#: ``--shift``: per unseen quadrant, the brightness ``a`` and the spectral gain ``g(t)`` over the band
#: position t = b / (B − 1) in [0, 1] (another acquisition; see the module docstring).
ARCHIVE_SHIFTS: dict[str, tuple[float, Any]] = {
    "ne": (0.85, lambda t: 1.0 + 0.05 * np.sin(2 * np.pi * t)),
    "sw": (1.12, lambda t: 1.0 - 0.05 * np.cos(np.pi * t)),
}


def shift_radiometry(part: np.ndarray, name: str) -> np.ndarray:
    """``part`` (y, x, band) after the radiometric change :data:`ARCHIVE_SHIFTS` names for quadrant ``name``,
    rounded and clipped to the input's integer dtype (unchanged if the quadrant has no shift)."""
    if name not in ARCHIVE_SHIFTS:
        return part
    brightness, gain = ARCHIVE_SHIFTS[name]
    bands = part.shape[-1]
    shifted = part.astype(np.float64) * (brightness * gain(np.arange(bands) / max(bands - 1, 1)))
    if np.issubdtype(part.dtype, np.integer):
        info = np.iinfo(part.dtype)
        shifted = np.clip(np.rint(shifted), info.min, info.max)
    return shifted.astype(part.dtype)


def write_quadrants(cube: np.ndarray, truth: np.ndarray, folder: Path,
                    shift: bool = False) -> dict[str, tuple[Path, np.ndarray]]:
    """Cut ``cube`` (y, x, band) into its four quadrants, each a GeoTIFF placed where it lies in the grid;
    with ``shift``, the unseen quadrants after :func:`shift_radiometry`.

    Returns:
        per quadrant name: the GeoTIFF's path and its ground-truth quadrant (y, x).
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    height, width = truth.shape
    rows, cols = ((0, height // 2), (height // 2, height)), ((0, width // 2), (width // 2, width))
    out: dict[str, tuple[Path, np.ndarray]] = {}
    for name, ((r0, r1), (c0, c1)) in zip(QUADRANTS, [(r, c) for r in rows for c in cols], strict=True):
        part = cube[r0:r1, c0:c1]
        part = np.ascontiguousarray((shift_radiometry(part, name) if shift else part).transpose(2, 0, 1))  # (band, y, x)
        transform = from_origin(ARCHIVE_ORIGIN[0] + c0 * ARCHIVE_PIXEL, ARCHIVE_ORIGIN[1] - r0 * ARCHIVE_PIXEL,
                                ARCHIVE_PIXEL, ARCHIVE_PIXEL)
        path = folder / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=c1 - c0, height=r1 - r0, count=part.shape[0],
                           dtype=part.dtype.name, crs=CRS.from_epsg(ARCHIVE_CRS), transform=transform,
                           interleave="pixel") as dst:
            dst.write(part)
        out[name] = (path, truth[r0:r1, c0:c1])
    return out


def pooled_scores(labels: dict[str, np.ndarray], truths: dict[str, np.ndarray], names: tuple[str, ...]) -> Any:
    """One Hungarian matching over the labelled pixels of the named quadrants pooled."""
    from hsi_cluster.evaluate import score_clustering

    pred = np.concatenate([labels[name].ravel() for name in names])
    truth = np.concatenate([truths[name].ravel() for name in names])
    return score_clustering(pred, truth, invalid_pred=-1)


def archive(args: argparse.Namespace) -> dict:
    """Issue 12: train on the diagonal quadrants, label all four with ``batch``, score the unseen two."""
    import rasterio

    from hsi_cluster.baseline import kmeans_transfer
    from hsi_cluster.batch import run_batch
    from hsi_cluster.train import train

    cube = np.load(CUBE)  # (y, x, band)
    truth = np.load(TRUTH).astype(np.int64)
    config = preset(args)
    work = Path(tempfile.mkdtemp(prefix="hsic-archive-"))
    results: dict = {"preset": args.preset, "crs": f"EPSG:{ARCHIVE_CRS}", "pixel_m": ARCHIVE_PIXEL,
                     "shift": args.shift, "runs": []}
    rows: dict[str, list] = {}
    width = 47
    try:
        quadrants = write_quadrants(cube, truth, work / "scenes", shift=args.shift)
        truths = {name: t for name, (_, t) in quadrants.items()}
        scenes = {name: path for name, (path, _) in quadrants.items()}
        print("Indian Pines quadrants (EPSG:32616, 20 m): " + ", ".join(
            f"{name.upper()} {t.shape[0]}×{t.shape[1]} ({int((t != 0).sum())} labelled)" for name, t in truths.items())
            + f"; trained on {' + '.join(n.upper() for n in SEEN)}, unseen {' + '.join(n.upper() for n in UNSEEN)}"
            + (" (another acquisition: brightness " + ", ".join(f"{n.upper()} ×{ARCHIVE_SHIFTS[n][0]}" for n in UNSEEN)
               + ", spectral gain ±5 %)" if args.shift else "") + f"; {args.preset} preset, K = {K}", flush=True)

        def fit(names: tuple[str, ...], tag: str, seed: int) -> tuple[Path, float, int]:
            start = time.perf_counter()
            result = train([scenes[n] for n in names], n_clusters=K, output=work / f"{tag}-{seed}.ckpt", config=config,
                           seed=seed, device="cpu", overwrite=True, work_dir=work / "cache", log=lambda m: None)
            return result.checkpoint, time.perf_counter() - start, result.steps

        def label_all(checkpoint: Path, tag: str) -> tuple[dict[str, np.ndarray], float]:
            out = work / f"batch-{tag}"
            done = run_batch([str(scenes[n]) for n in QUADRANTS], checkpoint, out, workers=1, retries=0)
            if done.failed:
                raise RuntimeError(f"batch failed: {done.failed}")
            labels = {}
            for record in done.records:
                name = Path(record["source"]).stem
                with rasterio.open(record["output"]) as src, rasterio.open(record["source"]) as source:
                    if src.crs != source.crs or src.transform != source.transform:  # the batch keeps the grid
                        raise RuntimeError(f"{record['output']}: grid differs from its scene's")
                labels[name] = read_labels(Path(record["output"]))
            return labels, done.seconds

        for seed in args.seeds:
            seen_model, seen_s, seen_steps = fit(SEEN, "diagonal", seed)
            all_model, all_s, all_steps = fit(QUADRANTS, "all", seed)
            seen_labels, seen_batch_s = label_all(seen_model, f"diagonal-{seed}")
            all_labels, all_batch_s = label_all(all_model, f"all-{seed}")
            kmeans = dict(zip(UNSEEN, kmeans_transfer([scenes[n] for n in SEEN], [scenes[n] for n in UNSEEN], K,
                                                      seed=seed), strict=True))
            scored = {
                "diagonal model → unseen NE + SW": pooled_scores(seen_labels, truths, UNSEEN),
                "all-quadrant model → NE + SW": pooled_scores(all_labels, truths, UNSEEN),
                "k-means fitted on NW + SE → unseen NE + SW": pooled_scores(kmeans, truths, UNSEEN),
                "diagonal model → NW + SE (its training px)": pooled_scores(seen_labels, truths, SEEN),
            }
            print(f"seed {seed}: training {seen_s:.0f} s ({seen_steps} steps) on NW + SE, {all_s:.0f} s "
                  f"({all_steps} steps) on all four; batch of four {seen_batch_s:.0f} s and {all_batch_s:.0f} s",
                  flush=True)
            run = {"seed": seed, "train_seconds_diagonal": seen_s, "train_seconds_all": all_s,
                   "steps_diagonal": seen_steps, "steps_all": all_steps}
            results["runs"].append(record_scores(scored, run, rows, width))
        if len(args.seeds) > 1:
            print_means(rows, args.seeds, width)
        unseen, reference, kmeans_acc = (statistics.mean(s.acc for s in rows[name]) for name in list(rows)[:3])
        results["targets"] = {"unseen_minus_all_acc": unseen - reference, "unseen_minus_kmeans_acc": unseen - kmeans_acc}
        print(f"targets (mean ACC): unseen − all-quadrant {unseen - reference:+.3f} (target ≥ −0.03: "
              f"{'met' if unseen - reference >= -0.03 else 'missed'}); unseen − k-means {unseen - kmeans_acc:+.3f} "
              f"(target ≥ +0.05: {'met' if unseen - kmeans_acc >= 0.05 else 'missed'})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("halves", "archive", "all"), default="halves",
                        help="halves: left → right half (issue 5); archive: quadrants and batch (issue 12); all: both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps only (a smoke test)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override key=value (YAML value)")
    parser.add_argument("--shift", action="store_true",
                        help="archive: the unseen quadrants are another acquisition (brightness and spectral gain)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not CUBE.exists() or not TRUTH.exists():
        sys.exit(f"{DATA} not found: the benchmark needs ../shared/data/indian_pines beside the repository")
    results: dict = {"preset": args.preset, "overrides": parse_sets(args.sets), "seeds": args.seeds}
    if args.mode in ("halves", "all"):
        results["halves"] = halves(args)
    if args.mode in ("archive", "all"):
        results["archive"] = archive(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
