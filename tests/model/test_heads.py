"""ClusterHead, InstanceProjector and the per-pixel helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsi_cluster.model.heads import CentroidHead, ClusterHead, InstanceProjector, apply_per_pixel, probs


def test_cluster_head_shapes_and_layout():
    head = ClusterHead(16, 5, hidden=32)
    logits = head(torch.randn(7, 16))
    assert logits.shape == (7, 5) and head.n_clusters == 5 and head.in_features == 16
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 5)]
    p = probs(logits)
    assert torch.allclose(p.sum(dim=1), torch.ones(7))
    assert (p >= 0).all()


def test_cluster_head_default_hidden_is_512():
    head = ClusterHead(256, 3)
    assert head.net[0].out_features == 512


@pytest.mark.parametrize("n_clusters", [0, 1])
def test_cluster_head_needs_two_clusters(n_clusters):
    with pytest.raises(ValueError, match="n_clusters must be >= 2"):
        ClusterHead(8, n_clusters)


def test_instance_projector_shapes():
    projector = InstanceProjector(16, hidden=32)
    assert projector(torch.randn(4, 16)).shape == (4, 128)
    assert InstanceProjector(16, 24, hidden=8)(torch.randn(4, 16)).shape == (4, 24)


def test_apply_per_pixel_matches_pixel_loop():
    torch.manual_seed(0)
    head = ClusterHead(6, 4, hidden=8)
    feature_map = torch.randn(2, 6, 3, 5)
    out = apply_per_pixel(head, feature_map)
    assert out.shape == (2, 4, 3, 5)
    for i in range(3):
        for j in range(5):
            assert torch.allclose(out[:, :, i, j], head(feature_map[:, :, i, j]), atol=1e-6)
    assert torch.allclose(probs(out).sum(dim=1), torch.ones(2, 3, 5))
    with pytest.raises(ValueError, match=r"\(N, F, H, W\)"):
        apply_per_pixel(head, torch.randn(2, 6))


def test_both_heads_are_the_one_mlp_head_with_the_same_state_dict_keys():
    from hsi_cluster.model.heads import MLPHead

    cluster, projector = ClusterHead(8, 3, hidden=4), InstanceProjector(8, 6, hidden=4)
    assert isinstance(cluster, MLPHead) and isinstance(projector, MLPHead)
    keys = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    assert list(cluster.state_dict()) == keys == list(projector.state_dict())
    assert (cluster.hidden, cluster.out_features, cluster.n_clusters) == (4, 3, 3)
    assert (projector.hidden, projector.out_features) == (4, 6)


def test_losses_live_one_per_module_and_the_package_re_exports_them():
    from hsi_cluster.model import losses
    from hsi_cluster.model.losses.sscc import SSCCLoss

    assert losses.SSCCLoss is SSCCLoss and SSCCLoss.__module__ == "hsi_cluster.model.losses.sscc"


def test_centroid_head_fit_finds_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, 300)
    features = centres[truth] + rng.normal(scale=0.5, size=(300, 2))
    head = CentroidHead.fit(features, 3, seed=0)
    labels = head(torch.from_numpy(features).float()).argmax(-1).numpy()
    # One cluster per group (ids are arbitrary): the contingency table is a permutation.
    table = np.zeros((3, 3), dtype=int)
    np.add.at(table, (truth, labels), 1)
    assert sorted((table > 0).sum(axis=1)) == [1, 1, 1] and sorted(table.max(axis=1)) == sorted(np.bincount(truth))
    # The scale is the mean squared distance to the own centroid: about 2 · 0.5² here.
    assert float(head.scale) == pytest.approx(0.5, rel=0.2)
    with pytest.raises(ValueError, match="cannot make"):
        CentroidHead.fit(features[:2], 3)
