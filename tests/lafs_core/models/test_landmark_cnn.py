"""Landmark CNN: MobileNetV3-Large trunk sizes, min-max output range, the layout start, NaN safety, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lafs_core.config import StageConfig, load_config
from lafs_core.models.build import build_landmark_cnn
from lafs_core.models.landmark_cnn import InvertedResidual, LandmarkCNN, minmax_to_pixels
from lafs_core.models.sampler import landmark_layout


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_base_parameter_counts_match_method_reference() -> None:
    with torch.device("meta"):
        cnn = LandmarkCNN(num_landmarks=196)
    assert count(cnn.features) == 2_809_816
    assert count(cnn.output_layer) == 63_112


def test_trunk_layout_expand_always_and_se_before_activation() -> None:
    cnn = LandmarkCNN(num_landmarks=196)
    first = cnn.features[1]
    assert isinstance(first, InvertedResidual)
    assert first.conv[0].weight.shape == (16, 16, 1, 1)  # expand conv even though 16 -> 16
    se_block = cnn.features[4].conv
    assert type(se_block[5]).__name__ == "SqueezeExcite" and isinstance(se_block[6], nn.ReLU)
    assert isinstance(cnn.features[7].conv[6], nn.Hardswish)
    assert cnn.features(torch.zeros(1, 3, 112, 112)).shape == (1, 160, 4, 4)


@pytest.mark.parametrize(("landmark_range", "low"), [("image", 0.0), ("layout", 7.5)])
def test_output_spans_its_range_per_sample(landmark_range: str, low: float) -> None:
    cfg = load_config(StageConfig, preset="tiny").model.model_copy(update={"landmark_range": landmark_range})
    cnn = build_landmark_cnn(cfg).eval()
    images = torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    landmarks = cnn(images)
    assert landmarks.shape == (4, cfg.num_landmarks, 2)
    flat = landmarks.flatten(1)
    torch.testing.assert_close(flat.min(dim=1).values, torch.full((4,), low))
    torch.testing.assert_close(flat.max(dim=1).values, torch.full((4,), 111.0 - low))


def test_an_untrained_cnn_predicts_the_layout_and_moves_when_trained() -> None:
    cfg = load_config(StageConfig, preset="tiny").model
    cnn = build_landmark_cnn(cfg)
    images = torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    layout = landmark_layout(cfg.num_landmarks, cfg.image_size)
    torch.testing.assert_close(cnn.eval()(images), layout.expand(4, -1, -1), atol=0.05, rtol=0)
    cnn.train()
    optimiser = torch.optim.SGD(cnn.parameters(), lr=0.5)
    for _ in range(3):  # pull landmark 0 to the right: a gradient reaches the head through the min-max
        optimiser.zero_grad()
        (-cnn(images)[:, 0, 0].mean()).backward()
        optimiser.step()
    with torch.no_grad():
        assert float(cnn.eval()(images)[:, 0, 0].mean()) > layout[0, 0] + 1


def test_default_head_scatters_untrained_landmarks() -> None:
    cfg = load_config(StageConfig, preset="tiny").model.model_copy(update={"landmark_head_init": "default"})
    cnn = build_landmark_cnn(cfg).eval()
    images = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        error = (cnn(images) - landmark_layout(cfg.num_landmarks, cfg.image_size)).norm(dim=-1).mean()
    assert float(error) > 10


def test_constant_outputs_give_finite_landmarks() -> None:
    cnn = LandmarkCNN(num_landmarks=10, width_mult=0.35, dropout=0.0).eval()
    nn.init.zeros_(cnn.output_layer[1].weight)
    nn.init.constant_(cnn.output_layer[1].bias, 3.0)
    landmarks = cnn(torch.zeros(2, 3, 112, 112))
    assert torch.isfinite(landmarks).all()
    assert torch.equal(landmarks, torch.zeros_like(landmarks))
    raw = torch.full((3, 8), 5.0, requires_grad=True)
    out = minmax_to_pixels(raw, 112)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(raw.grad).all()


def test_layout_is_x_then_y_and_gradients_reach_the_trunk() -> None:
    raw = torch.tensor([[0.0, 1.0, 2.0, 4.0]])
    torch.testing.assert_close(minmax_to_pixels(raw, 112), torch.tensor([[0.0, 27.75, 55.5, 111.0]]))
    cnn = LandmarkCNN(num_landmarks=4, width_mult=0.35, dropout=0.0)
    cnn(torch.randn(2, 3, 112, 112))[:, :, 0].sum().backward()
    assert cnn.features[0][0].weight.grad.abs().sum() > 0
