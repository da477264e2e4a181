"""Development scenes for the accuracy benchmark, built from the real data in ``../shared/data``.

Every builder is deterministic (a fixed seed), reads only ``../shared/data`` (and the Salinas-A copy
shipped in the package) and writes what it builds into a cache folder given at run time, never into
the repository. A built scene is a cube file the pipeline reads (ENVI as shipped, or a ``.npy``
cube ``(y, x, band)``) and a ground-truth ``.npy`` map (uint8, ``0`` = unlabelled).

Scenes (:data:`SCENE_NAMES`):

``indian_pines``, ``salinas_a``
    The two reference scenes as they are (16 and 6 classes, with unlabelled pixels).
``samson``, ``jasper_ridge``
    The unmixing scenes as they are (ENVI), every pixel labelled with its dominant endmember
    (3 and 4 classes). Their ``.npy`` labels start at 1; if a copy ever used 0 as a real class,
    :func:`every_pixel_labelled` shifts it by +1 so that ``0 = unlabelled`` is not misapplied.
``parcels_ip``, ``parcels_sa``
    Fine-parcel scenes (see :func:`parcel_scene`): 160 × 160 px of rectangles 1–6 px across,
    each filled with real labelled spectra of one Indian Pines (resp. Salinas-A) class, with one
    small, spectrally distinct class. They reproduce the failure of a fixed large receptive field
    at 30–60 m: per-pixel k-means is fine there, k-means on 11 × 11-averaged spectra collapses.
``indian_pines_2x``, ``indian_pines_3x``, ``salinas_a_2x``, ``salinas_a_3x``
    Coarse-resolution versions (see :func:`coarse_scene`): block means of 2 × 2 or 3 × 3 pixels,
    ground truth by majority.
``indian_pines_raw``, ``salinas_a_raw``
    The two scenes as an uncorrected sensor delivers them (see :func:`raw_sensor_scene`): 20 bands of
    noise only where the absorption windows would be, 2 dead bands, NaN nodata gaps.
``jasper_ridge_striped``, ``indian_pines_striped``
    Vertical stripes (see :func:`striped_scene`): an independent offset per band and column, of
    0.1 band standard deviation. Per-pixel k-means hardly notices; a noise-adjusted projection
    (MNF) that misses them ranks them as signal.

k-means on per-band standardised spectra (``benchmarks/accuracy.py --scene all --no-sscc
--kmeans-smoothing 1 3 11``; ACC / NMI, mean of seeds 0–2; S × S: spectra box-averaged first):

================  =========  ==  ========  ===========  ===========  =============
scene             size       K   labelled  per pixel    3 × 3        11 × 11
================  =========  ==  ========  ===========  ===========  =============
indian_pines      145 × 145  16  10249     0.375/0.448  0.390/0.459  0.368/0.434
salinas_a         83 × 86    6   5348      0.770/0.769  0.772/0.774  0.776/0.769
samson            95 × 95    3   9025      0.847/0.591  0.850/0.591  0.866/0.604
jasper_ridge      100 × 100  4   10000     0.886/0.720  0.845/0.678  0.670/0.516
parcels_ip        160 × 160  6   25600     0.608/0.569  0.526/0.413  0.259/0.063
parcels_sa        160 × 160  6   25600     0.739/0.750  0.610/0.438  0.269/0.068
indian_pines_2x   72 × 72    16  2870      0.362/0.431  0.362/0.430  0.413/0.403
indian_pines_3x   48 × 48    16  1156      0.382/0.460  0.376/0.440  0.403/0.440
salinas_a_2x      41 × 43    6   1366      0.769/0.772  0.826/0.827  0.668/0.643
salinas_a_3x      27 × 28    6   572       0.773/0.784  0.825/0.815  0.615/0.572
================  =========  ==  ========  ===========  ===========  =============

    python benchmarks/scenes.py --out /tmp/scenes [NAME ...]   # build and describe
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SAMPLE_SALINAS_A = REPO / "hsi_cluster" / "sample_data" / "salinas_a"

#: Seed of every random draw in the builders (parcel layout, class choice, spectra drawn).
SEED = 0

#: Classes of the fine-parcel scenes: source class id → share of the cells. The last one is the
#: small, spectrally distinct class. Indian Pines: Soybean-mintill, Corn-notill, Woods,
#: Grass-trees, Grass-pasture and Stone-Steel-Towers (its mean lies ≥ 13 standardised units from
#: the other five, whose within-class spread is 5–9). Salinas-A: Corn senesced, the four lettuce
#: stages, and Brocoli green weeds 1.
PARCEL_CLASSES = {
    "indian_pines": {11: 0.30, 2: 0.20, 14: 0.18, 6: 0.14, 5: 0.14, 16: 0.04},
    "salinas_a": {10: 0.30, 12: 0.22, 14: 0.16, 11: 0.14, 13: 0.14, 1: 0.04},
}


@dataclass(frozen=True)
class Scene:
    """A benchmark scene: its cube, its ground truth (0 = unlabelled) and K (classes in the truth)."""

    name: str
    cube: Path
    truth: Path
    n_classes: int
    description: str


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the benchmark scenes need ../shared/data beside the repository")
    return path


def source_cube(source: str) -> tuple[np.ndarray, np.ndarray]:
    """A real scene as ``(cube (y, x, band), truth (y, x) uint8)``: ``indian_pines``, ``salinas_a``, ``samson``
    or ``jasper_ridge`` (the last two every pixel labelled, from 1)."""
    from hsi_cluster.io import open_scene
    from hsi_cluster.io.labels import read_label_map

    if source == "indian_pines":
        cube = np.load(_need(DATA / "indian_pines" / "Indian_pines_corrected.npy"))
        truth = np.load(_need(DATA / "indian_pines" / "Indian_pines_gt.npy"))
    elif source == "salinas_a":
        folder = DATA / "salinas_a" if (DATA / "salinas_a" / "SalinasA_corrected.img").is_file() else SAMPLE_SALINAS_A
        cube = np.asarray(open_scene(_need(folder / "SalinasA_corrected.hdr")).values).transpose(1, 2, 0)
        truth, _ = read_label_map(_need(folder / "SalinasA_gt.mat"))
    elif source in ("samson", "jasper_ridge"):
        cube = np.asarray(open_scene(_need(DATA / source / f"{source}.hdr")).values).transpose(1, 2, 0)
        truth = np.load(_need(DATA / source / f"{source}_gt.npy"))
        truth = truth if truth.min() > 0 else truth.astype(np.int64) + 1  # every pixel labelled
    else:
        raise ValueError(f"unknown source scene {source!r}")
    return cube, truth.astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Fine parcels


def parcel_layout(height: int, width: int, *, min_cell: int = 1, max_cell: int = 6,
                  rng: np.random.Generator) -> np.ndarray:
    """A map of rectangular cells, ids 0…n-1, each ``min_cell``–``max_cell`` px high and wide.

    Rows are cut into strips of random height; each strip is cut into cells of random width,
    independently of the other strips (a brick-wall layout, so cell edges do not line up into a
    grid). The last strip and the last cell of a strip are clipped at the border (and may then be
    narrower than ``min_cell``, never wider than ``max_cell``).
    """
    cells = np.empty((height, width), dtype=np.int64)
    next_id, y = 0, 0
    while y < height:
        h = int(rng.integers(min_cell, max_cell + 1))
        x = 0
        while x < width:
            w = int(rng.integers(min_cell, max_cell + 1))
            cells[y:y + h, x:x + w] = next_id
            next_id += 1
            x += w
        y += h
    return cells


def parcel_scene(source: str = "indian_pines", *, size: int = 160, min_cell: int = 1, max_cell: int = 6,
                 classes: dict[int, float] | None = None, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fine-parcel scene made of real spectra.

    Recipe (deterministic from ``seed``):

    1. Cells: :func:`parcel_layout` of ``size × size`` px, rectangles ``min_cell``–``max_cell``
       (default 1–6) px high and wide.
    2. Classes: cells are visited in raster order; each draws a class from ``classes`` (source
       class id → share; default :data:`PARCEL_CLASSES`, five common classes and one small,
       spectrally distinct one at 4 %), redrawn while it equals the class of the cell on its left
       or of the pixel above its top-left corner, so parcels do not merge into larger fields.
    3. Spectra: every pixel of a cell gets the spectrum of a labelled pixel of its class drawn at
       random (with replacement) from the whole source scene, so the class keeps its natural
       variability and the scene has no spatial texture within a parcel.
    4. Ground truth: the parcel's class, renumbered 1…K in the order of ``classes`` (every pixel
       labelled).

    Returns:
        ``(cube (y, x, band) of the source dtype, truth (y, x) uint8 1…K, cells (y, x) int64 ids)``.
    """
    classes = PARCEL_CLASSES[source] if classes is None else classes
    rng = np.random.default_rng(seed)
    cube, truth = source_cube(source)
    ids = np.array(list(classes), dtype=np.int64)
    shares = np.array(list(classes.values()), dtype=np.float64)
    shares /= shares.sum()
    cells = parcel_layout(size, size, min_cell=min_cell, max_cell=max_cell, rng=rng)
    n_cells = int(cells.max()) + 1
    # Top-left pixel of each cell (cells are rectangles numbered in raster order).
    first = np.unique(cells.ravel(), return_index=True)[1]
    top, left = np.divmod(first, size)
    cell_class = np.zeros(n_cells, dtype=np.int64)  # index into ids, filled in raster order
    for cell in range(n_cells):
        y, x = int(top[cell]), int(left[cell])
        banned = set()
        if x > 0:
            banned.add(cell_class[cells[y, x - 1]])
        if y > 0:
            banned.add(cell_class[cells[y - 1, x]])
        choice = int(rng.choice(len(ids), p=shares))
        while choice in banned:
            choice = int(rng.choice(len(ids), p=shares))
        cell_class[cell] = choice
    label = cell_class[cells]  # 0…K-1
    flat_cube = cube.reshape(-1, cube.shape[2])
    flat_truth = truth.ravel()
    out = np.empty((size * size, cube.shape[2]), dtype=cube.dtype)
    for k, class_id in enumerate(ids):
        where = np.flatnonzero(label.ravel() == k)
        pool = np.flatnonzero(flat_truth == class_id)
        out[where] = flat_cube[rng.choice(pool, size=where.size, replace=True)]
    return out.reshape(size, size, cube.shape[2]), (label + 1).astype(np.uint8), cells


