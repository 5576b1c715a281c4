"""Few-shot subsets: k images per identity, chosen with a fixed seed, optionally without the people of a pair file.

The ``lfw-v1`` protocol (protocols.md 1): the pool is every LFW image whose person is not in ``pairsDevTest.txt``;
the k-shot set takes k images of every pool person with at least k. Each identity's images are drawn by a generator
seeded with ``(seed, crc32(identity))``, so a person's choice does not depend on which other people are in the pool.
The chosen list is written as JSON (relative paths, labels, k, seed, the excluded pair file and its sha256) so the
subset can be rebuilt and checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from data_tools.readers.image_folder import ImageFolder, Layout
from data_tools.readers.pairs import read_pairs
from lafs_core.errors import DataError

FORMAT = "lafs-fewshot/1"


@dataclass(frozen=True, slots=True)
class FewShotEntry:
    """One chosen image: path relative to the root, label (index of its identity in the subset), identity."""

    path: str
    label: int
    identity: str


@dataclass
class FewShotSubset:
    """A reproducible k-shot subset and how it was made."""

    root: str
    k: int
    seed: int
    exclude_pairs: dict[str, object] | None
    pool_images: int
    pool_identities: int
    entries: list[FewShotEntry] = field(default_factory=list)

    @property
    def identities(self) -> int:
        """Number of identities in the subset."""
        return len({e.identity for e in self.entries})

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the file format)."""
        return {
            "format": FORMAT,
            "root": self.root,
            "k": self.k,
            "seed": self.seed,
            "exclude_pairs": self.exclude_pairs,
            "pool": {"images": self.pool_images, "identities": self.pool_identities},
            "identities": self.identities,
            "images": [asdict(e) for e in self.entries],
        }

    def write(self, path: str | Path) -> Path:
        """Write the subset as JSON atomically (temporary file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        return path


def load_fewshot(path: str | Path) -> FewShotSubset:
    """Read a subset file written by :meth:`FewShotSubset.write`."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise DataError(path, f"not a {FORMAT} file (format={data.get('format')!r})")
        entries = [FewShotEntry(e["path"], int(e["label"]), e["identity"]) for e in data["images"]]
        return FewShotSubset(
            data["root"], int(data["k"]), int(data["seed"]), data["exclude_pairs"], int(data["pool"]["images"]),
            int(data["pool"]["identities"]), entries,
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"cannot read few-shot subset: {exc}") from exc


def pool_by_identity(folder: ImageFolder, exclude_people: set[str] = frozenset()) -> dict[str, list[str]]:
    """Image keys of every identity not in ``exclude_people`` (sorted identities, sorted keys)."""
    pool: dict[str, list[str]] = defaultdict(list)
    for item in folder.items:
        if item.identity not in exclude_people:
            pool[item.identity].append(item.key)
    return dict(pool)


def select_fewshot(
    root: str | Path | ImageFolder,
    k: int,
    seed: int = 0,
    exclude_pairs: str | Path | None = None,
    layout: Layout = "auto",
) -> FewShotSubset:
    """Choose k images of every identity with at least k in the pool (the folder minus the pair file's people).

    ``root`` is a folder path or an already listed :class:`ImageFolder` (then ``layout`` is not used).
    """
    folder = root if isinstance(root, ImageFolder) else ImageFolder(Path(root), layout=layout)
    if k < 1:
        raise DataError(folder.root, f"k must be at least 1, got {k}")
    exclusion = None
    excluded: set[str] = set()
    if exclude_pairs is not None:
        pairs = read_pairs(exclude_pairs, images_root=folder.root)
        excluded = pairs.people()
        exclusion = {
            "file": str(Path(exclude_pairs).resolve()),
            "sha256": hashlib.sha256(Path(exclude_pairs).read_bytes()).hexdigest(),
            "people": len(excluded),
            "people_in_folder": len(excluded & set(folder.identities)),
        }
    pool = pool_by_identity(folder, excluded)
    chosen = [name for name in sorted(pool) if len(pool[name]) >= k]
    entries = []
    for label, name in enumerate(chosen):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        picks = np.sort(rng.choice(len(pool[name]), size=k, replace=False))
        entries.extend(FewShotEntry(pool[name][i], label, name) for i in picks)
    return FewShotSubset(
        str(folder.root.resolve()), k, seed, exclusion, sum(map(len, pool.values())), len(pool), entries
    )


VAL_PAIRS = 500


@dataclass(frozen=True)
class ValidationPairs:
    """Tuning pairs of the lfw-v1 protocol: people in neither the k-shot set nor the test pairs (protocols.md 1.5)."""

    people: list[str]
    same: list[tuple[str, int, int]]
    different: list[tuple[str, int, str, int]]

    def lines(self) -> list[str]:
        """An LFW View-1 pair file: ``n``, n same pairs ``name i j``, n different pairs ``name1 i name2 j``."""
        same = [f"{name}\t{i}\t{j}" for name, i, j in self.same]
        different = [f"{a}\t{i}\t{b}\t{j}" for a, i, b, j in self.different]
        return [str(len(self.same)), *same, *different]

    def write(self, path: str | Path) -> Path:
        """Write the pair file atomically; read it back with ``data_tools.readers.pairs.read_pairs``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("\n".join(self.lines()) + "\n")
        os.replace(tmp, path)
        return path


def lfw_image_number(key: str) -> int:
    """The 1-based image number of an LFW key ``<name>/<name>_<i:04d>.jpg`` (what LFW pair files refer to)."""
    stem = Path(key).stem
    try:
        return int(stem.rsplit("_", 1)[1])
    except (IndexError, ValueError) as exc:
        raise DataError(key, "not an LFW image name <name>_<number>.jpg (validation pairs use LFW pair files)") from exc


def select_validation_pairs(
    root: str | Path | ImageFolder,
    k: int,
    exclude_pairs: str | Path,
    count: int = VAL_PAIRS,
    seed: int = 0,
) -> ValidationPairs:
    """``count`` same and ``count`` different pairs of pool people with 2 .. k-1 images, chosen with ``seed``.

    Those people have too few images for the k-shot set and are not in ``exclude_pairs`` (the test pairs), so
    tuning on these pairs never looks at a test person or a training image. One same pair per validation person
    (two of their images), and ``count`` distinct different pairs between validation people. Their images must also
    stay out of the SSL pool: pass the written pair file to ``lafs data shards --exclude-pairs`` too.
    """
    folder = root if isinstance(root, ImageFolder) else ImageFolder(Path(root))
    pool = pool_by_identity(folder, read_pairs(exclude_pairs, images_root=folder.root).people())
    candidates = sorted(name for name, keys in pool.items() if 2 <= len(keys) < k)
    if len(candidates) < count:
        raise DataError(
            folder.root,
            f"only {len(candidates)} pool people have 2..{k - 1} images; {count} validation pairs need {count} "
            "(use a larger k or fewer pairs)",
        )
    rng = np.random.default_rng([seed, VAL_PAIRS])
    people = [candidates[i] for i in np.sort(rng.choice(len(candidates), count, replace=False))]
    numbers = {name: [lfw_image_number(key) for key in pool[name]] for name in people}
    same = []
    for name in people:
        first, second = np.sort(rng.choice(numbers[name], 2, replace=False))
        same.append((name, int(first), int(second)))
    different: set[tuple[str, int, str, int]] = set()
    while len(different) < count:
        a, b = np.sort(rng.choice(count, 2, replace=False))
        first, second = people[a], people[b]
        different.add((first, int(rng.choice(numbers[first])), second, int(rng.choice(numbers[second]))))
    return ValidationPairs(people, same, sorted(different))
