"""insightface verification ``.bin`` files (LFW, CFP-FP, AgeDB-30, ...): a pickle of ``(bins, issame)``.

``bins`` holds 2N encoded images, images 2i and 2i+1 forming pair i; ``issame`` holds N flags. A ``.bin`` is
untrusted input, so it is read through :mod:`data_tools.safe_pickle` and never with ``pickle.load``. Images are
decoded with OpenCV to RGB (the stored JPEGs are RGB, method.md 12.2).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from data_tools.readers.base import FaceRecord, Unreadable, decode_rgb, encode_jpeg, register_reader
from data_tools.safe_pickle import safe_load
from lafs_core.errors import DataError

log = logging.getLogger(__name__)


def load_verification_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Encoded images (2N byte strings) and the N is-same flags of a ``.bin``; DataError if refused or malformed."""
    obj = safe_load(path)
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise DataError(path, "expected a pickled pair (bins, issame)")
    bins, issame = obj
    if isinstance(bins, np.ndarray) or not isinstance(bins, list | tuple):
        raise DataError(path, "bins must be a list of encoded images")
    images: list[bytes] = []
    for i, item in enumerate(bins):
        if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
            item = item.tobytes()
        if not isinstance(item, bytes | bytearray):
            raise DataError(path, f"bins[{i}] is not an encoded image (bytes or a 1-D uint8 array)")
        images.append(bytes(item))
    flags = np.asarray(issame)
    if flags.ndim != 1 or (flags.size and not np.isin(flags, (0, 1)).all()):
        raise DataError(path, "issame must be a flat list of booleans")
    if len(images) != 2 * flags.size:
        raise DataError(path, f"{len(images)} images for {flags.size} pairs (expected {2 * flags.size})")
    return images, flags.astype(bool)


def write_verification_bin(
    path: str | Path, images: Sequence[bytes | np.ndarray], issame: Sequence[bool], quality: int = 95
) -> None:
    """Write a ``.bin`` (pickle protocol 4 of a list of JPEG bytes and a list of bools), atomically.

    ``images`` are encoded bytes or RGB uint8 arrays (JPEG-encoded here); there must be two per flag.
    """
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    bins = [img if isinstance(img, bytes) else encode_jpeg(img, quality) for img in images]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        pickle.dump((bins, [bool(x) for x in issame]), fh, protocol=4)
    os.replace(tmp, path)


class VerificationBin:
    """A loaded ``.bin``: ``issame`` flags and a stream of its 2N images (label -1, key = image index)."""

    format = "verification-bin"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.bins, self.issame = load_verification_bin(self.path)
        self.unreadable: list[Unreadable] = []

    def __len__(self) -> int:
        return len(self.bins)

    @property
    def num_pairs(self) -> int:
        """Number of pairs (half the images)."""
        return int(self.issame.size)

    def image(self, index: int) -> np.ndarray:
        """Decoded RGB image ``index``; DataError if it does not decode."""
        image = decode_rgb(self.bins[index])
        if image is None:
            raise DataError(self.path, f"image {index} does not decode")
        return image

    def __iter__(self) -> Iterator[FaceRecord]:
        for i, data in enumerate(self.bins):
            image = decode_rgb(data)
            if image is None:
                log.warning("skipping image %d of %s: does not decode", i, self.path)
                self.unreadable.append(Unreadable(f"{self.path}#{i}", "image does not decode"))
                continue
            yield FaceRecord(image, -1, str(i), str(self.path))


register_reader("verification-bin", lambda p: p.is_file() and p.suffix == ".bin", VerificationBin)
