"""``lafs data scan``: what a path holds (format, image and identity counts, images per identity, bad files).

Counting never decodes images (file listing + header sniffing for folders, ``.idx`` + record headers for RecordIO);
``verify=True`` decodes every image as well and reports those that fail. A path that is not readable face data
raises :class:`DataError`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.readers import CHANNEL_ORDER, FaceRecord, detect_format, open_reader
from data_tools.readers.base import check_exists
from data_tools.readers.image_folder import ImageFolder, Layout
from data_tools.readers.pairs import read_pairs
from data_tools.readers.recordio import RecordIO
from data_tools.readers.verification_bin import VerificationBin
from lafs_core.errors import DataError

Progress = Callable[[Iterable[FaceRecord], int], Iterator[FaceRecord]]


@dataclass
class ScanReport:
    """What :func:`scan` found; :meth:`to_dict` is the ``--json`` output."""

    path: str
    format: str
    images: int
    identities: int | None
    per_identity: dict[str, float] | None = None
    unreadable: list[dict[str, str]] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)
    ignored: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``format``, ``images``, ``identities``, ``unreadable`` and the rest."""
        return {
            "path": self.path,
            "format": self.format,
            "images": self.images,
            "identities": self.identities,
            "per_identity": self.per_identity,
            "unreadable": self.unreadable,
            "bad": self.bad,
            "ignored": self.ignored,
            "details": self.details,
        }


def histogram_summary(counts: Iterable[int]) -> dict[str, float] | None:
    """min / median / mean / max images per identity, and how many identities have >= 2."""
    values = list(counts)
    if not values:
        return None
    return {
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 3),
        "max": max(values),
        "with_2_or_more": sum(v >= 2 for v in values),
    }


def _decode_all(reader: Any, progress: Progress | None) -> None:
    stream: Iterable[FaceRecord] = reader
    if progress is not None:
        stream = progress(reader, len(reader))
    for _ in stream:
        pass


def _is_ijb_root(path: Path) -> bool:
    return path.is_dir() and any((path / "meta").glob("*_face_tid_mid.txt"))


def scan(
    path: str | Path, layout: Layout = "auto", verify: bool = False, progress: Progress | None = None
) -> ScanReport:
    """Detect the format of ``path`` and count what it holds; ``verify`` decodes every image too."""
    path = Path(path)
    check_exists(path)
    if path.is_file() and path.suffix == ".txt":
        return _scan_pairs(path)
    if _is_ijb_root(path):
        return _scan_ijb(path)
    fmt = detect_format(path)
    reader = open_reader(path, fmt, layout=layout) if fmt == "image-folder" else open_reader(path, fmt)
    if verify:
        _decode_all(reader, progress)
    unreadable = [u.as_dict() for u in reader.unreadable]
    if isinstance(reader, ImageFolder):
        return ScanReport(
            str(path), fmt, len(reader), len(reader.identities), histogram_summary(reader.images_per_identity()),
            unreadable, [b.as_dict() for b in reader.bad], len(reader.ignored),
            {"layout": reader.resolved_layout, "verified": verify, "channel_order": CHANNEL_ORDER},
        )  # fmt: skip
    if isinstance(reader, RecordIO):
        if reader.identity_ranges:
            counts = [end - start for start, end in reader.identity_ranges.values()]
        else:
            counts = np.unique(reader.labels(), return_counts=True)[1].tolist()
        header0 = bool(reader.identity_ranges) or reader.range_problem is not None
        details = {"rec": str(reader.rec_path), "header0": header0, "verified": verify}
        if reader.range_problem:
            details["identity_ranges"] = f"inconsistent, counted from the image labels instead: {reader.range_problem}"
        summary = histogram_summary(counts)
        return ScanReport(str(path), fmt, len(reader), len(counts), summary, unreadable, details=details)
    if isinstance(reader, VerificationBin):
        details = {"pairs": reader.num_pairs, "same_pairs": int(reader.issame.sum()), "verified": verify}
        return ScanReport(str(path), fmt, len(reader), None, None, unreadable, details=details)
    raise DataError(path, f"scan does not know how to summarise format {fmt!r}")


def _scan_pairs(path: Path) -> ScanReport:
    pairs = read_pairs(path)
    images = {(p.identity1, p.index1) for p in pairs.pairs} | {(p.identity2, p.index2) for p in pairs.pairs}
    details = {"view": pairs.view, "pairs": len(pairs), "same_pairs": sum(p.same for p in pairs.pairs)}
    details["folds"] = pairs.folds
    return ScanReport(str(path), "lfw-pairs", len(images), len(pairs.people()), details=details)


def _scan_ijb(path: Path) -> ScanReport:
    from data_tools.readers.ijb import load_ijb_meta

    name = next((path / "meta").glob("*_face_tid_mid.txt")).name.removesuffix("_face_tid_mid.txt")
    meta = load_ijb_meta(path, name)
    details = {
        "name": name,
        "templates": int(np.unique(meta.templates).size),
        "pairs": int(meta.pair_label.size),
        "positive_pairs": int(meta.pair_label.sum()),
    }
    return ScanReport(str(path), "ijb", int(meta.names.size), None, details=details)
