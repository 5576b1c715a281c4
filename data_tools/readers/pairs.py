"""LFW pair files: ``pairs.txt`` (View 2) and ``pairsDevTrain.txt`` / ``pairsDevTest.txt`` (View 1).

Header: ``<folds>\\t<n>`` (View 2: 10 folds, each n same pairs then n different pairs) or a single ``<n>``
(View 1: n same pairs then n different pairs). Same pair: ``name i j``; different pair: ``name1 i name2 j``; image
numbers are 1-based and name ``<name>/<name>_<i:04d>.jpg``. View 1 has no folds in the file; its pairs get the
stratified folds protocols.md asks for (fold = position within its class * folds // n, so each fold holds n/folds
pairs of each class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lafs_core.errors import DataError


@dataclass(frozen=True, slots=True)
class Pair:
    """One pair: two (identity, 1-based image number), resolved image paths, same/different flag and fold."""

    identity1: str
    index1: int
    identity2: str
    index2: int
    same: bool
    fold: int
    path1: Path
    path2: Path


@dataclass(frozen=True)
class PairList:
    """The parsed pairs of one file, in file order, with the number of folds."""

    path: Path
    pairs: list[Pair]
    folds: int
    view: int

    def __len__(self) -> int:
        return len(self.pairs)

    def people(self) -> set[str]:
        """Every identity that appears in a pair."""
        return {p.identity1 for p in self.pairs} | {p.identity2 for p in self.pairs}


def lfw_image_path(images_root: Path, identity: str, index: int) -> Path:
    """``<root>/<name>/<name>_<index:04d>.jpg``, LFW's naming."""
    return images_root / identity / f"{identity}_{index:04d}.jpg"


def read_pairs(
    path: str | Path, images_root: str | Path | None = None, folds: int = 10, check_files: bool = False
) -> PairList:
    """Parse an LFW pair file; ``images_root`` defaults to ``lfw-deepfunneled`` beside it.

    ``folds`` is used for View 1 files only (View 2 gives its own). ``check_files`` raises DataError for a pair
    whose image file is missing.
    """
    path = Path(path)
    root = Path(images_root) if images_root else path.parent / "lfw-deepfunneled"
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read pair file: {exc}") from exc
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(path, "empty pair file")
    header = lines[0].split()
    try:
        numbers = [int(x) for x in header]
    except ValueError as exc:
        raise DataError(path, f"line 1: expected a header '<n>' or '<folds> <n>', got {lines[0]!r}") from exc
    if len(numbers) == 2:
        view, (folds, per_class) = 2, numbers
    elif len(numbers) == 1:
        view, per_class = 1, numbers[0]
    else:
        raise DataError(path, f"line 1: expected a header '<n>' or '<folds> <n>', got {lines[0]!r}")
    blocks = folds if view == 2 else 1
    expected = blocks * 2 * per_class
    if len(lines) - 1 != expected:
        raise DataError(path, f"header announces {expected} pairs but the file has {len(lines) - 1} pair lines")
    if view == 1 and per_class % folds:
        raise DataError(path, f"{per_class} pairs per class do not split into {folds} stratified folds")
    pairs = []
    for i, line in enumerate(lines[1:]):
        block, pos = divmod(i, 2 * per_class)
        same = pos < per_class
        fold = block if view == 2 else (pos % per_class) * folds // per_class
        pairs.append(_parse_pair(path, i + 2, line, same, fold, root, check_files))
    return PairList(path, pairs, folds, view)


def _parse_pair(path: Path, lineno: int, line: str, same: bool, fold: int, root: Path, check: bool) -> Pair:
    fields = line.split("\t") if "\t" in line else line.split()
    try:
        if same and len(fields) == 3:
            name1, i1, name2, i2 = fields[0], int(fields[1]), fields[0], int(fields[2])
        elif not same and len(fields) == 4:
            name1, i1, name2, i2 = fields[0], int(fields[1]), fields[2], int(fields[3])
        else:
            kind = "same (name i j)" if same else "different (name1 i name2 j)"
            raise DataError(path, f"line {lineno}: expected a {kind} pair, got {line!r}")
    except ValueError as exc:
        raise DataError(path, f"line {lineno}: image numbers must be integers, got {line!r}") from exc
    if min(i1, i2) < 1:
        raise DataError(path, f"line {lineno}: image numbers start at 1, got {line!r}")
    p1, p2 = lfw_image_path(root, name1, i1), lfw_image_path(root, name2, i2)
    if check:
        for p in (p1, p2):
            if not p.is_file():
                raise DataError(path, f"line {lineno}: image {p} does not exist")
    return Pair(name1, i1, name2, i2, same, fold, p1, p2)
