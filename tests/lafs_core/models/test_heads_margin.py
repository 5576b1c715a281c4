"""DINO head structure and weight norm; CosFace / ArcFace logits against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lafs_core.models.heads import DINOHead
from lafs_core.models.margin import ArcFace, CosFace, build_margin_head


def test_dino_head_computes_normalised_prototype_scores() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=32, out_dim=50, hidden_dim=64, bottleneck_dim=16)
    gain = head.last_layer.parametrizations.weight.original0
    assert not gain.requires_grad and torch.equal(gain, torch.ones(50, 1))
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original1.mul_(torch.rand(50, 1) * 5 + 0.1)
    x = torch.randn(4, 32)
    hidden = F.gelu(head.mlp[2](F.gelu(head.mlp[0](x))))
    z = F.normalize(head.mlp[4](hidden), dim=-1)
    v = head.last_layer.parametrizations.weight.original1
    expected = z @ F.normalize(v, dim=-1).T
    torch.testing.assert_close(head(x), expected, atol=1e-5, rtol=1e-5)
    assert head(x).abs().max() <= 1.0 + 1e-5
    head(x).sum().backward()
    assert gain.grad is None and v.grad is not None


def test_dino_head_trainable_gain_and_layer_count() -> None:
    head = DINOHead(8, 10, hidden_dim=12, bottleneck_dim=6, nlayers=2, norm_last_layer=False)
    assert head.last_layer.parametrizations.weight.original0.requires_grad
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [12, 6]


def test_cosface_logits_match_formula_hard_and_soft() -> None:
    torch.manual_seed(1)
    head = CosFace(dim=16, num_classes=6)
    emb = torch.randn(3, 16) * 4
    labels = torch.tensor([2, 0, 5])
    cos = F.normalize(emb, dim=1) @ F.normalize(head.weight, dim=1).T
    expected = 64 * (cos - 0.4 * F.one_hot(labels, 6).float())
    torch.testing.assert_close(head(emb, labels), expected, atol=1e-4, rtol=1e-5)
    soft = torch.tensor([[0.0, 0.0, 0.7, 0.3, 0.0, 0.0]] * 3)
    torch.testing.assert_close(head(emb, soft), 64 * (cos - 0.4 * soft), atol=1e-4, rtol=1e-5)


def test_arcface_logits_match_formula() -> None:
    torch.manual_seed(2)
    head = ArcFace(dim=16, num_classes=5)
    emb = torch.randn(4, 16)
    labels = torch.tensor([1, 4, 0, 1])
    cos = (F.normalize(emb, dim=1) @ F.normalize(head.weight, dim=1).T).double()
    logits = head(emb, labels).double()
    for i, label in enumerate(labels.tolist()):
        for j in range(5):
            theta = math.acos(cos[i, j].item())
            want = 64 * math.cos(min(theta + 0.5, math.pi)) if j == label else 64 * cos[i, j].item()
            assert logits[i, j].item() == pytest.approx(want, abs=1e-3)


def test_build_margin_head_and_ignored_label() -> None:
    head = build_margin_head("arcface", 8, 3, s=30.0)
    assert isinstance(head, ArcFace) and head.s == 30.0 and head.m == 0.5
    cos = build_margin_head("cosface", 8, 3)
    emb = torch.randn(2, 8)
    torch.testing.assert_close(cos(emb, torch.tensor([-1, -1])), 64 * cos.cosine(emb))
    with pytest.raises(ValueError, match="unknown margin"):
        build_margin_head("sphereface", 8, 3)
