"""Any face source the readers support (image folder, ``.rec``/``.idx``, ``.bin``, a few-shot list), aligned on load.

The source is listed and decoded by the shard writer's own code (:func:`data_tools.shards.sources.open_source`) and
aligned by its aligners (``none``, ``lfw-deepfunneled``, ``detect``), so what ``lafs embed`` and ``lafs eval
identify`` embed is the face the model was trained on. An image that does not decode, or in which ``detect`` finds
no face, loads as ``None``: the embedding code skips and counts it, and :meth:`AlignedFaces.problem` says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_tools.shards.alignment import make_aligner
from data_tools.shards.sources import Entry, FaceSource, open_source
from lafs_core.errors import ConfigError, DataError

ALIGN_MODES = ("none", "lfw-deepfunneled", "detect")


class AlignedFaces:
    """The entries of a source as an :class:`~lafs_core.eval.embed.ImageSource` of aligned RGB uint8 faces."""

    def __init__(self, source: FaceSource, align: str = "none", size: int = 112) -> None:
        if align not in ALIGN_MODES:
            raise ConfigError(f"--align must be one of {', '.join(ALIGN_MODES)}, not {align!r}")
        self.source = source
        self.align = align
        self.aligner = make_aligner(align, size, "RGB")

    @property
    def entries(self) -> list[Entry]:
        """Key, file, identity name and label of every image, in load order."""
        return self.source.entries

    @property
    def listing_skipped(self) -> list[dict[str, str]]:
        """Inputs the reader could not even list (``{key, file, reason}``)."""
        return self.source.listing_skipped

    def __len__(self) -> int:
        return len(self.source.entries)

    def _aligned(self, index: int) -> np.ndarray | str:
        entry = self.source.entries[index]
        image = self.source.load(entry, "RGB")
        if isinstance(image, str):
            return image
        try:
            return self.aligner(image, entry)
        except DataError as exc:
            return exc.problem

    def load(self, index: int) -> np.ndarray | None:
        """The aligned face, or ``None`` when the image is unreadable or has no face."""
        face = self._aligned(index)
        return None if isinstance(face, str) else face

    def problem(self, index: int) -> str | None:
        """Why ``load(index)`` gives ``None`` (recomputed, so it also holds after loading in worker processes)."""
        face = self._aligned(index)
        return face if isinstance(face, str) else None


def open_faces(path: str | Path, align: str = "none", size: int = 112) -> AlignedFaces:
    """List ``path`` (or a named shared folder) with the matching reader and align its images on load."""
    from data_tools.pairsets import named_source

    return AlignedFaces(open_source(named_source(path)), align, size)
