"""Scoring of a clustering against a ground-truth label map.

Follows the project's evaluation protocol: only labelled pixels (truth != ``unlabelled``) are
scored; predicted cluster ids are matched one-to-one to class ids with the Hungarian algorithm
(maximising matched pixels) before ACC, Cohen's kappa and per-class accuracy are computed. NMI,
ARI and purity need no matching.

Pure numpy / scipy / scikit-learn; no file I/O.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import adjusted_rand_score, cohen_kappa_score, normalized_mutual_info_score

from hsi_cluster.errors import HsiClusterError, MetadataWarning

__all__ = [
    "ClusteringScores",
    "EvaluationError",
    "default_invalid_pred",
    "match_clusters",
    "mean_std",
    "score_clustering",
    "score_label_files",
]

UNMATCHED = -1
"""Value that :func:`match_clusters` gives a predicted cluster left without a class."""


class EvaluationError(HsiClusterError, ValueError):
    """Inputs to the scoring functions are unusable (shape, dtype, nothing to score)."""


def _as_int_labels(a: Any, name: str) -> np.ndarray:
    """Returns ``a`` flattened as int64, or raises if it is not integer-like."""
    arr = np.asarray(a)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64, copy=False).ravel()
    if arr.dtype.kind == "f":
        flat = arr.ravel()
        if not np.all(np.isfinite(flat)):
            raise EvaluationError(
                f"{name} holds NaN or infinite values; label maps must be integer ids. "
                f"Replace missing values with an explicit label (e.g. the unlabelled or "
                f"invalid_pred value) first."
            )
        if not np.all(flat == np.round(flat)):
            raise EvaluationError(
                f"{name} holds non-integer values (dtype {arr.dtype}); pass cluster/class ids, "
                f"not scores or probabilities (take argmax first)."
            )
        return flat.astype(np.int64)
    raise EvaluationError(
        f"{name} has dtype {arr.dtype}, which is not integer-like; pass an integer array of "
        f"cluster/class ids."
    )


def _check_pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validates shapes and dtypes; returns both flattened as int64."""
    pred_shape, truth_shape = np.shape(pred), np.shape(truth)
    if pred_shape != truth_shape:
        raise EvaluationError(
            f"pred has shape {pred_shape} but truth has shape {truth_shape}; they must be the "
            f"same pixel grid. Reshape the prediction to the ground-truth map (rows, cols)."
        )
    return _as_int_labels(pred, "pred"), _as_int_labels(truth, "truth")


