"""Few-shot subsets: the lfw-v1 protocol counts, reproducibility, exclusion, and the written list."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_tools.fewshot import load_fewshot, select_fewshot, select_validation_pairs
from data_tools.readers.image_folder import ImageFolder
from data_tools.readers.pairs import read_pairs
from lafs_cli.main import app
from lafs_core.errors import DataError


@pytest.fixture(scope="module")
def lfw(lfw_root: Path) -> ImageFolder:
    return ImageFolder(lfw_root)


@pytest.fixture(scope="module")
def dev_test(shared_datasets: Path) -> Path:
    return shared_datasets / "lfw_deepfunneled/pairsDevTest.txt"


@pytest.mark.parametrize(("k", "identities"), [(1, 4786), (2, 1262), (4, 453)])
def test_lfw_v1_counts(lfw: ImageFolder, dev_test: Path, k: int, identities: int) -> None:
    subset = select_fewshot(lfw, k=k, seed=0, exclude_pairs=dev_test)
    assert (subset.pool_images, subset.pool_identities) == (10492, 4786)
    assert subset.identities == identities and len(subset.entries) == k * identities
    excluded = read_pairs(dev_test).people()
    assert not {e.identity for e in subset.entries} & excluded
    per_identity = Counter(e.identity for e in subset.entries)
    assert set(per_identity.values()) == {k}
    assert len({e.path for e in subset.entries}) == len(subset.entries)
    assert [e.label for e in subset.entries] == [i for i in range(identities) for _ in range(k)]
    assert subset.exclude_pairs is not None and subset.exclude_pairs["people_in_folder"] == 963


def test_seed_reproducible_and_independent_of_the_exclusion(lfw: ImageFolder, dev_test: Path) -> None:
    a = select_fewshot(lfw, k=2, seed=3, exclude_pairs=dev_test)
    assert a.entries == select_fewshot(lfw, k=2, seed=3, exclude_pairs=dev_test).entries
    other_seed = select_fewshot(lfw, k=2, seed=4, exclude_pairs=dev_test)
    assert {e.path for e in a.entries} != {e.path for e in other_seed.entries}
    everyone = select_fewshot(lfw, k=2, seed=3)
    assert everyone.identities == 1680 and everyone.pool_images == 13233
    picks = {e.path for e in everyone.entries}
    assert {e.path for e in a.entries} <= picks  # a person's picks do not depend on who else is in the pool


def test_cli_writes_a_reloadable_list(tmp_path: Path, lfw_root: Path, dev_test: Path) -> None:
    out = tmp_path / "k4.json"
    result = CliRunner().invoke(
        app, ["data", "fewshot", str(lfw_root), "--k", "4", "--seed", "0", "--exclude-pairs", str(dev_test),
              "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert '"identities": 453' in result.output and '"pool_images": 10492' in result.output
    subset = load_fewshot(out)
    assert (subset.k, subset.seed, subset.identities, len(subset.entries)) == (4, 0, 453, 1812)
    assert subset.exclude_pairs is not None and len(str(subset.exclude_pairs["sha256"])) == 64
    assert all((lfw_root / e.path).is_file() for e in subset.entries)
    assert not list(tmp_path.glob(".*tmp*"))


def test_validation_pairs_avoid_kshot_and_test_people(lfw: ImageFolder, dev_test: Path, tmp_path: Path) -> None:
    val = select_validation_pairs(lfw, k=4, exclude_pairs=dev_test)
    assert len(val.people) == len(set(val.people)) == 500
    kshot = {e.identity for e in select_fewshot(lfw, k=4, seed=0, exclude_pairs=dev_test).entries}
    assert not set(val.people) & (kshot | read_pairs(dev_test).people())
    parsed = read_pairs(val.write(tmp_path / "pairs_val.txt"), lfw.root, check_files=True)
    assert [p.same for p in parsed.pairs] == [True] * 500 + [False] * 500
    assert all(p.identity1 == p.identity2 and p.index1 != p.index2 for p in parsed.pairs[:500])
    assert all(p.identity1 != p.identity2 for p in parsed.pairs[500:])
    assert len({(p.path1, p.path2) for p in parsed.pairs[500:]}) == 500
    assert parsed.people() == set(val.people)
    assert val == select_validation_pairs(lfw, k=4, exclude_pairs=dev_test)
    assert val != select_validation_pairs(lfw, k=4, exclude_pairs=dev_test, seed=1)


def test_validation_pairs_need_enough_people(lfw: ImageFolder, dev_test: Path) -> None:
    with pytest.raises(DataError, match=r"only 0 pool people have 2\.\.1 images"):
        select_validation_pairs(lfw, k=2, exclude_pairs=dev_test)
