"""The streamed shard writer against ``tarfile`` itself: same bytes, same checksum, readable by webdataset."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import webdataset as wds

from data_tools.shards.writer import ShardSample, file_sha256, member_header, sample_members, write_shard


def tarfile_bytes(samples: list[ShardSample]) -> bytes:
    """The shard as ``tarfile.TarFile.addfile`` writes it, with the writer's fixed member metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for sample in samples:
            for name, data in sample_members(sample):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_samples(count: int) -> list[ShardSample]:
    """Samples with varied sizes (block-aligned and not), a non-ASCII key and one key too long for a tar name field."""
    rng = np.random.default_rng(0)
    keys = [f"{i:07d}_person" for i in range(count - 2)] + ["0000098_Zoë_Ü", "0000099_" + "x" * 120]
    sizes = [0, 1, 511, 512, 513, 6000] * count
    return [
        ShardSample(
            key=key,
            jpg=rng.integers(0, 256, sizes[i], dtype=np.uint8).tobytes(),
            landmarks=rng.random((9, 2)).astype(np.float32) * 112,
            label=i,
            meta={"identity": key, "file": f"/data/{key}.jpg"},
        )
        for i, key in enumerate(keys)
    ]


def test_streamed_shard_is_byte_identical_to_tarfile(tmp_path):
    samples = make_samples(100)
    sha, count = write_shard(tmp_path / "shard-000000.tar", iter(samples))
    data = (tmp_path / "shard-000000.tar").read_bytes()
    assert data == tarfile_bytes(samples)
    assert (sha, count) == (file_sha256(tmp_path / "shard-000000.tar"), 100)
    assert not list(tmp_path.glob("*.tmp"))
    read = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False).decode())
    assert [r["__key__"] for r in read] == [s.key for s in samples]
    assert all(np.array_equal(r["lmk.npy"], s.landmarks) for r, s in zip(read, samples, strict=True))


def test_template_header_matches_tarfile_header():
    for name in ["", "a.jpg", "x" * 100, "x" * 101, "é" * 50, "é" * 51]:
        for size in [0, 1, 512, 8**11 - 1, 8**11]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o444, 0, 0
            info.uname = info.gname = ""
            assert member_header(name, size) == info.tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape")
