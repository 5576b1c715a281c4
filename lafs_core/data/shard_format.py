"""The shard-set format as the training side reads it: file names, the format tag and the checked ``_info.json``.

The writer is :mod:`data_tools.shards` (``lafs data shards``); this module is the contract it writes to, so the loaders
here never depend on the writer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lafs_core.errors import DataError

SHARD_NAME = re.compile(r"shard-\d{6,}\.tar")
SHA256 = re.compile(r"[0-9a-f]{64}")
MANIFEST = "manifest.parquet"
INFO = "_info.json"
FORMAT = "lafs-shards/1"


def read_info(out_dir: str | Path) -> dict[str, Any]:
    """The summary of a complete shard set; DataError if missing or malformed."""
    path = Path(out_dir) / INFO
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "shard summary not found (shards not written or not finished)") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DataError(path, f"not a {FORMAT} shard summary")
    if problem := info_problem(info):
        raise DataError(path, f"malformed shard summary: {problem}")
    return info


def info_problem(info: dict[str, Any]) -> str | None:
    """What is wrong with the structure of a shard summary, or ``None``: the fields readers rely on must have their
    types, and shard names must be plain ``shard-NNNNNN.tar`` names (never a path out of the folder)."""
    shards = info.get("shards")
    if not isinstance(shards, list):
        return "'shards' is not a list"
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            return f"shards[{i}] is not an object"
        name, count, sha = shard.get("name"), shard.get("num_samples"), shard.get("sha256")
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            return f"shards[{i}].name {name!r} is not a shard file name"
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return f"shards[{i}].num_samples {count!r} is not a count"
        if not isinstance(sha, str) or not SHA256.fullmatch(sha):
            return f"shards[{i}].sha256 {sha!r} is not a sha256"
        if "size" in shard and (not isinstance(shard["size"], int) or shard["size"] < 0):
            return f"shards[{i}].size {shard['size']!r} is not a byte count"
    for key in ("num_samples", "image_size", "num_landmarks"):
        if not isinstance(info.get(key), int) or info[key] < 0:
            return f"{key!r} is not a count"
    return None
