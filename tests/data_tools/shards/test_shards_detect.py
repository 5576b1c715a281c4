"""``lafs data shards --align detect`` on Yale full frames: aligned faces in the shards, no-face frames skipped."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from data_tools.detect import detect_align
from data_tools.readers.base import decode_rgb
from lafs_cli.main import app

FRAMES = ["subject01.happy", "subject01.normal", "subject02.happy", "subject02.wink", "subject08.rightlight"]
NO_FACE = "subject08.rightlight"  # side-lit: the HOG detector finds no face in it


def test_shards_hold_detect_aligned_faces_and_list_frames_without_a_face(shared_datasets: Path, tmp_path: Path) -> None:
    src = tmp_path / "yale"
    src.mkdir()
    for name in FRAMES:
        shutil.copy(shared_datasets / "yalefaces/yalefaces" / name, src / name)
    out = tmp_path / "shards"
    args = ["data", "shards", str(src), str(out), "--align", "detect", "--landmarks", "grid", "--preset", "tiny",
            "--workers", "1", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "_info.json").read_text())
    assert (info["num_samples"], info["num_skipped"]) == (4, 1)
    assert info["skipped"][0]["file"].endswith(NO_FACE) and "no face found" in info["skipped"][0]["reason"]
    assert info["alignment"]["method"] == "detect"
    samples = {}
    for shard in sorted(out.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                samples[Path(json.loads(data)["file"]).name] = members[name[: -len("json")] + "jpg"]
    assert sorted(samples) == sorted(set(FRAMES) - {NO_FACE})
    for name, jpg in samples.items():
        stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        expected = detect_align(decode_rgb((src / name).read_bytes()))[0]
        assert np.abs(stored.astype(float) - expected).mean() < 2.0, name  # JPEG noise only
