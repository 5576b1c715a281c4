"""The record every reader yields, the reader protocol and the registry that picks a reader for a path.

Every reader of users' face data (image folders, RecordIO, verification ``.bin``) yields :class:`FaceRecord`s with
RGB uint8 HxWx3 images, so the rest of the pipeline never sees a channel-order or grey-scale special case.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from lafs_core.errors import DataError, printable

CHANNEL_ORDER = "RGB"


@dataclass(frozen=True, slots=True)
class FaceRecord:
    """One face image: RGB uint8 HxWx3, integer label (-1 when unknown), unique key, source file, identity name."""

    image: np.ndarray
    label: int
    key: str
    source: str
    identity: str | None = None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A file (or record) that was skipped, and why."""

    file: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form ``{file, reason}`` (a file name that is not UTF-8 shows its bytes as ``\\xNN``)."""
        return {"file": printable(self.file), "reason": printable(self.reason)}


@runtime_checkable
class FaceReader(Protocol):
    """What every reader offers: a format name, a length known without decoding, and a record stream.

    ``unreadable`` grows while iterating: corrupt images are skipped and recorded there, never silently dropped.
    """

    format: str
    unreadable: list[Unreadable]

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[FaceRecord]: ...


def decode_rgb(data: bytes | np.ndarray, channel_order: str = "RGB") -> np.ndarray | None:
    """Decode an encoded image (JPEG, PNG, PGM, GIF, ...) to RGB uint8 HxWx3; ``None`` if it does not decode.

    Grey images are replicated to three channels. ``channel_order="BGR"`` says the stored image has its red and
    blue swapped (e.g. RecordIO files from the LAFS ``img2rec.py``) and swaps them back.
    """
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else np.asarray(data, np.uint8)
    if buf.size == 0:
        return None
    bgr = cv2.imdecode(buf.reshape(-1), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        return None
    return bgr if channel_order.upper() == "BGR" else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_jpeg(image_rgb: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB uint8 image, stored as RGB (the insightface convention, decoders return RGB)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


@dataclass(frozen=True)
class ReaderSpec:
    """A registered reader: its format name, how it recognises a path, and how it opens one."""

    name: str
    detect: Callable[[Path], bool]
    open: Callable[..., FaceReader]
    priority: int


_REGISTRY: dict[str, ReaderSpec] = {}


def register_reader(
    name: str, detect: Callable[[Path], bool], opener: Callable[..., FaceReader], priority: int = 10
) -> None:
    """Add a reader; detection tries higher ``priority`` first (a catch-all such as any folder uses 0)."""
    _REGISTRY[name] = ReaderSpec(name, detect, opener, priority)


def reader_formats() -> list[str]:
    """Names of the registered formats, in detection order."""
    return [spec.name for spec in sorted(_REGISTRY.values(), key=lambda s: -s.priority)]


def check_exists(path: str | Path) -> None:
    """DataError naming why ``path`` cannot be opened: missing, a dangling link, a link loop, no permission."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(path, "symbolic link loop") from None
        if exc.errno == errno.ENOENT and os.path.islink(path):
            raise DataError(path, f"dangling symbolic link (to {os.readlink(path)})") from None
        if exc.errno == errno.ENOENT:
            raise DataError(path, "no such file or directory") from None
        raise DataError(path, f"cannot open ({exc.strerror})") from None


def detect_format(path: str | Path) -> str:
    """Name of the first registered format that recognises ``path``; DataError if none does."""
    path = Path(path)
    check_exists(path)
    for name in reader_formats():
        spec = _REGISTRY[name]
        if spec.detect(path):
            return spec.name
    raise DataError(path, f"unrecognised face data format (known: {', '.join(reader_formats())})")


def open_reader(path: str | Path, format: str = "auto", **options: object) -> FaceReader:
    """Open ``path`` with the reader for ``format`` (``auto`` detects it); options go to the reader."""
    name = detect_format(path) if format == "auto" else format
    if name not in _REGISTRY:
        raise DataError(path, f"unknown format {name!r} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name].open(Path(path), **options)
