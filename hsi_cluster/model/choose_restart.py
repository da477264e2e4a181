"""Choosing among restarts: the network whose labels agree most with the other restarts' labels.

A contrastive training sometimes merges two classes (a seed of Samson puts water with trees); the
other restarts of the same scene then agree with each other and little with it. Of R ≥ 2 restarts,
the medoid under label agreement (normalised mutual information between the labels each network
gives the same pixels) is kept: with one failed restart out of three, the two others agree with each
other, and the medoid is one of them. No labels, no constant fitted to a scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import normalized_mutual_info_score


@dataclass(frozen=True)
class RestartChoice:
    """``chosen``: index of the kept restart; ``agreement``: (R, R) NMI between the restarts' labels (1 on the
    diagonal); ``mean_agreement``: (R,) each restart's mean NMI with the others."""

    chosen: int
    agreement: np.ndarray
    mean_agreement: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "agreement": np.round(self.agreement, 4).tolist(),
                "mean_agreement": np.round(self.mean_agreement, 4).tolist()}


def choose_restart(labels: list[np.ndarray]) -> RestartChoice:
    """The restart whose labels agree most with the others' (ties: the first).

    Args:
        labels: R ≥ 2 int arrays (N,), each restart's labels of the same N pixels (K may differ).
    """
    if len(labels) < 2:
        raise ValueError(f"need at least 2 restarts to choose among, got {len(labels)}")
    sizes = {len(lab) for lab in labels}
    if len(sizes) != 1:
        raise ValueError(f"the restarts labelled different pixel counts {sorted(sizes)}")
    count = len(labels)
    agreement = np.eye(count)
    for i in range(count):
        for j in range(i + 1, count):
            agreement[i, j] = agreement[j, i] = normalized_mutual_info_score(labels[i], labels[j])
    mean = (agreement.sum(axis=1) - 1) / (count - 1)
    return RestartChoice(chosen=int(np.argmax(mean)), agreement=agreement, mean_agreement=mean)
