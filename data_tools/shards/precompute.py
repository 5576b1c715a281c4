"""Source -> align -> landmark model (batched) -> WebDataset shards, as independent, resumable shard jobs.

The plan (which sample goes to which shard, under which key) depends only on the source listing, the config and
the landmark model, never on timing: samples are sorted by key, then permuted with the config's seed (a global
shuffle, so identity-sorted datasets are spread over all shards). Inputs are decoded, aligned and JPEG-encoded by
worker processes (``prepare.py``) a bounded window ahead of the consumer (across shard boundaries), while this process
runs the landmark model on one batch at a time and streams the finished samples into ``shard-NNNNNN.tar`` (written
atomically), then a small ``.parts/shard-NNNNNN.json`` record (checksum, rows, skipped inputs). A rerun reuses every
shard whose record matches the plan and whose bytes still hash to the recorded sha256, and redoes the rest;
``finalize`` then writes ``manifest.parquet`` and ``_info.json``.

One writer at a time: a run over the whole plan locks the folder, a shard job locks its shards (``lock.py``), and a
second writer is refused with one line naming the first. ``_info.json`` (whose presence says the set is complete) is
removed before any shard is rewritten, so a reader never pairs an old summary with new shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.shards.alignment import describe as describe_alignment
from data_tools.shards.landmark_sources import LandmarkSource, flip_permutation, open_landmark_source
from data_tools.shards.lock import JOB_LOCKS, OutputLockedError, folder_lock, shard_locks
from data_tools.shards.manifest import landmark_stats_batch, write_info, write_manifest
from data_tools.shards.prepare import Prepared, Preparer, prepared_inputs
from data_tools.shards.sources import Entry, FaceSource, PairFiles, open_sources
from data_tools.shards.writer import ShardSample, atomic_write_bytes, file_sha256, write_shard
from lafs_core.config.data import ShardsConfig
from lafs_core.config.loader import config_to_dict
from lafs_core.data.shard_format import FORMAT, INFO, MANIFEST
from lafs_core.errors import DataError, printable

log = logging.getLogger(__name__)

PARTS = ".parts"
KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
Progress = Callable[[int], None]
Sources = str | Path | Sequence[str | Path]


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:06d}.tar"


def sample_key(position: int, source_key: str) -> str:
    """``__key__`` of the sample at plan position ``position``: unique, dot-free, readable."""
    return f"{position:07d}_{KEY_UNSAFE.sub('_', source_key)}"


def recorded_names(entry: Entry) -> dict[str, str | None]:
    """Key, file and identity of an entry as the shard metadata and manifest record them.

    A file name that is not valid UTF-8 (surrogate escapes in Python) cannot go into Parquet or portable JSON; it is
    recorded with its undecodable bytes as ``\\xNN`` (:func:`~lafs_core.errors.printable`), so it can still be traced.
    """
    identity = None if entry.identity is None else printable(entry.identity)
    return {"key": printable(entry.key), "file": printable(entry.file), "identity": identity}


def skip_record(entry: Entry, reason: str) -> dict[str, str]:
    """The ``skipped`` record of an input that gave no sample."""
    return {"key": printable(entry.key), "file": printable(entry.file), "reason": reason}


@dataclass
class Plan:
    """The shard layout: entries in write order, cut into shards, and a fingerprint of everything that shapes them."""

    entries: list[Entry]
    shard_size: int
    fingerprint: str

    @property
    def num_shards(self) -> int:
        """Number of shards (at least one)."""
        return max(1, -(-len(self.entries) // self.shard_size))

    def shard(self, index: int) -> list[tuple[int, Entry]]:
        """(plan position, entry) pairs of shard ``index``."""
        start = index * self.shard_size
        return list(enumerate(self.entries[start : start + self.shard_size], start=start))


def make_plan(source: FaceSource, cfg: ShardsConfig, landmarks: LandmarkSource) -> Plan:
    """Order the source's entries by key, permute them with ``cfg.seed`` (keeping the first ``cfg.max_inputs``: a
    seeded sample), fingerprint the result."""
    entries = sorted(source.entries, key=lambda e: e.key)
    order = np.random.default_rng(cfg.seed).permutation(len(entries))[: cfg.max_inputs]
    entries = [entries[i] for i in order]
    identity = {
        "format": FORMAT,
        "config": {k: v for k, v in config_to_dict(cfg).items() if k not in ("workers",)},
        "landmarks": [landmarks.model_id, landmarks.sha256, landmarks.convention],
        "entries": [[e.key, e.identity, e.label] for e in entries],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Plan(entries=entries, shard_size=cfg.shard_size, fingerprint=digest)


@dataclass
class ShardResult:
    """What one shard job produced (also the content of its ``.parts`` record)."""

    name: str
    sha256: str
    num_samples: int
    rows: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    landmark_sum: list[list[float]]
    fingerprint: str
    reused: bool = field(default=False, compare=False)

    def record(self) -> dict[str, Any]:
        """JSON form for the ``.parts`` record."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "num_samples": self.num_samples,
            "rows": self.rows,
            "skipped": self.skipped,
            "landmark_sum": self.landmark_sum,
            "fingerprint": self.fingerprint,
        }


