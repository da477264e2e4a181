"""Label-free choice between independent training runs: keep the run the others agree with most.

Contrastive clustering lands in different local optima from different seeds (on Salinas-A one seed
in three merges two fields). Runs that found the scene's structure tend to agree with each other,
while each failure fails its own way, so the run with the highest mean normalised mutual information
(NMI) to the other runs is a good pick that needs no ground truth. The agreement is measured on a
fixed random sample of valid pixels, read once and labelled by every run's patch-by-patch forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from hsi_cluster.data.sampler import PatchSampler
from hsi_cluster.model.sscc import SSCC

SEED_STRIDE = 1000
"""Run r of a training with seed s uses seed s + r · SEED_STRIDE (run 0 is the single-run training)."""


def run_seed(seed: int, run: int) -> int:
    """Seed of run ``run`` (0-based) of a training started with ``seed``."""
    return seed + run * SEED_STRIDE


def planned_runs(restarts: int, samples_per_run: int, sample_budget: int) -> int:
    """How many runs fit the budget: ``restarts`` at most, at least one.

    Args:
        restarts: the most runs wanted.
        samples_per_run: training patches one run consumes (steps × batch size).
        sample_budget: patches all runs together may consume.
    """
    return max(1, min(restarts, sample_budget // max(samples_per_run, 1)))


def sample_labels(models: Sequence[SSCC], stores: Sequence[str | Path], *, patch_size: int, fill: np.ndarray,
                  n_pixels: int = 10_000, batch_size: int = 512, seed: int = 0, mask: np.ndarray | None = None,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Labels every model gives the same random valid pixels.

    Args:
        models: trained models on the same bands (each is put in eval mode for the call).
        stores: the training stores.
        patch_size: patch side p the models take.
        fill: per-band values (B,) for invalid pixels inside a patch.
        n_pixels: pixels to label (fewer when the scenes have fewer valid pixels).
        batch_size: patches per forward.
        seed: chooses the pixels.
        mask: optional bool (y, x) restricting the pixels (one store only), as in training.
        device: where the models run.

    Returns:
        int64 (len(models), n) cluster labels, n ≤ n_pixels.
    """
    sampler = PatchSampler(list(stores), patch_size=patch_size, batch_size=batch_size, seed=seed, mask=mask, fill=fill)
    available = sampler.valid_centres()
    if available < batch_size:  # the sampler yields full batches only
        sampler = PatchSampler(list(stores), patch_size=patch_size, batch_size=max(available, 1), seed=seed,
                               mask=mask, fill=fill)
    labels: list[list[np.ndarray]] = [[] for _ in models]
    taken = 0
    for batch in sampler:
        raw = torch.from_numpy(batch.patches[: n_pixels - taken].astype(np.float32, copy=False)).to(device)
        for model, out in zip(models, labels):
            out.append(model.predict_patches(raw)[0].cpu().numpy())
        taken += len(raw)
        if taken >= n_pixels:
            break
    return np.stack([np.concatenate(out) for out in labels])


def agreement_matrix(labels: np.ndarray) -> np.ndarray:
    """Pairwise NMI between runs: (R, n) labels → symmetric (R, R), ones on the diagonal."""
    runs = len(labels)
    nmi = np.eye(runs)
    for i in range(runs):
        for j in range(i + 1, runs):
            nmi[i, j] = nmi[j, i] = normalized_mutual_info_score(labels[i], labels[j])
    return nmi


def most_central(nmi: np.ndarray) -> tuple[int, np.ndarray]:
    """The run with the highest mean NMI to the other runs (the first on ties), and every run's mean.

    Args:
        nmi: (R, R) from :func:`agreement_matrix`, R ≥ 2.

    Returns:
        (index, (R,) mean NMI of each run to the others).
    """
    runs = len(nmi)
    if runs < 2:
        raise ValueError(f"choosing a run needs at least 2 runs, got {runs}")
    mean_to_others = (nmi.sum(axis=1) - np.diag(nmi)) / (runs - 1)
    return int(np.argmax(mean_to_others)), mean_to_others
