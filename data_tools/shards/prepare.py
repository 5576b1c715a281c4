"""Decode -> align -> JPEG of the shard writer's inputs, in worker processes, delivered in plan order.

The work is pure C (OpenCV) between short Python steps, but with threads those steps and the shard writer's own
Python (tar framing, metadata, hashing) contend for one GIL: on 2 cores, threads reached 0.35-0.45x of bare
decoding. Forked processes inherit the source (open readers, in-memory images) without pickling and return only the
JPEG bytes (plus the decoded face when the landmark model looks at pixels), in chunks to amortise the IPC. Off Linux
(no ``fork``, or a ``fork`` that macOS system libraries do not survive) the same chunks run in threads.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from itertools import islice

import cv2
import numpy as np

from data_tools.shards.alignment import make_aligner
from data_tools.shards.sources import Entry, FaceSource
from data_tools.shards.writer import encode_jpeg
from lafs_core.config.data import ShardsConfig
from lafs_core.errors import DataError

Prepared = tuple[bytes, np.ndarray | None] | str
CHUNK = 16
PARENT_POLL_S = 0.5


class Preparer:
    """Decode -> align -> JPEG for one input."""

    def __init__(self, source: FaceSource, cfg: ShardsConfig, decode_stored: bool = True) -> None:
        self.source = source
        self.align = make_aligner(cfg.align, cfg.model.image_size, "BGR")
        self.quality = cfg.jpeg_quality
        self.decode_stored = decode_stored

    def __call__(self, entry: Entry) -> Prepared:
        """(JPEG bytes, the decoded JPEG) of the aligned face, or the reason it was skipped.

        The image stays in OpenCV's BGR order from decode to encode (the aligners resample each channel alike, so
        this gives the same bytes without two channel swaps). The decoded JPEG (RGB: what a reader of the shard sees,
        and what the landmark model runs on) is ``None`` when ``decode_stored`` is off, i.e. for landmark sources
        that do not look at pixels.
        """
        image = self.source.load(entry, "BGR")
        if isinstance(image, str):
            return image
        try:
            aligned = self.align(image, entry)
        except DataError as exc:
            return f"alignment failed: {exc.problem}"
        jpg = encode_jpeg(aligned, self.quality, "BGR")
        if not self.decode_stored:
            return jpg, None
        decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return jpg, decoded


_preparer: Preparer | None = None


def _start_worker(preparer: Preparer, parent: int | None) -> None:
    """Worker initialiser: keep the inherited preparer; a forked worker leaves Ctrl-C to its parent (which shuts the
    pool down) and exits once the parent is gone.

    A killed parent (SIGKILL, OOM) cannot stop its pool, and the workers would otherwise wait on the task queue
    forever (they hold its write end themselves, so they never see end-of-file).
    """
    global _preparer
    _preparer = preparer
    if parent is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _prepare_chunk(entries: tuple[Entry, ...]) -> list[Prepared]:
    assert _preparer is not None, "worker not initialised"
    return [_preparer(entry) for entry in entries]


def chunked(entries: Iterable[Entry], size: int) -> Iterator[tuple[Entry, ...]]:
    """``entries`` in tuples of ``size`` (the last may be shorter)."""
    entries = iter(entries)
    return iter(lambda: tuple(islice(entries, size)), ())


def prefetch(pool: Executor, chunks: Iterable[tuple[Entry, ...]], ahead: int) -> Iterator[list[Prepared]]:
    """Prepared chunks in order, with at most ``ahead`` chunks submitted and not yet consumed.

    The window bounds memory and keeps the workers busy while the consumer runs the landmark model and writes.
    """
    chunks = iter(chunks)
    pending: deque[Future] = deque(pool.submit(_prepare_chunk, chunk) for chunk in islice(chunks, ahead))
    while pending:
        future = pending.popleft()
        pending.extend(pool.submit(_prepare_chunk, chunk) for chunk in islice(chunks, 1))
        yield future.result()


@contextmanager
def prepared_inputs(
    preparer: Preparer,
    entries: Iterable[Entry],
    workers: int,
    ahead: int,
    where: str,
    processes: bool = sys.platform == "linux",
) -> Iterator[Iterator[Prepared]]:
    """The prepared form of every entry, in order, made by ``workers`` forked processes (threads off Linux).

    ``ahead`` bounds the inputs in flight; ``where`` names the output in the error raised if a worker dies.
    """
    if processes:
        pool: Executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_start_worker,
            initargs=(preparer, os.getpid()),
        )
    else:
        pool = ThreadPoolExecutor(workers, initializer=_start_worker, initargs=(preparer, None))

    def stream() -> Iterator[Prepared]:
        try:
            for chunk in prefetch(pool, chunked(entries, CHUNK), max(workers, -(-ahead // CHUNK))):
                yield from chunk
        except BrokenProcessPool as exc:
            raise DataError(where, f"a decode worker died ({exc}); finished shards are kept, rerun to resume") from None

    try:
        yield stream()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
