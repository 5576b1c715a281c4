"""IJB-B / IJB-C meta files of the insightface release (method.md 10.2), read into numpy arrays.

``<root>/meta/<name>_face_tid_mid.txt``: ``image template_id media_id`` per line;
``<root>/meta/<name>_template_pair_label.txt``: ``template1 template2 label``;
``<root>/meta/<name>_name_5pts_score.txt``: ``image x1 y1 ... x5 y5 score`` (5 landmarks in ``loose_crop/`` pixels,
detector score). Space-separated, no header; parsed with pyarrow because IJB-C has 15.7 M pair lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from data_tools.align import align_5pt
from data_tools.readers.base import decode_rgb
from lafs_core.errors import DataError


def _read_table(path: str | Path, columns: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "IJB meta file not found")
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=columns),
            parse_options=pacsv.ParseOptions(delimiter=" "),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        problem = f"malformed IJB meta file ({len(columns)} space-separated columns expected): {exc}"
        raise DataError(path, problem) from exc


def read_face_tid_mid(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image names (str array), template ids and media ids (int64) of ``*_face_tid_mid.txt``."""
    table = _read_table(path, ["name", "tid", "mid"], {"name": pa.string(), "tid": pa.int64(), "mid": pa.int64()})
    return (
        table["name"].to_numpy(zero_copy_only=False).astype(str),
        table["tid"].to_numpy(),
        table["mid"].to_numpy(),
    )


def read_template_pair_label(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template 1, template 2 and the 0/1 label (int64 arrays) of ``*_template_pair_label.txt``."""
    table = _read_table(path, ["t1", "t2", "label"], {c: pa.int64() for c in ("t1", "t2", "label")})
    labels = table["label"].to_numpy()
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise DataError(path, "pair labels must be 0 or 1")
    return table["t1"].to_numpy(), table["t2"].to_numpy(), labels


def read_name_5pts_score(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image names, landmarks ``(N, 5, 2)`` float32 (x, y) and detector scores ``(N,)`` float32."""
    coords = [f"{axis}{i}" for i in range(1, 6) for axis in ("x", "y")]
    types = {"name": pa.string(), **{c: pa.float32() for c in coords}, "score": pa.float32()}
    table = _read_table(path, ["name", *coords, "score"], types)
    landmarks = np.stack([table[c].to_numpy() for c in coords], axis=1).reshape(-1, 5, 2).astype(np.float32)
    return table["name"].to_numpy(zero_copy_only=False).astype(str), landmarks, table["score"].to_numpy()


@dataclass(frozen=True)
class IJBMeta:
    """The meta of one IJB set: per image (name, template, media, 5 landmarks, score) and the template pairs."""

    root: Path
    names: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    pair_t1: np.ndarray
    pair_t2: np.ndarray
    pair_label: np.ndarray

    def image_path(self, i: int) -> Path:
        """Path of image ``i`` in ``loose_crop/``."""
        return self.root / "loose_crop" / str(self.names[i])


def load_ijb_meta(root: str | Path, name: str) -> IJBMeta:
    """Read ``<root>/meta/<name>_*.txt`` (``name`` is ``ijbb`` or ``ijbc``) and check the files agree."""
    root = Path(root)
    meta = root / "meta"
    names, templates, medias = read_face_tid_mid(meta / f"{name}_face_tid_mid.txt")
    lmk_names, landmarks, scores = read_name_5pts_score(meta / f"{name}_name_5pts_score.txt")
    t1, t2, label = read_template_pair_label(meta / f"{name}_template_pair_label.txt")
    if lmk_names.shape != names.shape or (lmk_names != names).any():
        raise DataError(meta / f"{name}_name_5pts_score.txt", "image list differs from the face_tid_mid file")
    unknown = np.setdiff1d(np.concatenate([t1, t2]), templates)
    if unknown.size:
        raise DataError(
            meta / f"{name}_template_pair_label.txt",
            f"{unknown.size} templates in pairs are not in the face_tid_mid file (e.g. {unknown[0]})",
        )
    return IJBMeta(root, names, templates, medias, landmarks, scores, t1, t2, label)


def detect_set_name(root: Path) -> str:
    """``ijbb`` / ``ijbc`` from ``meta/<name>_template_pair_label.txt``."""
    found = sorted((root / "meta").glob("*_template_pair_label.txt"))
    if len(found) != 1:
        raise DataError(root / "meta", f"expected one *_template_pair_label.txt, found {len(found)}")
    return found[0].name.removesuffix("_template_pair_label.txt")


class IjbImages:
    """Loose crops aligned by their 5 points to the 112x112 ArcFace template (RGB); ``None`` when unreadable."""

    def __init__(self, meta: IJBMeta) -> None:
        self.meta = meta

    def __len__(self) -> int:
        return len(self.meta.names)

    def load(self, index: int) -> np.ndarray | None:
        try:
            image = decode_rgb(self.meta.image_path(index).read_bytes())
        except OSError:
            return None
        if image is None:
            return None
        return align_5pt(image, self.meta.landmarks[index])[0]

    def present(self) -> np.ndarray:
        """Which image files exist (a media's mean counts the images present)."""
        return np.array([self.meta.image_path(i).is_file() for i in range(len(self))], dtype=bool)


def open_ijb(root: str | Path, name: str | None = None) -> tuple[str, IJBMeta, IjbImages]:
    """``(set name, meta, aligned faces)`` of an IJB-B/C folder; the name defaults to the one in ``meta/``."""
    root = Path(root)
    name = name or detect_set_name(root)
    meta = load_ijb_meta(root, name)
    return name, meta, IjbImages(meta)
