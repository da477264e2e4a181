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


def test_centroid_head_gives_no_centroid_to_a_few_outliers():
    """Two far-off pixels would take a centroid of their own and merge two of the three groups (plain
    k-means does so here); they are left out of the fit and join their nearest group."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    truth = np.repeat(np.arange(3), 300)
    features = np.vstack([centres[truth] + rng.normal(scale=0.6, size=(900, 2)), [[300.0, 300.0], [310.0, 290.0]]])
    plain = np.bincount(KMeans(3, n_init=10, random_state=0).fit(features).labels_, minlength=3)
    assert plain.min() == 2  # the failure the rule exists for
    head = CentroidHead.fit(features, 3, seed=0)
    labels = head(torch.from_numpy(features).float()).argmax(-1).numpy()
    table = np.zeros((3, 3), dtype=int)
    np.add.at(table, (truth, labels[:900]), 1)
    assert (table.max(axis=1) >= 280).all() and len(set(table.argmax(axis=1))) == 3
    assert float(head.scale) < 2.0  # the outliers do not count in the temperature either
    assert head.outliers_left_out == 2  # what training logs and records
    # a small but real group (5 % of the mean cluster size) keeps its own centroid
    small = np.vstack([features[:900], centres[2] + [20.0, 20.0] + rng.normal(scale=0.6, size=(15, 2))])
    kept = CentroidHead.fit(small, 4, seed=0)
    labels = kept(torch.from_numpy(small).float()).argmax(-1).numpy()
    assert len(set(labels[900:])) == 1 and not set(labels[900:]) & set(labels[:900])
    assert kept.outliers_left_out == 0


def test_centroid_head_weighs_every_block_the_same():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 400)
    # Block 1 separates the groups on a scale of 1; block 2 is noise 1000 times larger. Unweighted,
    # k-means follows the noise; with blocks=2 each block counts the same and the groups come back.
    informative = np.where(truth[:, None] == 1, 1.0, -1.0) + rng.normal(scale=0.1, size=(400, 3))
    noise = rng.normal(scale=1000.0, size=(400, 3)) + 5000.0
    features = np.hstack([informative, noise])
    head = CentroidHead.fit(features, 2, seed=0, blocks=2)
    labels = head(torch.from_numpy(features).float()).argmax(-1).numpy()
    agreement = (labels == truth).mean()
    assert max(agreement, 1 - agreement) > 0.95
    # Each weighted block has unit mean squared norm around its mean.
    weighted = (features - head.offset.numpy()) * head.weight.numpy()
    for part in (slice(0, 3), slice(3, 6)):
        assert (weighted[:, part] ** 2).sum(1).mean() == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="equal blocks"):
        CentroidHead.fit(features, 2, blocks=4)


def test_centroid_head_written_before_weights_loads_as_unweighted():
    head = CentroidHead(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), 2.0)
    old = {key: value for key, value in head.state_dict().items() if key in ("centroids", "scale")}
    loaded = CentroidHead(torch.zeros(2, 2))
    loaded.load_state_dict(old)
    assert torch.equal(loaded.offset, torch.zeros(2)) and torch.equal(loaded.weight, torch.ones(2))
    x = torch.tensor([[0.5, 1.5]])
    assert torch.equal(loaded(x), head(x))


def test_a_centroid_head_sizes_tiled_strips_by_its_feature_width() -> None:
    """Its widest per-pixel tensor is the weighted features (F wide), not the K logits: sized by K, tiled
    inference ran each 512² tile's head at once, 1.5× slower than in cache-sized strips (same labels)."""
    assert CentroidHead(torch.zeros(16, 192)).hidden == 192
    assert CentroidHead(torch.zeros(40, 8)).hidden == 40
