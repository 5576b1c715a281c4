"""One writer per shard folder: a second `lafs data shards` is refused with one line, stale locks are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest

from data_tools.shards.lock import FOLDER_LOCK, JOB_LOCKS, OutputLockedError, Owner, read_owner, shard_locks
from data_tools.shards.precompute import precompute
from data_tools.shards.verify import verify_shards
from lafs_core.errors import DataError

# The real CLI, held after its first shard until the file $GO exists, so a second writer surely meets it mid-run.
PAUSE_AFTER_FIRST_SHARD = """
import os, sys, time
import data_tools.shards.precompute as precompute
run_shard = precompute.run_shard
def paused_run_shard(*args, **kwargs):
    result = run_shard(*args, **kwargs)
    open(os.environ["WROTE"], "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["GO"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result
precompute.run_shard = paused_run_shard
from lafs_cli.main import main
sys.argv = ["lafs", *sys.argv[1:]]
main()
"""


def shards_command(source: Path, out: Path, shard_size: int, *extra: str) -> list[str]:
    args = ["data", "shards", str(source), str(out), "--preset", "tiny", "--landmarks", "grid", "--align", "none"]
    return [*args, "--shard-size", str(shard_size), "--workers", "1", *extra]


def lafs(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from lafs_cli.main import main; main()"
    env = {**os.environ, "COLUMNS": "1000"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_second_writer_is_refused_while_the_first_runs(face_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    env = {**os.environ, "GO": str(tmp_path / "go"), "WROTE": str(tmp_path / "wrote")}
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AFTER_FIRST_SHARD, *shards_command(face_folder, out, 16)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(tmp_path / "wrote", first)
        owner = read_owner(out / FOLDER_LOCK)
        assert owner is not None and owner.pid == first.pid and owner.host == socket.gethostname()
        second = lafs(*shards_command(face_folder, out, 10))
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"{out}: another `lafs data shards` is writing here (pid {first.pid} on host" in lines[0]
        job = lafs(*shards_command(face_folder, out, 16, "--shard", "2"))
        assert job.returncode == 2 and f"pid {first.pid}" in job.stderr
    finally:
        (tmp_path / "go").touch()
        _stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert verify_shards(out).ok
    assert json.loads((out / "_info.json").read_text())["num_shards"] == 4
    assert not (out / FOLDER_LOCK).exists() and not list(out.rglob("*.tmp"))


def write_lock(path: Path, owner: Owner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(owner)))


def dead_owner() -> Owner:
    """The owner record of a real process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return Owner(proc.pid, socket.gethostname(), started, time.time(), "feedc0de")


def test_stale_lock_of_an_exited_writer_is_taken_over(face_folder, make_config, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_lock(out / FOLDER_LOCK, dead_owner())
    write_lock(out / JOB_LOCKS / "shard-000001.tar.lock", dead_owner())
    result = precompute(face_folder, out, make_config(workers=1))
    assert result.info is not None and verify_shards(out).ok
    assert not (out / FOLDER_LOCK).exists() and not list((out / JOB_LOCKS).iterdir())


def test_reused_pid_of_a_later_process_does_not_keep_a_lock(face_folder, make_config, tmp_path: Path) -> None:
    me = Owner.me()
    write_lock(tmp_path / "shards" / FOLDER_LOCK, Owner(me.pid, me.host, me.started - 3600, me.since, "0ld"))
    assert precompute(face_folder, tmp_path / "shards", make_config(workers=1)).info is not None


def test_lock_of_another_host_is_respected(face_folder, make_config, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_lock(out / FOLDER_LOCK, Owner(4242, "other-node", 0.0, time.time(), "abc"))
    with pytest.raises(OutputLockedError, match=r"pid 4242 on host other-node since .*delete the lock file"):
        precompute(face_folder, out, make_config(workers=1))
    assert not list(out.glob("shard-*"))
    (out / FOLDER_LOCK).write_text("{not json")
    with pytest.raises(DataError, match="unreadable writer lock"):
        precompute(face_folder, out, make_config(workers=1))


def test_shard_jobs_share_a_folder_but_exclude_a_whole_run(face_folder, make_config, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    cfg = make_config(workers=1)
    with shard_locks(out, ["shard-000000.tar"]):
        with pytest.raises(OutputLockedError, match=r"shard-000000\.tar\.lock"):
            precompute(face_folder, out, cfg)
        with pytest.raises(OutputLockedError):
            precompute(face_folder, out, cfg, shard_ids=[0])
        other = precompute(face_folder, out, cfg, shard_ids=[1, 2])
        assert other.written == ["shard-000001.tar", "shard-000002.tar"] and other.info is None
    rest = precompute(face_folder, out, cfg, shard_ids=list(range(other.num_shards)))
    assert rest.reused == ["shard-000001.tar", "shard-000002.tar"]
    assert rest.info is not None and verify_shards(out).ok
