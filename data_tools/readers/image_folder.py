"""Image folders: one sub-folder per identity (LFW, AT&T, Extended Yale B) or flat files named ``<identity>.<rest>``.

Listing never decodes: a file is an image when its first bytes say so (JPEG, PNG, GIF, PNM, BMP, TIFF, WebP), so
files without an extension (Yale) are found and ``README``/``*.info``/``*.txt`` are ignored. Files ending in
``.bad`` (Extended Yale B ships 18, marked corrupt by its authors) are skipped and reported in ``bad``. Images that
fail to decode while iterating are skipped and added to ``unreadable``. Order is sorted and labels are the index of
the identity in the sorted identity names, so two runs on the same folder agree. Symbolic links to folders are
followed at the top level only, and not when that would list images twice (a link to ``.``, to an ancestor, or into
another listed folder) or never end (a link loop): those are skipped and added to ``unreadable`` with the reason.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_tools.readers.base import FaceRecord, Unreadable, decode_rgb, register_reader
from lafs_core.errors import DataError

log = logging.getLogger(__name__)

Layout = Literal["auto", "folders", "flat"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".pnm", ".gif", ".bmp", ".tif",
                            ".tiff", ".webp"})  # fmt: skip
BAD_SUFFIX = ".bad"
_HEADER_BYTES = 16


def sniff_image(head: bytes) -> str | None:
    """Image type from a file's first bytes (``jpeg``, ``png``, ``gif``, ``pnm``, ``bmp``, ``tiff``, ``webp``)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "pnm"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def sniff_file(path: str | os.PathLike[str]) -> str | None:
    """Image type of a file from its header, ``None`` if it is not an image (or cannot be opened)."""
    try:
        with open(path, "rb") as fh:
            return sniff_image(fh.read(_HEADER_BYTES))
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One listed image: path relative to the root (the key), identity name and label."""

    key: str
    identity: str
    label: int


@dataclass
class ImageFolder:
    """A listed image folder; iterate it for decoded :class:`FaceRecord`s.

    ``identity_regex`` (flat layout): the identity is the regex's first group (or whole match) on the file name;
    default: the name up to its first ``.`` (Yale ``subject01.happy`` -> ``subject01``). ``sniff=False`` trusts
    image suffixes instead of reading every file's header (the shard writer does: a mislabelled file then fails to
    decode and is skipped and counted there, and listing 10^6 files costs no extra open per file).
    """

    root: Path
    layout: Layout = "auto"
    identity_regex: str | None = None
    sniff: bool = True
    format: str = "image-folder"
    items: list[ImageItem] = field(default_factory=list, init=False)
    identities: list[str] = field(default_factory=list, init=False)
    unreadable: list[Unreadable] = field(default_factory=list, init=False)
    bad: list[Unreadable] = field(default_factory=list, init=False)
    ignored: list[str] = field(default_factory=list, init=False)
    resolved_layout: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise DataError(self.root, "not a directory")
        if self.layout not in ("auto", "folders", "flat"):
            raise DataError(self.root, f"unknown layout {self.layout!r} (auto, folders or flat)")
        self._list()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[FaceRecord]:
        for item in self.items:
            path = self.root / item.key
            try:
                image = decode_rgb(path.read_bytes())
            except OSError as exc:
                image, reason = None, f"cannot read: {exc.strerror}"
            else:
                reason = "image does not decode (corrupt or unsupported)"
            if image is None:
                log.warning("skipping %s: %s", path, reason)
                self.unreadable.append(Unreadable(str(path), reason))
                continue
            yield FaceRecord(image=image, label=item.label, key=item.key, source=str(path), identity=item.identity)

    def images_per_identity(self) -> list[int]:
        """Number of listed images of each identity, in label order."""
        counts = [0] * len(self.identities)
        for item in self.items:
            counts[item.label] += 1
        return counts

    def _list(self) -> None:
        top_dirs, top_files, skipped = _split_entries(self.root)
        self.unreadable.extend(skipped)
        layout = self.layout
        if layout == "auto":
            layout = "folders" if any(self._images_under(self.root / d, probe=True) for d in top_dirs) else "flat"
        self.resolved_layout = layout
        pairs: list[tuple[str, str]] = []
        if layout == "folders":
            for name in top_files:
                if self._classify(os.path.join(self.root, name), name):
                    self.unreadable.append(Unreadable(str(self.root / name), "image outside an identity folder"))
            for d in top_dirs:
                pairs.extend((d, rel) for rel in self._images_under(self.root / d))
        else:
            pattern = re.compile(self.identity_regex) if self.identity_regex else None
            for name in top_files:
                if self._classify(os.path.join(self.root, name), name):
                    pairs.append((_identity_from_name(name, pattern, self.root), name))
        self.identities = sorted({identity for identity, _ in pairs})
        label_of = {name: i for i, name in enumerate(self.identities)}
        self.items = [ImageItem(key, identity, label_of[identity]) for identity, key in sorted(pairs)]
        if not self.items:
            raise DataError(self.root, f"no images found ({layout} layout)")

    def _images_under(self, folder: Path, probe: bool = False) -> list[str]:
        """Relative keys of the images under ``folder`` (recursively, sorted); ``probe`` stops at the first."""
        found: list[str] = []
        skip = len(str(self.root)) + 1
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                is_image = _looks_like_image(path, name) if probe else self._classify(path, name)
                if is_image:
                    found.append(path[skip:].replace(os.sep, "/"))
                    if probe:
                        return found
        return found

    def _classify(self, path: str, name: str) -> bool:
        """True for an image; records ``bad``, ``unreadable`` and ``ignored`` files on the way."""
        if name.startswith("."):
            return False
        suffix = os.path.splitext(name)[1].lower()
        if suffix == BAD_SUFFIX:
            self.bad.append(Unreadable(path, "marked bad by the dataset (.bad file), skipped"))
            return False
        if (not self.sniff and suffix in IMAGE_SUFFIXES) or sniff_file(path) is not None:
            return True
        if suffix in IMAGE_SUFFIXES:
            self.unreadable.append(Unreadable(path, f"has a {suffix} name but its content is not an image"))
        else:
            self.ignored.append(path)
        return False


def _looks_like_image(path: str, name: str) -> bool:
    return not name.startswith(".") and not name.endswith(BAD_SUFFIX) and sniff_file(path) is not None


def _split_entries(root: Path) -> tuple[list[str], list[str], list[Unreadable]]:
    """Top-level (folders, files) of ``root``, and the entries skipped: symlink loops, and links to folders whose
    images are listed anyway (a link to ``.``, to an ancestor of the root, or into another listed folder), which
    would otherwise be counted twice."""
    dirs, files, links, skipped = [], [], [], []
    try:
        with os.scandir(root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError as exc:
                    skipped.append(Unreadable(entry.path, f"cannot follow ({exc.strerror})"))
                    continue
                (links if is_dir and entry.is_symlink() else dirs if is_dir else files).append(entry.name)
    except OSError as exc:
        raise DataError(root, f"cannot list the folder ({exc.strerror})") from None
    real_root = os.path.realpath(root)
    kept = [os.path.realpath(root / name) for name in dirs]
    for name in links:
        real = os.path.realpath(root / name)
        if _within(real_root, real):
            skipped.append(Unreadable(str(root / name), f"link to {real}, which holds this folder: not followed"))
        elif any(_within(real, other) or _within(other, real) for other in kept):
            skipped.append(Unreadable(str(root / name), f"link to {real}, whose images are listed already"))
        else:
            kept.append(real)
            dirs.append(name)
    return sorted(dirs), files, skipped


def _within(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or lies inside it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _identity_from_name(name: str, pattern: re.Pattern[str] | None, root: Path) -> str:
    if pattern is None:
        return name.split(".", 1)[0]
    match = pattern.search(name)
    if match is None:
        raise DataError(root / name, f"file name does not match the identity pattern {pattern.pattern!r}")
    return match.group(1) if match.groups() else match.group(0)


def _detect(path: Path) -> bool:
    return path.is_dir()


register_reader("image-folder", _detect, ImageFolder, priority=0)
