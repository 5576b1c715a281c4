"""Landmark regulariser: the staged weight table, the normalised MSE, and the frozen reference."""

from __future__ import annotations

import pytest
import torch

from lafs_core.losses.landmark_reg import frozen_copy, landmark_regularizer, regularizer_weight
from lafs_core.models.landmark_cnn import LandmarkCNN


def official_weight(epoch: int) -> float:
    """method.md 8.4, written out as the official if-chain."""
    if epoch <= 7:
        return 1000.0
    if epoch <= 13:
        return 100.0
    if epoch <= 20:
        return 1.0
    if epoch <= 27:
        return 0.11
    return 0.0


@pytest.mark.parametrize("epoch", range(40))
def test_weight_schedule_matches_the_official_table(epoch: int) -> None:
    assert regularizer_weight(epoch) == official_weight(epoch)


def test_weight_schedule_with_custom_boundaries() -> None:
    weights = [regularizer_weight(e, [1, 2, 3, 4], [1000, 100, 1, 0.11, 0]) for e in range(6)]
    assert weights == [1000, 100, 1, 0.11, 0, 0]


def test_regularizer_is_mse_of_coordinates_over_111_and_only_moves_the_prediction() -> None:
    torch.manual_seed(0)
    pred = (torch.rand(3, 49, 2) * 111).requires_grad_()
    ref = (torch.rand(3, 49, 2) * 111).requires_grad_()
    value = landmark_regularizer(pred, ref, 112)
    expected = ((pred.detach() / 111 - ref.detach() / 111) ** 2).mean()
    torch.testing.assert_close(value, expected)
    value.backward()
    torch.testing.assert_close(pred.grad, 2 * (pred.detach() - ref.detach()) / 111**2 / pred.numel())
    assert ref.grad is None
    assert landmark_regularizer(ref.detach(), ref.detach(), 112).item() == 0.0


def test_frozen_copy_is_fixed_while_the_original_trains() -> None:
    torch.manual_seed(0)
    cnn = LandmarkCNN(num_landmarks=9, width_mult=0.35, dropout=0.0)
    reference = frozen_copy(cnn)
    assert not reference.training
    assert all(not p.requires_grad for p in reference.parameters())
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    before = reference(x)
    opt = torch.optim.SGD(cnn.parameters(), lr=1.0)
    cnn(x).sum().backward()
    opt.step()
    torch.testing.assert_close(reference(x), before)
    assert not torch.equal(cnn.output_layer[1].weight, reference.output_layer[1].weight)
