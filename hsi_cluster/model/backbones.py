"""Backbones that turn a projected patch (N, C, p, p) into one feature vector per patch (N, F).

Two choices:

* :class:`ResNetBackbone`: the reference network of SSCC (Cai et al., arXiv:2111.07945), a trimmed
  ResNet-18 with padded convolutions and global average pooling. It accepts any patch size but a
  pixel's label can only be computed from its own patch.
* :class:`DenseBackbone`: a stack of *valid* (unpadded) 3 × 3 convolutions whose receptive field
  equals the patch. Applied to a patch it returns the features of the centre pixel; applied to a tile
  (:meth:`DenseBackbone.forward_dense`) it returns the same features for every interior pixel at
  once, sharing the work between neighbours. The patch size and halo are defined here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hsi_cluster.geo import PatchGeometry

#: Default number of valid 3 × 3 layers of :class:`DenseBackbone` (an 11 × 11 patch).
DEFAULT_DEPTH = 5


class BasicBlock(nn.Module):
    """ResNet basic block, stride 1: (3 × 3 conv, BN, ReLU, 3 × 3 conv, BN) + shortcut, ReLU.

    Shapes: (N, in_channels, H, W) → (N, out_channels, H, W) (padding 1 keeps H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """The SSCC reference backbone: 1 × 1 stem, stride-1 ResNet stages, global average pooling.

    Args:
        in_channels: channels of the projected input (8 PCA components in the paper).
        stem_width: width of the 1 × 1 stem convolution.
        widths: output channels of each stage.
        blocks_per_stage: basic blocks per stage.

    Shapes:
        (N, in_channels, H, W), any H, W ≥ 1 → (N, widths[-1]).

    Attributes:
        out_features: feature dimension F = widths[-1].
        patch_size: None, meaning any patch size is accepted (the caller chooses, 11 in the paper).
    """

    patch_size: int | None = None

    def __init__(self, in_channels: int = 8, stem_width: int = 32, widths: Sequence[int] = (64, 128, 256),
                 blocks_per_stage: int = 2) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if in_channels < 1 or stem_width < 1 or not widths or min(widths) < 1:
            raise ValueError(f"in_channels, stem_width and every width must be >= 1 and widths non-empty, "
                             f"got in_channels={in_channels}, stem_width={stem_width}, widths={widths}")
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        self.in_channels = in_channels
        self.out_features = widths[-1]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, 1, bias=False),
                                  nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        channels = stem_width
        for width in widths:
            for _ in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width))
                channels = width
        self.stages = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Features of each patch.

        Args:
            x: (N, in_channels, H, W) projected patches.

        Returns:
            (N, out_features) globally average-pooled features.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected patches of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return self.stages(self.stem(x)).mean(dim=(2, 3))


