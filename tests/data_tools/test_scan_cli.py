"""``lafs data scan`` on the real datasets and on every format it knows; refused input exits 2 with one line."""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from data_tools.readers.recordio import IRHeader, RecordIOWriter, pack_record, write_insightface_rec
from data_tools.readers.verification_bin import write_verification_bin
from lafs_cli.main import app
from lafs_core.errors import DataError


def _scan_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["data", "scan", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("root", "images", "identities", "bad", "per_identity"),
    [
        ("lfw_deepfunneled/lfw-deepfunneled", 13233, 5749, 0, (1, 1, 530)),
        ("extended_yale_b_cropped/CroppedYale", 2414, 38, 18, (59, 64, 64)),
        ("att_faces/att_faces", 400, 40, 0, (10, 10, 10)),
        ("yalefaces/yalefaces", 164, 15, 0, (10, 11, 11)),
    ],
)
def test_scan_counts_of_the_real_datasets(
    shared_datasets: Path, root: str, images: int, identities: int, bad: int, per_identity: tuple[int, int, int]
) -> None:
    report = _scan_json(str(shared_datasets / root))
    assert (report["format"], report["images"], report["identities"]) == ("image-folder", images, identities)
    assert report["unreadable"] == [] and len(report["bad"]) == bad
    hist = report["per_identity"]
    assert (hist["min"], hist["median"], hist["max"]) == per_identity


def test_scan_text_output_and_verify(shared_datasets: Path) -> None:
    result = CliRunner().invoke(app, ["data", "scan", str(shared_datasets / "yalefaces/yalefaces"), "--verify"])
    assert result.exit_code == 0, result.output
    assert "image-folder" in result.output and "164" in result.output and "flat" in result.output
    forced = CliRunner().invoke(app, ["data", "scan", str(shared_datasets / "att_faces/att_faces"), "--layout", "flat"])
    assert isinstance(forced.exception, DataError) and "no images found (flat layout)" in str(forced.exception)


def test_scan_recordio_bin_and_pairs(tmp_path: Path, shared_datasets: Path) -> None:
    faces = [(np.full((16, 16, 3), 40 * i, np.uint8), label) for i, label in enumerate([0, 0, 0, 1, 2, 2])]
    write_insightface_rec(tmp_path / "rec" / "train.rec", faces)
    report = _scan_json(str(tmp_path / "rec"), "--verify")
    assert (report["format"], report["images"], report["identities"]) == ("recordio", 6, 3)
    assert (report["per_identity"]["min"], report["per_identity"]["max"]) == (1, 3)
    assert report["details"]["header0"] is True and report["unreadable"] == []
    write_verification_bin(tmp_path / "v.bin", [face for face, _ in faces[:4]], [True, False])
    report = _scan_json(str(tmp_path / "v.bin"), "--verify")
    assert (report["format"], report["images"], report["details"]["pairs"]) == ("verification-bin", 4, 2)
    report = _scan_json(str(shared_datasets / "lfw_deepfunneled/pairs.txt"))
    assert (report["format"], report["details"]["pairs"], report["details"]["folds"]) == ("lfw-pairs", 6000, 10)


def _lafs(*args: str, memory_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process, optionally with its address space capped at ``memory_limit`` bytes."""
    code = "from lafs_cli.main import main; main()"
    env = {**os.environ, "COLUMNS": "1000"}  # rich wraps the error line at 80 columns when stderr is not a terminal

    def cap() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    command = [sys.executable, "-c", code, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, preexec_fn=cap)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return print, ("should not run",)


def test_refused_and_unreadable_inputs_exit_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([_Evil()], [True])))
    result = _lafs("data", "scan", str(tmp_path / "evil.bin"), "--json")
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and "should not run" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path / 'evil.bin'}: refused untrusted pickle" in lines[0], lines
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("no faces")
    for target, message in [(tmp_path / "empty", "no images found"), (tmp_path / "nope", "no such file")]:
        outcome = CliRunner().invoke(app, ["data", "scan", str(target), "--json"])
        assert isinstance(outcome.exception, DataError) and outcome.stdout == ""
        assert str(outcome.exception).startswith(f"{target}: {message}")


def test_odd_paths_and_inconsistent_recordio_headers(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("nowhere")
    for target, message in [("loop", "symbolic link loop"), ("dangling", "dangling symbolic link (to nowhere)")]:
        result = _lafs("data", "scan", str(tmp_path / target))
        assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / target}: {message}"
    faces = [(np.full((16, 16, 3), 40 * i, np.uint8), label) for i, label in enumerate([0, 0, 1])]
    claims = {"billion": ([1e9, 1e9 + 64], []), "ranges": ([4, 6], [[3, 1], [1, 40]])}
    for name, (header0, ranges) in claims.items():
        with RecordIOWriter(tmp_path / name / "t.rec") as writer:
            writer.write(0, pack_record(IRHeader(2, np.array(header0, np.float32)), b""))
            for key, (image, label) in enumerate(faces, 1):
                writer.write_image(key, IRHeader(0, float(label), key, 0), image)
            for key, span in enumerate(ranges, 4):
                writer.write(key, pack_record(IRHeader(2, np.array(span, np.float32)), b""))
    result = _lafs("data", "scan", str(tmp_path / "billion"), memory_limit=1536 << 20)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {tmp_path / 'billion' / 't.rec'}: header0 claims 999999999 images and 64 identities "
                     "(keys 1..1000000063), but the index holds 4 records"]  # fmt: skip
    report = _scan_json(str(tmp_path / "ranges"))
    assert (report["images"], report["identities"]) == (3, 2)
    assert (report["per_identity"]["min"], report["per_identity"]["max"]) == (1, 2)
    assert report["details"]["identity_ranges"].startswith("inconsistent, counted from the image labels instead: ")
