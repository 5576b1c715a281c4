"""User errors: one printable line whatever the file name, and intact after a trip between processes."""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from lafs_core.errors import DataError, printable


def test_message_is_one_printable_line_that_keeps_undecodable_bytes() -> None:
    path = os.fsdecode(b"/data/caf\xe9/\xff.jpg")
    error = DataError(path, "bad\nheader")
    assert str(error) == "/data/caf\\xe9/\\xff.jpg: bad\\nheader"
    assert error.path == path and str(error).encode("utf-8")
    assert printable("café.jpg") == "café.jpg"


def _fail(path: str) -> None:
    raise DataError(path, "no faces")


def test_error_raised_in_a_worker_process_arrives_whole() -> None:
    error = pickle.loads(pickle.dumps(DataError("x.rec", "truncated")))
    assert (error.path, error.problem, str(error)) == ("x.rec", "truncated", "x.rec: truncated")
    with ProcessPoolExecutor(1) as pool, pytest.raises(DataError, match=r"^faces/: no faces$"):
        pool.submit(_fail, "faces/").result()
