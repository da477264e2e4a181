"""Cluster-balance regulariser: keeps the batch's mean assignment from collapsing onto few clusters."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ClusterEntropyLoss(nn.Module):
    """``log K − H(mean_n p_n)``: zero when clusters are used equally, log K when one takes all.

    The entropy of the batch-mean cluster distribution, as in Contrastive Clustering (Li et al.,
    AAAI 2021); SSCC itself has no such term. Computed in float32.

    Shapes:
        probs: (N, K) softmax probabilities. Returns a scalar ≥ 0.
    """

    def forward(self, probs: Tensor) -> Tensor:
        mean = probs.float().mean(dim=0).clamp_min(1e-12)
        return math.log(probs.shape[1]) + (mean * torch.log(mean)).sum()
