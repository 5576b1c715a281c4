"""Image folders: the four real datasets' counts, format sniffing, grey->RGB, bad and corrupt files."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_tools.readers import detect_format, open_reader
from data_tools.readers.image_folder import ImageFolder, sniff_image
from lafs_core.errors import DataError


@pytest.mark.parametrize(
    ("root", "images", "identities", "bad", "layout"),
    [
        ("lfw_deepfunneled/lfw-deepfunneled", 13233, 5749, 0, "folders"),
        ("extended_yale_b_cropped/CroppedYale", 2414, 38, 18, "folders"),
        ("att_faces/att_faces", 400, 40, 0, "folders"),
        ("yalefaces/yalefaces", 164, 15, 0, "flat"),
    ],
)
def test_real_dataset_counts(
    shared_datasets: Path, root: str, images: int, identities: int, bad: int, layout: str
) -> None:
    folder = ImageFolder(shared_datasets / root)
    assert (len(folder), len(folder.identities), len(folder.bad), folder.resolved_layout) == (
        images, identities, bad, layout,
    )  # fmt: skip
    assert folder.unreadable == []
    assert [item.label for item in folder.items] == sorted(item.label for item in folder.items)
    assert folder.identities == sorted(folder.identities)
    assert all(folder.identities[item.label] == item.identity for item in folder.items)


def test_yale_b_bad_files_are_reported_and_info_files_ignored(shared_datasets: Path) -> None:
    folder = ImageFolder(shared_datasets / "extended_yale_b_cropped/CroppedYale")
    assert all(b.file.endswith(".pgm.bad") and "marked bad" in b.reason for b in folder.bad)
    assert Counter(Path(b.file).parent.name for b in folder.bad)["yaleB12"] == 5
    assert len(folder.ignored) == 38 and all(f.endswith(".info") for f in folder.ignored)
    assert not any(item.key.endswith(".bad") for item in folder.items)


def test_yale_flat_extensionless_gifs_and_att_grey_pgm_decode_to_rgb(shared_datasets: Path) -> None:
    yale = ImageFolder(shared_datasets / "yalefaces/yalefaces")
    assert yale.identities == [f"subject{i:02d}" for i in range(1, 16)]
    assert yale.images_per_identity()[0] == 10  # subject01.centerlight is missing from this copy
    record = next(iter(yale))
    assert (record.key, record.identity, record.label) == ("subject01.glasses", "subject01", 0)
    assert record.image.shape == (243, 320, 3) and record.image.dtype == np.uint8
    assert np.array_equal(record.image[..., 0], record.image[..., 2])  # grey replicated
    att = ImageFolder(shared_datasets / "att_faces/att_faces")
    assert att.ignored == [str(shared_datasets / "att_faces/att_faces/README")]
    first = next(iter(att))
    assert (first.key, first.identity, first.image.shape) == ("s1/1.pgm", "s1", (112, 92, 3))
    pgm = cv2.imread(str(shared_datasets / "att_faces/att_faces/s1/1.pgm"), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(first.image[..., 1], pgm)


def _png(color_rgb: tuple[int, int, int]) -> bytes:
    image = np.zeros((10, 10, 3), np.uint8)
    image[:] = color_rgb[::-1]  # OpenCV writes BGR
    return cv2.imencode(".png", image)[1].tobytes()


def _mixed_tree(root: Path, yale_gif: Path) -> None:
    (root / "bob").mkdir(parents=True)
    (root / "alice" / "extra").mkdir(parents=True)
    (root / "alice" / "1.png").write_bytes(_png((250, 10, 10)))
    (root / "alice" / "extra" / "noext").write_bytes(_png((10, 250, 10)))
    shutil.copy(yale_gif, root / "alice" / "3.gif")
    cv2.imwrite(str(root / "bob" / "a.jpg"), np.full((12, 12, 3), 100, np.uint8))
    cv2.imwrite(str(root / "bob" / "b.pgm"), np.full((12, 12), 50, np.uint8))
    (root / "bob" / "README").write_text("not an image")
    (root / "bob" / "notes.txt").write_text("x")
    (root / "bob" / "c.pgm.bad").write_bytes(b"P5\n1 1\n255\n\0")
    (root / "bob" / "fake.jpg").write_bytes(b"hello, not a jpeg")
    (root / "bob" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    (root / "carol").mkdir()
    (root / "carol" / "info.txt").write_text("no images here")
    (root / "stray.png").write_bytes(_png((1, 2, 3)))


def test_mixed_tree_sniffing_bad_corrupt_and_labels(tmp_path: Path, shared_datasets: Path) -> None:
    _mixed_tree(tmp_path / "faces", shared_datasets / "yalefaces/yalefaces/subject01.happy")
    folder = open_reader(tmp_path / "faces")
    assert isinstance(folder, ImageFolder) and detect_format(tmp_path / "faces") == "image-folder"
    assert folder.identities == ["alice", "bob"]  # carol has no images
    assert [(i.key, i.label) for i in folder.items] == [
        ("alice/1.png", 0), ("alice/3.gif", 0), ("alice/extra/noext", 0),
        ("bob/a.jpg", 1), ("bob/b.pgm", 1), ("bob/broken.jpg", 1),
    ]  # fmt: skip
    assert [Path(b.file).name for b in folder.bad] == ["c.pgm.bad"]
    assert sorted(Path(f).name for f in folder.ignored) == ["README", "info.txt", "notes.txt"]
    listed = {Path(u.file).name: u.reason for u in folder.unreadable}
    assert listed == {
        "stray.png": "image outside an identity folder",
        "fake.jpg": "has a .jpg name but its content is not an image",
    }
    records = {r.key: r for r in folder}
    assert sorted(records) == ["alice/1.png", "alice/3.gif", "alice/extra/noext", "bob/a.jpg", "bob/b.pgm"]
    assert records["alice/1.png"].image[0, 0].tolist() == [250, 10, 10]  # RGB, not BGR
    assert records["alice/extra/noext"].image[0, 0].tolist() == [10, 250, 10]
    assert records["bob/b.pgm"].image.shape == (12, 12, 3)
    assert folder.unreadable[-1].file.endswith("broken.jpg") and "does not decode" in folder.unreadable[-1].reason


def test_trusting_suffixes_lists_without_reading_and_fails_at_decode(tmp_path: Path, shared_datasets: Path) -> None:
    _mixed_tree(tmp_path / "faces", shared_datasets / "yalefaces/yalefaces/subject01.happy")
    folder = ImageFolder(tmp_path / "faces", sniff=False)
    keys = [i.key for i in folder.items]
    assert "bob/fake.jpg" in keys and "alice/extra/noext" in keys  # suffix trusted; no suffix still sniffed
    assert [Path(u.file).name for u in folder.unreadable] == ["stray.png"]
    decoded = {r.key for r in folder}
    assert "bob/fake.jpg" not in decoded
    assert {Path(u.file).name for u in folder.unreadable} == {"stray.png", "fake.jpg", "broken.jpg"}


def test_flat_layout_option_and_identity_regex(tmp_path: Path) -> None:
    for name in ("p1_a.png", "p1_b.png", "p2_a.png"):
        (tmp_path / name).write_bytes(_png((5, 5, 5)))
    by_prefix = ImageFolder(tmp_path)
    assert by_prefix.resolved_layout == "flat" and by_prefix.identities == ["p1_a", "p1_b", "p2_a"]
    by_regex = ImageFolder(tmp_path, layout="flat", identity_regex=r"^(p\d+)_")
    assert by_regex.identities == ["p1", "p2"] and by_regex.images_per_identity() == [2, 1]
    with pytest.raises(DataError, match="no images found"):
        ImageFolder(tmp_path, layout="folders")
    with pytest.raises(DataError, match="unknown layout"):
        ImageFolder(tmp_path, layout="tree")  # type: ignore[arg-type]


def test_sniff_image_magic_bytes() -> None:
    assert sniff_image(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "jpeg"
    assert sniff_image(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_image(b"GIF89a\x40\x01") == "gif"
    assert sniff_image(b"P5\n92 112\n255\n") == "pnm"
    assert sniff_image(b"P5x") is None
    assert sniff_image(b"This directory contains") is None


def test_links_that_would_list_images_twice_or_never_end_are_skipped(shared_datasets: Path, tmp_path: Path) -> None:
    root = tmp_path / "faces"
    for person in ("s1", "s2"):
        shutil.copytree(shared_datasets / "att_faces" / "att_faces" / person, root / person)
    (root / "self").symlink_to(".")
    (root / "parent").symlink_to("..")
    (root / "alias").symlink_to("s1")
    (root / "loop").symlink_to("loop")
    (root / "s3").symlink_to(shared_datasets / "att_faces" / "att_faces" / "s3")
    folder = ImageFolder(root)
    assert (len(folder), folder.identities) == (30, ["s1", "s2", "s3"])
    reasons = {Path(u.file).name: u.reason for u in folder.unreadable}
    assert set(reasons) == {"self", "parent", "alias", "loop"}
    assert "holds this folder" in reasons["self"] and "holds this folder" in reasons["parent"]
    assert "listed already" in reasons["alias"] and "Too many levels of symbolic links" in reasons["loop"]
