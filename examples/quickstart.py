"""hsicluster's Python API end to end on the bundled Salinas-A scene.

    python examples/quickstart.py                    # the full `fast` training (49 s on 2 cores, 2026-12-06)
    python examples/quickstart.py --steps 50         # a short training (or HSICLUSTER_QUICKSTART_STEPS=50)
    python examples/quickstart.py --out my-results   # where the files go (default: quickstart-out)

Open a scene, train a model with K = 6 clusters, label the scene in memory (an xarray DataArray with its
CRS and transform, ready for rioxarray), label it again to a Cloud-Optimised GeoTIFF with a quicklook and a
STAC Item, score the labels against the ground truth, save the model and load it back. The tests run this
script with a short training.
"""

from __future__ import annotations

import argparse
import os
from importlib.resources import files
from pathlib import Path

import rioxarray

import hsi_cluster as hc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=int(os.environ.get("HSICLUSTER_QUICKSTART_STEPS", "0")) or None,
                        help="optimiser steps (default: the fast preset's full length; env HSICLUSTER_QUICKSTART_STEPS)")
    parser.add_argument("--out", type=Path, default=Path("quickstart-out"), help="folder for the outputs")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    sample = files("hsi_cluster.sample_data") / "salinas_a"
    scene = hc.open_scene(str(sample / "SalinasA_corrected.hdr"))  # lazy: reads the header only
    print(f"scene: {scene.sizes['band']} bands, {scene.sizes['y']} x {scene.sizes['x']} pixels")

    # Train K = 6 clusters with the "fast" preset; any training option is a keyword (steps=, epochs=, ...).
    overrides = {"steps": args.steps} if args.steps else {}
    model = hc.train(scene, k=6, seed=0, device=args.device, progress=True, **overrides)
    print(f"trained: {model}")

    # In memory: a (y, x) DataArray of cluster ids, nodata 255; .rio gives its CRS and transform.
    labels = model.predict(scene, device=args.device)
    print(f"labels: {labels.dtype} {dict(labels.sizes)}, nodata {labels.rio.nodata}, CRS {labels.rio.crs}")
    print("pixels per cluster:", {int(k): int((labels == k).sum()) for k in range(model.k)})

    # To a file: the tiled path of `hsicluster predict` (for scenes larger than memory), with a quicklook
    # and a STAC Item beside the label COG.
    result = model.predict(scene, output=args.out / "labels.tif", quicklook=args.out / "labels.png", stac=True,
                           overwrite=True, device=args.device)
    print(f"wrote {result.output}, {result.quicklook} and {result.output.with_suffix('.stac.json')}")
    written = rioxarray.open_rasterio(result.output).squeeze("band", drop=True)
    assert (written.values == labels.values).all()  # the same labels, in memory or tiled to a file

    # Scores against the ground truth: the numbers `hsicluster evaluate` prints.
    scores = hc.evaluate(labels, str(sample / "SalinasA_gt.mat"))
    print(f"ACC {scores.acc:.3f}  NMI {scores.nmi:.3f}  Kappa {scores.kappa:.3f}  ARI {scores.ari:.3f}")

    # Save the model and load it back: byte for byte the same checkpoint.
    path = model.save(args.out / "salinas_a.ckpt", overwrite=True)
    assert hc.load_model(path).sha256 == model.sha256
    print(f"saved {path}")


if __name__ == "__main__":
    main()
