"""Writer locks of a shard folder, so two ``lafs data shards`` runs never write into one folder at once.

A run over the whole plan holds the folder lock ``.writer.lock``; a shard job (``--shard N``, one Prefect task per
shard) holds ``.writer-locks/shard-NNNNNN.lock`` for each of its shards, so jobs of one plan run side by side while
a whole run, or a second job on the same shard, is refused. Each side first takes its own lock, then looks for the
other's (and backs off if it finds one), so two writers can never both proceed; at worst both are refused.

A lock file holds its owner as JSON: pid, host, process start time, since when, a random token. It is created
complete, by hard-linking a fully written temporary file to the lock name (atomic, also on NFS), so a reader never
sees a half-written owner. A lock whose owner ran on this host and is gone (no such pid, or the pid now belongs to a
process started later) is stale and is removed by the next writer; two writers breaking one stale lock take turns
under an ``flock`` of the folder. An owner on another host cannot be checked from here: its lock is respected until
someone deletes the file. The second writer does not wait: it fails at once with one line naming the owner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from lafs_core.errors import DataError

FOLDER_LOCK = ".writer.lock"
JOB_LOCKS = ".writer-locks"
START_TIME_SLACK_S = 1.0


class OutputLockedError(DataError):
    """The shard folder is being written by another live writer."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: process id, host name, process start time (epoch s), since when, and a random token."""

    pid: int
    host: str
    started: float
    since: float
    token: str

    @classmethod
    def me(cls) -> Owner:
        """This process as a lock owner."""
        pid = os.getpid()
        return cls(pid, socket.gethostname(), psutil.Process(pid).create_time(), time.time(), secrets.token_hex(8))

    def describe(self) -> str:
        """``pid 123 on host h since 2024-01-01 12:00:00``."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on host {self.host} since {since}"

    def is_stale(self) -> bool:
        """True when the owner ran on this host and is gone (a reused pid belongs to a later-started process)."""
        if self.host != socket.gethostname():
            return False
        try:
            started = psutil.Process(self.pid).create_time()
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False
        return started > self.started + START_TIME_SLACK_S


def read_owner(path: Path) -> Owner | None:
    """The owner recorded in a lock file, ``None`` when there is no lock; DataError when the file is not a lock."""
    try:
        record = json.loads(path.read_bytes())
        return Owner(**{key: record[key] for key in ("pid", "host", "started", "since", "token")})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(path, f"unreadable writer lock ({exc}); delete it if no writer is running") from None


def _create(path: Path, owner: Owner) -> bool:
    """Create ``path`` holding ``owner``, complete or not at all; False when it exists already."""
    data = json.dumps(asdict(owner)).encode()
    tmp = path.with_name(f"{path.name}.{owner.pid}-{owner.token}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        return _create_exclusive(path, data)
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path, data: bytes) -> bool:
    """``O_EXCL`` creation, for file systems without hard links."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return True


@contextlib.contextmanager
def _folder_flock(folder: Path) -> Iterator[None]:
    """Serialise stale-lock breaking among this host's processes (skipped where directories cannot be flocked)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _take(path: Path, owner: Owner) -> Owner | None:
    """Take the lock at ``path`` for ``owner``, breaking a stale one; the live owner that holds it otherwise."""
    while not _create(path, owner):
        holder = read_owner(path)
        if holder is None:
            continue
        if not holder.is_stale():
            return holder
        with _folder_flock(path.parent):
            if read_owner(path) == holder:
                path.unlink(missing_ok=True)
    return None


def _release(path: Path, owner: Owner) -> None:
    """Remove the lock at ``path`` if ``owner`` still holds it."""
    with contextlib.suppress(DataError):
        if read_owner(path) == owner:
            path.unlink(missing_ok=True)


def _live_owners(paths: list[Path]) -> list[tuple[Path, Owner]]:
    """The live owners of ``paths``; stale lock files among them are removed."""
    live = []
    for path in paths:
        holder = read_owner(path)
        if holder is None:
            continue
        if holder.is_stale():
            with _folder_flock(path.parent):
                if read_owner(path) == holder:
                    path.unlink(missing_ok=True)
            continue
        live.append((path, holder))
    return live


def _refuse(out_dir: Path, path: Path, holder: Owner) -> OutputLockedError:
    return OutputLockedError(
        out_dir,
        f"another `lafs data shards` is writing here ({holder.describe()}, lock {path}); "
        "wait for it to finish, or delete the lock file if that process is gone",
    )


@contextlib.contextmanager
def folder_lock(out_dir: str | Path) -> Iterator[Owner]:
    """Hold the whole shard folder: no other run and no shard job may write in it meanwhile."""
    out_dir = Path(out_dir)
    path = out_dir / FOLDER_LOCK
    owner = Owner.me()
    holder = _take(path, owner)
    if holder is not None:
        raise _refuse(out_dir, path, holder)
    try:
        jobs = sorted((out_dir / JOB_LOCKS).glob("*.lock")) if (out_dir / JOB_LOCKS).is_dir() else []
        if live := _live_owners(jobs):
            raise _refuse(out_dir, *live[0])
        yield owner
    finally:
        _release(path, owner)


@contextlib.contextmanager
def shard_locks(out_dir: str | Path, names: list[str]) -> Iterator[Owner]:
    """Hold the named shards for one shard job; jobs on other shards may run beside it, a whole run may not."""
    out_dir = Path(out_dir)
    (out_dir / JOB_LOCKS).mkdir(parents=True, exist_ok=True)
    owner = Owner.me()
    held: list[Path] = []
    try:
        for name in names:
            path = out_dir / JOB_LOCKS / f"{name}.lock"
            holder = _take(path, owner)
            if holder is not None:
                raise _refuse(out_dir, path, holder)
            held.append(path)
        if live := _live_owners([out_dir / FOLDER_LOCK]):
            raise _refuse(out_dir, *live[0])
        yield owner
    finally:
        for path in held:
            _release(path, owner)