def load_part(out_dir: Path, name: str, fingerprint: str) -> ShardResult | None:
    """The recorded result of a finished shard, if it belongs to this plan and its bytes still verify."""
    part = out_dir / PARTS / f"{name}.json"
    shard = out_dir / name
    if not part.is_file() or not shard.is_file():
        return None
    try:
        record = json.loads(part.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("fingerprint") != fingerprint or record.get("sha256") != file_sha256(shard):
        return None
    return ShardResult(**record, reused=True)


def run_shard(
    plan: Plan,
    index: int,
    prepared: Iterator[Prepared],
    landmarks: LandmarkSource,
    out_dir: Path,
    cfg: ShardsConfig,
    progress: Progress | None = None,
) -> ShardResult:
    """Write shard ``index`` of ``plan``; ``prepared`` yields the prepared inputs of its entries, in plan order.

    Samples are streamed into the shard batch by batch: the landmark model runs once per batch, its samples are
    written, then the next batch is consumed.
    """
    name = shard_name(index)
    items = plan.shard(index)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    total = np.zeros((landmarks.num_landmarks, 2), dtype=np.float64)

    def samples() -> Iterator[ShardSample]:
        nonlocal total
        for start in range(0, len(items), cfg.batch_size):
            chunk = items[start : start + cfg.batch_size]
            batch = []
            for position, entry in chunk:
                result = next(prepared)
                if isinstance(result, str):
                    skipped.append(skip_record(entry, result))
                else:
                    batch.append((position, entry, *result))
            if batch:
                if landmarks.uses_pixels:
                    images = np.stack([b[3] for b in batch])
                else:
                    images = np.zeros((len(batch), 0, 0, 3), dtype=np.uint8)
                points, ok = landmarks.predict(images)
                stats = landmark_stats_batch(points)
                for (position, entry, jpg, _), lmk, good, stat in zip(batch, points, ok, stats, strict=True):
                    if not good:
                        skipped.append(skip_record(entry, "landmark model found no face"))
                        continue
                    names = recorded_names(entry)
                    key = sample_key(position, entry.key)
                    meta = {
                        "source_key": names["key"],
                        "file": names["file"],
                        "identity": names["identity"],
                        "alignment": cfg.align,
                    }
                    rows.append(
                        {
                            "shard": name,
                            "key": key,
                            "label": entry.label,
                            "source": names["key"],
                            "file": names["file"],
                            "identity": names["identity"],
                            **stat,
                        }
                    )
                    total += lmk
                    yield ShardSample(key=key, jpg=jpg, landmarks=lmk, label=entry.label, meta=meta)
            if progress:
                progress(len(chunk))

    sha, count = write_shard(out_dir / name, samples())
    result = ShardResult(
        name=name,
        sha256=sha,
        num_samples=count,
        rows=rows,
        skipped=skipped,
        landmark_sum=total.tolist(),
        fingerprint=plan.fingerprint,
    )
    atomic_write_bytes(out_dir / PARTS / f"{name}.json", json.dumps(result.record(), sort_keys=True).encode())
    return result


@dataclass
class PrecomputeResult:
    """Summary of a run: the shard set's info (None until every shard exists) and the work done."""

    out_dir: Path
    num_shards: int
    written: list[str]
    reused: list[str]
    info: dict[str, Any] | None


def run_shards(
    source: FaceSource,
    out_dir: Path,
    cfg: ShardsConfig,
    landmarks: LandmarkSource,
    shard_ids: list[int] | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> tuple[Plan, list[ShardResult]]:
    """Run (or reuse) the selected shard jobs of the plan."""
    plan = make_plan(source, cfg, landmarks)
    if on_plan:
        on_plan(plan)
    (out_dir / PARTS).mkdir(parents=True, exist_ok=True)
    ids = range(plan.num_shards) if shard_ids is None else shard_ids
    results: dict[int, ShardResult] = {}
    todo: list[int] = []
    for index in ids:
        if not 0 <= index < plan.num_shards:
            raise DataError(out_dir, f"shard {index} outside the plan's {plan.num_shards} shards")
        done = load_part(out_dir, shard_name(index), plan.fingerprint)
        if done is None:
            todo.append(index)
        else:
            results[index] = done
            if progress:
                progress(len(plan.shard(index)))
    if todo:
        for summary in (INFO, MANIFEST):
            (out_dir / summary).unlink(missing_ok=True)
    preparer = Preparer(source, cfg, decode_stored=landmarks.uses_pixels)
    entries = (entry for index in todo for _, entry in plan.shard(index))
    ahead = 2 * cfg.batch_size + 2 * cfg.workers
    with prepared_inputs(preparer, entries, cfg.workers, ahead, str(out_dir)) as prepared:
        for index in todo:
            results[index] = run_shard(plan, index, prepared, landmarks, out_dir, cfg, progress)
    return plan, [results[index] for index in ids]


def finalize(
    out_dir: Path, plan: Plan, results: list[ShardResult], source: FaceSource, cfg: ShardsConfig, lm: LandmarkSource
) -> dict[str, Any]:
    """Write ``manifest.parquet`` then ``_info.json`` from every shard's record; drop stale files."""
    results = sorted(results, key=lambda r: r.name)
    names = [r.name for r in results]
    if names != [shard_name(i) for i in range(plan.num_shards)]:
        raise DataError(out_dir, "cannot finalize: not every shard of the plan is written")
    rows = [row for r in results for row in r.rows]
    total = np.sum([np.asarray(r.landmark_sum) for r in results], axis=0)
    num_samples = sum(r.num_samples for r in results)
    mean = total / max(1, num_samples)
    listed = [{key: printable(value) for key, value in s.items()} for s in source.listing_skipped]
    skipped = listed + [s for r in results for s in r.skipped]
    shards = [
        {"name": r.name, "num_samples": r.num_samples, "sha256": r.sha256, "size": (out_dir / r.name).stat().st_size}
        for r in results
    ]
    info = {
        "format": FORMAT,
        "shards": shards,
        "num_shards": len(results),
        "num_samples": num_samples,
        "num_inputs": len(plan.entries),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "image_size": cfg.model.image_size,
        "channel_order": "RGB",
        "alignment": describe_alignment(cfg.align),
        "num_landmarks": lm.num_landmarks,
        "convention": lm.convention,
        "landmark_model": {"spec": lm.spec, "id": lm.model_id, "sha256": lm.sha256},
        "landmark_mean": mean.round(4).tolist(),
        "flip_permutation": flip_permutation(mean, cfg.model.image_size),
        "num_labels": len({e.label for e in plan.entries if e.label >= 0}),
        "source": {key: printable(v) if isinstance(v, str) else v for key, v in source.description.items()},
        "plan_fingerprint": plan.fingerprint,
        "config": config_to_dict(cfg),
    }
    write_manifest(out_dir, rows)
    write_info(out_dir, info)
    keep = set(names)
    leftovers = [*out_dir.glob(f"{INFO}.*.tmp"), *out_dir.glob(f"{MANIFEST}.*.tmp")]
    for stale in [*out_dir.glob("shard-*.tar*"), *leftovers]:
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    for part in (out_dir / PARTS).glob("*"):
        if part.name.removesuffix(".json") not in keep:
            part.unlink(missing_ok=True)
    return info


def precompute(
    source_path: Sources,
    out_dir: str | Path,
    cfg: ShardsConfig,
    *,
    fewshot: str | Path | None = None,
    exclude_pairs: PairFiles = None,
    shard_ids: list[int] | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> PrecomputeResult:
    """Write (or resume) the shard set of ``source_path`` in ``out_dir``; finalize when every shard exists.

    The whole run holds the folder lock; with ``shard_ids`` only those shards are locked while they are written,
    and the folder lock is then tried for the finalize (skipped, leaving ``info`` None, while other jobs write).
    """
    out_dir = Path(out_dir)
    make_output_folder(out_dir)
    if shard_ids is None:
        with folder_lock(out_dir):
            source, landmarks = _open_inputs(source_path, cfg, fewshot, exclude_pairs)
            plan, results = run_shards(source, out_dir, cfg, landmarks, None, progress, on_plan)
            info = finalize(out_dir, plan, results, source, cfg, landmarks)
        return PrecomputeResult(out_dir, plan.num_shards, *_work_done(results), info)
    with shard_locks(out_dir, [shard_name(i) for i in sorted(set(shard_ids))]):
        source, landmarks = _open_inputs(source_path, cfg, fewshot, exclude_pairs)
        plan, results = run_shards(source, out_dir, cfg, landmarks, shard_ids, progress, on_plan)
    info = None
    try:
        with folder_lock(out_dir):
            found = [load_part(out_dir, shard_name(i), plan.fingerprint) for i in range(plan.num_shards)]
            parts = [part for part in found if part is not None]
            if len(parts) == plan.num_shards:
                info = finalize(out_dir, plan, parts, source, cfg, landmarks)
    except OutputLockedError:
        log.info("%s: other writers are busy, finalize left to the last one", out_dir)
    return PrecomputeResult(out_dir, plan.num_shards, *_work_done(results), info)


def make_output_folder(out_dir: Path) -> None:
    """Create the output folder (and its lock folder); DataError when that is impossible."""
    try:
        (out_dir / JOB_LOCKS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(out_dir, f"cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise DataError(out_dir, "output folder is not writable")


def _open_inputs(
    source_path: Sources, cfg: ShardsConfig, fewshot: str | Path | None, exclude_pairs: PairFiles
) -> tuple[FaceSource, LandmarkSource]:
    paths = [source_path] if isinstance(source_path, str | Path) else list(source_path)
    source = open_sources(paths, fewshot=fewshot, exclude_pairs=exclude_pairs)
    landmarks = open_landmark_source(
        cfg.landmarks, cfg.model.num_landmarks, cfg.model.image_size, cfg.model.sampler_convention
    )
    return source, landmarks


def _work_done(results: list[ShardResult]) -> tuple[list[str], list[str]]:
    """(written, reused) shard names."""
    return [r.name for r in results if not r.reused], [r.name for r in results if r.reused]


def plan_shards(
    source_path: Sources,
    cfg: ShardsConfig,
    *,
    fewshot: str | Path | None = None,
    exclude_pairs: PairFiles = None,
) -> Plan:
    """The plan alone (no decoding), so a scheduler can map ``precompute(..., shard_ids=[i])`` jobs over shards."""
    source, landmarks = _open_inputs(source_path, cfg, fewshot, exclude_pairs)
    return make_plan(source, cfg, landmarks)
