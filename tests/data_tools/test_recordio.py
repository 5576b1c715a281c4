"""RecordIO without mxnet: dmlc framing (split records), IRHeader label arrays, insightface header0, corruption."""

from __future__ import annotations

import multiprocessing
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_tools.readers import detect_format, open_reader
from data_tools.readers.recordio import (
    MAGIC,
    IRHeader,
    RecordFile,
    RecordIO,
    RecordIOWriter,
    pack_record,
    read_index,
    unpack_record,
    write_insightface_rec,
)
from lafs_core.errors import DataError

M = struct.pack("<I", MAGIC)

# Written by mxnet 1.9.1 ``recordio.MXIndexedRecordIO(...).write_idx(i, p)`` for GOLDEN_PAYLOADS: the reference
# C++ writer's framing, split records included, byte for byte.
GOLDEN_PAYLOADS = [b"abcd" + M + b"xy", M, b"xyz" + M + b"1234" + M, b"12345678" + M, b"\x01\x02\x03"]
GOLDEN_REC = bytes.fromhex(
    "0a23d7ce04000020616263640a23d7ce02000060787900000a23d7ce000000200a23d7ce000000600a23d7ce0f00000078797a0a23d7ce"
    "313233340a23d7ce000a23d7ce0800002031323334353637380a23d7ce000000600a23d7ce0300000001020300"
)
GOLDEN_IDX = "0\t0\n1\t24\n2\t40\n3\t64\n4\t88\n"


def _write(path: Path, payloads: list[bytes]) -> RecordIOWriter:
    with RecordIOWriter(path) as writer:
        for key, payload in enumerate(payloads):
            writer.write(key, payload)
    return writer


def test_writer_matches_mxnet_bytes_and_reader_rejoins_split_records(tmp_path: Path) -> None:
    writer = _write(tmp_path / "a.rec", GOLDEN_PAYLOADS)
    assert (tmp_path / "a.rec").read_bytes() == GOLDEN_REC
    assert (tmp_path / "a.idx").read_text() == GOLDEN_IDX
    assert writer.split_records == 3  # records 0, 1 and 3 hold the magic at an aligned offset; record 2 does not
    rec = RecordFile(tmp_path / "a.rec")
    index = read_index(tmp_path / "a.idx")
    assert [rec.read_at(index[k]) for k in range(len(GOLDEN_PAYLOADS))] == GOLDEN_PAYLOADS
    assert [payload for _, payload in rec.stream()] == GOLDEN_PAYLOADS


def test_round_trip_random_payloads_with_planted_magic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payloads = []
    for n in range(40):
        data = bytearray(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes())
        for _ in range(n % 4):
            if len(data) >= 4:
                pos = int(rng.integers(0, len(data) - 3))
                data[pos : pos + 4] = M
        payloads.append(bytes(data))
    writer = _write(tmp_path / "r.rec", payloads)
    assert writer.split_records > 0
    rec = RecordFile(tmp_path / "r.rec")
    index = read_index(tmp_path / "r.idx")
    assert [rec.read_at(index[k]) for k in range(len(payloads))] == payloads
    assert [p for _, p in rec.stream()] == payloads


def test_irheader_scalar_and_label_array() -> None:
    head, rest = unpack_record(pack_record(IRHeader(0, 7.0, 3, 4), b"img"))
    assert (head.flag, head.label, head.id, head.id2, rest) == (0, 7.0, 3, 4, b"img")
    head, rest = unpack_record(pack_record(IRHeader(0, [5.0, 0.25, -1.5], 9, 0), b"jpeg"))
    assert head.flag == 3 and rest == b"jpeg"
    np.testing.assert_array_equal(head.label, np.array([5.0, 0.25, -1.5], np.float32))
    assert head.class_id() == 5
    with pytest.raises(ValueError, match="label array"):
        unpack_record(struct.pack("<IfQQ", 4, 0.0, 0, 0) + b"\0" * 8)


def _faces(n_per_class: dict[int, int]) -> list[tuple[np.ndarray, int]]:
    items = []
    for label, n in n_per_class.items():
        for i in range(n):
            image = np.zeros((24, 20, 3), np.uint8)
            image[..., 0], image[..., 1], image[..., 2] = 10 * label, 200 - 20 * i, 90
            items.append((image, label))
    return items


def test_insightface_header0_identity_ranges_and_images(tmp_path: Path) -> None:
    faces = _faces({4: 3, 0: 1, 9: 2})
    ranges = write_insightface_rec(tmp_path / "train.rec", faces)
    assert ranges == {4: (1, 4), 0: (4, 5), 9: (5, 7)}
    data = RecordIO(tmp_path / "train.rec")
    head0, _ = data.header(0)
    np.testing.assert_array_equal(head0.label, [7, 10])  # A = first identity key, B = end
    assert data.image_keys == [1, 2, 3, 4, 5, 6]
    assert data.identity_ranges == {7: (1, 4), 8: (4, 5), 9: (5, 7)}
    assert len(data) == 6
    assert data.labels().tolist() == [4, 4, 4, 0, 9, 9]
    streamed = list(data)
    assert [r.key for r in streamed] == ["1", "2", "3", "4", "5", "6"]
    assert [r.label for r in streamed] == [4, 4, 4, 0, 9, 9]
    for record, (image, _) in zip(streamed, faces, strict=True):
        assert record.image.shape == image.shape
        assert np.abs(record.image.astype(int) - image).max() <= 4  # JPEG q95, channel order kept (RGB)
    by_key = data[5]
    assert by_key.label == 9 and np.array_equal(by_key.image, streamed[4].image)


def test_header0_needs_contiguous_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not contiguous"):
        write_insightface_rec(tmp_path / "bad.rec", _faces({1: 1, 2: 1}) + _faces({1: 1}))
    assert not (tmp_path / "bad.rec").exists() and not (tmp_path / "bad.idx").exists()


