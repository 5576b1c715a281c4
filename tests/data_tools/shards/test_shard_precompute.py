"""Precompute: corrupt inputs are reported, interrupted runs resume to byte-identical output, filters work."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from data_tools.fewshot import select_fewshot
from data_tools.shards.lock import FOLDER_LOCK
from data_tools.shards.manifest import read_manifest
from data_tools.shards.precompute import plan_shards, precompute
from data_tools.shards.verify import verify_shards
from data_tools.shards.writer import ShardSample, file_sha256, write_shard
from lafs_core.errors import DataError


class CrashError(Exception):
    """Stands for a process dying part-way through a run."""


def shard_files(out: Path) -> dict[str, str]:
    """sha256 of every visible shard file."""
    return {p.name: file_sha256(p) for p in sorted(out.glob("shard-*.tar"))}


def test_corrupt_input_is_skipped_counted_and_listed(face_folder, make_config, tmp_path):
    out = tmp_path / "shards"
    result = precompute(face_folder, out, make_config())
    info = result.info
    assert info is not None
    assert info["num_inputs"] == 61
    assert info["num_samples"] == 60
    assert info["num_skipped"] == 1
    assert info["skipped"][0]["file"].endswith("s1/corrupt.jpg")
    assert "decode" in info["skipped"][0]["reason"]
    manifest = read_manifest(out)
    assert manifest.num_rows == 60
    assert not any("corrupt" in key for key in manifest.column("key").to_pylist())
    assert sorted(set(manifest.column("label").to_pylist())) == list(range(6))
    assert verify_shards(out).ok


def test_interrupted_run_resumes_to_identical_output(face_folder, make_config, tmp_path):
    cfg = make_config()
    reference = tmp_path / "reference"
    precompute(face_folder, reference, cfg)

    out = tmp_path / "resumed"
    seen = 0

    def crash_in_third_shard(n: int) -> None:
        nonlocal seen
        seen += n
        if seen > 20:
            raise CrashError

    with pytest.raises(CrashError):
        precompute(face_folder, out, cfg, progress=crash_in_third_shard)
    partial = shard_files(out)
    assert list(partial) == ["shard-000000.tar", "shard-000001.tar"]
    assert all(partial[name] == file_sha256(reference / name) for name in partial)
    assert not (out / "_info.json").exists()
    assert not (out / "manifest.parquet").exists()
    assert not list(out.glob("*.tmp"))

    resumed = precompute(face_folder, out, cfg)
    assert resumed.reused == ["shard-000000.tar", "shard-000001.tar"]
    assert len(resumed.written) == resumed.num_shards - 2
    assert shard_files(out) == shard_files(reference)
    for name in ("_info.json", "manifest.parquet"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()

    again = precompute(face_folder, out, cfg)
    assert again.written == []
    assert len(again.reused) == again.num_shards


def test_a_damaged_shard_is_redone_on_rerun(face_folder, make_config, tmp_path):
    out = tmp_path / "shards"
    cfg = make_config()
    precompute(face_folder, out, cfg)
    before = shard_files(out)
    victim = out / "shard-000003.tar"
    victim.write_bytes(victim.read_bytes()[:1000])
    rerun = precompute(face_folder, out, cfg)
    assert rerun.written == ["shard-000003.tar"]
    assert shard_files(out) == before


def test_failing_shard_write_leaves_nothing_visible(tmp_path):
    def samples():
        for i in range(5):
            if i == 3:
                raise CrashError
            yield ShardSample(f"k{i}", b"\xff\xd8", np.zeros((4, 2), np.float32), 0, {})

    with pytest.raises(CrashError):
        write_shard(tmp_path / "shard-000000.tar", samples())
    assert list(tmp_path.iterdir()) == []


def test_shard_order_is_a_seeded_global_shuffle(face_folder, make_config, tmp_path):
    precompute(face_folder, tmp_path / "a", make_config(seed=0))
    precompute(face_folder, tmp_path / "b", make_config(seed=1))
    first = read_manifest(tmp_path / "a").column("label").to_pylist()
    other = read_manifest(tmp_path / "b").column("label").to_pylist()
    assert first != sorted(first)
    assert first != other
    assert sorted(first) == sorted(other)
    assert len(set(first[:8])) > 1


def test_exclude_pairs_drops_their_people_and_relabels(face_folder, make_config, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\ns1\t1\t2\ns2\t1\ts3\t2\n")
    result = precompute(face_folder, tmp_path / "pool", make_config(), exclude_pairs=pairs)
    rows = read_manifest(tmp_path / "pool").to_pylist()
    assert {r["identity"] for r in rows} == {"s4", "s5", "s6"}
    assert sorted({r["label"] for r in rows}) == [0, 1, 2]
    assert result.info["num_samples"] == 30
    assert result.info["source"]["excluded_people"] == 3


def test_several_sources_make_one_set_and_max_inputs_keeps_a_seeded_sample(face_folder, make_config, tmp_path):
    other = tmp_path / "other"
    for person in ("s2", "s3"):  # the same folder names as in face_folder: different people of another source
        shutil.copytree(face_folder / person, other / person)
    plan = plan_shards([face_folder, other], make_config())
    keys = [e.key for e in plan.entries]
    assert len(keys) == 61 + 20 and {key[:3] for key in keys} == {"s0-", "s1-"}
    identities = {e.identity for e in plan.entries}
    assert len(identities) == 6 + 2 and {"s0-s2", "s1-s2"} <= identities
    cut = plan_shards([face_folder, other], make_config(max_inputs=20))
    assert [e.key for e in cut.entries] == keys[:20] and cut.fingerprint != plan.fingerprint
    result = precompute([face_folder, other], tmp_path / "both", make_config(max_inputs=20))
    assert result.info["num_inputs"] == 20 and len(result.info["source"]["sources"]) == 2
    with pytest.raises(DataError, match="one source, not from several"):
        plan_shards([face_folder, other], make_config(), fewshot=tmp_path / "list.json")


def test_fewshot_list_as_source(face_folder, make_config, tmp_path):
    listing = select_fewshot(face_folder, k=2, seed=0).write(tmp_path / "k2.json")
    result = precompute(listing, tmp_path / "k2", make_config())
    rows = read_manifest(tmp_path / "k2").to_pylist()
    assert result.info["num_samples"] == 12
    counts = np.bincount([r["label"] for r in rows])
    assert counts.tolist() == [2] * 6


# Runs the real CLI in a child process that SIGKILLs itself while the 14th sample is being written (inside the
# fourth 4-sample shard), so the kill lands mid-shard however fast the machine is; first it writes the pids of its
# decode workers to $WORKER_PIDS.
DIE_MID_SHARD = """
import os, signal, sys
import psutil
import data_tools.shards.precompute as precompute
write_shard = precompute.write_shard
written = 0
def dying_write_shard(path, samples):
    def counted():
        global written
        for sample in samples:
            written += 1
            if written == 14:
                with open(os.environ["WORKER_PIDS"], "w") as fh:
                    fh.write(" ".join(str(child.pid) for child in psutil.Process().children()))
                os.kill(os.getpid(), signal.SIGKILL)
            yield sample
    return write_shard(path, counted())
