"""Landmark CNN ("stn"): a MobileNetV3-Large trunk plus a regression head predicting R (x, y) landmarks.

Module names mirror the official checkpoints (``features.*`` for the trunk, ``output_layer.1.*`` for the head) so
that released weights load through a plain prefix map (method.md section 2.1).
"""

from __future__ import annotations

import torch
from torch import nn

# (kernel, expansion channels, output channels, squeeze-excite, h-swish, stride), MobileNetV3-Large.
LARGE_BLOCKS: tuple[tuple[int, int, int, bool, bool, int], ...] = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)
STEM_CHANNELS = 16
MIN_RANGE = 1e-6


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10% (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SqueezeExcite(nn.Module):
    """Channel attention: GAP -> FC(c -> c/4) -> ReLU -> FC(c/4 -> c) -> hard-sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc(x.mean(dim=(2, 3)))
        return x * scale[:, :, None, None]


class InvertedResidual(nn.Module):
    """Expand 1x1 (always present) -> depthwise kxk -> SE -> activation -> project 1x1; residual when shapes match."""

    def __init__(self, inp: int, hidden: int, out: int, kernel: int, stride: int, use_se: bool, use_hs: bool) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if use_hs else nn.ReLU
        self.use_residual = stride == 1 and inp == out
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
            nn.Conv2d(hidden, hidden, kernel, stride, (kernel - 1) // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            SqueezeExcite(hidden) if use_se else nn.Identity(),
            act(),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


def minmax_to_pixels(raw: torch.Tensor, image_size: int, margin: float = 0.0) -> torch.Tensor:
    """Per-sample joint min-max of all outputs to ``[margin, image_size - 1 - margin]`` (official: margin 0); an
    epsilon keeps constant rows finite."""
    flat = raw.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    scaled = (flat - low) / (high - low).clamp_min(MIN_RANGE) * (image_size - 1 - 2 * margin) + margin
    return scaled.view_as(raw)


class LandmarkCNN(nn.Module):
    """MobileNetV3-Large trunk -> GAP -> dropout -> Linear(C -> 2R) -> min-max; input [-1, 1] RGB, output (B, R, 2)."""

    def __init__(
        self,
        num_landmarks: int = 196,
        width_mult: float = 1.0,
        dropout: float = 0.5,
        image_size: int = 112,
        margin: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_landmarks = num_landmarks
        self.image_size = image_size
        self.margin = margin
        channels = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.Hardswish())
        ]
        for kernel, expand, out, use_se, use_hs, stride in LARGE_BLOCKS:
            out_channels = make_divisible(out * width_mult)
            hidden = make_divisible(expand * width_mult)
            layers.append(InvertedResidual(channels, hidden, out_channels, kernel, stride, use_se, use_hs))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        self.output_layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, 2 * num_landmarks))
        self._init_trunk()

    def _init_trunk(self) -> None:
        """Kaiming-normal (fan_out) convs, unit BN, N(0, 0.01) SE linears; the head keeps PyTorch's default."""
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)

    @torch.no_grad()
    def start_at(self, layout: torch.Tensor, weight_scale: float = 0.01) -> None:
        """Make the untrained CNN predict ``layout`` (R, 2) pixel points: head bias = layout, head weights shrunk.

        With PyTorch's default head the min-max of random outputs scatters the landmarks over the image, and a
        small-data Part fViT run then drags them into one cluster; from a layout every part of the face is sampled
        at the start and training moves the points from there. With ``margin`` = the layout's first centre
        (``landmark_range="layout"``) the min-max maps the layout onto itself.
        """
        head = self.output_layer[1]
        head.weight.mul_(weight_scale)
        head.bias.copy_(layout.reshape(-1).to(head.bias))

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The head's 2R outputs before min-max (B, 2R).

        The trunk runs channels-last: oneDNN's depthwise and 1x1 convolutions are faster in NHWC on CPU (fwd+bwd
        1.26x at the tiny preset, batch 32; eval within noise) and cuDNN prefers it under autocast; same values.
        """
        features = self.features(x.contiguous(memory_format=torch.channels_last))
        return self.output_layer(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Landmarks (B, R, 2) as (x, y) pixel coordinates spanning ``[margin, image_size - 1 - margin]`` per sample."""
        raw = self.raw_outputs(x)
        return minmax_to_pixels(raw, self.image_size, self.margin).view(x.shape[0], self.num_landmarks, 2)
