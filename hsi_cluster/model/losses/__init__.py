"""SSCC's training objective and the losses it is made of, one loss per module, re-exported here.

SSCC (Cai et al., "Large-Scale Hyperspectral Image Clustering Using Contrastive Learning",
arXiv:2111.07945) trains the twin network with

    L = λ_inst · L_inst + λ_cc · L_cc,   λ_inst = 5e-5, λ_cc = 1,

* L_inst: :class:`NTXentLoss` (temperature 0.5) over the L2-normalised cluster-probability vectors
  of the two views (instance level: rows of the (N, K) outputs);
* L_cc: :class:`BarlowTwinsLoss` (off-diagonal weight 0.005) on the same K-dim outputs (cluster
  level: columns of the (N, K) outputs).

Both terms take the softmax *probabilities*, not the logits, as the authors' code does (its cluster
head ends with a softmax and both losses receive its output).
"""

from hsi_cluster.model.losses.barlow_twins import BarlowTwinsLoss, batch_standardise
from hsi_cluster.model.losses.entropy import ClusterEntropyLoss
from hsi_cluster.model.losses.nt_xent import NTXentLoss
from hsi_cluster.model.losses.sscc import SSCCLoss

__all__ = ["SSCCLoss", "NTXentLoss", "BarlowTwinsLoss", "ClusterEntropyLoss", "batch_standardise"]
