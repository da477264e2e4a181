"""NT-Xent, Barlow Twins and the SSCC objective against plain reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hsi_cluster.model.losses import BarlowTwinsLoss, NTXentLoss, SSCCLoss


def _nt_xent_reference(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """SimCLR's loss written out sample by sample, as in the paper's Algorithm 1."""
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)

    def loss_pair(i: int, j: int) -> float:
        numerator = math.exp(float(z[i] @ z[j]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i)
        return -math.log(numerator / denominator)

    total = sum(loss_pair(k, k + n) + loss_pair(k + n, k) for k in range(n))
    return total / (2 * n)


def _barlow_reference(c1: np.ndarray, c2: np.ndarray, weight: float, eps: float = 1e-5) -> float:
    n, d = c1.shape
    bn1 = (c1 - c1.mean(0)) / np.sqrt(c1.var(0) + eps)
    bn2 = (c2 - c2.mean(0)) / np.sqrt(c2.var(0) + eps)
    correlation = np.zeros((d, d))
    for k in range(d):
        for m in range(d):
            correlation[k, m] = np.sum(bn1[:, k] * bn2[:, m]) / n
    on = sum((1 - correlation[k, k]) ** 2 for k in range(d))
    off = sum(correlation[k, m] ** 2 for k in range(d) for m in range(d) if k != m)
    return on + weight * off


@pytest.mark.parametrize(("n", "dim", "temperature"), [(2, 3, 0.5), (3, 4, 0.5), (5, 6, 0.1), (4, 2, 1.0)])
def test_nt_xent_matches_reference(n, dim, temperature):
    rng = np.random.default_rng(n * 10 + dim)
    z1, z2 = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    got = NTXentLoss(temperature=temperature)(torch.tensor(z1), torch.tensor(z2)).item()
    assert got == pytest.approx(_nt_xent_reference(z1, z2, temperature), rel=1e-9)


def test_nt_xent_known_value_and_scale_invariance():
    n, temperature = 4, 0.5
    z = torch.eye(n, dtype=torch.float64)  # identical views, mutually orthogonal samples
    loss = NTXentLoss(temperature=temperature)(z, z).item()
    assert loss == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-1 / temperature)), rel=1e-12)
    assert NTXentLoss(temperature=temperature)(3 * z, 0.5 * z).item() == pytest.approx(loss, rel=1e-12)
    # Swapping the views does not change the loss; mismatched pairs cost more.
    rng = np.random.default_rng(0)
    a, b = torch.tensor(rng.normal(size=(6, 3))), torch.tensor(rng.normal(size=(6, 3)))
    criterion = NTXentLoss()
    assert criterion(a, b).item() == pytest.approx(criterion(b, a).item(), rel=1e-12)
    assert criterion(z, z.roll(1, dims=0)).item() > loss


def test_nt_xent_validation_and_gradient():
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)
    with pytest.raises(ValueError, match="same|shape"):
        NTXentLoss()(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        NTXentLoss()(torch.randn(1, 2), torch.randn(1, 2))
    z1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(NTXentLoss(), (z1, z2))


@pytest.mark.parametrize(("n", "dim", "weight"), [(8, 3, 0.005), (16, 5, 0.005), (5, 4, 1.0)])
def test_barlow_twins_matches_reference(n, dim, weight):
    rng = np.random.default_rng(n + dim)
    c1, c2 = rng.normal(size=(n, dim)), rng.normal(size=(n, dim)) * 3 + 1
    got = BarlowTwinsLoss(offdiag_weight=weight)(torch.tensor(c1), torch.tensor(c2)).item()
    assert got == pytest.approx(_barlow_reference(c1, c2, weight), rel=1e-5)


def test_barlow_twins_known_values():
    k = 4
    one_hot = torch.eye(k, dtype=torch.float64).repeat(5, 1)  # 20 samples, every cluster used equally
    diag_only = BarlowTwinsLoss(offdiag_weight=0.0)(one_hot, one_hot).item()
    assert diag_only == pytest.approx(0.0, abs=1e-7)
    # Balanced one-hot columns correlate at -1 / (K - 1): off-diagonal term K (K - 1) / (K - 1)².
    full = BarlowTwinsLoss(offdiag_weight=0.005)(one_hot, one_hot).item()
    assert full == pytest.approx(0.005 * k / (k - 1), rel=1e-3)
    # Independent views: the diagonal term is large.
    shuffled = one_hot[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    assert BarlowTwinsLoss()(one_hot, shuffled).item() > 1.0


def test_barlow_twins_uses_batch_statistics_in_eval_mode_and_gradient():
    criterion = BarlowTwinsLoss()
    c1, c2 = torch.randn(10, 3), torch.randn(10, 3)
    train_value = criterion(c1, c2)
    criterion.eval()
    assert torch.equal(criterion(c1, c2), train_value)
    x1 = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(BarlowTwinsLoss(), (x1, x2))
    with pytest.raises(ValueError, match="at least 2"):
        criterion(torch.randn(1, 3), torch.randn(1, 3))


def test_sscc_loss_combines_terms_on_probabilities():
    torch.manual_seed(0)
    logits1 = torch.randn(12, 4, requires_grad=True)
    logits2 = torch.randn(12, 4)
    p1, p2 = logits1.softmax(dim=1), logits2.softmax(dim=1)
    out = SSCCLoss()(p1, p2)
    assert set(out) == {"loss", "instance", "cluster"}
    instance = NTXentLoss(temperature=0.5)(p1, p2)
    cluster = BarlowTwinsLoss(offdiag_weight=0.005)(p1, p2)
    assert torch.allclose(out["instance"], instance)
    assert torch.allclose(out["cluster"], cluster)
    assert torch.allclose(out["loss"], 5e-5 * instance + cluster)
    out["loss"].backward()
    assert logits1.grad is not None and torch.isfinite(logits1.grad).all()

    weighted = SSCCLoss(instance_weight=1.0, cluster_weight=0.0, temperature=0.2)(p1.detach(), p2)
    assert torch.allclose(weighted["loss"], NTXentLoss(temperature=0.2)(p1.detach(), p2))


def test_sscc_loss_validation():
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        SSCCLoss()(torch.rand(4, 3), torch.rand(4, 2))
    with pytest.raises(ValueError, match="K >= 2"):
        SSCCLoss()(torch.rand(4, 1), torch.rand(4, 1))
    with pytest.raises(ValueError, match=">= 0"):
        SSCCLoss(instance_weight=-1.0)


def test_losses_run_in_float32_under_autocast():
    torch.manual_seed(1)
    p1, p2 = torch.randn(16, 5).softmax(1), torch.randn(16, 5).softmax(1)
    expected = SSCCLoss()(p1, p2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = SSCCLoss()(p1.bfloat16(), p2.bfloat16())
    for name in ("loss", "instance", "cluster"):
        assert got[name].dtype == torch.float32
        assert torch.allclose(got[name], expected[name], rtol=0.05, atol=1e-3)
