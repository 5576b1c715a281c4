"""insightface/MXNet RecordIO ``.rec`` + ``.idx`` read and written without mxnet (method.md 12.1).

Framing (dmlc recordio): uint32 LE magic ``0xCED7230A``, uint32 ``lrecord`` (upper 3 bits cflag: 0 whole record,
1/2/3 first/middle/last part of a split record; lower 29 bits payload length), payload zero-padded to 4 bytes. A
writer splits a payload wherever the magic appears at a 4-byte aligned offset and drops those 4 bytes; the reader
re-joins the parts and puts the magic back between them. Payload: IRHeader ``<IfQQ`` (flag, label, id, id2); when
flag > 0 a float32 label array of ``flag`` values follows. Then the encoded image.

insightface layout: record 0 (header0) has flag > 0 and label (A, B); image keys are 1..A-1; identity records A..B-1
have label (start, end), the half-open image key range of that identity. Without header0 every ``.idx`` key is an
image (record 0 counts as header0 only when it holds no image bytes and 1 <= A <= B). Framing errors raise
:class:`DataError` naming the file and byte offset; they never yield a wrong image.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from data_tools.readers.base import FaceRecord, Unreadable, decode_rgb, encode_jpeg, register_reader
from lafs_core.errors import DataError

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True)
class IRHeader:
    """MXNet image record header: ``label`` is a float, or a float32 array when ``flag`` > 0."""

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0

    def class_id(self) -> int:
        """Integer class of an image record (element 0 of a label array)."""
        value = self.label[0] if isinstance(self.label, np.ndarray) else self.label
        return int(value)


def pack_record(header: IRHeader, data: bytes) -> bytes:
    """Payload = IRHeader (+ label array when the label is a sequence) + data, like ``mx.recordio.pack``."""
    if np.ndim(header.label) == 0:
        return struct.pack(IR_FORMAT, 0, float(header.label), header.id, header.id2) + data
    label = np.asarray(header.label, dtype="<f4").reshape(-1)
    return struct.pack(IR_FORMAT, label.size, 0.0, header.id, header.id2) + label.tobytes() + data


def unpack_record(payload: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a payload into its IRHeader and the remaining bytes (the encoded image)."""
    if len(payload) < IR_SIZE:
        raise ValueError(f"{where}: payload of {len(payload)} bytes is shorter than the {IR_SIZE}-byte IRHeader")
    flag, label, id_, id2 = struct.unpack_from(IR_FORMAT, payload)
    rest = payload[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise ValueError(f"{where}: label array of {flag} floats does not fit in the payload")
        array = np.frombuffer(rest, dtype="<f4", count=flag).astype(np.float32)
        return IRHeader(flag, array, id_, id2), rest[4 * flag :]
    return IRHeader(flag, float(label), id_, id2), rest


def read_index(idx_path: str | Path) -> dict[int, int]:
    """``.idx`` text (``key<TAB>offset`` per line) as {key: byte offset}."""
    index: dict[int, int] = {}
    try:
        lines = Path(idx_path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(idx_path, f"cannot read index: {exc}") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            key, offset = int(parts[0]), int(parts[1])
        except (ValueError, IndexError) as exc:
            raise DataError(idx_path, f"line {lineno}: expected 'key<TAB>offset', got {line!r}") from exc
        index[key] = offset
    return index


class RecordFile:
    """Low-level framed reader of a ``.rec`` file: one payload at a byte offset, or all payloads in order."""

    def __init__(self, rec_path: str | Path) -> None:
        self.path = Path(rec_path)
        try:
            self.size = self.path.stat().st_size
        except OSError as exc:
            raise DataError(self.path, f"cannot open: {exc.strerror}") from exc
        self._handle: BinaryIO | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def read_at(self, offset: int) -> bytes:
        """The payload of the record that starts at ``offset`` (one open handle per process, shared by its threads).

        A forked child gets its own handle (a shared one would share the file position with the parent) and lock.
        """
        if self._pid != os.getpid():
            self._handle, self._lock, self._pid = None, threading.Lock(), os.getpid()
        with self._lock:
            if self._handle is None:
                self._handle = open(self.path, "rb")  # noqa: SIM115 - kept for random access
            self._handle.seek(offset)
            return self._read(self._handle, offset)[0]

    def stream(self) -> Iterator[tuple[int, bytes]]:
        """(offset, payload) of every record, in file order, with one buffered sequential read."""
        with open(self.path, "rb", buffering=1 << 20) as fh:
            offset = 0
            while offset < self.size:
                payload, offset_next = self._read(fh, offset)
                yield offset, payload
                offset = offset_next

    def _read(self, fh: BinaryIO, offset: int) -> tuple[bytes, int]:
        parts: list[bytes] = []
        pos = offset
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise DataError(self.path, f"truncated record header at byte {pos} (record starting at {offset})")
            magic, lrecord = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(self.path, f"bad magic 0x{magic:08X} at byte {pos} (not a record boundary)")
            cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
            if cflag > 3 or (cflag in (0, 1)) != (not parts):
                raise DataError(self.path, f"broken split record: part flag {cflag} at byte {pos}")
            if pos + 8 + length > self.size:
                raise DataError(
                    self.path, f"truncated record at byte {pos}: claims {length} bytes, the file ends at {self.size}"
                )
            body = fh.read(_pad4(length))
            if len(body) < _pad4(length):
                raise DataError(
                    self.path, f"truncated record at byte {pos}: needs {length} bytes, file has {len(body)}"
                )
            parts.append(body[:length])
            pos += 8 + _pad4(length)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts), pos


def _frames(payload: bytes) -> Iterator[tuple[int, bytes]]:
    """(cflag, chunk) parts of one payload, split at every 4-byte aligned magic exactly as dmlc's writer does."""
    start = 0
    aligned_end = len(payload) & ~3
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= aligned_end:
        if pos % 4 == 0 and pos >= start:
            yield (1 if start == 0 else 2), payload[start:pos]
            start = pos + 4
        pos = payload.find(_MAGIC_BYTES, pos + 1)
    yield (3 if start else 0), payload[start:]


class RecordIOWriter:
    """Write ``.rec`` + ``.idx`` files that mxnet/insightface tools and :class:`RecordIO` read alike.

    Written to temporary names and renamed on :meth:`close`, so a half-written file is never visible.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self._tmp_rec = self.rec_path.with_name(f".{self.rec_path.name}.tmp-{os.getpid()}")
        self._tmp_idx = self.idx_path.with_name(f".{self.idx_path.name}.tmp-{os.getpid()}")
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec = open(self._tmp_rec, "wb")  # noqa: SIM115 - closed in close()
        self._index: list[tuple[int, int]] = []
        self._sizes: dict[int, tuple[int, int]] = {}
        self.split_records = 0

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; returns its byte offset."""
        offset = self._rec.tell()
        framed = self._framed(key, payload)
        self._rec.write(framed)
        self._index.append((key, offset))
        self._sizes[key] = (offset, len(framed))
        return offset

    def overwrite(self, key: int, payload: bytes) -> None:
        """Replace the record written under ``key`` by a payload whose framed size is the same (e.g. header0)."""
        offset, size = self._sizes[key]
        framed = self._framed(key, payload)
        if len(framed) != size:
            raise ValueError(f"record {key}: new framed size {len(framed)} differs from the written {size}")
        self._rec.seek(offset)
        self._rec.write(framed)
        self._rec.seek(0, os.SEEK_END)

    def _framed(self, key: int, payload: bytes) -> bytes:
        out = bytearray()
        for cflag, chunk in _frames(payload):
            if len(chunk) > _LENGTH_MASK:
                raise ValueError(f"record {key}: part of {len(chunk)} bytes exceeds the 29-bit length field")
            out += struct.pack("<II", MAGIC, (cflag << 29) | len(chunk))
            out += chunk + b"\0" * (_pad4(len(chunk)) - len(chunk))
            self.split_records += cflag == 1
        return bytes(out)

    def write_image(self, key: int, header: IRHeader, image: bytes | np.ndarray, quality: int = 95) -> int:
        """Append an image record; an RGB array is JPEG-encoded (stored as RGB, the insightface convention)."""
        data = encode_jpeg(image, quality) if isinstance(image, np.ndarray) else image
        return self.write(key, pack_record(header, data))

    def close(self) -> None:
        """Flush, write the index and move both files into place."""
        if self._rec.closed:
            return
        self._rec.close()
        self._tmp_idx.write_text("".join(f"{key}\t{offset}\n" for key, offset in self._index))
        os.replace(self._tmp_rec, self.rec_path)
        os.replace(self._tmp_idx, self.idx_path)

    def abort(self) -> None:
        """Drop everything written so far."""
        self._rec.close()
        self._tmp_rec.unlink(missing_ok=True)
        self._tmp_idx.unlink(missing_ok=True)

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_insightface_rec(
    rec_path: str | Path,
    images: Iterable[tuple[bytes | np.ndarray, int]],
    header0: bool = True,
    quality: int = 95,
) -> dict[int, tuple[int, int]]:
    """Write (image, class) pairs as an insightface ``.rec``/``.idx``; returns {class: (start, end)} key ranges.

    With ``header0`` the images of one class must come together; record 0 is header0 (A, B), images are keys
    1..A-1 and identity records A..B-1 give each class's key range. Without it, images are keys 0..N-1 (no ranges).
    """
    ranges: dict[int, tuple[int, int]] = {}
    with RecordIOWriter(rec_path) as writer:
        if header0:
            writer.write(0, pack_record(IRHeader(2, np.zeros(2, np.float32)), b""))
        key = 1 if header0 else 0
        for image, label in images:
            label = int(label)
            if header0:
                start, end = ranges.get(label, (key, key))
                if end != key:
                    raise ValueError(f"class {label} is not contiguous: header0 needs each class's images together")
                ranges[label] = (start, key + 1)
            writer.write_image(key, IRHeader(0, float(label), key, 0), image, quality)
            key += 1
        if header0:
            first_identity = key
            for i, (start, end) in enumerate(ranges.values()):
                writer.write(first_identity + i, pack_record(IRHeader(2, np.array([start, end], np.float32)), b""))
            bounds = np.array([first_identity, first_identity + len(ranges)], np.float32)
            writer.overwrite(0, pack_record(IRHeader(2, bounds), b""))
    return ranges


def identity_range_problem(ranges: dict[int, tuple[int, int]], first_identity: int) -> str | None:
    """Why header0's identity ranges cannot be right, or ``None``: each half-open (start, end) must lie inside the
    image keys 1..first_identity-1, with start <= end, and no two may overlap."""
    previous: tuple[int, int, int] | None = None
    for key, (start, end) in sorted(ranges.items(), key=lambda item: item[1]):
        if not 1 <= start <= end <= first_identity:
            return f"identity record {key}: range {start}..{end} is not inside the image keys 1..{first_identity - 1}"
        if previous is not None and start < previous[2]:
            span = f"{previous[1]}..{previous[2]} and {start}..{end}"
            return f"identity records {previous[0]} and {key}: ranges {span} overlap"
        previous = (key, start, end)
    return None


class RecordIO:
    """An insightface ``.rec`` + ``.idx``: random access by key and sequential streaming of :class:`FaceRecord`s.

    ``channel_order="BGR"`` swaps red and blue back for files whose JPEGs hold BGR data (LAFS ``img2rec.py``).
    """

    format = "recordio"

    def __init__(
        self, rec_path: str | Path, idx_path: str | Path | None = None, channel_order: Literal["RGB", "BGR"] = "RGB"
    ) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self.channel_order = channel_order
        self.file = RecordFile(self.rec_path)
        if not self.idx_path.is_file():
            raise DataError(self.idx_path, "index file not found (a .rec needs its .idx)")
        self.index = read_index(self.idx_path)
        for key, offset in self.index.items():
            if not 0 <= offset < self.file.size:
                raise DataError(self.idx_path, f"key {key}: offset {offset} is outside the .rec ({self.file.size} B)")
        self.unreadable: list[Unreadable] = []
        self.identity_ranges: dict[int, tuple[int, int]] = {}
        self.range_problem: str | None = None
        self.image_keys = sorted(self.index)
        if 0 in self.index:
            head, rest = self.header(0)
            if head.flag >= 2 and not rest and 1 <= head.label[0] <= head.label[1]:
                self._read_header0(head)

    def _read_header0(self, head: IRHeader) -> None:
        """Image keys and identity ranges from header0, checked against what the files can hold before any list of
        that size is made (a header claiming 10^9 images in a small file is refused, not allocated)."""
        a, b = int(head.label[0]), int(head.label[1])
        if b - 1 > len(self.index):
            raise DataError(
                self.rec_path,
                f"header0 claims {a - 1} images and {b - a} identities (keys 1..{b - 1}), "
                f"but the index holds {len(self.index)} records",
            )
        missing = [k for k in range(1, b) if k not in self.index]
        if missing:
            raise DataError(self.idx_path, f"header0 says keys 1..{b - 1} but {len(missing)} are missing")
        self.image_keys = list(range(1, a))
        ranges: dict[int, tuple[int, int]] = {}
        for identity_key in range(a, b):
            ident, _ = self.header(identity_key)
            if ident.flag < 2:
                raise DataError(self.rec_path, f"identity record {identity_key} has no (start, end) label")
            ranges[identity_key] = (int(ident.label[0]), int(ident.label[1]))
        self.range_problem = identity_range_problem(ranges, a)
        if self.range_problem is None:
            self.identity_ranges = ranges
        else:
            log.warning("%s: identity ranges ignored: %s", self.rec_path, self.range_problem)

    def __len__(self) -> int:
        return len(self.image_keys)

    def header(self, key: int) -> tuple[IRHeader, bytes]:
        """IRHeader and image bytes of the record stored under ``key``."""
        if key not in self.index:
            raise KeyError(key)
        offset = self.index[key]
        try:
            return unpack_record(self.file.read_at(offset), f"record {key}")
        except ValueError as exc:
            raise DataError(self.rec_path, f"{exc} (byte {offset})") from exc

    def __getitem__(self, key: int) -> FaceRecord:
        """Decoded record by key; a record whose image does not decode raises DataError."""
        head, data = self.header(key)
        image = decode_rgb(data, self.channel_order)
        if image is None:
            raise DataError(self.rec_path, f"record {key} at byte {self.index[key]}: image does not decode")
        return FaceRecord(image, head.class_id(), str(key), str(self.rec_path))

    def labels(self) -> np.ndarray:
        """Class id of every image key (reads only the record headers)."""
        return np.array([self.header(k)[0].class_id() for k in self.image_keys], dtype=np.int64)

    def __iter__(self) -> Iterator[FaceRecord]:
        """Stream the images in file order with buffered sequential reads; skipped images go to ``unreadable``."""
        key_at = {offset: key for key, offset in self.index.items()}
        wanted = set(self.image_keys)
        seen = 0
        for offset, payload in self.file.stream():
            key = key_at.get(offset)
            if key not in wanted:
                continue
            seen += 1
            try:
                head, data = unpack_record(payload, f"record {key}")
            except ValueError as exc:
                raise DataError(self.rec_path, f"{exc} (byte {offset})") from exc
            image = decode_rgb(data, self.channel_order)
            if image is None:
                log.warning("skipping record %s of %s: image does not decode", key, self.rec_path)
                self.unreadable.append(Unreadable(f"{self.rec_path}#{key}", f"byte {offset}: image does not decode"))
                continue
            yield FaceRecord(image, head.class_id(), str(key), str(self.rec_path))
        if seen != len(wanted):
            missing = len(wanted) - seen
            raise DataError(self.idx_path, f"{missing} indexed image records do not start at a record boundary")


def find_rec(path: Path) -> Path | None:
    """The ``.rec`` a path names: the file itself, its ``.idx`` twin, or the single ``.rec`` in a folder."""
    if path.is_file() and path.suffix in (".rec", ".idx"):
        return path.with_suffix(".rec")
    if path.is_dir():
        recs = sorted(path.glob("*.rec"))
        if len(recs) == 1 and recs[0].with_suffix(".idx").is_file():
            return recs[0]
    return None


def _open(path: Path, **options: object) -> RecordIO:
    rec = find_rec(path)
    if rec is None:
        raise DataError(path, "no .rec file with its .idx found")
    return RecordIO(rec, **options)  # type: ignore[arg-type]


register_reader("recordio", lambda p: find_rec(p) is not None, _open)
