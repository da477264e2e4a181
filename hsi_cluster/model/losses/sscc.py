"""SSCC's training objective: the weighted sum of its instance and cluster losses.

SSCC (Cai et al., "Large-Scale Hyperspectral Image Clustering Using Contrastive Learning",
arXiv:2111.07945) trains the twin network with

    L = λ_inst · L_inst + λ_cc · L_cc,   λ_inst = 5e-5, λ_cc = 1,

where L_inst is :class:`~hsi_cluster.model.losses.nt_xent.NTXentLoss` and L_cc is
:class:`~hsi_cluster.model.losses.barlow_twins.BarlowTwinsLoss`, both on the softmax probabilities.
"""

from __future__ import annotations

from torch import Tensor, nn

from hsi_cluster.model.losses.barlow_twins import BarlowTwinsLoss
from hsi_cluster.model.losses.nt_xent import NTXentLoss


class SSCCLoss(nn.Module):
    """The SSCC objective on the cluster probabilities of two views.

    Args:
        instance_weight: λ_inst, weight of the NT-Xent instance term.
        cluster_weight: λ_cc, weight of the Barlow Twins cluster term.
        temperature: NT-Xent temperature τ.
        offdiag_weight: Barlow Twins off-diagonal weight.

    Shapes:
        probs1, probs2: (N, K) softmax probabilities of view 1 and view 2 (rows sum to 1), N ≥ 2.
        returns: dict of scalars ``loss`` (weighted sum, to back-propagate), ``instance`` (L_inst,
        unweighted) and ``cluster`` (L_cc, unweighted); all keep their graph, call ``.detach()`` /
        ``.item()`` to log them.
    """

    def __init__(self, *, instance_weight: float = 5e-5, cluster_weight: float = 1.0, temperature: float = 0.5,
                 offdiag_weight: float = 0.005) -> None:
        super().__init__()
        if instance_weight < 0 or cluster_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got instance_weight={instance_weight}, "
                             f"cluster_weight={cluster_weight}")
        self.instance_weight = float(instance_weight)
        self.cluster_weight = float(cluster_weight)
        self.instance_loss = NTXentLoss(temperature=temperature)
        self.cluster_loss = BarlowTwinsLoss(offdiag_weight=offdiag_weight)

    def forward(self, probs1: Tensor, probs2: Tensor, *, instance1: Tensor | None = None,
                instance2: Tensor | None = None) -> dict[str, Tensor]:
        """Weighted objective and its two terms; see the class docstring for shapes.

        ``instance1``/``instance2`` (N, D), when given, replace the probabilities in the NT-Xent
        term (an instance projector's embeddings); the cluster term always uses the probabilities.
        """
        if probs1.ndim != 2 or probs1.shape != probs2.shape:
            raise ValueError(f"probs1 and probs2 must both have shape (N, K), got {tuple(probs1.shape)} "
                             f"and {tuple(probs2.shape)}")
        if probs1.shape[1] < 2:
            raise ValueError(f"need K >= 2 cluster probabilities per sample, got K={probs1.shape[1]}")
        instance = self.instance_loss(probs1 if instance1 is None else instance1,
                                      probs2 if instance2 is None else instance2)
        cluster = self.cluster_loss(probs1, probs2)
        loss = self.instance_weight * instance + self.cluster_weight * cluster
        return {"loss": loss, "instance": instance, "cluster": cluster}

    def extra_repr(self) -> str:
        return f"instance_weight={self.instance_weight}, cluster_weight={self.cluster_weight}"
