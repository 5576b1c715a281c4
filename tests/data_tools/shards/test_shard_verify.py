"""`lafs data verify` exits 0 only when every shard matches the manifest; truncation and bit flips are caught."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_tools.shards.precompute import precompute
from lafs_cli.main import app
from lafs_core.config import load_config
from lafs_core.config.data import ShardsConfig


@pytest.fixture(scope="module")
def shard_set(face_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "shards"
    cfg = load_config(ShardsConfig, preset="tiny", overrides=["shard_size=16", "align=none"])
    precompute(face_folder, out, cfg)
    return out


def run_verify(directory):
    return CliRunner().invoke(app, ["data", "verify", str(directory), "--json"])


@pytest.fixture
def copy(shard_set, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(shard_set, dest)
    return dest


def test_intact_set_verifies(shard_set):
    result = run_verify(shard_set)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == {"ok": True, "num_shards": 4, "num_samples": 60, "problems": []}


def test_truncated_shard_fails_verification(copy):
    victim = copy / "shard-000001.tar"
    victim.write_bytes(victim.read_bytes()[:-3000])
    result = run_verify(copy)
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert any("shard-000001.tar" in p and "sha256" in p for p in problems)


def test_flipped_byte_fails_verification(copy):
    victim = copy / "shard-000002.tar"
    data = bytearray(victim.read_bytes())
    data[2000] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = run_verify(copy)
    assert result.exit_code == 1
    assert "shard-000002.tar: sha256 differs" in result.output


def test_missing_shard_fails_verification(copy):
    (copy / "shard-000000.tar").unlink()
    result = run_verify(copy)
    assert result.exit_code == 1
    assert "missing" in result.output


def test_text_output_names_shards_and_samples(shard_set):
    result = CliRunner().invoke(app, ["data", "verify", str(shard_set)])
    assert result.exit_code == 0
    assert "4 shards, 60 samples" in result.output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda info: info.update(shards=5), "malformed shard summary: 'shards' is not a list"),
        (lambda info: info["shards"][1].update(name="../../etc/passwd"), "'../../etc/passwd' is not a shard file"),
        (lambda info: info["shards"][0].update(num_samples="ten"), "shards[0].num_samples 'ten' is not a count"),
        (lambda info: info["shards"][2].pop("sha256"), "shards[2].sha256 None is not a sha256"),
        (lambda info: info.pop("num_samples"), "'num_samples' is not a count"),
    ],
)
def test_malformed_summary_is_one_line_exit_2(copy, edit, message):
    info = json.loads((copy / "_info.json").read_text())
    edit(info)
    (copy / "_info.json").write_text(json.dumps(info))
    result = lafs("data", "verify", str(copy))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {copy / '_info.json'}: ") and message in lines[0], lines


def test_manifest_of_another_table_is_one_line_exit_2(copy):
    pq.write_table(pa.table({"name": ["x"]}), copy / "manifest.parquet")
    result = lafs("data", "verify", str(copy))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {copy / 'manifest.parquet'}: not a shard manifest (no key, shard column)"


def lafs(*args):
    code = "from lafs_cli.main import main; main()"
    env = {**os.environ, "COLUMNS": "1000"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)