def test_without_header0_every_key_is_an_image_and_label_arrays_give_the_class(tmp_path: Path) -> None:
    ok, jpeg = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    assert ok
    with RecordIOWriter(tmp_path / "flat.rec") as writer:
        writer.write_image(0, IRHeader(0, [3.0, 1.0]), jpeg.tobytes())
        writer.write_image(1, IRHeader(0, 5.0), jpeg.tobytes())
    data = open_reader(tmp_path / "flat.rec")
    assert isinstance(data, RecordIO)
    assert data.identity_ranges == {} and data.image_keys == [0, 1]
    assert [r.label for r in data] == [3, 5]


def test_bgr_channel_order_option_swaps_back(tmp_path: Path) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 220  # red
    write_insightface_rec(tmp_path / "c.rec", [(image, 0)])
    assert RecordIO(tmp_path / "c.rec")[1].image[8, 8, 0] > 200
    assert RecordIO(tmp_path / "c.rec", channel_order="BGR")[1].image[8, 8, 2] > 200


def test_truncated_file_raises_with_file_and_offset(tmp_path: Path) -> None:
    write_insightface_rec(tmp_path / "t.rec", _faces({0: 2, 1: 2}), header0=False)
    index = read_index(tmp_path / "t.idx")
    (tmp_path / "t.rec").write_bytes((tmp_path / "t.rec").read_bytes()[: index[3] + 20])  # cut inside record 3
    reader = RecordIO(tmp_path / "t.rec")
    with pytest.raises(DataError, match=rf"t\.rec: truncated record at byte {index[3]}"):
        reader[3]
    records = []
    with pytest.raises(DataError, match=rf"t\.rec: truncated record at byte {index[3]}"):
        records.extend(reader)
    assert [r.key for r in records] == ["0", "1", "2"]
    # with header0 the identity records at the end are gone: refused when opened, never a partial dataset
    write_insightface_rec(tmp_path / "h.rec", _faces({0: 2, 1: 2}))
    (tmp_path / "h.rec").write_bytes((tmp_path / "h.rec").read_bytes()[:-6])
    with pytest.raises(DataError, match=r"h\.rec: truncated record at byte \d+"):
        RecordIO(tmp_path / "h.rec")


def test_bad_magic_and_broken_split_raise(tmp_path: Path) -> None:
    _write(tmp_path / "m.rec", GOLDEN_PAYLOADS)
    index = read_index(tmp_path / "m.idx")
    data = bytearray(GOLDEN_REC)
    data[index[2]] ^= 0xFF
    (tmp_path / "m.rec").write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"m\.rec: bad magic 0x[0-9A-F]{{8}} at byte {index[2]}"):
        RecordFile(tmp_path / "m.rec").read_at(index[2])
    with pytest.raises(DataError, match="bad magic"):
        list(RecordFile(tmp_path / "m.rec").stream())
    # a middle part (cflag 2) where a record should start
    (tmp_path / "s.rec").write_bytes(struct.pack("<II", MAGIC, (2 << 29) | 4) + b"abcd")
    with pytest.raises(DataError, match="broken split record: part flag 2 at byte 0"):
        RecordFile(tmp_path / "s.rec").read_at(0)


def test_index_errors_and_detection(tmp_path: Path) -> None:
    _write(tmp_path / "d.rec", [b"x"])
    assert detect_format(tmp_path) == "recordio"
    assert detect_format(tmp_path / "d.idx") == "recordio"
    (tmp_path / "d.idx").write_text("0\t999\n")
    with pytest.raises(DataError, match=r"outside the \.rec"):
        RecordIO(tmp_path / "d.rec")
    write_insightface_rec(tmp_path / "e.rec", _faces({0: 1}), header0=False)
    (tmp_path / "e.idx").write_text("0\t0\n1\t4\n")  # key 1 points inside record 0
    records = []
    with pytest.raises(DataError, match="1 indexed image records do not start at a record boundary"):
        records.extend(RecordIO(tmp_path / "e.rec"))
    assert [r.key for r in records] == ["0"]
    (tmp_path / "d.idx").write_text("zero 0\n")
    with pytest.raises(DataError, match="line 1"):
        RecordIO(tmp_path / "d.rec")


def test_concurrent_reads_from_threads_and_a_forked_child(tmp_path: Path) -> None:
    """The shard writer's workers read one ``RecordFile`` from many threads (or forked processes) at once."""
    rng = np.random.default_rng(1)
    payloads = [rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes() for _ in range(200)]
    _write(tmp_path / "c.rec", payloads)
    rec = RecordFile(tmp_path / "c.rec")
    index = read_index(tmp_path / "c.idx")
    rec.read_at(index[0])  # the parent's handle exists before the fork

    def read_shuffled(seed: int) -> bool:
        keys = np.random.default_rng(seed).permutation(len(payloads))
        return all(rec.read_at(index[int(k)]) == payloads[k] for k in np.tile(keys, 5))

    child = multiprocessing.get_context("fork").Process(target=lambda: sys.exit(0 if read_shuffled(99) else 1))
    child.start()
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read_shuffled, range(8)))
    child.join(timeout=60)
    assert child.exitcode == 0


def test_a_length_field_claiming_more_than_the_file_is_refused_before_reading(tmp_path: Path) -> None:
    (tmp_path / "l.rec").write_bytes(struct.pack("<II", MAGIC, (1 << 29) - 1) + b"abcd")
    for read in (lambda f: f.read_at(0), lambda f: list(f.stream())):
        with pytest.raises(DataError, match=r"l\.rec: truncated record at byte 0: claims 536870911 bytes, the file"):
            read(RecordFile(tmp_path / "l.rec"))
