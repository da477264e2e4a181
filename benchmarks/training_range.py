"""The training-range check of predict (issue 12): which scenes it warns of, and what their labels are worth.

For each real scene the ``fast`` preset is trained on its left half (a GeoTIFF of its own, seed
``--seed``), then ``Model.predict`` labels, in memory: the left half (its training pixels), the right
half as delivered (unseen ground of the same flight) and the right half times a brightness factor
(another acquisition: ``--factors``, default 0.5 … 2). Printed per row: the share of the valid pixels
outside the training range (``outside_share``, the figure predict warns of past 50 %), the gain and tilt across the
bands at which the row's values fit the range best and the relative fit there (``matching_gain``, ``matching_tilt``,
``matching_fit_ratio``), whether predict warned, ACC / NMI, and the gain and tilt ``--match-brightness`` applied with
the ACC / NMI it gave on the row's labelled pixels (Hungarian matching per row, so a brightness change
that only swaps what the labels mean is not counted: read ACC as an upper bound).

    python benchmarks/training_range.py --scene jasper_ridge samson salinas_a indian_pines --seed 0

``--flagged 0.05 0.5 --flagged-factors 1.5 0.67`` adds rows of the right half times each of those factors with that
share of its bands flagged bad (``good_band`` false: predict reads them as the training mean); ``--shapes`` adds
rows whose spectrum changes shape (a ±5 % sine across the bands; linear tilts of ±10 % and +5 % from the first band to
the last, which the check's tilts can undo; haze: +20 % of the mean value fading over the first quarter of the bands).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes import source_cube  # noqa: E402

SOURCES = ("indian_pines", "salinas_a", "samson", "jasper_ridge")
FACTORS = (0.5, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 2.0)
CLASSES = {"indian_pines": 16, "salinas_a": 6, "samson": 3, "jasper_ridge": 4}


def _geotiff(path: Path, cube: np.ndarray) -> Path:
    """``cube`` (band, y, x) float32 as a GeoTIFF in UTM 16N, 20 m pixels (the scenes ship without georeferencing)."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2], count=cube.shape[0],
                       dtype="float32", crs="EPSG:32616", transform=from_origin(500_000, 4_480_000, 20, 20)) as dst:
        dst.write(cube)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--factors", nargs="+", type=float, default=list(FACTORS))
    parser.add_argument("--flagged", nargs="*", type=float, default=[],
                        help="shares of the bands flagged bad in extra rows")
    parser.add_argument("--flagged-factors", nargs="+", type=float, default=[1.0, 1.5, 0.67])
    parser.add_argument("--shapes", action="store_true", help="add rows of a sine, a tilt and haze across the bands")
    args = parser.parse_args()

    import xarray as xr

    import hsi_cluster as hc
    from hsi_cluster.evaluate import score_clustering

    for name in args.scene:
        cube, truth = source_cube(name)
        cube = cube.transpose(2, 0, 1).astype(np.float32)  # (band, y, x)
        half = cube.shape[2] // 2
        with tempfile.TemporaryDirectory(prefix="hsicluster-range-") as folder:
            left = _geotiff(Path(folder) / f"{name}_left.tif", cube[:, :, :half])
            started = time.perf_counter()
            model = hc.train(left, CLASSES[name], seed=args.seed, work_dir=Path(folder) / "work")
            print(f"{name}: trained on the left half in {time.perf_counter() - started:.0f} s", flush=True)
            right, n_bands = cube[:, :, half:], cube.shape[0]
            everything = np.ones(n_bands, bool)
            rows = [("left half (training pixels)", cube[:, :, :half], truth[:, :half], everything)]
            rows += [(f"right half × {factor:g}", right * np.float32(factor), truth[:, half:], everything)
                     for factor in args.factors]
            order = np.random.default_rng(0).permutation(n_bands)  # the bands flagged: the first of a fixed order
            for factor in args.flagged_factors:
                for share in args.flagged:
                    good = everything.copy()
                    good[order[:round(share * n_bands)]] = False
                    rows.append((f"right × {factor:g}, {share:.0%} flagged", right * np.float32(factor),
                                 truth[:, half:], good))
            if args.shapes:
                across = np.linspace(0, 1, n_bands, dtype=np.float32)[:, None, None]
                rows += [(label, values.astype(np.float32), truth[:, half:], everything) for label, values in (
                    ("right, ±5 % sine", right * (1 + 0.05 * np.sin(4 * np.pi * across))),
                    ("right, +10 % tilt", right * (1 + 0.1 * (2 * across - 1))),
                    ("right, −10 % tilt", right * (1 - 0.1 * (2 * across - 1))),
                    ("right, +5 % tilt", right * (1 + 0.05 * (2 * across - 1))),
                    ("right × 1.25, +10 % tilt", 1.25 * right * (1 + 0.1 * (2 * across - 1))),
                    ("right, haze", right + 0.2 * right.mean() * np.clip(1 - 4 * across, 0, 1)))]
            for label, values, labelled, good in rows:
                scene = xr.DataArray(values, dims=("band", "y", "x"), attrs={"source": label},
                                     coords={"good_band": ("band", good)})
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    labels = model.predict(scene, device="cpu")
                warned = any("the spectra the model was trained on" in str(w.message)
                             or "fit the training spectra best" in str(w.message) for w in caught)
                scores = score_clustering(np.asarray(labels.values, np.int64), labelled,
                                          invalid_pred=int(labels.rio.nodata))
                share = labels.attrs.get("outside_share", float("nan"))
                gain = labels.attrs.get("matching_gain", float("nan"))
                tilt = labels.attrs.get("matching_tilt", float("nan"))
                ratio = labels.attrs.get("matching_fit_ratio", float("nan"))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    matched = model.predict(scene, device="cpu", match_brightness=True)
                matched_scores = score_clustering(np.asarray(matched.values, np.int64), labelled,
                                                  invalid_pred=int(matched.rio.nodata))
                print(f"  {label:30s} outside {share:6.3f}  best gain {gain:5.2f} tilt {tilt:+.2f} (fit {ratio:4.2f})  "
                      f"warned {'yes' if warned else 'no ':3s}  ACC {scores.acc:.3f}  NMI {scores.nmi:.3f}  "
                      f"| --match-brightness: gain {matched.attrs['applied_gain']:.2f} "
                      f"tilt {matched.attrs['applied_tilt']:+.2f}  ACC {matched_scores.acc:.3f}  "
                      f"NMI {matched_scores.nmi:.3f}", flush=True)


if __name__ == "__main__":
    main()
