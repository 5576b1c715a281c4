"""AdamW parameter groups: no decay for 1-D/bias, per-prefix overrides, frozen params excluded."""

from __future__ import annotations

import torch
from torch import nn

from lafs_core.train.optim import build_adamw, param_groups, set_weight_decay


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.landmark_cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.pos_embedding = nn.Parameter(torch.zeros(1, 5, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def _by_name(groups: list[dict]) -> dict[str, set[int]]:
    return {g["name"]: {id(p) for p in g["params"]} for g in groups}


def test_groups_split_decay_override_and_no_decay() -> None:
    model = Toy()
    groups = param_groups(model, 0.1, {"landmark_cnn.": 0.05})
    ids = _by_name(groups)
    assert ids["decay"] == {id(model.pos_embedding), id(model.proj.weight)}
    assert ids["decay:landmark_cnn."] == {id(model.landmark_cnn[0].weight)}
    assert ids["no_decay"] == {
        id(model.landmark_cnn[0].bias),
        id(model.landmark_cnn[1].weight),
        id(model.landmark_cnn[1].bias),
        id(model.proj.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay == {"decay": 0.1, "decay:landmark_cnn.": 0.05, "no_decay": 0.0}
    every = set().union(*ids.values())
    assert id(model.frozen.weight) not in every
    assert id(model.frozen.bias) not in every


def test_ddp_prefix_and_weight_decay_schedule_scaling() -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = Toy()

    wrapped = Wrapped()
    opt = build_adamw(wrapped, lr=1e-3, weight_decay=0.1, overrides={"landmark_cnn.": 0.05})
    names = [g["name"] for g in opt.param_groups]
    assert names == ["decay", "decay:landmark_cnn.", "no_decay"]
    set_weight_decay(opt, 0.4)
    assert [round(g["weight_decay"], 6) for g in opt.param_groups] == [0.4, 0.2, 0.0]


def test_no_decay_params_untouched_by_decay() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    bias = model.bias.detach().clone()
    opt = build_adamw(model, lr=0.1, weight_decay=0.5)
    model.weight.grad = torch.zeros_like(model.weight)
    model.bias.grad = torch.zeros_like(model.bias)
    weight = model.weight.detach().clone()
    opt.step()
    torch.testing.assert_close(model.bias, bias)
    torch.testing.assert_close(model.weight.detach(), weight * (1 - 0.1 * 0.5))
