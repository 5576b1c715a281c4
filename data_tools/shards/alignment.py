"""The alignment step of the shard writer: one callable per ``--align`` mode, image -> aligned face.

Aligners resample every channel alike, so they keep the input's channel order; only ``detect`` looks at colours
(its grey conversion) and is told the order.
"""

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


def detect(size: int, channel_order: str = "RGB") -> Aligner:
    """``detect``: the largest face dlib finds, aligned by its 5 points; ``DataError`` (a skipped input) if none.

    The detector is built here, so a missing ``detect`` extra fails before any work (and forked workers inherit it).
    """
    from data_tools import align
    from data_tools.detect import default_detector, detect_align

    if size != align.ALIGNED_SIZE:
        raise ConfigError(f"--align detect gives {align.ALIGNED_SIZE}px faces, not {size}px")
    detector = default_detector()

    def aligner(image: np.ndarray, entry: Any) -> np.ndarray:
        return detect_align(image, getattr(entry, "file", "<image>"), channel_order, detector)[0]

    return aligner


def make_aligner(mode: str, size: int, channel_order: str = "RGB") -> Aligner:
    """The aligner for ``mode``: ``none``, ``detect``, a fixed crop preset, or ``five-point`` (needs 5 points per
    image); ``channel_order`` (RGB or BGR) is the order of the images it will be given."""
    if mode == "none":
        return resize_only(size)
    if mode == "detect":
        return detect(size, channel_order)
    if mode == "five-point":
        raise ConfigError(
            "five-point alignment needs 5 facial points per image, which the readers do not provide; "
            "use --align detect for photos, --align none for pre-aligned data or a fixed crop preset"
        )
    return fixed_crop(mode, size)


def describe(mode: str) -> dict[str, object]:
    """What the manifest records about the alignment."""
    if mode == "none":
        return {"method": "none", "note": "taken as aligned; resized with INTER_AREA when not square 112"}
    from data_tools import align

    if mode == "detect":
        from data_tools.detect import describe as describe_detect

        return describe_detect()
    return align.CROP_PRESETS[mode].describe() if mode in align.CROP_PRESETS else {"method": mode}
