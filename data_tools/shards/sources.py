"""The inputs of a shard set: a listed, filtered face source whose images are decoded on demand.

Planning needs every sample's key and identity before any image is decoded (for the global shuffle and the
shard layout), and shard jobs need random access. Image folders and RecordIO files give both; any other reader
is read once and held in memory. Filters: a few-shot list (``lafs data fewshot``) keeps only the listed images; a
pair file (e.g. LFW ``pairsDevTest.txt``) removes every person it names (the lfw-v1 unlabelled pool).
Labels are re-numbered 0..K-1 over the identities that remain (sorted by name), -1 when unknown.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data_tools.readers import FaceReader, open_reader
from data_tools.readers.base import decode_rgb, detect_format
from lafs_core.errors import DataError


@dataclass(frozen=True)
class Entry:
    """One planned input: source key, file, identity name and label."""

    key: str
    file: str
    identity: str | None
    label: int


@dataclass
class FaceSource:
    """Planned entries plus a loader that decodes one entry (RGB or BGR uint8) or says why it cannot."""

    entries: list[Entry]
    loader: Callable[[Entry, str], np.ndarray | str]
    description: dict[str, Any]
    listing_skipped: list[dict[str, str]] = field(default_factory=list)

    def load(self, entry: Entry, channel_order: str = "RGB") -> np.ndarray | str:
        """The decoded image of ``entry``, or the reason it was skipped.

        ``channel_order="BGR"`` gives OpenCV's order (what ``cv2.imdecode`` returns and ``cv2.imencode`` takes), so a
        decode -> per-channel resample -> encode pipeline needs no channel swaps.
        """
        return self.loader(entry, channel_order)


def in_order(rgb: np.ndarray, channel_order: str) -> np.ndarray:
    """An RGB image in ``channel_order`` (RGB or BGR)."""
    return rgb if channel_order == "RGB" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _load_file(entry: Entry, channel_order: str) -> np.ndarray | str:
    try:
        data = Path(entry.file).read_bytes()
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    image = decode_rgb(data, channel_order)
    return "image does not decode (corrupt or unsupported)" if image is None else image


def _folder_entries(reader: Any) -> tuple[list[Entry], Callable[[Entry, str], np.ndarray | str]]:
    root = Path(reader.root)
    entries = [Entry(item.key, str(root / item.key), item.identity, item.label) for item in reader.items]
    return entries, _load_file


def _recordio_entries(reader: Any) -> tuple[list[Entry], Callable[[Entry, str], np.ndarray | str]]:
    labels = reader.labels()
    entries = [
        Entry(str(key), f"{reader.rec_path}#{key}", str(int(label)) if label >= 0 else None, int(label))
        for key, label in zip(reader.image_keys, labels, strict=True)
    ]

    def load(entry: Entry, channel_order: str) -> np.ndarray | str:
        try:
            return in_order(reader[int(entry.key)].image, channel_order)
        except DataError as exc:
            return exc.problem

    return entries, load


def _stream_entries(reader: FaceReader) -> tuple[list[Entry], Callable[[Entry, str], np.ndarray | str]]:
    images: dict[str, np.ndarray] = {}
    entries = []
    for record in reader:
        images[record.key] = record.image
        entries.append(Entry(record.key, record.source, record.identity, record.label))
    return entries, lambda entry, channel_order: in_order(images[entry.key], channel_order)


PairFiles = str | Path | Sequence[str | Path] | None


def pair_file_list(files: PairFiles) -> list[Path]:
    """``files`` as a list of paths (one path, several, or none)."""
    if files is None:
        return []
    if isinstance(files, str | Path):
        return [Path(files)]
    return [Path(f) for f in files]


def pair_file_people(files: PairFiles) -> set[str]:
    """Every person named in one or several LFW-style pair files."""
    from data_tools.readers.pairs import read_pairs

    return {person for path in pair_file_list(files) for person in read_pairs(path).people()}


def fewshot_list(path: str | Path) -> tuple[Path, set[str]]:
    """(image root, relative image paths) of a few-shot list written by ``lafs data fewshot``."""
    from data_tools.fewshot import load_fewshot

    subset = load_fewshot(path)
    return Path(subset.root), {e.path for e in subset.entries}


def is_fewshot_list(path: str | Path) -> bool:
    """True when ``path`` is a few-shot list file (JSON with the few-shot format tag)."""
    from data_tools.fewshot import FORMAT

    path = Path(path)
    if not path.is_file() or path.suffix != ".json":
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def relabel(entries: list[Entry]) -> list[Entry]:
    """Labels 0..K-1 over the identities present, in name order; -1 for entries without identity."""
    names = sorted({e.identity for e in entries if e.identity is not None})
    label_of = {name: i for i, name in enumerate(names)}
    return [replace(e, label=label_of[e.identity] if e.identity is not None else -1) for e in entries]


def open_source(path: str | Path, fewshot: str | Path | None = None, exclude_pairs: PairFiles = None) -> FaceSource:
    """List ``path`` with the matching reader, apply the filters and return the planned source.

    ``path`` may itself be a few-shot list; its image root is then read and filtered by the list. ``exclude_pairs``:
    one or several pair files whose people are left out (e.g. the test pairs and the validation pairs).
    """
    if is_fewshot_list(path):
        fewshot, path = path, fewshot_list(path)[0]
    name = detect_format(path)
    reader = open_reader(path, name, **({"sniff": False} if name == "image-folder" else {}))
    if hasattr(reader, "items") and hasattr(reader, "root"):
        entries, loader = _folder_entries(reader)
    elif hasattr(reader, "image_keys") and hasattr(reader, "labels"):
        entries, loader = _recordio_entries(reader)
    else:
        entries, loader = _stream_entries(reader)
    skipped = [u.as_dict() for u in (*getattr(reader, "bad", []), *reader.unreadable)]
    description: dict[str, Any] = {"path": str(Path(path).resolve()), "format": reader.format, "listed": len(entries)}
    if fewshot is not None:
        keep = fewshot_list(fewshot)[1]
        entries = [e for e in entries if e.key in keep]
        description["fewshot"] = str(Path(fewshot).resolve())
    if excluded := pair_file_list(exclude_pairs):
        people = pair_file_people(excluded)
        entries = [e for e in entries if e.identity not in people]
        description["exclude_pairs"] = [str(f.resolve()) for f in excluded]
        description["excluded_people"] = len(people)
    if not entries:
        raise DataError(path, "no images left after filtering")
    return FaceSource(relabel(entries), loader, description, [{"key": "", **s} for s in skipped])


def open_sources(
    paths: Sequence[str | Path], fewshot: str | Path | None = None, exclude_pairs: PairFiles = None
) -> FaceSource:
    """:func:`open_source` of one path, or of several written as one set: keys and identities get the source's
    index as prefix (``s0-``, ``s1-``, ...), so nothing collides and people of different sources stay apart."""
    if len(paths) == 1:
        return open_source(paths[0], fewshot, exclude_pairs)
    if fewshot is not None:
        raise DataError(fewshot, "a few-shot list selects from one source, not from several")
    parts = [open_source(path, exclude_pairs=exclude_pairs) for path in paths]
    origin: dict[str, tuple[FaceSource, Entry]] = {}
    entries = []
    for index, part in enumerate(parts):
        for entry in part.entries:
            key = f"s{index}-{entry.key}"
            origin[key] = (part, entry)
            identity = None if entry.identity is None else f"s{index}-{entry.identity}"
            entries.append(replace(entry, key=key, identity=identity))

    def load(entry: Entry, channel_order: str) -> np.ndarray | str:
        part, original = origin[entry.key]
        return part.load(original, channel_order)

    description = {"sources": [part.description for part in parts], "listed": len(entries)}
    skipped = [item for part in parts for item in part.listing_skipped]
    return FaceSource(relabel(entries), load, description, skipped)
