"""Barlow Twins redundancy-reduction loss.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021,
arXiv:2103.03230. SSCC (Cai et al., arXiv:2111.07945) applies it to the K-dimensional cluster outputs
of the two views as its cluster-level loss: the diagonal term makes each cluster's assignments agree
across views (within-cluster similarity), the off-diagonal term decorrelates different clusters
(between-cluster redundancy), with weight 0.005.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def batch_standardise(values: Tensor, eps: float = 1e-5) -> Tensor:
    """Standardise each column over the batch, as ``BatchNorm1d(affine=False)`` in training mode.

    Args:
        values: (N, D).
        eps: added to the biased variance before the square root.

    Returns:
        (N, D): (values − column mean) / sqrt(biased column variance + eps).
    """
    mean = values.mean(dim=0, keepdim=True)
    variance = values.var(dim=0, unbiased=False, keepdim=True)
    return (values - mean) / torch.sqrt(variance + eps)


class BarlowTwinsLoss(nn.Module):
    """L = Σ_k (1 − C_kk)² + w · Σ_{k≠l} C_kl², with C = BN(c1)ᵀ BN(c2) / N.

    BN standardises each dimension over the batch (no affine, biased variance, ``eps`` inside the
    square root), always with batch statistics, also in eval mode. Computed in at least float32,
    also under autocast.

    Args:
        offdiag_weight: w, the weight of the off-diagonal (redundancy) term.
        eps: numerical guard of the standardisation.

    Shapes:
        c1, c2: (N, D), N ≥ 2.
        returns: scalar. When the two views are equal the diagonal term vanishes (up to ``eps``);
        the off-diagonal term vanishes only when the D dimensions are also uncorrelated.
    """

    def __init__(self, offdiag_weight: float = 0.005, eps: float = 1e-5) -> None:
        super().__init__()
        if offdiag_weight < 0:
            raise ValueError(f"offdiag_weight must be >= 0, got {offdiag_weight}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.offdiag_weight = float(offdiag_weight)
        self.eps = float(eps)

    def cross_correlation(self, c1: Tensor, c2: Tensor) -> Tensor:
        """C = BN(c1)ᵀ BN(c2) / N, shape (D, D)."""
        if c1.ndim != 2 or c1.shape != c2.shape:
            raise ValueError(f"c1 and c2 must both have shape (N, D), got {tuple(c1.shape)} and {tuple(c2.shape)}")
        if c1.shape[0] < 2:
            raise ValueError(f"Barlow Twins needs at least 2 samples per batch (batch statistics), got {c1.shape[0]}")
        dtype = torch.promote_types(c1.dtype, torch.float32)  # half → float32, float64 kept
        with torch.autocast(device_type=c1.device.type, enabled=False):
            c1 = batch_standardise(c1.to(dtype), self.eps)
            c2 = batch_standardise(c2.to(dtype), self.eps)
            return c1.T @ c2 / c1.shape[0]

    def forward(self, c1: Tensor, c2: Tensor) -> Tensor:
        """Loss of one batch of view pairs; see the class docstring for shapes."""
        correlation = self.cross_correlation(c1, c2)
        diagonal = torch.diagonal(correlation)
        on_diag = (1.0 - diagonal).pow(2).sum()
        off_diag = (correlation - torch.diag_embed(diagonal)).pow(2).sum()
        return on_diag + self.offdiag_weight * off_diag

    def extra_repr(self) -> str:
        return f"offdiag_weight={self.offdiag_weight}, eps={self.eps}"
