"""Shard loaders: exact-once evaluation, fixed-length training epochs, samples by key; two gloo ranks split."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _loader_rank_job import rank_job

from data_tools.shards.manifest import read_manifest, write_info
from data_tools.shards.precompute import precompute
from data_tools.shards.writer import ShardSample, write_shard
from lafs_core.config import load_config
from lafs_core.config.data import ShardsConfig
from lafs_core.data.loader import batches_per_epoch, eval_loader, read_samples, train_loader
from lafs_core.data.shard_format import read_info
from lafs_core.errors import DataError


@pytest.fixture(scope="module")
def shard_dir(datasets_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 AT&T faces (12 people) in 12 shards of 10, tiny preset (49 grid landmarks)."""
    faces = tmp_path_factory.mktemp("faces")
    for i in range(1, 13):
        shutil.copytree(datasets_root / "att_faces" / "att_faces" / f"s{i}", faces / f"s{i}")
    out = tmp_path_factory.mktemp("loader") / "shards"
    cfg = load_config(ShardsConfig, preset="tiny", overrides=["shard_size=10", "align=none"])
    precompute(faces, out, cfg)
    return out


def stored_samples(shard_dir: Path) -> dict[str, np.ndarray]:
    """Landmarks of every sample, read straight from the tars."""
    out = {}
    for tar_path in sorted(shard_dir.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for info in tar:
                if info.name.endswith(".lmk.npy"):
                    out[info.name.split(".")[0]] = np.load(io.BytesIO(tar.extractfile(info).read()))
    return out


def test_eval_loader_sees_every_sample_once(shard_dir):
    keys, stored = [], stored_samples(shard_dir)
    for batch in eval_loader(shard_dir, batch_size=16, num_workers=2):
        assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (3, 112, 112)
        for key, lmk in zip(batch["keys"], batch["landmarks"], strict=True):
            np.testing.assert_array_equal(lmk.numpy(), stored[key])
        keys += batch["keys"]
    assert sorted(keys) == sorted(read_manifest(shard_dir).column("key").to_pylist())
    assert len(keys) == len(set(keys)) == 120


def test_train_loader_gives_a_fixed_number_of_full_batches(shard_dir):
    info = read_info(shard_dir)
    assert batches_per_epoch(info, 16) == 7
    assert batches_per_epoch(info, 16, world_size=2) == 3
    stored = stored_samples(shard_dir)
    loader = train_loader(shard_dir, 16, num_workers=2)
    batches = list(loader)
    assert len(batches) == 7
    batch = batches[0]
    assert batch["images"].shape == (16, 3, 112, 112) and batch["labels"].shape == (16,)
    assert batch["landmarks"].shape == (16, 49, 2)
    for key, landmarks in zip(batch["keys"], batch["landmarks"], strict=True):
        np.testing.assert_array_equal(landmarks.numpy(), stored[key])
    assert len(list(loader)) == 7


def test_read_samples_decodes_the_wanted_keys_of_their_shards(shard_dir):
    table = read_manifest(shard_dir).to_pydict()
    wanted = {table["key"][i]: table["shard"][i] for i in (3, 50, 119)}
    samples = read_samples(shard_dir, {**wanted, "no-such-key": table["shard"][0]})
    assert set(samples) == set(wanted)
    stored = stored_samples(shard_dir)
    for key, sample in samples.items():
        assert sample["image"].shape == (3, 112, 112)
        np.testing.assert_array_equal(sample["landmarks"].numpy(), stored[key])


def test_images_map_runs_per_batch_in_workers_with_their_own_random_streams(shard_dir):
    stored = {}
    for batch in eval_loader(shard_dir, 16, num_workers=0):
        stored.update(zip(batch["keys"], batch["images"], strict=True))
    inverted = list(train_loader(shard_dir, 16, num_workers=2, images_map=lambda images: 255 - images))
    assert len(inverted) == 7
    for batch in inverted:
        torch.testing.assert_close(batch["images"], torch.stack([255 - stored[key] for key in batch["keys"]]))
    draws = train_loader(shard_dir, 16, num_workers=2, images_map=lambda images: torch.randint(2**62, (1,)))
    values = [int(batch["images"]) for batch in draws]  # batches alternate between the two workers
    assert len(set(values)) == len(values) == 7


@pytest.mark.slow
def test_two_gloo_ranks_split_eval_exactly_and_train_equally(shard_dir, tmp_path):
    args = (2, str(shard_dir), str(tmp_path / "store"), str(tmp_path))
    mp.spawn(rank_job, args=args, nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    first, second = (set(r["keys"]) for r in results)
    assert first and second and not first & second
    assert first | second == set(read_manifest(shard_dir).column("key").to_pylist())
    expected = batches_per_epoch(read_info(shard_dir), 8, world_size=2)
    assert [r["train"] for r in results] == [expected, expected]
    assert results[0]["sum"] == 2 * expected


def test_train_loader_is_reproducible_per_seed(shard_dir):
    def keys(seed: int) -> list[str]:
        return [key for batch in train_loader(shard_dir, 16, num_workers=2, seed=seed) for key in batch["keys"]]

    first = keys(3)
    assert keys(3) == first
    assert keys(4) != first


def damaged_copy(shard_dir: Path, dest: Path) -> tuple[Path, set[str]]:
    """A copy of the set with a flipped byte inside a JPEG of shard 3 and shard 5 cut short; the keys of both."""
    shutil.copytree(shard_dir, dest)
    rows = read_manifest(dest).to_pylist()
    lost = {row["key"] for row in rows if row["shard"] in ("shard-000003.tar", "shard-000005.tar")}
    data = bytearray((dest / "shard-000003.tar").read_bytes())
    data[data.index(b"\xff\xd8\xff") + 600] ^= 0xFF
    (dest / "shard-000003.tar").write_bytes(bytes(data))
    (dest / "shard-000005.tar").write_bytes((dest / "shard-000005.tar").read_bytes()[:3000])
    return dest, lost


def test_damaged_shards_are_skipped_with_a_warning_and_the_run_goes_on(shard_dir, tmp_path, caplog):
    damaged, lost = damaged_copy(shard_dir, tmp_path / "damaged")
    with caplog.at_level("WARNING", logger="lafs_core.data.loader"):
        seen = [key for batch in eval_loader(damaged, 16) for key in batch["keys"]]
    assert len(seen) == 100 and not lost & set(seen)
    warnings = [r.getMessage() for r in caplog.records]
    assert any("shard-000003.tar: sha256 differs" in w for w in warnings), warnings
    assert any("shard-000005.tar: " in w and "bytes, _info.json says" in w for w in warnings), warnings
    trained = [key for _ in range(2) for batch in train_loader(damaged, 16, num_workers=2) for key in batch["keys"]]
    assert len(trained) == 2 * 7 * 16 and not lost & set(trained)


def test_a_sample_that_does_not_decode_is_skipped_and_counted(shard_dir, tmp_path, caplog):
    out = tmp_path / "set"
    shutil.copytree(shard_dir, out)
    with tarfile.open(out / "shard-000002.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    keys = list(dict.fromkeys(name.split(".")[0] for name, _ in members))
    by_key = {key: {name.split(".", 1)[1]: data for name, data in members if name.startswith(key)} for key in keys}
    samples = [
        ShardSample(k, b"\xff\xd8\xffnot a jpeg" if i == 4 else m["jpg"], np.load(io.BytesIO(m["lmk.npy"])),
                    int(m["cls"]), json.loads(m["json"]))
        for i, (k, m) in enumerate(by_key.items())
    ]  # fmt: skip
    sha, _ = write_shard(out / "shard-000002.tar", samples)
    info = read_info(out)
    info["shards"][2].update(sha256=sha, size=(out / "shard-000002.tar").stat().st_size)
    write_info(out, info)
    with caplog.at_level("WARNING", logger="lafs_core.data.loader"):
        seen = [key for batch in eval_loader(out, 16) for key in batch["keys"]]
    assert len(seen) == 119 and keys[4] not in seen
    assert any(f"skipping sample {keys[4]} of " in r.getMessage() for r in caplog.records)


def test_a_set_with_no_usable_shard_stops_with_one_error(shard_dir, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(shard_dir, out)
    for shard in out.glob("shard-*.tar"):
        shard.write_bytes(shard.read_bytes()[:-1024])
    with pytest.raises(DataError, match=r"every shard of the set fails its check against _info\.json"):
        list(eval_loader(out, 16))
    (out / "shard-000007.tar").unlink()
    with pytest.raises(DataError, match=r"shard-000007\.tar: shard listed in _info.json is missing"):
        train_loader(out, 16)
