"""LFW pair files parsed against the known counts of View 1 and View 2."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from data_tools.readers.pairs import read_pairs
from lafs_core.errors import DataError


def test_view2_has_10_folds_of_300_same_then_300_different(shared_datasets: Path) -> None:
    pairs = read_pairs(shared_datasets / "lfw_deepfunneled/pairs.txt", check_files=True)
    assert (pairs.view, pairs.folds, len(pairs)) == (2, 10, 6000)
    assert Counter((p.fold, p.same) for p in pairs.pairs) == {(f, s): 300 for f in range(10) for s in (True, False)}
    first, last = pairs.pairs[0], pairs.pairs[-1]
    assert (first.identity1, first.index1, first.index2, first.same) == ("Abel_Pacheco", 1, 4, True)
    assert first.path1.name == "Abel_Pacheco_0001.jpg" and first.path2.name == "Abel_Pacheco_0004.jpg"
    assert not last.same and last.fold == 9 and last.identity1 != last.identity2


def test_view1_test_has_500_plus_500_pairs_of_963_people_in_stratified_folds(shared_datasets: Path) -> None:
    pairs = read_pairs(shared_datasets / "lfw_deepfunneled/pairsDevTest.txt", check_files=True)
    assert (pairs.view, len(pairs)) == (1, 1000)
    assert [p.same for p in pairs.pairs] == [True] * 500 + [False] * 500
    assert len(pairs.people()) == 963
    assert Counter((p.fold, p.same) for p in pairs.pairs) == {(f, s): 50 for f in range(10) for s in (True, False)}
    train = read_pairs(shared_datasets / "lfw_deepfunneled/pairsDevTrain.txt")
    assert (train.view, len(train), sum(p.same for p in train.pairs)) == (1, 2200, 1100)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty pair file"),
        ("ten\n", "line 1: expected a header"),
        ("1\nA\t1\t2\n", "header announces 2 pairs but the file has 1"),
        ("1\nA\t1\nB\t1\tC\t2\n", "line 2: expected a same"),
        ("1\nA\t1\t2\nB\tx\tC\t2\n", "line 3: image numbers must be integers"),
        ("1\nA\t0\t2\nB\t1\tC\t2\n", "line 2: image numbers start at 1"),
    ],
)
def test_malformed_pair_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "p.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        read_pairs(tmp_path / "p.txt", folds=1)


def test_missing_image_is_reported(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("1\nA\t1\t2\nB\t1\tC\t2\n")
    with pytest.raises(DataError, match=r"line 2: image .*A_0001\.jpg does not exist"):
        read_pairs(tmp_path / "p.txt", images_root=tmp_path, folds=1, check_files=True)
