"""``lafs data scan`` on the real datasets and on every format it knows; refused input exits 2 with one line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from data_tools.readers.recordio import write_insightface_rec
from data_tools.readers.verification_bin import write_verification_bin
from lafs_core.cli.main import app
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


def _lafs(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from lafs_core.cli.main import main; main()"
    env = {**os.environ, "COLUMNS": "1000"}  # rich wraps the error line at 80 columns when stderr is not a terminal
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)


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
