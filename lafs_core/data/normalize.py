"""The one input transform, used by training and evaluation alike.

The official code trains on [-1, 1] but evaluates on [-0.5, 0.5] (method.md 14.2); here both use
``(x / 255 - 0.5) / 0.5`` on RGB.
"""

from __future__ import annotations

import torch


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map RGB uint8 (or float 0..255) images to float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)