class DenseBackbone(nn.Module):
    """Valid-convolution backbone whose receptive field equals the patch: patch and tile paths agree.

    Layout: optional 1 × 1 conv stem (in_channels → width) + BN + ReLU, then ``depth`` valid 3 × 3
    conv + BN + ReLU layers. Each 3 × 3 layer trims one pixel per side, so a patch of side
    ``receptive_field = 2 * depth + 1`` becomes a single pixel, and a tile of H × W becomes
    (H - 2 * halo) × (W - 2 * halo) with ``halo = depth``.

    In eval mode (BatchNorm using running statistics) :meth:`forward_dense` over a tile gives at each
    output pixel the same features, up to float rounding, as :meth:`forward` on the patch of side
    ``receptive_field`` centred on that pixel.

    Args:
        in_channels: channels of the projected input.
        width: channels of every layer; also the feature dimension.
        depth: number of valid 3 × 3 layers (≥ 1).
        stem: whether to start with the 1 × 1 stem; without it the first 3 × 3 layer maps
            in_channels → width.

    Attributes:
        receptive_field: patch side p = 2 * depth + 1 (11 for depth 5).
        patch_size: same as ``receptive_field``: the only patch size :meth:`forward` accepts.
        halo: pixels lost per side by the tile path, = depth = (p - 1) / 2.
        out_features: feature dimension F = width.
    """

    def __init__(self, in_channels: int = 8, width: int = 64, depth: int = DEFAULT_DEPTH, stem: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be >= 1, got {in_channels} and {width}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (receptive field 2 * depth + 1), got {depth}")
        self.in_channels = in_channels
        self.depth = depth
        self.geometry = PatchGeometry.from_depth(depth)
        self.halo = self.geometry.halo
        self.receptive_field = self.geometry.receptive_field
        self.out_features = width
        self.stem = stem
        layers: list[nn.Module] = []
        channels = in_channels
        if stem:
            layers += [nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=0, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.layers = nn.Sequential(*layers)

    @property
    def patch_size(self) -> int:
        """The patch side :meth:`forward` expects (= ``receptive_field``)."""
        return self.receptive_field

    def forward(self, x: Tensor) -> Tensor:
        """Features of the centre pixel of each patch.

        Args:
            x: (N, in_channels, p, p) projected patches with p == ``receptive_field``.

        Returns:
            (N, out_features).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected patches of shape (N, {self.in_channels}, {self.receptive_field}, "
                             f"{self.receptive_field}), got {tuple(x.shape)}")
        if x.shape[2] != self.receptive_field or x.shape[3] != self.receptive_field:
            raise ValueError(f"DenseBackbone(depth={self.depth}) takes {self.receptive_field} × "
                             f"{self.receptive_field} patches, got {x.shape[2]} × {x.shape[3]}: cut patches of "
                             f"side 2 * depth + 1, or use forward_dense() for larger tiles")
        return self.layers(x).flatten(1)

    def forward_dense(self, x: Tensor) -> Tensor:
        """Features of every interior pixel of a tile.

        Args:
            x: (N, in_channels, H, W) projected tile, H and W ≥ ``receptive_field``; the outer
                ``halo`` pixels on each side are context only.

        Returns:
            (N, out_features, H - 2 * halo, W - 2 * halo) feature map; output pixel (i, j) belongs
            to input pixel (i + halo, j + halo).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a tile of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] < self.receptive_field or x.shape[3] < self.receptive_field:
            raise ValueError(f"tile {x.shape[2]} × {x.shape[3]} is smaller than the receptive field "
                             f"{self.receptive_field}: pad the tile by halo={self.halo} pixels per side")
        return self.layers(x)

    @property
    def n_scales(self) -> int:
        """Stages whose features :meth:`forward_dense_scales` joins: the stem (1 × 1) and each 3 × 3 layer."""
        return sum(isinstance(layer, nn.ReLU) for layer in self.layers)

    @property
    def scale_fields(self) -> list[int]:
        """Receptive-field side, in pixels, of each stage of :meth:`forward_dense_scales` (1, 3, 5, … with the stem)."""
        return ([1] if self.stem else []) + [2 * i + 3 for i in range(self.depth)]

    @property
    def scale_features(self) -> int:
        """Feature dimension of :meth:`forward_scales`: ``n_scales · out_features``."""
        return self.n_scales * self.out_features

    def forward_dense_scales(self, x: Tensor) -> Tensor:
        """Features of every interior pixel at every scale of the receptive field, joined.

        The output of each stage (the 1 × 1 stem, then the 3 × 3 layers: receptive fields 1, 3, 5, …
        pixels) is cropped to the final map and the stages are stacked along the channels, smallest
        receptive field first. In eval mode each output pixel equals :meth:`forward_scales` on the
        patch centred there, so tiled inference stays tile-invariant.

        Args:
            x: (N, in_channels, H, W) projected tile, as for :meth:`forward_dense`.

        Returns:
            (N, n_scales · out_features, H - 2 * halo, W - 2 * halo).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a tile of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] < self.receptive_field or x.shape[3] < self.receptive_field:
            raise ValueError(f"tile {x.shape[2]} × {x.shape[3]} is smaller than the receptive field "
                             f"{self.receptive_field}: pad the tile by halo={self.halo} pixels per side")
        height, width = x.shape[2] - 2 * self.halo, x.shape[3] - 2 * self.halo
        stages = []
        for layer in self.layers:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                trim = (x.shape[2] - height) // 2
                stages.append(x[:, :, trim:trim + height, trim:trim + width])
        return torch.cat(stages, dim=1)

    def forward_scales(self, x: Tensor) -> Tensor:
        """Features of the centre pixel of each patch at every scale: (N, C, p, p) → (N, n_scales · out_features)."""
        if x.ndim != 4 or x.shape[2] != self.receptive_field or x.shape[3] != self.receptive_field:
            raise ValueError(f"DenseBackbone(depth={self.depth}) takes {self.receptive_field} × "
                             f"{self.receptive_field} patches, got shape {tuple(x.shape)}")
        return self.forward_dense_scales(x).flatten(1)


BACKBONES: dict[str, type[nn.Module]] = {"resnet": ResNetBackbone, "dense": DenseBackbone}


def backbone_geometry(name: str, backbone_kwargs: Mapping[str, Any]) -> PatchGeometry | None:
    """The patch geometry a backbone fixes, from its settings alone (without building it).

    The dense backbone's ``depth`` decides it (p = 2 · depth + 1); the ResNet accepts any patch
    size (None: the training configuration's ``patch_size`` decides).
    """
    if name != "dense":
        return None
    return PatchGeometry.from_depth(int(backbone_kwargs.get("depth", DEFAULT_DEPTH)))


def build_backbone(name: str, in_channels: int, **kwargs: object) -> ResNetBackbone | DenseBackbone:
    """Make a backbone by name.

    Args:
        name: "resnet" (:class:`ResNetBackbone`) or "dense" (:class:`DenseBackbone`).
        in_channels: channels of the projected input.
        **kwargs: the backbone's other constructor arguments.

    Raises:
        ValueError: for an unknown name.
    """
    try:
        cls = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}: choose one of {sorted(BACKBONES)}") from None
    return cls(in_channels=in_channels, **kwargs)  # type: ignore[return-value]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["BasicBlock", "ResNetBackbone", "DenseBackbone", "BACKBONES", "DEFAULT_DEPTH", "backbone_geometry",
           "build_backbone", "count_parameters"]
