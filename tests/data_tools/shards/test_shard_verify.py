"""`lafs data verify` exits 0 only when every shard matches the manifest; truncation and bit flips are caught."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from data_tools.shards.precompute import precompute
from lafs_core.cli.main import app
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
