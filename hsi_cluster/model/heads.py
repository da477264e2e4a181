"""Small MLP heads on backbone features (N, F), composed with a backbone by :class:`~hsi_cluster.model.sscc.SSCC`.

* :class:`MLPHead`: the one head class, Linear → ReLU → Linear; the two heads below are it.
* :class:`ClusterHead`: SSCC's cluster head (Cai et al., arXiv:2111.07945), Linear → ReLU → Linear
  to K logits; the softmax of the logits is the cluster-probability vector and its argmax the label.
* :class:`InstanceProjector`: the 128-d instance projector of the reference code (disabled there).
* :class:`CentroidHead`: k-means centroids of the trained backbone's features; labels each pixel
  with its nearest centroid (fitted after training, see :meth:`CentroidHead.fit`).

Heads act on the last dimension, so :func:`apply_per_pixel` runs them on feature maps (N, F, H, W)
without loops, which is how the fully convolutional inference labels whole tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor, nn

#: A k-means cluster with fewer members than this share of the mean cluster size (N / K) is taken for a
#: handful of outlying pixels, not a class: :meth:`CentroidHead.fit` leaves them out and fits again.
TINY_CLUSTER_SHARE = 0.01
#: At most this many refits without the members of tiny clusters.
TINY_CLUSTER_ROUNDS = 3


class MLPHead(nn.Module):
    """Linear(F → hidden) → ReLU → Linear(hidden → D), acting on the last dimension.

    The one head class of the package: :class:`ClusterHead` and :class:`InstanceProjector` are this
    head with their own argument checks (their ``state_dict`` keys are ``net.0.*`` and ``net.2.*``).

    Args:
        in_features: feature dimension F of the backbone.
        out_features: output dimension D.
        hidden: hidden width.

    Shapes:
        (..., F) → (..., D).
    """

    def __init__(self, in_features: int, out_features: int, *, hidden: int = 512) -> None:
        super().__init__()
        if min(in_features, out_features, hidden) < 1:
            raise ValueError(f"in_features, out_features and hidden must be >= 1, "
                             f"got {in_features}, {out_features}, {hidden}")
        self.in_features = in_features
        self.out_features = out_features
        self.hidden = hidden  # the widest layer, which sizes strips of pixels in tiled inference
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out_features))

    def forward(self, features: Tensor) -> Tensor:
        """(..., F) → (..., D)."""
        return self.net(features)


class ClusterHead(MLPHead):
    """SSCC's cluster head: Linear(F → hidden) → ReLU → Linear(hidden → K), cluster logits.

    Args:
        in_features: feature dimension F of the backbone.
        n_clusters: number of clusters K (≥ 2).
        hidden: hidden width (512 in the paper).

    Shapes:
        (N, F) → (N, K) logits (not probabilities: apply :func:`probs` / softmax over dim 1).
    """

    def __init__(self, in_features: int, n_clusters: int, *, hidden: int = 512) -> None:
        if n_clusters < 2:
            raise ValueError(f"n_clusters must be >= 2 to cluster anything, got {n_clusters}")
        if in_features < 1 or hidden < 1:
            raise ValueError(f"in_features and hidden must be >= 1, got {in_features} and {hidden}")
        super().__init__(in_features, n_clusters, hidden=hidden)

    @property
    def n_clusters(self) -> int:
        """Number of clusters K."""
        return self.out_features


class InstanceProjector(MLPHead):
    """Instance embedding for contrastive losses: Linear(F → hidden) → ReLU → Linear(hidden → D).

    Args:
        in_features: feature dimension F of the backbone.
        out_features: embedding dimension D (128 in the reference code).
        hidden: hidden width.

    Shapes:
        (N, F) → (N, D), not normalised (:class:`~hsi_cluster.model.losses.nt_xent.NTXentLoss`
        normalises).
    """

    def __init__(self, in_features: int, out_features: int = 128, *, hidden: int = 512) -> None:
        super().__init__(in_features, out_features, hidden=hidden)


class CentroidHead(nn.Module):
    """Nearest-centroid assignment in feature space: logits ``-‖(f − offset) · weight − c_k‖² / scale``.

    The centroids are k-means centres of the backbone's features over a sample of the training
    pixels, fitted once after training. The features are first centred and weighted: when they join
    several blocks (the stages of :meth:`DenseBackbone.forward_dense_scales`), each block is centred
    and scaled to unit mean squared norm, so every scale of the receptive field weighs the same in
    the distance whatever its activations' magnitude. Argmax of the logits is the nearest centroid;
    the softmax is a confidence whose temperature ``scale`` is the mean squared distance of the
    sample to its own centroid.

    Args:
        centroids: (K, F) cluster centres in the weighted feature space.
        scale: positive temperature (squared weighted feature units).
        offset: (F,) subtracted from the features first (default 0).
        weight: (F,) multiplies the centred features (default 1).

    Shapes:
        (..., F) → (..., K) logits.
    """

    centroids: Tensor
    scale: Tensor
    offset: Tensor
    weight: Tensor

    def __init__(self, centroids: Tensor, scale: float | Tensor = 1.0, *, offset: Tensor | None = None,
                 weight: Tensor | None = None) -> None:
        super().__init__()
        if centroids.ndim != 2 or centroids.shape[0] < 2:
            raise ValueError(f"centroids must be (K ≥ 2, F), got shape {tuple(centroids.shape)}")
        n_features = int(centroids.shape[1])
        offset = torch.zeros(n_features) if offset is None else offset
        weight = torch.ones(n_features) if weight is None else weight
        if offset.shape != (n_features,) or weight.shape != (n_features,):
            raise ValueError(f"offset and weight must be ({n_features},), got {tuple(offset.shape)} and "
                             f"{tuple(weight.shape)}")
        self.register_buffer("centroids", centroids.detach().to(torch.float32).clone())
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).clone())
        self.register_buffer("offset", offset.detach().to(torch.float32).clone())
        self.register_buffer("weight", weight.detach().to(torch.float32).clone())
        self.in_features = n_features
        self.out_features = int(centroids.shape[0])
        # widest per-pixel tensor (the weighted features, F wide), which sizes strips of pixels in tiled inference:
        # sized by K it ran whole tiles at once, 4× slower than in strips that stay in the caches
        self.hidden = max(n_features, self.out_features)
        self.outliers_left_out = 0  # set by fit: members of tiny clusters left out of the last k-means (not saved)

    @property
    def n_clusters(self) -> int:
        """Number of clusters K."""
        return self.out_features

    @classmethod
    def fit(cls, features: np.ndarray, n_clusters: int, *, seed: int = 0, n_init: int = 10,
            blocks: int = 1, stages: Sequence[int] | None = None) -> CentroidHead:
        """k-means (scikit-learn, k-means++ with ``n_init`` restarts) on (N, F) features.

        With ``blocks`` > 1 the F features are that many equal blocks (scales), each centred on its
        sample mean and divided by the root of its mean squared norm before k-means; ``stages``, if
        given, are the blocks k-means reads (the others weigh 0).

        A few outlying pixels (a bad detector element, a saturated roof) lower k-means' inertia most
        when they get a centroid of their own, which then merges two real classes. A cluster of fewer
        than :data:`TINY_CLUSTER_SHARE` of the mean cluster size (N / K) is taken for such outliers:
        its members are left out and k-means is fitted again (at most :data:`TINY_CLUSTER_ROUNDS`
        times); they still get the label of their nearest centroid.
        """
        if len(features) < n_clusters:
            raise ValueError(f"{len(features)} feature vectors cannot make {n_clusters} centroids")
        offset, weight = cls.block_weights(features, blocks, stages=stages)
        values = (features.astype(np.float64) - offset) * weight
        tiny = max(1, math.ceil(TINY_CLUSTER_SHARE * len(values) / n_clusters))
        kept = np.arange(len(values))
        for refits in range(TINY_CLUSTER_ROUNDS + 1):
            kmeans = KMeans(n_clusters, n_init=n_init, random_state=seed).fit(values[kept])
            sizes = np.bincount(kmeans.labels_, minlength=n_clusters)
            outliers = np.isin(kmeans.labels_, np.flatnonzero(sizes < tiny))
            if not outliers.any() or refits == TINY_CLUSTER_ROUNDS or len(kept) - outliers.sum() < n_clusters:
                break
            kept = kept[~outliers]
        scale = max(float(kmeans.inertia_) / len(kept), 1e-12)
        head = cls(torch.from_numpy(kmeans.cluster_centers_.astype(np.float32)), scale,
                   offset=torch.from_numpy(offset.astype(np.float32)), weight=torch.from_numpy(weight.astype(np.float32)))
        head.outliers_left_out = len(values) - len(kept)
        return head

    @staticmethod
    def block_weights(features: np.ndarray, blocks: int = 1, *,
                      stages: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The (F,) offset and weight that give each of ``blocks`` equal blocks of (N, F) features zero
        mean and unit mean squared norm (identity for one block); blocks not in ``stages`` (default:
        all) get weight 0."""
        if blocks < 1 or features.shape[1] % blocks:
            raise ValueError(f"{features.shape[1]} features do not split into {blocks} equal blocks")
        kept = set(range(blocks)) if stages is None else set(stages)
        if not kept or not kept <= set(range(blocks)):
            raise ValueError(f"stages {sorted(kept)} must be a non-empty subset of 0..{blocks - 1}")
        values = features.astype(np.float64)
        offset, weight = np.zeros(values.shape[1]), np.ones(values.shape[1])
        if blocks > 1:
            offset = values.mean(0)
            width = values.shape[1] // blocks
            for b in range(blocks):
                part = slice(b * width, (b + 1) * width)
                norm = np.sqrt(((values[:, part] - offset[part]) ** 2).sum(1).mean())
                weight[part] = 1.0 / max(norm, 1e-12) if b in kept else 0.0
        return offset, weight

    @classmethod
    def weigh(cls, features: np.ndarray, blocks: int = 1, *, stages: Sequence[int] | None = None) -> np.ndarray:
        """(N, F) features centred and weighted as :meth:`fit` sees them (float64), per :meth:`block_weights`."""
        offset, weight = cls.block_weights(features, blocks, stages=stages)
        return (features.astype(np.float64) - offset) * weight

    def assign(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features → (N,) index of the nearest centroid."""
        with torch.no_grad():
            return self(torch.from_numpy(np.asarray(features, dtype=np.float32))).argmax(-1).numpy()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before features were weighted have no offset/weight: identity.
        for name, value in (("offset", 0.0), ("weight", 1.0)):
            if prefix + "centroids" in state_dict and prefix + name not in state_dict:
                state_dict[prefix + name] = torch.full((state_dict[prefix + "centroids"].shape[1],), value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: Tensor) -> Tensor:
        """(..., F) → (..., K) logits, the negative squared distances over ``scale``."""
        weighted = (features - self.offset.to(features.dtype)) * self.weight.to(features.dtype)
        centroids = self.centroids.to(features.dtype)
        squared = (weighted * weighted).sum(-1, keepdim=True) - 2 * weighted @ centroids.T \
            + (centroids * centroids).sum(-1)
        return -squared / self.scale.to(features.dtype)


def probs(logits: Tensor, dim: int = 1) -> Tensor:
    """Cluster probabilities: softmax of the logits over the cluster dimension (1 for (N, K) and (N, K, H, W))."""
    return torch.softmax(logits, dim=dim)


def apply_per_pixel(head: nn.Module, feature_map: Tensor) -> Tensor:
    """Apply a head that acts on the last dimension to every pixel of a feature map.

    Args:
        head: module mapping (..., F) → (..., K), e.g. :class:`ClusterHead`.
        feature_map: (N, F, H, W).

    Returns:
        (N, K, H, W); pixel (i, j) equals ``head(feature_map[:, :, i, j])``.
    """
    if feature_map.ndim != 4:
        raise ValueError(f"expected a feature map (N, F, H, W), got shape {tuple(feature_map.shape)}")
    return head(feature_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
