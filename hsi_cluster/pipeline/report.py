"""The ``report`` step's output: a JSON summary and its Markdown rendering.

The JSON holds, per evaluate step, the scores of every run (one per seed) with their mean ± std
(population) and the optional k-means baseline; per batch step, the scene counts and records; and
per step, its status in this run and its last run time. :func:`to_markdown` renders it.
"""

from __future__ import annotations

import statistics
from typing import Any

METRICS = ("acc", "nmi", "kappa", "ari")
HEADERS = {"acc": "ACC", "nmi": "NMI", "kappa": "Kappa", "ari": "ARI"}
MAX_BATCH_ROWS = 100  # rows of a batch table in Markdown (failures always shown); all are in the JSON


def mean_std(runs: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per metric ``[mean, population std]`` over runs (None when a run lacks the value)."""
    out: dict[str, list[float | None]] = {}
    for name in METRICS:
        values = [run.get(name) for run in runs]
        present = [v for v in values if v is not None]
        if not values or len(present) < len(values):
            out[name] = [None, None]
        else:
            out[name] = [statistics.fmean(present), statistics.pstdev(present)]
    return out


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(pair: list[float | None]) -> str:
    mean, std = pair
    return "–" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _label(method: str, seed: int | None) -> str:
    return method if seed is None else f"{method}, seed {seed}"


def _evaluation_markdown(section: dict[str, Any]) -> list[str]:
    runs, kmeans = section["runs"], section.get("kmeans") or []
    first = runs[0]
    lines = [f"## {section['title']}", "",
             f"Evaluate step `{section['step']}`; ground truth `{section['truth']}`: {first['n_scored']} labelled "
             f"pixels, {first['n_classes']} classes. Clusters matched to classes with the Hungarian algorithm.", "",
             "| method | ACC | NMI | Kappa | ARI | labels |", "|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {_label('SSCC', run.get('seed'))} | " + " | ".join(_num(run.get(m)) for m in METRICS)
                     + f" | `{_cell(run['labels'])}` |")
    if len(runs) > 1:
        lines.append(f"| SSCC, mean ± std ({len(runs)} seeds) | "
                     + " | ".join(_pm(section["mean"][m]) for m in METRICS) + " | |")
    for run in kmeans:
        lines.append(f"| {_label('k-means', run.get('seed'))} | " + " | ".join(_num(run.get(m)) for m in METRICS)
                     + " | |")
    if len(kmeans) > 1:
        lines.append(f"| k-means, mean ± std ({len(kmeans)} seeds) | "
                     + " | ".join(_pm(section["kmeans_mean"][m]) for m in METRICS) + " | |")
    if kmeans:
        lines += ["", f"k-means: scikit-learn KMeans ({section['kmeans_inits']} inits, K = {section['kmeans_k']}) "
                      f"on per-band standardised spectra of `{section['kmeans_scene']}`."]
    columns = [(_label("SSCC", run.get("seed")), run) for run in runs] + \
              [(_label("k-means", run.get("seed")), run) for run in kmeans]
    lines += ["", "Per-class accuracy:", "",
              "| class | pixels | " + " | ".join(name for name, _ in columns) + " |",
              "|---|---|" + "---|" * len(columns)]
    names = first.get("class_names") or {}  # scores written before class names were kept have none
    for cls, count in first["class_counts"].items():
        label = f"{cls} {_cell(names[cls])}" if cls in names else cls
        lines.append(f"| {label} | {count} | " + " | ".join(_num(run["per_class"].get(cls)) for _, run in columns)
                     + " |")
    return lines + [""]


def _count(value: int | None) -> str:
    """A pixel count of the table: 0 is a count (a tile outside the swath), only a missing one is '–'."""
    return "–" if value is None else str(value)


def _batch_markdown(section: dict[str, Any]) -> list[str]:
    records = section["records"]
    counts = section["counts"]
    lines = [f"## Batch `{section['step']}`", "",
             f"{len(records)} scenes: {counts['done']} done, {counts['skipped']} skipped (already done), "
             f"{counts['failed']} failed; {section['valid_pixels'] / 1e6:.2f} Mpix labelled. "
             f"Manifest `{section['manifest']}`.", "",
             "| scene | status | seconds | pixels | valid pixels | output or error |",
             "|---|---|---|---|---|---|"]
    shown = [r for r in records if r.get("status") == "failed"]
    shown += [r for r in records if r.get("status") != "failed"][:max(0, MAX_BATCH_ROWS - len(shown))]
    for record in shown:
        detail = record.get("error") if record.get("status") == "failed" else record.get("output")
        lines.append(f"| `{_cell(record.get('source'))}` | {record.get('status')} | {_seconds(record.get('seconds'))} "
                     f"| {_count(record.get('pixels'))} | {_count(record.get('valid_pixels'))} | {_cell(detail)} |")
    if len(shown) < len(records):
        lines.append(f"| … {len(records) - len(shown)} more in the JSON report | | | | | |")
    return lines + [""]


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    lines = [f"# {report['title']}", ""]
    if report.get("description"):
        lines += [report["description"].strip(), ""]
    lines += [f"Pipeline `{report['file']}`, workdir `{report['workdir']}`; hsicluster {report['library_version']}, "
              f"{report['generated']}.", ""]
    for section in report["evaluations"]:
        lines += _evaluation_markdown(section)
    for section in report["batches"]:
        lines += _batch_markdown(section)
    lines += ["## Steps", "", "| step | kind | this run | seconds (last run) | finished (UTC) |",
              "|---|---|---|---|---|"]
    for row in report["steps"]:
        jobs = f" ({row['jobs']} jobs)" if row.get("jobs", 1) > 1 else ""
        lines.append(f"| {row['step']} | {row['kind']} | {row['status']} | {_seconds(row['seconds'])}{jobs} "
                     f"| {row['finished'] or '–'} |")
    return "\n".join(lines) + "\n"
