"""Check a shard set against its manifest: every shard present, hashing to its sha256, holding the listed samples."""

from __future__ import annotations

import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.shards.manifest import read_manifest
from data_tools.shards.writer import file_sha256
from lafs_core.data.shard_format import MANIFEST, read_info
from lafs_core.errors import DataError

MEMBERS = ("jpg", "lmk.npy", "cls", "json")


@dataclass
class VerifyReport:
    """Shards and samples checked, and every problem found (empty when the set is intact)."""

    num_shards: int = 0
    num_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "ok": self.ok,
            "num_shards": self.num_shards,
            "num_samples": self.num_samples,
            "problems": self.problems,
        }


def shard_keys(path: Path) -> list[str]:
    """Sample keys of a tar shard, checking that each has exactly the four expected members; DataError if broken."""
    members: dict[str, list[str]] = defaultdict(list)
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                members[key].append(ext)
                if tar.extractfile(info) is None:
                    raise DataError(path, f"member {info.name} is not a regular file")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(path, f"unreadable tar ({exc})") from None
    for key, exts in members.items():
        if tuple(exts) != MEMBERS:
            raise DataError(path, f"sample {key} has members {exts}, expected {list(MEMBERS)}")
    return list(members)


def verify_shards(shard_dir: str | Path) -> VerifyReport:
    """Verify every shard listed in ``_info.json`` against its checksum, its count and the manifest's keys."""
    shard_dir = Path(shard_dir)
    info = read_info(shard_dir)
    manifest = read_manifest(shard_dir)
    if missing := {"shard", "key"} - set(manifest.column_names):
        raise DataError(shard_dir / MANIFEST, f"not a shard manifest (no {', '.join(sorted(missing))} column)")
    report = VerifyReport(num_shards=len(info["shards"]))
    listed: dict[str, list[str]] = defaultdict(list)
    for shard, key in zip(manifest.column("shard").to_pylist(), manifest.column("key").to_pylist(), strict=True):
        listed[shard].append(key)
    if set(listed) - {s["name"] for s in info["shards"]}:
        report.problems.append(f"manifest lists shards missing from {shard_dir / '_info.json'}")
    if manifest.num_rows != info["num_samples"]:
        report.problems.append(f"manifest has {manifest.num_rows} rows, summary says {info['num_samples']} samples")
    for shard in info["shards"]:
        path = shard_dir / shard["name"]
        if not path.is_file():
            report.problems.append(f"{path}: missing")
            continue
        if file_sha256(path) != shard["sha256"]:
            report.problems.append(f"{path}: sha256 differs from the manifest")
        try:
            keys = shard_keys(path)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        if len(keys) != shard["num_samples"]:
            report.problems.append(f"{path}: {len(keys)} samples, manifest says {shard['num_samples']}")
        if keys != listed.get(shard["name"], []):
            report.problems.append(f"{path}: sample keys differ from the manifest rows")
        report.num_samples += len(keys)
    return report