precompute.write_shard = dying_write_shard
from lafs_cli.main import main
sys.argv = ["lafs", *sys.argv[1:]]
main()
"""


def wait_until_gone(pids: list[int], seconds: float) -> bool:
    """True once none of ``pids`` runs any more (exited, or a zombie nobody reaps), polling up to ``seconds``."""

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + seconds
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_matches_uninterrupted(face_folder, make_config, tmp_path):
    cfg = make_config(shard_size=4)
    reference = tmp_path / "reference"
    precompute(face_folder, reference, cfg)
    out = tmp_path / "killed"
    command = [sys.executable, "-c", DIE_MID_SHARD, "data", "shards", str(face_folder), str(out), "--preset", "tiny"]
    command += ["--align", "none", "--shard-size", "4", "--workers", "2", "--json", "batch_size=4"]
    pid_file = tmp_path / "worker-pids"
    env = {**os.environ, "WORKER_PIDS": str(pid_file)}
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, timeout=300, check=False, env=env)
    assert proc.returncode == -signal.SIGKILL
    workers = [int(pid) for pid in pid_file.read_text().split()]
    assert len(workers) == 2
    assert wait_until_gone(workers, seconds=10), "decode workers outlived their killed parent"
    visible = shard_files(out)
    assert list(visible) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert all(visible[name] == file_sha256(reference / name) for name in visible)
    leftovers = [p.name for p in out.glob("*.tmp")]
    assert len(leftovers) == 1 and re.fullmatch(r"shard-000003\.tar\.\d+-[0-9a-f]{8}\.tmp", leftovers[0]), leftovers
    assert not (out / "_info.json").exists()
    assert (out / FOLDER_LOCK).is_file(), "the killed run's lock stays behind (stale: its pid is gone)"
    precompute(face_folder, out, cfg)
    assert not list(out.glob("*.tmp"))
    assert not (out / FOLDER_LOCK).exists()
    assert shard_files(out) == shard_files(reference)
    for name in ("_info.json", "manifest.parquet"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()


def test_file_name_that_is_not_utf8_is_written_and_traceable(datasets_root, make_config, tmp_path):
    faces = tmp_path / "faces"
    src = datasets_root / "att_faces" / "att_faces"
    for person in ("s1", "s2"):
        (faces / person).mkdir(parents=True)
        for j in (1, 2):
            shutil.copy(src / person / f"{j}.pgm", faces / person / f"{j}.pgm")
    odd = os.fsdecode(b"caf\xe9 \xff.pgm")
    shutil.copy(src / "s2" / "3.pgm", faces / "s2" / odd)
    out = tmp_path / "shards"
    result = precompute(faces, out, make_config(workers=1))
    assert result.info is not None and result.info["num_samples"] == 5
    assert verify_shards(out).ok
    rows = {row["source"]: row for row in read_manifest(out).to_pylist()}
    assert rows["s2/caf\\xe9 \\xff.pgm"]["file"] == str(faces / "s2" / "caf\\xe9 \\xff.pgm")


def test_an_output_path_that_is_a_file_is_one_error(face_folder, make_config, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(DataError, match=r"taken: cannot create the output folder \(Not a directory\)"):
        precompute(face_folder, tmp_path / "taken", make_config())
