"""``lafs embed``: one Parquet row per embedded image (key, file, identity, label, embedding), skips listed.

The embeddings come from :func:`lafs_core.eval.embed.embed_source` (batched, flip-sum, L2), the same path as every
evaluation, over a :class:`ListedFaces` source (``data_tools.faces.open_faces``). Images that cannot be read or have
no face get no row; they are returned (and stored in the file's metadata) with the reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lafs_core.eval.embed import embed_source

META_KEY = b"lafs.embed"


class ListedFaces(Protocol):
    """An image source whose entries carry key, file, identity and label, and which says why an image is skipped."""

    entries: list[Any]
    listing_skipped: list[dict[str, str]]

    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray | None: ...

    def problem(self, index: int) -> str | None: ...


@dataclass(frozen=True)
class EmbeddedFaces:
    """Embedded rows of a source, the inputs that were skipped (``{key, file, reason}``) and, read back, the meta."""

    table: pa.Table
    skipped: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> np.ndarray:
        """``(rows, dim)`` float32 embeddings."""
        column = self.table.column("embedding").combine_chunks()
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)


def embed_faces(
    model: torch.nn.Module,
    faces: ListedFaces,
    batch_size: int = 128,
    num_workers: int = 0,
    image_size: int = 112,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> EmbeddedFaces:
    """Embed every face of the source; rows keep the source order, skipped inputs are listed with their reason."""
    emb = embed_source(
        model, faces, batch_size, num_workers, image_size=image_size, autocast_dtype=autocast_dtype, progress=progress
    )
    entries = faces.entries
    rows = np.flatnonzero(emb.valid)
    dim = emb.features.shape[1]
    table = pa.table(
        {
            "key": pa.array([entries[i].key for i in rows], pa.string()),
            "file": pa.array([entries[i].file for i in rows], pa.string()),
            "identity": pa.array([entries[i].identity for i in rows], pa.string()),
            "label": pa.array([entries[i].label for i in rows], pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.features[rows].reshape(-1), pa.float32()), dim),
        }
    )
    skipped = [dict(s) for s in faces.listing_skipped]
    for i in np.flatnonzero(~emb.valid).tolist():
        skipped.append({"key": entries[i].key, "file": entries[i].file, "reason": faces.problem(i) or "unreadable"})
    return EmbeddedFaces(table, skipped)


def write_embeddings(embedded: EmbeddedFaces, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write the rows to a Parquet file atomically, with ``meta`` and the skipped inputs as JSON metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {**meta, "rows": embedded.table.num_rows, "skipped": embedded.skipped}
    table = embedded.table.replace_schema_metadata({META_KEY: json.dumps(info, default=str).encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_embeddings(path: str | Path) -> EmbeddedFaces:
    """Read a file written by :func:`write_embeddings`: rows, skipped inputs and meta (model, source, alignment)."""
    table = pq.read_table(path)
    info = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    skipped = info.pop("skipped", [])
    return EmbeddedFaces(table.replace_schema_metadata(None), skipped, info)