# --------------------------------------------------------------------------------------------------
# Coarse resolution


def majority_labels(truth: np.ndarray, factor: int) -> np.ndarray:
    """Ground truth of ``factor × factor`` blocks (the map is cropped to whole blocks).

    A block is labelled when its labelled pixels are at least as many as its unlabelled ones
    (unlabelled pixels are not the majority); it then takes the most frequent class among its
    labelled pixels, the smallest class id on a tie. Otherwise (no labelled pixel, or mostly
    unlabelled) it is 0. A mixed block thus carries the label of its largest component, as the
    dominant-endmember truth of Samson and Jasper Ridge does.
    """
    rows, cols = truth.shape[0] // factor, truth.shape[1] // factor
    blocks = truth[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows, cols, factor * factor).astype(np.int64)
    counts = np.zeros((rows, cols, int(truth.max()) + 1), dtype=np.int64)
    for i in range(factor * factor):
        np.add.at(counts, (*np.indices((rows, cols)), blocks[..., i]), 1)
    labelled = counts[..., 1:].sum(-1)
    majority = counts[..., 1:].argmax(-1) + 1  # argmax: first (smallest id) on a tie
    return np.where((labelled > 0) & (labelled >= counts[..., 0]), majority, 0).astype(np.uint8)


def block_mean(cube: np.ndarray, factor: int) -> np.ndarray:
    """Mean of the radiance in each ``factor × factor`` block of a ``(y, x, band)`` cube, float32."""
    rows, cols = cube.shape[0] // factor, cube.shape[1] // factor
    blocks = cube[:rows * factor, :cols * factor].astype(np.float64)
    return blocks.reshape(rows, factor, cols, factor, cube.shape[2]).mean(axis=(1, 3)).astype(np.float32)


