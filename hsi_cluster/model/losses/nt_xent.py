"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
arXiv:2002.05709. SSCC (Cai et al., arXiv:2111.07945) uses it as its instance-level loss, on the
cluster-probability vectors of the two views, with temperature 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NTXentLoss(nn.Module):
    """Contrast each sample's two views against the other 2N − 2 samples of the batch.

    With z = L2-normalise(concat(z1, z2)) (2N, D) and s_ij = z_i · z_j / τ, the loss is

        L = (1 / 2N) Σ_i −log( exp(s_{i,p(i)}) / Σ_{j ≠ i} exp(s_ij) ),

    where p(i) is the other view of sample i; the denominator holds the positive and the 2N − 2
    negatives. For identical views whose samples are mutually orthogonal it equals
    log(1 + (2N − 2) exp(−1/τ)).

    Args:
        temperature: τ > 0.

    Shapes:
        z1, z2: (N, D), N ≥ 2; normalised inside (already normalised inputs are fine); computed in
            at least float32, also under autocast.
        returns: scalar.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Loss of one batch of view pairs; see the class docstring for shapes."""
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(f"z1 and z2 must both have shape (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n_samples = z1.shape[0]
        if n_samples < 2:
            raise ValueError(f"NT-Xent needs at least 2 samples per batch (negatives), got {n_samples}")
        dtype = torch.promote_types(z1.dtype, torch.float32)  # half → float32, float64 kept
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z = F.normalize(torch.cat([z1, z2], dim=0).to(dtype), dim=1)
            similarity = z @ z.T / self.temperature  # (2N, 2N)
            self_mask = torch.eye(2 * n_samples, dtype=torch.bool, device=z.device)
            similarity = similarity.masked_fill(self_mask, float("-inf"))
            index = torch.arange(n_samples, device=z.device)
            positives = torch.cat([index + n_samples, index])  # row i's other view
            return F.cross_entropy(similarity, positives, reduction="sum") / (2 * n_samples)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
