"""ResNetBackbone, DenseBackbone (patch vs tile equivalence) and build_backbone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hsi_cluster.model.backbones import BasicBlock, DenseBackbone, ResNetBackbone, build_backbone


def _randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            n = layer.num_features
            layer.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            layer.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            layer.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            layer.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def test_resnet_default_layout_and_shapes():
    torch.manual_seed(0)
    net = ResNetBackbone()
    assert net.out_features == 256 and net.patch_size is None
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 6
    # Projection shortcuts exactly where channels change: 32→64, 64→128, 128→256.
    assert sum(not isinstance(b.shortcut, torch.nn.Identity) for b in blocks) == 3
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert all(m.stride == (1, 1) for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    out = net(torch.randn(2, 8, 11, 11))
    assert out.shape == (2, 256)


@pytest.mark.parametrize("patch", [1, 7, 11])
def test_resnet_any_patch_size(patch):
    net = ResNetBackbone(in_channels=3, stem_width=4, widths=(8, 16), blocks_per_stage=1)
    assert net(torch.randn(2, 3, patch, patch)).shape == (2, 16)
    with pytest.raises(ValueError, match="in_channels|shape"):
        net(torch.randn(2, 4, patch, patch))


def test_dense_attributes_and_shapes():
    net = DenseBackbone(in_channels=8, width=16, depth=5)
    assert net.receptive_field == 11 and net.patch_size == 11 and net.halo == 5 and net.out_features == 16
    assert net(torch.randn(3, 8, 11, 11)).shape == (3, 16)
    assert net.forward_dense(torch.randn(2, 8, 20, 23)).shape == (2, 16, 10, 13)
    assert DenseBackbone(in_channels=2, width=4, depth=2).receptive_field == 5
    with pytest.raises(ValueError, match="11 × 11"):
        net(torch.randn(1, 8, 9, 9))
    with pytest.raises(ValueError, match="smaller than the receptive field"):
        net.forward_dense(torch.randn(1, 8, 10, 30))
    with pytest.raises(ValueError, match="depth"):
        DenseBackbone(depth=0)


@pytest.mark.parametrize("stem", [True, False])
def test_dense_tile_equals_patches_in_eval_mode(stem):
    torch.manual_seed(0)
    net = DenseBackbone(in_channels=8, width=16, depth=5, stem=stem)
    _randomise_batchnorm(net)
    net.eval()
    tile = torch.randn(2, 8, 20, 23)
    with torch.no_grad():
        dense = net.forward_dense(tile)  # (2, 16, 10, 13)
        p = net.receptive_field
        patches = F.unfold(tile, p)  # (2, 8 * p * p, 10 * 13), row-major over output pixels
        patches = patches.transpose(1, 2).reshape(-1, 8, p, p)
        per_patch = net(patches).reshape(2, 10, 13, 16).permute(0, 3, 1, 2)
    assert dense.shape == per_patch.shape == (2, 16, 10, 13)
    assert (dense - per_patch).abs().max().item() < 1e-4
    # Spot-check one pixel against a patch cut by hand (guards the unfold ordering above).
    with torch.no_grad():
        single = net(tile[1:2, :, 3:3 + p, 7:7 + p])
    assert torch.allclose(single[0], dense[1, :, 3, 7], atol=1e-4)


@pytest.mark.parametrize("stem", [True, False])
def test_dense_scales_join_every_stage_and_tiles_equal_patches(stem):
    torch.manual_seed(1)
    net = DenseBackbone(in_channels=6, width=4, depth=2, stem=stem)
    _randomise_batchnorm(net, seed=1)
    net.eval()
    assert net.n_scales == 2 + stem and net.scale_features == 4 * net.n_scales
    tile = torch.randn(1, 6, 9, 11)
    with torch.no_grad():
        joined = net.forward_dense_scales(tile)  # (1, S · 4, 5, 7)
        # The last block is the ordinary feature map; the first, with the stem, the 1 × 1 stage alone.
        assert torch.equal(joined[:, -4:], net.forward_dense(tile))
        if stem:
            stem_only = net.layers[:3](tile)[:, :, 2:-2, 2:-2]
            assert torch.equal(joined[:, :4], stem_only)
        p = net.receptive_field
        patches = F.unfold(tile, p).transpose(1, 2).reshape(-1, 6, p, p)
        per_patch = net.forward_scales(patches).reshape(1, 5, 7, -1).permute(0, 3, 1, 2)
    assert joined.shape == per_patch.shape == (1, net.scale_features, 5, 7)
    assert (joined - per_patch).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="5 × 5 patches"):
        net.forward_scales(torch.randn(2, 6, 7, 7))


def test_dense_is_trainable():
    net = DenseBackbone(in_channels=2, width=4, depth=2)
    net(torch.randn(4, 2, 5, 5)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_build_backbone():
    assert isinstance(build_backbone("dense", 8, width=8, depth=3), DenseBackbone)
    resnet = build_backbone("resnet", 5, stem_width=4, widths=(8,))
    assert isinstance(resnet, ResNetBackbone) and resnet.in_channels == 5 and resnet.out_features == 8
    with pytest.raises(ValueError, match="'dense', 'resnet'"):
        build_backbone("vit", 8)
