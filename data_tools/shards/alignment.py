"""The alignment step of the shard writer: one callable per ``--align`` mode, image -> aligned RGB face."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from lafs_core.errors import ConfigError

Aligner = Callable[[np.ndarray, Any], np.ndarray]


def resize_only(size: int) -> Aligner:
    """``none``: the input is taken as aligned; resized (area filter) only when it is not ``size`` x ``size``."""

    def align(image: np.ndarray, entry: Any) -> np.ndarray:
        if image.shape[:2] == (size, size):
            return image
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)

    return align


def fixed_crop(preset_name: str, size: int) -> Aligner:
    """A fixed crop preset of ``data_tools.align`` (e.g. the LFW deep-funneled crop)."""
    from data_tools import align

    preset = align.CROP_PRESETS[preset_name]
    if size != align.ALIGNED_SIZE:
        raise ConfigError(f"the {preset_name} crop gives {align.ALIGNED_SIZE}px faces, not {size}px")

    def crop(image: np.ndarray, entry: Any) -> np.ndarray:
        return align.fixed_crop(image, preset, getattr(entry, "file", "<image>"))[0]

    return crop


def make_aligner(mode: str, size: int) -> Aligner:
    """The aligner for ``mode``: ``none``, a fixed crop preset, or ``five-point`` (needs 5 points per image)."""
    if mode == "none":
        return resize_only(size)
    if mode == "five-point":
        raise ConfigError(
            "five-point alignment needs 5 facial points per image, which the readers do not provide; "
            "use --align none for pre-aligned data or a fixed crop preset"
        )
    return fixed_crop(mode, size)


def describe(mode: str) -> dict[str, object]:
    """What the manifest records about the alignment."""
    if mode == "none":
        return {"method": "none", "note": "taken as aligned; resized with INTER_AREA when not square 112"}
    from data_tools import align

    return align.CROP_PRESETS[mode].describe() if mode in align.CROP_PRESETS else {"method": mode}