def coarse_scene(source: str, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """``source`` block-averaged ``factor``× and its majority ground truth (:func:`majority_labels`)."""
    cube, truth = source_cube(source)
    return block_mean(cube, factor), majority_labels(truth, factor)


# --------------------------------------------------------------------------------------------------
# Raw sensor data: noise-only and dead bands, nodata gaps

#: Noise-only bands inserted in the raw-sensor scenes, in two runs (water-vapour absorption windows).
NOISE_BANDS = (12, 8)
#: Dead (constant 0) bands appended.
DEAD_BANDS = 2


def raw_sensor_scene(source: str) -> tuple[np.ndarray, np.ndarray]:
    """``source`` as an uncorrected sensor delivers it: float32 ``(y, x, band)`` with bands of noise only.

    :data:`NOISE_BANDS` runs of bands inserted at 60 % and 80 % of the spectrum hold Gaussian noise
    around 5 % of the scene's mean level, each with its own spread (0.5–5 % of that level), as in the
    water-vapour absorption windows that corrected releases drop; :data:`DEAD_BANDS` constant-zero bands
    end the spectrum; NaN in every band marks nodata: three scan lines at a third of the height and a
    hole of 6 × 6 pixels near the centre. The ground truth is 0 on the nodata pixels.
    """
    cube, truth = source_cube(source)
    cube = cube.astype(np.float32)
    height, width, bands = cube.shape
    rng = np.random.default_rng(SEED)
    level = float(cube.mean())
    parts, start = [], 0
    for at, count in zip((int(bands * 0.6), int(bands * 0.8)), NOISE_BANDS, strict=True):
        spread = level * rng.uniform(0.005, 0.05, count)
        parts += [cube[..., start:at], (level * 0.05 + rng.normal(size=(height, width, count)) * spread)]
        start = at
    parts += [cube[..., start:], np.zeros((height, width, DEAD_BANDS))]
    out = np.concatenate(parts, axis=-1).astype(np.float32)
    nodata = np.zeros((height, width), dtype=bool)
    nodata[height // 3:height // 3 + 3] = True
    nodata[height // 2 - 3:height // 2 + 3, width // 2 - 3:width // 2 + 3] = True
    out[nodata] = np.nan
    return out, np.where(nodata, 0, truth).astype(np.uint8)


#: Standard deviation of the stripe offsets, in units of each band's standard deviation.
STRIPE_STRENGTH = 0.1


def striped_scene(source: str, strength: float = STRIPE_STRENGTH) -> tuple[np.ndarray, np.ndarray]:
    """``source`` with vertical stripes: float32 ``(y, x, band)`` plus an offset per band and column.

    The offsets are independent Gaussians of ``strength`` times the band's standard deviation, as
    left by a pushbroom sensor's detector elements when the relative calibration is imperfect
    (Hyperion's stripes are the known case). The truth is unchanged.
    """
    cube, truth = source_cube(source)
    cube = cube.astype(np.float32)
    offsets = np.random.default_rng(SEED).normal(0, strength, (cube.shape[1], cube.shape[2]))  # (x, band)
    return cube + (offsets * cube.std(axis=(0, 1)))[None].astype(np.float32), truth


# --------------------------------------------------------------------------------------------------
# Registry


def every_pixel_labelled(truth_path: Path, out_dir: Path) -> Path:
    """``truth_path`` if its labels start at 1, else a copy shifted by +1 in ``out_dir``.

    For scenes whose ground truth labels every pixel: a 0 there is a real class, not "unlabelled".
    """
    truth = np.load(_need(truth_path))
    if truth.min() > 0:
        return truth_path
    shifted = out_dir / f"{truth_path.stem}_from1.npy"
    np.save(shifted, (truth.astype(np.int64) + 1).astype(np.uint8))
    return shifted


def _save(out_dir: Path, name: str, cube: np.ndarray, truth: np.ndarray) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cube_path, truth_path = out_dir / f"{name}.npy", out_dir / f"{name}_gt.npy"
    np.save(cube_path, np.ascontiguousarray(cube))
    np.save(truth_path, truth.astype(np.uint8))
    return cube_path, truth_path


def _derived_scene(out_dir: Path, name: str, cube: np.ndarray, truth: np.ndarray, description: str) -> Scene:
    """A scene built here: saved into ``out_dir`` (see :func:`_save`), its class count read from the truth."""
    cube_path, truth_path = _save(out_dir, name, cube, truth)
    return Scene(name, cube_path, truth_path, _classes(truth_path), description)


def _classes(truth_path: Path) -> int:
    return int(np.count_nonzero(np.unique(np.load(truth_path)) != 0)) if truth_path.suffix == ".npy" else 0


def build_scene(name: str, out_dir: str | os.PathLike[str]) -> Scene:
    """Build (or locate) scene ``name``; derived scenes are written into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if name == "indian_pines":
        return Scene(name, _need(DATA / "indian_pines" / "Indian_pines_corrected.npy"),
                     _need(DATA / "indian_pines" / "Indian_pines_gt.npy"), 16, "Indian Pines as it is")
    if name == "salinas_a":
        return Scene(name, _need(SAMPLE_SALINAS_A / "SalinasA_corrected.hdr"), _need(SAMPLE_SALINAS_A / "SalinasA_gt.mat"),
                     6, "Salinas-A as it is (the copy shipped in the package)")
    if name in ("samson", "jasper_ridge"):
        truth = every_pixel_labelled(DATA / name / f"{name}_gt.npy", out_dir)
        return Scene(name, _need(DATA / name / f"{name}.hdr"), truth, _classes(truth),
                     f"{name} as it is, dominant endmember as label")
    if name in ("parcels_ip", "parcels_sa"):
        source = "indian_pines" if name == "parcels_ip" else "salinas_a"
        cube, truth, _ = parcel_scene(source)
        return _derived_scene(out_dir, name, cube, truth, f"fine parcels 1-6 px of real {source} spectra")
    for source in ("indian_pines", "salinas_a"):
        for factor in (2, 3):
            if name == f"{source}_{factor}x":
                cube, truth = coarse_scene(source, factor)
                return _derived_scene(out_dir, name, cube, truth,
                                      f"{source} block-averaged {factor}x, majority truth")
    if name in ("indian_pines_raw", "salinas_a_raw"):
        source = name.removesuffix("_raw")
        cube, truth = raw_sensor_scene(source)
        return _derived_scene(out_dir, name, cube, truth, f"{source} with {sum(NOISE_BANDS)} noise-only and "
                              f"{DEAD_BANDS} dead bands, NaN nodata gaps")
    if name in ("jasper_ridge_striped", "indian_pines_striped"):
        source = name.removesuffix("_striped")
        cube, truth = striped_scene(source)
        return _derived_scene(out_dir, name, cube, truth, f"{source} with column stripes of {STRIPE_STRENGTH} band std")
    raise ValueError(f"unknown scene {name!r}; choose from {', '.join(SCENE_NAMES)}")


#: Every scene :func:`build_scene` knows.
SCENE_NAMES = ("indian_pines", "salinas_a", "samson", "jasper_ridge", "parcels_ip", "parcels_sa",
               "indian_pines_2x", "indian_pines_3x", "salinas_a_2x", "salinas_a_3x", "indian_pines_raw",
               "salinas_a_raw", "jasper_ridge_striped", "indian_pines_striped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"scenes to build (default: all of {', '.join(SCENE_NAMES)})")
    parser.add_argument("--out", type=Path, required=True, help="folder for the built scenes")
    args = parser.parse_args()
    from hsi_cluster.io import open_scene
    from hsi_cluster.io.labels import read_label_map

    for name in args.names or SCENE_NAMES:
        scene = build_scene(name, args.out)
        shape = open_scene(scene.cube).shape
        truth, _ = read_label_map(scene.truth)
        labelled = int(np.count_nonzero(truth))
        print(f"{name:16s} {shape[1]:4d} x {shape[2]:4d} x {shape[0]:3d}  K={scene.n_classes:2d}  "
              f"labelled {labelled:6d}  {scene.description}")


if __name__ == "__main__":
    main()
