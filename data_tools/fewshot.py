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
