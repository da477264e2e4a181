"""The SSCC network: frozen spectral projection → backbone → cluster head (+ optional instance projector).

SSCC (Cai et al., "Large-Scale Hyperspectral Image Clustering Using Contrastive Learning",
arXiv:2111.07945) trains one weight-shared network on two augmented views of each pixel-centred
patch; the argmax of its K-way cluster head is the cluster label. This module composes the parts;
the twin is simply the same module called on both views.

Training step (augmentation runs on projected patches, see :mod:`hsi_cluster.data.augment`)::

    projected = model.project(raw_patches)              # (N, C, p, p), no gradient needed
    view1, view2 = two_views(projected, augmenter, generator)
    losses = criterion(probs(model.forward_projected(view1)), probs(model.forward_projected(view2)))

Inference: :meth:`SSCC.predict_patches` for patches, :meth:`SSCC.forward_dense` /
:meth:`SSCC.predict_dense` for tiles with a halo of :attr:`SSCC.halo` pixels (dense backbone only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hsi_cluster.geo import PatchGeometry
from hsi_cluster.model.backbones import DenseBackbone, ResNetBackbone, build_backbone
from hsi_cluster.model.heads import CentroidHead, ClusterHead, InstanceProjector, apply_per_pixel
from hsi_cluster.model.projection import ArrayLike, SpectralProjection

#: Bytes of the head's widest per-pixel tensor per row strip in tiled inference. Strips that stay in the caches
#: run the head faster than larger ones: 16 rows of a 512-wide tile's 192 features took 0.10 s per tile, the
#: whole tile at once 0.47–0.83 s (2 cores).
HEAD_STRIP_BYTES = 8 * 2**20


class SSCC(nn.Module):
    """Spectral-spatial contrastive clustering network.

    Args:
        projection: frozen standardisation + PCA (B → C channels), weights are buffers.
        backbone: :class:`ResNetBackbone` or :class:`DenseBackbone` taking C channels.
        cluster_head: :class:`ClusterHead` taking the backbone's ``out_features``.
        instance_projector: optional :class:`InstanceProjector` on the backbone features; None (as in
            the paper's configuration) when the instance loss uses the cluster probabilities.

    Attributes:
        config: the arguments of :meth:`build` (JSON-ready) when built by it, else None; with the
            ``state_dict`` it is everything :meth:`from_config` needs to rebuild the model.
    """

    def __init__(self, projection: SpectralProjection, backbone: ResNetBackbone | DenseBackbone,
                 cluster_head: ClusterHead, *, instance_projector: InstanceProjector | None = None) -> None:
        super().__init__()
        if projection.out_channels != backbone.in_channels:
            raise ValueError(f"projection gives {projection.out_channels} channels but the backbone expects "
                             f"{backbone.in_channels}: build the backbone with in_channels="
                             f"{projection.out_channels}")
        if backbone.out_features != cluster_head.in_features:
            raise ValueError(f"backbone gives {backbone.out_features} features but the cluster head expects "
                             f"{cluster_head.in_features}")
        if instance_projector is not None and instance_projector.in_features != backbone.out_features:
            raise ValueError(f"backbone gives {backbone.out_features} features but the instance projector "
                             f"expects {instance_projector.in_features}")
        self.projection = projection
        self.backbone = backbone
        self.cluster_head = cluster_head
        self.instance_projector = instance_projector
        self.centroid_head: CentroidHead | None = None
        self.centroid_scales = False  # whether the centroid head reads the features of every scale
        self.config: dict[str, Any] | None = None

    @classmethod
    def build(cls, mean: ArrayLike, std: ArrayLike, components: ArrayLike, *, n_clusters: int,
              backbone: str = "dense", backbone_kwargs: Mapping[str, Any] | None = None, head_hidden: int = 512,
              instance_dim: int | None = None) -> SSCC:
        """Make an SSCC model from band statistics, PCA components and sizes.

        Args:
            mean: per-band mean (B,).
            std: per-band std (B,), all > 0.
            components: PCA components (C, B) on standardised bands.
            n_clusters: K.
            backbone: "dense" (default; fast tiled inference) or "resnet" (the paper's network).
            backbone_kwargs: other arguments of the backbone (e.g. ``{"width": 64, "depth": 5}``).
            head_hidden: hidden width of the cluster head (and instance projector).
            instance_dim: output size of an instance projector, or None for none.
        """
        projection = SpectralProjection(mean, std, components)
        kwargs = dict(backbone_kwargs or {})
        net = build_backbone(backbone, projection.out_channels, **kwargs)
        head = ClusterHead(net.out_features, n_clusters, hidden=head_hidden)
        projector = None if instance_dim is None else InstanceProjector(net.out_features, instance_dim,
                                                                        hidden=head_hidden)
        model = cls(projection, net, head, instance_projector=projector)
        model.config = {"in_bands": projection.in_bands, "n_components": projection.out_channels,
                        "n_clusters": int(n_clusters), "backbone": backbone,
                        "backbone_kwargs": _json_ready(kwargs), "head_hidden": int(head_hidden),
                        "instance_dim": None if instance_dim is None else int(instance_dim)}
        return model

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SSCC:
        """Rebuild the architecture saved in :attr:`config`, with a zero projection and fresh weights.

        Call ``load_state_dict`` on the result to restore a trained model (the projection's
        ``weight`` and ``bias`` buffers are part of the state dict).
        """
        in_bands, n_components = int(config["in_bands"]), int(config["n_components"])
        n_clusters = int(config["n_clusters"])
        model = cls.build(np.zeros(in_bands), np.ones(in_bands), np.zeros((n_components, in_bands)),
                          n_clusters=int(config.get("head_clusters", n_clusters)), backbone=str(config["backbone"]),
                          backbone_kwargs=config.get("backbone_kwargs") or {},
                          head_hidden=int(config.get("head_hidden", 512)), instance_dim=config.get("instance_dim"))
        if config.get("assignment", "head") == "centroids":
            scales = config.get("centroid_features", "last") != "last"  # "scales" (or "auto", read as it)
            model.set_centroid_head(CentroidHead(torch.zeros(n_clusters, model.centroid_in_features(scales))),
                                    scales=scales)
        return model

    def centroid_in_features(self, scales: bool) -> int:
        """Feature dimension a centroid head reads: every scale's features joined, or the last stage's."""
        if not scales:
            return self.backbone.out_features
        if not isinstance(self.backbone, DenseBackbone):
            raise ValueError(f"centroids on the features of every scale need the 'dense' backbone, this model has "
                             f"{type(self.backbone).__name__}: use centroid_features 'last'")
        return self.backbone.scale_features

    def set_centroid_head(self, head: CentroidHead, *, scales: bool = False) -> None:
        """Label pixels with ``head`` (nearest feature centroid) instead of the trained cluster head.

        Its K may differ from the cluster head's (``-k auto`` trains the head with ``k_max`` clusters
        and chooses K for the centroids); :attr:`n_clusters` is then the centroids' K and the config
        records the head's as ``head_clusters``.

        Args:
            head: the fitted centroids.
            scales: the head reads the features of every scale (:meth:`DenseBackbone.forward_scales`)
                instead of the last stage's.
        """
        expected = self.centroid_in_features(scales)
        if head.in_features != expected:
            raise ValueError(f"centroid head takes {head.in_features} features; the model's centroids read "
                             f"{expected}")
        self.centroid_head = head
        self.centroid_scales = scales
        if self.config is not None:
            self.config["assignment"] = "centroids"
            self.config["centroid_features"] = "scales" if scales else "last"
            self.config["n_clusters"] = head.n_clusters
            if head.n_clusters != self.cluster_head.n_clusters:
                self.config["head_clusters"] = self.cluster_head.n_clusters

    @property
    def label_head(self) -> CentroidHead | ClusterHead:
        """The head whose argmax is the label: the centroid head when fitted, else the cluster head."""
        return self.centroid_head if self.centroid_head is not None else self.cluster_head

    # ----------------------------------------------------------------------------------- sizes
    @property
    def in_bands(self) -> int:
        """Number of raw input bands B."""
        return self.projection.in_bands

    @property
    def n_clusters(self) -> int:
        """Number of clusters K of the labels (the centroids', which ``-k auto`` may choose below the cluster
        head's count it trained with)."""
        return self.label_head.n_clusters

    @property
    def patch_size(self) -> int | None:
        """Patch side the backbone requires (dense: 2 * depth + 1), or None if any size works (resnet)."""
        return self.backbone.patch_size

    @property
    def halo(self) -> int | None:
        """Pixels per side a tile loses in :meth:`forward_dense` (dense backbone), else None."""
        return self.backbone.halo if isinstance(self.backbone, DenseBackbone) else None

    # --------------------------------------------------------------------------------- forward
    def project(self, x: Tensor) -> Tensor:
        """Standardise + PCA: (N, B, H, W) raw bands → (N, C, H, W) float32. No trainable weights."""
        return self.projection(x)

    def encode(self, projected: Tensor) -> Tensor:
        """Backbone features of projected patches: (N, C, p, p) → (N, F)."""
        return self.backbone(projected)

    def label_features(self, projected: Tensor) -> Tensor:
        """The features :attr:`label_head` reads: (N, C, p, p) → (N, F), every scale's when the centroids use them."""
        if self.centroid_head is not None and self.centroid_scales:
            assert isinstance(self.backbone, DenseBackbone)  # set_centroid_head checked it
            return self.backbone.forward_scales(projected)
        return self.encode(projected)

    def forward_projected(self, projected: Tensor) -> Tensor:
        """Cluster logits of projected (e.g. augmented) patches: (N, C, p, p) → (N, K), from :attr:`label_head`."""
        return self.label_head(self.label_features(projected))

    def forward(self, x: Tensor) -> Tensor:
        """Cluster logits of raw patches.

        Args:
            x: (N, B, p, p) raw band values, centred on the pixels to label.

        Returns:
            (N, K) logits; softmax over dim 1 gives cluster probabilities.
        """
        return self.forward_projected(self.project(x))

    def forward_dense(self, tile: Tensor) -> Tensor:
        """Cluster logits of every interior pixel of raw tiles (dense backbone only).

        Args:
            tile: (N, B, H, W) raw band values, H, W ≥ :attr:`patch_size`.

        Returns:
            (N, K, H - 2 * halo, W - 2 * halo) logits; output pixel (i, j) belongs to tile pixel
            (i + halo, j + halo) and equals, in eval mode, :meth:`forward` on the patch centred there.

        Raises:
            ValueError: if the backbone is not a :class:`DenseBackbone`.
        """
        if not isinstance(self.backbone, DenseBackbone):
            raise ValueError(f"forward_dense needs the 'dense' backbone, this model has "
                             f"{type(self.backbone).__name__}: label patch by patch with predict_patches(), "
                             f"or train with backbone='dense'")
        return self.dense_logits(self.project(tile))

    def dense_logits(self, projected: Tensor, *, rows: int | None = None) -> Tensor:
        """Cluster logits of every interior pixel of projected tiles (dense backbone only).

        Args:
            projected: (N, C, H, W) projected tiles, H, W ≥ :attr:`patch_size`.
            rows: run the head on strips of this many feature rows (its hidden layer is wide: this
                bounds memory), or None for the whole map at once. The result is the same.

        Returns:
            (N, K, H - 2 * halo, W - 2 * halo) logits.
        """
        if not isinstance(self.backbone, DenseBackbone):
            raise ValueError(f"dense_logits needs the 'dense' backbone, this model has {type(self.backbone).__name__}")
        if self.centroid_head is not None and self.centroid_scales:
            features = self.backbone.forward_dense_scales(projected)
        else:
            features = self.backbone.forward_dense(projected)
        if rows is None:
            return apply_per_pixel(self.label_head, features)
        return torch.cat([apply_per_pixel(self.label_head, features[:, :, r:r + rows])
                          for r in range(0, features.shape[2], rows)], dim=2)

    # ------------------------------------------------------------------------------ tiled inference
    def prepare_tiled(self, device: torch.device) -> SSCC:
        """Move to ``device`` in eval mode, in the layout :meth:`tile_probabilities` runs fastest in
        (channels-last convolutions of the dense backbone: oneDNN's fastest on CPUs, ~1.5×)."""
        self.to(device).eval()
        if isinstance(self.backbone, DenseBackbone):
            # torch's stubs of Module.to omit memory_format, which it accepts
            self.backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return self

    @torch.no_grad()
    def tile_probabilities(self, padded: np.ndarray, *, patch_size: int, device: torch.device, amp: bool = False,
                           batch_size: int = 4096) -> Tensor:
        """Cluster probabilities of the interior of one padded tile, the tiled forward of inference.

        The projection (a per-pixel linear map) is applied once to the whole tile, in row strips to
        bound memory; the dense backbone then runs fully convolutionally (:meth:`dense_logits`), the
        ResNet one on the unfolded ``patch_size`` patches, in batches of about ``batch_size``.

        Args:
            padded: (B, H + 2·halo, W + 2·halo) raw band values, holes already filled.
            patch_size: side p of the patch (the halo is (p − 1) / 2).
            device: where to compute.
            amp: bf16 autocast.
            batch_size: patches per batch of the ResNet path.

        Returns:
            (K, H, W) float32 probabilities.
        """
        n_bands, height, width = padded.shape
        projected = torch.empty((1, self.projection.out_channels, height, width), dtype=torch.float32, device=device)
        strip = max(1, (64 * 2**20) // (n_bands * width * 4))
        for start in range(0, height, strip):
            rows = torch.from_numpy(np.ascontiguousarray(padded[:, start:start + strip], dtype=np.float32))
            projected[:, :, start:start + strip] = self.project(rows.unsqueeze(0).to(device))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            if isinstance(self.backbone, DenseBackbone):
                inner_width = width - 2 * self.backbone.halo
                # The head's widest layer is wide (512 or F per pixel): run it on row strips of ~HEAD_STRIP_BYTES.
                head_rows = max(1, HEAD_STRIP_BYTES // (inner_width * self._head_width() * 4))
                logits = self.dense_logits(projected.contiguous(memory_format=torch.channels_last), rows=head_rows)[0]
            else:
                logits = self._unfolded_logits(projected[0], PatchGeometry(patch_size), batch_size=batch_size)
        return torch.softmax(logits.float(), dim=0)

    def _unfolded_logits(self, projected: Tensor, geometry: PatchGeometry, *, batch_size: int) -> Tensor:
        """(C, H + 2h, W + 2h) projected tile → (K, H, W) logits, patch by patch (any backbone)."""
        p, halo = geometry.patch_size, geometry.halo
        inner_h, inner_w = projected.shape[1] - 2 * halo, projected.shape[2] - 2 * halo
        windows = projected.unfold(1, p, 1).unfold(2, p, 1)  # view (C, h, w, p, p)
        rows = max(1, batch_size // inner_w)  # copy out only a batch of rows of patches at a time
        strips = []
        for r in range(0, inner_h, rows):
            strip = windows[:, r:r + rows].permute(1, 2, 0, 3, 4)
            batch = strip.reshape(-1, strip.shape[2], p, p)
            strips.append(self.forward_projected(batch).reshape(strip.shape[0], inner_w, -1))
        return torch.cat(strips).permute(2, 0, 1)

    def _head_width(self) -> int:
        """Widest layer of the cluster head (its hidden width), to size strips of pixels."""
        return max(self.label_head.hidden, self.label_head.out_features)

    # ------------------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_patches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Cluster label and confidence of each raw patch, in eval mode.

        The module is switched to eval mode (BatchNorm running statistics) for the call and restored
        to its previous mode afterwards.

        Args:
            x: (N, B, p, p) raw band values.

        Returns:
            labels int64 (N,) in [0, K) and confidence float32 (N,), the winning softmax probability.
        """
        with _eval_mode(self):
            logits = self.forward(x)
        confidence, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
        return labels, confidence

    @torch.no_grad()
    def predict_dense(self, tile: Tensor) -> tuple[Tensor, Tensor]:
        """Cluster label and confidence of every interior pixel of raw tiles, in eval mode.

        Args:
            tile: (N, B, H, W) raw band values (dense backbone only).

        Returns:
            labels int64 (N, H - 2 * halo, W - 2 * halo) and confidence float32 of the same shape.
        """
        with _eval_mode(self):
            logits = self.forward_dense(tile)
        confidence, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
        return labels, confidence


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the block, then restore each submodule's previous mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _json_ready(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