def _contingency(
    pred: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (clusters, classes, table[cluster, class], cluster_index, class_index)."""
    clusters, ki = np.unique(pred, return_inverse=True)
    classes, ci = np.unique(truth, return_inverse=True)
    ki, ci = ki.ravel(), ci.ravel()
    table = np.bincount(ki * classes.size + ci, minlength=clusters.size * classes.size)
    return clusters, classes, table.reshape(clusters.size, classes.size), ki, ci


def _hungarian(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns matched (row, col) index pairs maximising the sum of ``table``."""
    if table.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    return linear_sum_assignment(table, maximize=True)


def match_clusters(pred: np.ndarray, truth: np.ndarray) -> dict[int, int]:
    """Matches predicted clusters to ground-truth classes one-to-one (Hungarian algorithm).

    All pixels given are used; filter out unlabelled pixels before calling. Label values may be
    arbitrary, non-contiguous integers. When there are more clusters than classes, the clusters
    left over map to ``UNMATCHED`` (-1); when there are fewer, some classes get no cluster.

    Args:
        pred: Predicted cluster ids, any shape.
        truth: Ground-truth class ids, same shape as ``pred``.

    Returns:
        Mapping from every predicted cluster id present to its class id (or -1), maximising the
        number of pixels whose mapped prediction equals the truth.

    Raises:
        EvaluationError: (a ValueError) on shape mismatch or non-integer labels.
    """
    p, t = _check_pair(pred, truth)
    clusters, classes, table, _, _ = _contingency(p, t)
    mapping = {int(k): UNMATCHED for k in clusters}
    rows, cols = _hungarian(table)
    for r, c in zip(rows, cols, strict=True):
        mapping[int(clusters[r])] = int(classes[c])
    return mapping


@dataclass(frozen=True)
class ClusteringScores:
    """Scores of one clustering on the labelled pixels of a scene.

    Attributes:
        acc: Pixels whose matched cluster equals their class, over ``n_scored``.
        nmi: Normalised mutual information (arithmetic normalisation, sklearn default).
        kappa: Cohen's kappa between truth and the mapped prediction (NaN if undefined, e.g. a
            single class predicted perfectly).
        ari: Adjusted Rand index.
        purity: Sum over clusters of their largest class count, over ``n_scored``
            (invalid predictions count as wrong).
        n_scored: Labelled pixels scored.
        n_invalid_pred: Scored pixels whose prediction was ``invalid_pred``.
        n_clusters_predicted: Distinct valid cluster ids among scored pixels.
        n_classes: Distinct ground-truth classes among scored pixels.
        unlabelled: the ground-truth value left out as unlabelled (None: every pixel scored).
        n_unlabelled: pixels holding it, not scored.
        per_class: Class id -> accuracy (recall) of that class after matching.
        class_counts: Class id -> labelled pixel count.
        mapping: Valid cluster id -> matched class id (-1 when unmatched).
        class_names: Class id -> name, for the scored classes the ground truth names (an ENVI
            classification's ``class names``, a GDAL raster's category names or attribute table);
            empty when it names none.
    """

    acc: float
    nmi: float
    kappa: float
    ari: float
    purity: float
    n_scored: int
    n_invalid_pred: int
    n_clusters_predicted: int
    n_classes: int
    per_class: dict[int, float]
    class_counts: dict[int, int]
    mapping: dict[int, int]
    class_names: dict[int, str] = field(default_factory=dict)
    unlabelled: int | None = None
    n_unlabelled: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Returns plain JSON-serialisable types.

        Dict keys become strings (so a JSON round trip is exact) and non-finite floats become
        ``None``.
        """

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "acc": num(self.acc),
            "nmi": num(self.nmi),
            "kappa": num(self.kappa),
            "ari": num(self.ari),
            "purity": num(self.purity),
            "n_scored": int(self.n_scored),
            "n_invalid_pred": int(self.n_invalid_pred),
            "n_clusters_predicted": int(self.n_clusters_predicted),
            "n_classes": int(self.n_classes),
            "per_class": {str(k): num(v) for k, v in self.per_class.items()},
            "class_counts": {str(k): int(v) for k, v in self.class_counts.items()},
            "mapping": {str(k): int(v) for k, v in self.mapping.items()},
            "class_names": {str(k): v for k, v in self.class_names.items()},
            "unlabelled": self.unlabelled,
            "n_unlabelled": int(self.n_unlabelled),
        }

    def format_table(self) -> str:
        """Returns a multi-line text report: overall metrics, then one row per class."""
        cluster_of = {c: k for k, c in self.mapping.items() if c != UNMATCHED}
        lines = [
            f"Scored pixels: {self.n_scored}  (invalid predictions: {self.n_invalid_pred})",
            f"Clusters predicted: {self.n_clusters_predicted}  Classes: {self.n_classes}",
            *([f"Not scored: {self.n_unlabelled} pixels of ground-truth value {self.unlabelled} (unlabelled)"]
              if self.unlabelled is not None else []),
            f"  ACC     {self.acc:.4f}",
            f"  NMI     {self.nmi:.4f}",
            f"  Kappa   {self.kappa:.4f}" if math.isfinite(self.kappa) else
            "  Kappa   n/a (the scored pixels are one class, all in one cluster: chance agreement is total)",
            f"  ARI     {self.ari:.4f}",
            f"  Purity  {self.purity:.4f}",
            "",
        ]
        width = max([len("Name"), *(len(name) for name in self.class_names.values())])

        def named(text: str) -> str:
            """The Name column, present when the ground truth names its classes."""
            return f"  {text:<{width}}" if self.class_names else ""

        lines.append(f"{'Class':>7}{named('Name')} {'Pixels':>9} {'Accuracy':>9} {'Cluster':>8}")
        for c in sorted(self.per_class):
            k = cluster_of.get(c)
            lines.append(
                f"{c:>7d}{named(self.class_names.get(c, '-'))} {self.class_counts[c]:>9d} "
                f"{self.per_class[c]:>9.4f} {'-' if k is None else str(k):>8}"
            )
        return "\n".join(lines)


def default_invalid_pred(pred: Any) -> int | None:
    """The "no prediction" value of a label map: its nodata when it carries one (a DataArray's
    ``nodata`` or ``_FillValue`` attribute, or rioxarray's ``.rio.nodata``), else -1 for signed and
    float labels, the dtype's maximum for uint8/uint16 labels (``predict``'s nodata), None otherwise."""
    attrs = getattr(pred, "attrs", None) or {}
    nodata = attrs.get("nodata", attrs.get("_FillValue"))
    if nodata is None and hasattr(pred, "rio"):
        try:
            nodata = pred.rio.nodata
        except Exception:  # noqa: BLE001 — rioxarray absent or no spatial dims: fall back to the dtype
            nodata = None
    if nodata is not None and np.isfinite(nodata) and float(nodata).is_integer():
        return int(nodata)
    dtype = np.asarray(pred).dtype if not hasattr(pred, "dtype") else np.dtype(pred.dtype)
    if dtype.kind == "u":
        return int(np.iinfo(dtype).max) if dtype.itemsize <= 2 else None
    return -1 if dtype.kind in "if" else None


def score_clustering(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    unlabelled: int | None = 0,
    invalid_pred: int | str | None = "auto",
    class_names: Mapping[int, str] | None = None,
) -> ClusteringScores:
    """Scores a clustering on the labelled pixels of a ground-truth map.

    Invalid predictions (``pred == invalid_pred``, e.g. a nodata value) on labelled pixels are
    still scored: they count as wrong for ACC, kappa, per-class accuracy and purity, are never
    matched to a class, and NMI and ARI are those of the labelled pixels times the share of the scored pixels
    that are labelled (the same as without them when every scored pixel is labelled).

    Args:
        pred: Predicted cluster ids, any shape (flattened).
        truth: Ground-truth class ids, same shape as ``pred``.
        unlabelled: Truth value of pixels to ignore; ``None`` scores every pixel.
        invalid_pred: Prediction value that marks "no prediction"; ``None`` if there is none.
            ``"auto"`` (the default) gives the same scores as ``hsicluster evaluate``: the nodata
            of ``pred`` when it carries one (a DataArray's ``nodata``/``_FillValue`` attribute or
            ``.rio.nodata``), else -1 for signed labels and the dtype's maximum for uint8/uint16
            labels (the nodata value of a label raster written by ``predict``: 255 or 65535).
        class_names: Class id -> name (e.g. :func:`~hsi_cluster.io.labels.truth_class_names`); the
            scored classes among them are kept in the result and shown by :meth:`~ClusteringScores.format_table`.
            When they name some scored classes but not all, a :class:`~hsi_cluster.errors.MetadataWarning`
            says which are shown without a name.

    Returns:
        The scores.

    Raises:
        EvaluationError: (a ValueError) on shape mismatch, non-integer labels, or when no
            pixel is labelled.
    """
    if isinstance(invalid_pred, str):
        if invalid_pred != "auto":
            raise EvaluationError(f"invalid_pred must be an integer, None or 'auto', got {invalid_pred!r}")
        invalid_pred = default_invalid_pred(pred)
    p, t = _check_pair(pred, truth)
    n_unlabelled = 0
    if unlabelled is not None:
        keep = t != unlabelled
        n_unlabelled = int(keep.size - np.count_nonzero(keep))
        p, t = p[keep], t[keep]
    n = int(t.size)
    if n == 0:
        raise EvaluationError(
            f"no labelled pixels to score: every ground-truth pixel equals unlabelled="
            f"{unlabelled!r} (or the maps are empty). Check that the right ground-truth map and "
            f"unlabelled value were given."
        )

    names = class_names or {}
    invalid = (p == invalid_pred) if invalid_pred is not None else np.zeros(n, dtype=bool)
    valid = ~invalid
    n_invalid = int(invalid.sum())

    classes, ci_all, class_counts = np.unique(t, return_inverse=True, return_counts=True)
    ci_all = ci_all.ravel()
    clusters, ki = np.unique(p[valid], return_inverse=True)
    ki, ci = ki.ravel(), ci_all[valid]
    table = np.bincount(ki * classes.size + ci, minlength=clusters.size * classes.size)
    table = table.reshape(clusters.size, classes.size)
    rows, cols = _hungarian(table)

    mapping = {int(k): UNMATCHED for k in clusters}
    for r, c in zip(rows, cols, strict=True):
        mapping[int(clusters[r])] = int(classes[c])

    # Class index each valid pixel is mapped to (-1: its cluster got no class).
    class_of_cluster = np.full(clusters.size, -1, dtype=np.int64)
    class_of_cluster[rows] = cols
    correct = np.zeros(n, dtype=bool)
    correct[valid] = class_of_cluster[ki] == ci
    acc = float(correct.sum() / n)
    hits = np.bincount(ci_all[correct], minlength=classes.size)
    per_class = {int(c): float(h / cnt) for c, h, cnt in zip(classes, hits, class_counts, strict=True)}

    # Mapped prediction for kappa: unmatched clusters and invalid pixels get a value no class has.
    sentinel = int(classes.min()) - 1
    lut = np.append(classes, sentinel)  # index -1 -> sentinel
    mapped = np.full(n, sentinel, dtype=np.int64)
    mapped[valid] = lut[class_of_cluster[ki]]
    # one class and one label (a crop of a single field) leave kappa undefined: NaN, said by the report, not by
    # scikit-learn's warnings naming its own files
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        kappa = float(cohen_kappa_score(t, mapped))

    # NMI and ARI of the labelled pixels, times the share of the scored pixels that are labelled: as one more
    # cluster, a class left wholly unlabelled formed a pure one (a map with a field masked out scored 1.0), and as
    # clusters of one pixel each, an all-nodata map scored NMI 0.4
    coverage = float(valid.sum() / n)
    nmi = float(normalized_mutual_info_score(t[valid], p[valid])) * coverage if valid.any() else 0.0
    ari = float(adjusted_rand_score(t[valid], p[valid])) * coverage if valid.any() else 0.0
    purity = float(table.max(axis=1).sum() / n) if table.size else 0.0

    return ClusteringScores(
        acc=acc,
        nmi=nmi,
        kappa=kappa,
        ari=ari,
        purity=purity,
        n_scored=n,
        n_invalid_pred=n_invalid,
        n_clusters_predicted=int(clusters.size),
        n_classes=int(classes.size),
        per_class=per_class,
        class_counts={int(c): int(k) for c, k in zip(classes, class_counts, strict=True)},
        mapping=mapping,
        class_names=_scored_names(names, per_class),
        unlabelled=None if unlabelled is None else int(unlabelled),
        n_unlabelled=n_unlabelled,
    )


def _scored_names(names: Mapping[int, str], scored: Mapping[int, float]) -> dict[int, str]:
    """The names of the scored classes; a warning when the names miss some of them."""
    unnamed = [c for c in scored if c not in names]
    if names and unnamed:
        listed = ", ".join(map(str, unnamed[:10])) + (", …" if len(unnamed) > 10 else "")
        warnings.warn(MetadataWarning(
            f"the ground truth's class names cover {len(scored) - len(unnamed)} of its {len(scored)} scored classes; "
            f"class{'es' if len(unnamed) > 1 else ''} {listed} {'are' if len(unnamed) > 1 else 'is'} shown without "
            "a name"), stacklevel=3)
    return {c: str(names[c]) for c in scored if c in names}


def mean_std(scores: list[ClusteringScores]) -> dict[str, tuple[float, float]]:
    """Aggregates runs (e.g. seeds) into mean and population std (``ddof=0``).

    Args:
        scores: One result per run; at least one.

    Returns:
        ``{"acc": (mean, std), "nmi": ..., "kappa": ..., "ari": ...}``. A NaN kappa in any run
        makes its mean and std NaN.

    Raises:
        EvaluationError: (a ValueError) if ``scores`` is empty.
    """
    if len(scores) == 0:
        raise EvaluationError("mean_std got no scores; pass one ClusteringScores per run.")
    out: dict[str, tuple[float, float]] = {}
    for name in ("acc", "nmi", "kappa", "ari"):
        vals = np.array([getattr(s, name) for s in scores], dtype=np.float64)
        out[name] = (float(vals.mean()), float(vals.std(ddof=0)))
    return out


#: Values that mark unlabelled pixels in ground truths more often than they name a class.
UNLABELLED_LOOKALIKES = (255, 65535, -1, -9999)


def _warn_if_another_value_looks_unlabelled(truth_path: str | os.PathLike[str], reference: np.ndarray) -> None:
    """With no nodata declared, 0 is taken as unlabelled; warn when the truth also holds a value that usually is."""
    for value in UNLABELLED_LOOKALIKES:
        held = int(np.count_nonzero(reference == value))
        if held:
            zeros = int(np.count_nonzero(reference == 0))
            warnings.warn(MetadataWarning(
                f"{truth_path}: declares no nodata value, so 0 is taken as unlabelled ({zeros} pixels), but it also "
                f"holds {value} ({held} pixels), which is scored as a class; if {value} marks unlabelled pixels, pass "
                f"--unlabelled {value}"), stacklevel=3)
            return


def score_label_files(labels_path: str | os.PathLike[str], truth_path: str | os.PathLike[str], *,
                      unlabelled: int | None | str = "auto", var: str | None = None) -> ClusteringScores:
    """:func:`score_clustering` of a label raster against a ground-truth file, as ``hsicluster evaluate`` scores them.

    Both are read by :func:`~hsi_cluster.io.labels.read_label_pair` (one pixel grid; truth nodata/NaN pixels
    become ``unlabelled``); the labels' nodata on labelled pixels counts as wrong. ``unlabelled="auto"``: the
    truth raster's nodata value when it declares one, else 0. Classes the truth names (an ENVI classification's
    ``class names``; a GDAL raster's category names or attribute table) are shown by name.
    """
    from hsi_cluster.io.labels import read_label_pair, truth_class_names, truth_nodata, truth_unlabelled

    guessed = unlabelled == "auto" and truth_nodata(truth_path) is None
    unlabelled = truth_unlabelled(truth_path, unlabelled)
    predicted, invalid, reference = read_label_pair(labels_path, truth_path, var=var, unlabelled=unlabelled)
    if guessed:
        _warn_if_another_value_looks_unlabelled(truth_path, reference)
    return score_clustering(predicted, reference, unlabelled=unlabelled,
                            invalid_pred="auto" if invalid is None else invalid,
                            class_names=truth_class_names(truth_path))
