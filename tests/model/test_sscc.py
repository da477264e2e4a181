"""The composed SSCC model: shapes, frozen projection, dense vs patch labels, rebuild from config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hsi_cluster.model.backbones import DenseBackbone
from hsi_cluster.model.heads import CentroidHead, ClusterHead
from hsi_cluster.model.losses import SSCCLoss
from hsi_cluster.model.projection import SpectralProjection
from hsi_cluster.model.sscc import SSCC

N_BANDS, N_COMP, K = 12, 4, 3
SMALL_DENSE = {"width": 8, "depth": 3}


def _stats(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = rng.uniform(500, 1500, N_BANDS)
    std = rng.uniform(50, 150, N_BANDS)
    components, _ = np.linalg.qr(rng.normal(size=(N_BANDS, N_COMP)))
    return mean, std, components.T


def _raw(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 1000 + 100 * torch.randn(shape, generator=generator)


def _dense_model(seed: int = 0) -> SSCC:
    torch.manual_seed(seed)
    return SSCC.build(*_stats(), n_clusters=K, backbone="dense", backbone_kwargs=SMALL_DENSE, head_hidden=16)


def test_forward_shapes_and_composition():
    model = _dense_model()
    assert model.patch_size == 7 and model.halo == 3 and model.n_clusters == K and model.in_bands == N_BANDS
    x = _raw((5, N_BANDS, 7, 7))
    logits = model(x)
    assert logits.shape == (5, K)
    manual = model.cluster_head(model.backbone(model.projection(x)))
    assert torch.allclose(logits, manual)
    assert torch.allclose(model.forward_projected(model.project(x)), logits)
    assert model.encode(model.project(x)).shape == (5, SMALL_DENSE["width"])


def test_projection_stays_frozen_through_a_training_step():
    model = _dense_model()
    projection_before = {k: v.clone() for k, v in model.projection.state_dict().items()}
    assert not any(name.startswith("projection.") for name, _ in model.named_parameters())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = _raw((8, N_BANDS, 7, 7))
    out = SSCCLoss()(model(x).softmax(1), model(x + 5 * torch.randn_like(x)).softmax(1))
    out["loss"].backward()
    optimiser.step()
    for name, value in model.projection.state_dict().items():
        assert torch.equal(value, projection_before[name])
    assert {"projection.weight", "projection.bias"} <= set(model.state_dict())


def test_forward_dense_matches_patch_labels_in_eval_mode():
    model = _dense_model()
    # Move BatchNorm running statistics away from the defaults with a few training-mode passes.
    with torch.no_grad():
        for seed in range(3):
            model(_raw((16, N_BANDS, 7, 7), seed=seed))
    model.eval()
    tile = _raw((1, N_BANDS, 12, 15), seed=9)
    with torch.no_grad():
        dense = model.forward_dense(tile)  # (1, K, 6, 9)
        patches = F.unfold(tile, 7).transpose(1, 2).reshape(-1, N_BANDS, 7, 7)
        per_patch = model(patches).reshape(1, 6, 9, K).permute(0, 3, 1, 2)
    assert dense.shape == (1, K, 6, 9)
    assert (dense - per_patch).abs().max().item() < 1e-4
    labels, confidence = model.predict_dense(tile)
    assert labels.shape == confidence.shape == (1, 6, 9)
    assert torch.equal(labels, per_patch.argmax(dim=1))


def test_predict_patches_uses_eval_mode_and_restores_it():
    model = _dense_model()
    model.train()
    x = _raw((6, N_BANDS, 7, 7))
    labels, confidence = model.predict_patches(x)
    assert model.training and all(m.training for m in model.modules())
    assert labels.dtype == torch.int64 and labels.shape == (6,)
    assert ((labels >= 0) & (labels < K)).all()
    assert confidence.shape == (6,) and ((confidence >= 1 / K - 1e-6) & (confidence <= 1)).all()
    model.eval()
    with torch.no_grad():
        expected = model(x).softmax(1)
    assert torch.equal(labels, expected.argmax(1))
    assert torch.allclose(confidence, expected.max(1).values)
    assert not model.training


def test_resnet_model_has_no_dense_path():
    torch.manual_seed(0)
    model = SSCC.build(*_stats(), n_clusters=K, backbone="resnet",
                       backbone_kwargs={"stem_width": 4, "widths": (8,), "blocks_per_stage": 1}, head_hidden=8)
    assert model.patch_size is None and model.halo is None
    assert model(_raw((2, N_BANDS, 11, 11))).shape == (2, K)
    with pytest.raises(ValueError, match="'dense' backbone"):
        model.forward_dense(_raw((1, N_BANDS, 15, 15)))


def test_config_round_trip_restores_predictions():
    model = _dense_model(seed=1).eval()
    assert model.config is not None and model.config["backbone_kwargs"] == SMALL_DENSE
    rebuilt = SSCC.from_config(model.config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = _raw((4, N_BANDS, 7, 7))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))

    with_projector = SSCC.build(*_stats(), n_clusters=K, backbone_kwargs=SMALL_DENSE, head_hidden=8, instance_dim=5)
    assert with_projector.instance_projector is not None
    rebuilt = SSCC.from_config(with_projector.config)
    rebuilt.load_state_dict(with_projector.state_dict())


def test_composition_checks_sizes():
    projection = SpectralProjection(np.zeros(N_BANDS), np.ones(N_BANDS), np.eye(N_COMP, N_BANDS))
    with pytest.raises(ValueError, match="in_channels=4"):
        SSCC(projection, DenseBackbone(in_channels=8, width=8, depth=1), ClusterHead(8, K))
    with pytest.raises(ValueError, match="features"):
        SSCC(projection, DenseBackbone(in_channels=N_COMP, width=8, depth=1), ClusterHead(16, K))
    with pytest.raises(ValueError, match="unknown backbone"):
        SSCC.build(*_stats(), n_clusters=K, backbone="unet")


def test_tile_probabilities_match_forward_dense_and_the_unfolded_path():
    """The tiled forward of inference (model-side): strips of the head give what forward_dense gives, and the
    patch-by-patch (ResNet) path gives the same on a dense model."""
    from hsi_cluster.geo import PatchGeometry

    model = _dense_model().eval()
    tile = _raw((N_BANDS, 9, 12)).numpy()
    probabilities = model.tile_probabilities(tile, patch_size=model.patch_size, device=torch.device("cpu"))
    with torch.no_grad():
        reference = torch.softmax(model.forward_dense(torch.from_numpy(tile)[None]).float(), dim=1)[0]
        strips = model.dense_logits(model.project(torch.from_numpy(tile)[None]), rows=1)
        unfolded = model._unfolded_logits(model.project(torch.from_numpy(tile)[None])[0],
                                          PatchGeometry(model.patch_size), batch_size=7)
    torch.testing.assert_close(probabilities, reference)
    torch.testing.assert_close(strips, model.forward_dense(torch.from_numpy(tile)[None]))
    torch.testing.assert_close(torch.softmax(unfolded, dim=0), reference, atol=1e-5, rtol=1e-4)


def _with_centroids(seed: int = 0) -> SSCC:
    """A dense model whose labels come from centroids fitted on its own eval-mode features."""
    model = _dense_model(seed).eval()
    with torch.no_grad():
        features = model.encode(model.project(_raw((64, N_BANDS, 7, 7), seed=seed + 1))).numpy()
    model.set_centroid_head(CentroidHead.fit(features, K, seed=seed))
    return model


def test_centroid_head_labels_nearest_centroid_on_patches_and_tiles():
    model = _with_centroids()
    assert model.label_head is model.centroid_head and model.config["assignment"] == "centroids"
    x = _raw((10, N_BANDS, 7, 7), seed=5)
    with torch.no_grad():
        features = model.encode(model.project(x))
        nearest = torch.cdist(features, model.centroid_head.centroids).argmin(1)
    labels, _ = model.predict_patches(x)
    assert torch.equal(labels, nearest)
    tile = _raw((1, N_BANDS, 12, 15), seed=9)
    with torch.no_grad():
        dense = model.forward_dense(tile)
        patches = F.unfold(tile, 7).transpose(1, 2).reshape(-1, N_BANDS, 7, 7)
        per_patch = model(patches).reshape(1, 6, 9, K).permute(0, 3, 1, 2)
    assert torch.equal(dense.argmax(1), per_patch.argmax(1))
    # Logits are negative squared distances over the scale (which is positive).
    assert (dense <= 0).all() and float(model.centroid_head.scale) > 0


def test_centroid_head_survives_the_config_round_trip():
    model = _with_centroids(seed=2)
    rebuilt = SSCC.from_config(model.config)
    assert rebuilt.centroid_head is not None
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = _raw((5, N_BANDS, 7, 7), seed=3)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_centroids_on_every_scale_label_tiles_as_patches_and_survive_the_round_trip():
    model = _dense_model(3).eval()
    with torch.no_grad():
        features = model.backbone.forward_scales(model.project(_raw((64, N_BANDS, 7, 7), seed=4))).numpy()
    model.set_centroid_head(CentroidHead.fit(features, K, seed=0, blocks=model.backbone.n_scales), scales=True)
    assert model.config["centroid_features"] == "scales"
    tile = _raw((1, N_BANDS, 12, 15), seed=9)
    with torch.no_grad():
        dense = model.forward_dense(tile)
        patches = F.unfold(tile, 7).transpose(1, 2).reshape(-1, N_BANDS, 7, 7)
        per_patch = model(patches).reshape(1, 6, 9, K).permute(0, 3, 1, 2)
    torch.testing.assert_close(dense, per_patch, atol=1e-4, rtol=1e-4)
    assert torch.equal(dense.argmax(1), per_patch.argmax(1))
    rebuilt = SSCC.from_config(model.config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(patches[:5]), model(patches[:5]))
    with pytest.raises(ValueError, match="centroid head"):
        model.set_centroid_head(CentroidHead.fit(features[:, :8], K), scales=True)


def test_centroid_head_must_fit_the_model():
    model = _dense_model()
    with pytest.raises(ValueError, match="centroid head"):
        model.set_centroid_head(CentroidHead(torch.zeros(K, 3)))
    with pytest.raises(ValueError, match="K ≥ 2"):
        CentroidHead(torch.zeros(1, 8))
