"""``lafs embed`` on raw Yale frames (``--align detect``) and on an insightface ``.rec``: rows, identities, skips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from data_tools.detect import detect_align
from data_tools.readers.base import decode_rgb
from data_tools.readers.recordio import write_insightface_rec
from lafs_cli.main import app
from lafs_core.config import load_config
from lafs_core.config.loader import StageConfig
from lafs_core.data.normalize import normalize
from lafs_core.eval.embed_table import read_embeddings
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import load_face_model, save_model_checkpoint

FRAMES = ["subject01.happy", "subject02.happy", "subject02.wink", "subject08.rightlight"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model with its landmark CNN."""
    torch.manual_seed(0)
    model = build_face_model(load_config(StageConfig, preset="tiny").model, with_landmark_cnn=True)
    return save_model_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", model, "tiny", "test")


def _embed(args: list[str]) -> dict:
    result = CliRunner().invoke(app, ["embed", *args, "--device", "cpu", "--batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_embed_raw_frames_with_detect(shared_datasets: Path, checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "yale"
    src.mkdir()
    for name in FRAMES:
        shutil.copy(shared_datasets / "yalefaces/yalefaces" / name, src / name)
    (src / "subject03.broken").write_bytes(b"GIF89a" + bytes(range(200)))
    out = tmp_path / "yale.parquet"
    summary = _embed([str(src), "--model", str(checkpoint), "--out", str(out), "--align", "detect"])
    assert (summary["images"], summary["rows"], summary["dim"]) == (5, 3, 96)
    reasons = {Path(s["file"]).name: s["reason"] for s in summary["skipped"]}
    assert reasons["subject08.rightlight"] == "no face found" and "decode" in reasons["subject03.broken"]
    embedded = read_embeddings(out)
    table = embedded.table.to_pydict()
    assert table["key"] == ["subject01.happy", "subject02.happy", "subject02.wink"]
    assert table["identity"] == ["subject01", "subject02", "subject02"] and embedded.meta["align"] == "detect"
    assert len(embedded.skipped) == 2
    feats = embedded.features
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # the wink row is that frame's own flip-sum embedding, computed here without the embedding code
    face = load_face_model(checkpoint).eval()
    aligned = torch.from_numpy(detect_align(decode_rgb((src / "subject02.wink").read_bytes()))[0]).permute(2, 0, 1)
    with torch.inference_mode():
        x = normalize(aligned[None])
        direct = (face(x) + face(torch.flip(x, dims=[3])))[0].numpy()
    np.testing.assert_allclose(feats[2], direct / np.linalg.norm(direct), atol=1e-5)


def test_embed_a_rec_file_keeps_labels_and_matches_the_folder(shared_datasets: Path, checkpoint, tmp_path) -> None:
    att = shared_datasets / "att_faces/att_faces"
    files = [att / "s1/1.pgm", att / "s1/2.pgm", att / "s2/1.pgm"]
    faces = [cv2.resize(decode_rgb(f.read_bytes()), (112, 112), interpolation=cv2.INTER_AREA) for f in files]
    write_insightface_rec(tmp_path / "faces.rec", zip(faces, [0, 0, 1], strict=True))
    folder = tmp_path / "folder"
    for i, (face, person) in enumerate(zip(faces, ["s1", "s1", "s2"], strict=True)):
        (folder / person).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / person / f"{i}.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    _embed([str(tmp_path / "faces.rec"), "--model", str(checkpoint), "--out", str(tmp_path / "rec.parquet")])
    _embed([str(folder), "--model", str(checkpoint), "--out", str(tmp_path / "folder.parquet")])
    rec, png = read_embeddings(tmp_path / "rec.parquet"), read_embeddings(tmp_path / "folder.parquet")
    assert rec.table.column("label").to_pylist() == [0, 0, 1] and rec.meta["source"]["format"] == "recordio"
    assert png.table.column("identity").to_pylist() == ["s1", "s1", "s2"]
    distance = np.linalg.norm(rec.features[:, None] - png.features[None], axis=2)
    assert np.diagonal(distance).max() < 0.02  # the same faces (the .rec holds them as JPEG) ...
    assert (distance + np.eye(3)).min() > 0.1  # ... and not the others


def test_embed_reports_a_bad_source_as_one_line(checkpoint, tmp_path, monkeypatch, capsys) -> None:
    from lafs_cli.main import main

    missing = tmp_path / "no-such-folder"
    argv = ["lafs", "embed", str(missing), "--model", str(checkpoint), "--out", str(tmp_path / "x.parquet")]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no-such-folder" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.parquet").exists()
