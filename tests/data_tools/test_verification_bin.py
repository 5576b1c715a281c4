"""Verification ``.bin``: round trip on real LFW faces, py2/numpy layouts accepted, code-running pickles refused."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_tools.readers import detect_format, open_reader
from data_tools.readers.verification_bin import VerificationBin, load_verification_bin, write_verification_bin
from data_tools.safe_pickle import safe_loads
from lafs_core.errors import DataError


def _lfw_faces(lfw_root: Path, n: int) -> list[np.ndarray]:
    files = sorted((lfw_root / "Aaron_Peirsol").glob("*.jpg"))[:n]
    assert len(files) == n
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]


def test_round_trip_real_faces_rgb(tmp_path: Path, lfw_root: Path) -> None:
    faces = _lfw_faces(lfw_root, 4)
    write_verification_bin(tmp_path / "lfw.bin", faces, [True, False])
    assert detect_format(tmp_path / "lfw.bin") == "verification-bin"
    data = open_reader(tmp_path / "lfw.bin")
    assert isinstance(data, VerificationBin)
    assert data.num_pairs == 2 and data.issame.tolist() == [True, False]
    records = list(data)
    assert [r.key for r in records] == ["0", "1", "2", "3"] and {r.label for r in records} == {-1}
    for record, face in zip(records, faces, strict=True):
        assert record.image.shape == (250, 250, 3) and record.image.dtype == np.uint8
        assert np.abs(record.image.astype(int) - face).mean() < 2.0  # same orientation and channel order
    assert np.array_equal(data.image(3), records[3].image)


def test_python2_style_and_numpy_layouts_are_accepted(tmp_path: Path) -> None:
    ok, jpeg = cv2.imencode(".png", np.full((6, 6, 3), (10, 20, 30), np.uint8))
    assert ok
    as_bytes, as_array = jpeg.tobytes(), jpeg.reshape(-1)
    for protocol in (2, 4, 5):
        payload = pickle.dumps(([as_bytes, as_array], np.array([1], dtype=np.bool_)), protocol=protocol)
        (tmp_path / "x.bin").write_bytes(payload)
        bins, issame = load_verification_bin(tmp_path / "x.bin")
        assert bins == [as_bytes, as_bytes] and issame.tolist() == [True]
    (tmp_path / "x.bin").write_bytes(pickle.dumps(([as_bytes] * 4, [1, 0]), protocol=2))
    assert load_verification_bin(tmp_path / "x.bin")[1].tolist() == [True, False]


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def test_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(([_RunsShell(f"touch {shlex.quote(str(marker))}")], [True]), protocol=2)
    (tmp_path / "evil.bin").write_bytes(evil)
    with pytest.raises(DataError, match=r"evil\.bin: refused untrusted pickle: .*(posix|os)\.system"):
        VerificationBin(tmp_path / "evil.bin")
    assert not marker.exists()
    pickle.loads(evil)  # the control: an ordinary unpickler does run it
    assert marker.exists()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (eval, r"__builtin__\.eval"),
        (np.load, r"numpy\.\S*load"),
        (np.zeros(3, np.float32), "dtype float32"),
        (np.array([b"x"], dtype=object), "dtype object"),
        (1.5, "float"),
        ("text", "str"),
        ({"a": 1}, "dict"),
    ],
)
def test_everything_but_bytes_lists_bools_ints_and_int_arrays_is_refused(obj: object, message: str) -> None:
    with pytest.raises(DataError, match=f"refused untrusted pickle: .*{message}"):
        safe_loads(pickle.dumps(([obj], [True]), protocol=2), "x.bin")


def test_build_opcode_cannot_tamper_with_the_numpy_helpers() -> None:
    # GLOBAL numpy.dtype, then BUILD with a state dict: must be refused, not set attributes on the helper
    payload = b"\x80\x02cnumpy\ndtype\n}q\x00X\x01\x00\x00\x00aK\x01sb."
    with pytest.raises(DataError, match="state of a numpy helper"):
        safe_loads(payload, "x.bin")


def test_malformed_bins_raise(tmp_path: Path) -> None:
    (tmp_path / "short.bin").write_bytes(pickle.dumps(([b"a"] * 3, [True, False])))
    with pytest.raises(DataError, match=r"3 images for 2 pairs"):
        load_verification_bin(tmp_path / "short.bin")
    (tmp_path / "trunc.bin").write_bytes(pickle.dumps(([b"a"] * 2, [True]))[:-5])
    with pytest.raises(DataError, match="not a valid pickle"):
        load_verification_bin(tmp_path / "trunc.bin")
    (tmp_path / "junk.bin").write_bytes(pickle.dumps(([b"not an image"] * 2, [True])))
    data = VerificationBin(tmp_path / "junk.bin")
    assert list(data) == []
    assert [u.reason for u in data.unreadable] == ["image does not decode"] * 2


def test_length_claims_beyond_the_file_are_refused_without_allocating(tmp_path: Path) -> None:
    claims = {"bytes8": b"\x8e", "bytearray8": b"\x96"}  # opcodes whose data the unpickler allocates before reading
    for name, opcode in claims.items():
        data = b"\x80\x05" + opcode + (1 << 40).to_bytes(8, "little") + b"abc"
        (tmp_path / f"{name}.bin").write_bytes(data)
        with pytest.raises(DataError, match=rf"{name}\.bin: not a valid pickle: .*1099511627776 bytes"):
            load_verification_bin(tmp_path / f"{name}.bin")
