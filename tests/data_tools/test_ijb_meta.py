"""IJB-B/C meta files on a small synthetic tree in the insightface layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_tools.readers.ijb import load_ijb_meta, read_name_5pts_score, read_template_pair_label
from data_tools.scan import scan
from lafs_core.errors import DataError

NAMES = ["1.jpg", "2.jpg", "3.jpg", "10.jpg"]


def _tree(root: Path, name: str = "ijbb") -> Path:
    meta = root / "meta"
    meta.mkdir(parents=True)
    (root / "loose_crop").mkdir()
    rows = [(1, 100), (1, 100), (1, 101), (7, 300)]
    (meta / f"{name}_face_tid_mid.txt").write_text(
        "".join(f"{n} {t} {m}\n" for n, (t, m) in zip(NAMES, rows, strict=True))
    )
    (meta / f"{name}_template_pair_label.txt").write_text("1 7 0\n1 1 1\n7 7 1\n")
    lines = []
    for i, n in enumerate(NAMES):
        points = " ".join(f"{v:.3f}" for v in np.arange(10) + 10 * i + 0.5)
        lines.append(f"{n} {points} {0.9 - 0.1 * i:.2f}\n")
    (meta / f"{name}_name_5pts_score.txt").write_text("".join(lines))
    return root


def test_meta_files_read_into_arrays(tmp_path: Path) -> None:
    meta = load_ijb_meta(_tree(tmp_path / "IJBB"), "ijbb")
    assert meta.names.tolist() == NAMES
    assert meta.templates.tolist() == [1, 1, 1, 7] and meta.medias.tolist() == [100, 100, 101, 300]
    assert meta.templates.dtype == np.int64
    assert meta.landmarks.shape == (4, 5, 2) and meta.landmarks.dtype == np.float32
    np.testing.assert_allclose(meta.landmarks[1, 0], [10.5, 11.5])  # (x1, y1) of image 2
    np.testing.assert_allclose(meta.landmarks[3, 4], [38.5, 39.5])  # (x5, y5) of image 4
    np.testing.assert_allclose(meta.scores, [0.9, 0.8, 0.7, 0.6], rtol=1e-6)
    assert (meta.pair_t1.tolist(), meta.pair_t2.tolist(), meta.pair_label.tolist()) == ([1, 1, 7], [7, 1, 7], [0, 1, 1])
    assert meta.image_path(3) == tmp_path / "IJBB/loose_crop/10.jpg"
    report = scan(tmp_path / "IJBB")
    assert (report.format, report.images, report.details["templates"], report.details["pairs"]) == ("ijb", 4, 2, 3)


def test_inconsistent_or_malformed_meta_raise(tmp_path: Path) -> None:
    root = _tree(tmp_path / "IJBC", "ijbc")
    pairs = root / "meta/ijbc_template_pair_label.txt"
    pairs.write_text("1 7 0\n1 99 1\n")
    with pytest.raises(DataError, match="1 templates in pairs are not in the face_tid_mid file"):
        load_ijb_meta(root, "ijbc")
    pairs.write_text("1 7 2\n")
    with pytest.raises(DataError, match="labels must be 0 or 1"):
        read_template_pair_label(pairs)
    pairs.write_text("1 7\n")
    with pytest.raises(DataError, match=r"ijbc_template_pair_label\.txt: malformed IJB meta file"):
        read_template_pair_label(pairs)
    points = root / "meta/ijbc_name_5pts_score.txt"
    points.write_text("1.jpg 1 2 3\n")
    with pytest.raises(DataError, match="malformed IJB meta file"):
        read_name_5pts_score(points)
    with pytest.raises(DataError, match="IJB meta file not found"):
        load_ijb_meta(root, "ijbb")
