"""Reading pair sets: .bin round trip to accuracy, LFW View 1 / View 2 fold structure, labelled folders, missing and
unusable images."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from data_tools.pairsets import FileImages, load_pair_set, resize_center_crop
from data_tools.readers.verification_bin import write_verification_bin
from lafs_core.config import load_config
from lafs_core.config.loader import StageConfig
from lafs_core.env import shared_datasets
from lafs_core.errors import DataError
from lafs_core.eval.verify import verify
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import save_model_checkpoint

LFW = shared_datasets() / "lfw_deepfunneled"
ATT = shared_datasets() / "att_faces" / "att_faces"


class PixelModel(nn.Module):
    """A real (fixed, random) linear embedding of 16x16-pooled pixels: similar images get similar embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(16)
        self.proj = nn.Linear(3 * 16 * 16, 64, bias=False)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x).flatten(1))


def synthetic_pairs(n_pairs: int, seed: int = 0):
    """Same pairs: an image and a noisy copy; different pairs: two unrelated images (RGB 112x112)."""
    rng = np.random.default_rng(seed)

    def smooth() -> np.ndarray:
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        return cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR).astype(np.float64)

    images, issame = [], []
    for i in range(n_pairs):
        a = smooth()
        same = i % 2 == 0
        b = a + rng.normal(0, 20, a.shape) if same else smooth()
        images += [a.astype(np.uint8), np.clip(b, 0, 255).astype(np.uint8)]
        issame.append(same)
    return images, issame


def test_bin_round_trip_through_restricted_reader_to_accuracy(tmp_path):
    images, issame = synthetic_pairs(60)
    path = tmp_path / "synthetic.bin"
    write_verification_bin(path, images, issame)
    pair_set = load_pair_set(path)
    assert (len(pair_set), len(pair_set.images), pair_set.fold_rule) == (60, 120, "contiguous")
    assert pair_set.issame.tolist() == issame
    # Decoded images are the written ones up to JPEG loss.
    assert np.abs(pair_set.images.load(3).astype(int) - images[3].astype(int)).mean() < 8
    verified = verify(PixelModel(), pair_set, batch_size=32)
    assert verified.result.pairs == 60 and verified.result.folds == 10
    assert verified.result.accuracy_mean > 0.95 and verified.result.auc > 0.99
    # Swapped labels invert the ROC: the pairs really are image 2i vs 2i+1 with flag i.
    write_verification_bin(path, images, [not s for s in issame])
    swapped = verify(PixelModel(), load_pair_set(path), batch_size=32).result
    assert swapped.auc < 0.01 and swapped.accuracy_mean <= 0.55


def test_malicious_bin_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], [Evil()])))
    with pytest.raises(DataError, match=r"evil\.bin"):
        load_pair_set(path)


def test_lfw_view2_has_its_own_ten_folds():
    pair_set = load_pair_set("lfw-v2")
    assert len(pair_set) == 6000 and pair_set.name == "lfw-v2"
    for fold in range(10):
        in_fold = pair_set.folds == fold
        assert np.flatnonzero(in_fold).tolist() == list(range(600 * fold, 600 * fold + 600))
        assert pair_set.issame[in_fold].sum() == 300
    assert len(pair_set.images) == len(np.unique(pair_set.pairs))  # each distinct image once


def test_lfw_view1_is_stratified_and_aligned_to_112():
    pair_set = load_pair_set(LFW / "pairsDevTest.txt", LFW / "lfw-deepfunneled")
    assert len(pair_set) == 1000 and pair_set.fold_rule == "stratified"
    assert all(pair_set.issame[pair_set.folds == f].sum() == 50 for f in range(10))
    image = pair_set.images.load(0)
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    with pytest.raises(DataError, match="pair source not found"):
        load_pair_set(LFW / "no_such_pairs.txt")


def test_labelled_folder_pairs_on_att_verified_from_a_training_model():
    pair_set = load_pair_set(ATT, seed=0)
    assert len(pair_set) == 3600 and pair_set.fold_rule.startswith("stratified")
    image = pair_set.images.load(0)  # 92x112 grey PGM -> 112x112 RGB
    assert image.shape == (112, 112, 3) and np.array_equal(image[..., 0], image[..., 1])
    small = load_pair_set(ATT, seed=0, max_same=100).cached()
    model = PixelModel().train()
    metrics = verify(model, small, batch_size=64, metric="cosine").metrics()
    assert model.training
    assert set(metrics) >= {"att_faces/acc", "att_faces/acc_std", "att_faces/auc", "att_faces/tar_at_far_1e-2"}
    assert 0.6 < metrics["att_faces/acc"] <= 1.0  # raw pixels separate AT&T identities well above chance


def test_resize_center_crop_keeps_the_centre():
    image = np.zeros((224, 300, 3), np.uint8)
    image[:, 150:] = 255
    out = resize_center_crop(image)
    assert out.shape == (112, 112, 3)
    assert out[:, :50].max() == 0 and out[:, 62:].min() == 255


def small_lfw_view1(root: Path) -> tuple[Path, Path, list[tuple[str, str]]]:
    """A 10-fold View-1 style pair file (10 same + 10 different pairs, one of each per fold) over a copy of the
    LFW images it names; returns (pair file, image root, the two image paths of each pair in file order)."""
    people = [p.name for p in sorted((LFW / "lfw-deepfunneled").iterdir()) if (p / f"{p.name}_0002.jpg").is_file()]
    same, diff = people[:10], people[10:30]
    couples = list(zip(diff[::2], diff[1::2], strict=True))
    lines = ["10"] + [f"{n}\t1\t2" for n in same] + [f"{a}\t1\t{b}\t1" for a, b in couples]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    images = root / "images"
    pairs = [(f"{n}/{n}_0001.jpg", f"{n}/{n}_0002.jpg") for n in same]
    pairs += [(f"{a}/{a}_0001.jpg", f"{b}/{b}_0001.jpg") for a, b in couples]
    for rel in {rel for pair in pairs for rel in pair}:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LFW / "lfw-deepfunneled" / rel, images / rel)
    return root / "pairs.txt", images, pairs


def test_missing_images_that_empty_a_fold_or_the_set_are_refused(tmp_path):
    pairs_file, images, pairs = small_lfw_view1(tmp_path)
    full = load_pair_set(pairs_file, images)
    assert verify(PixelModel(), full, batch_size=40).result.folds == 10
    for rel in (*pairs[3], *pairs[13]):  # fold 3: its same pair (row 3) and its different pair (row 13)
        (images / rel).unlink()
    with pytest.raises(DataError, match=rf"{pairs_file}: 4 of its 40 images are missing: fold 3 of 10 has no pairs"):
        load_pair_set(pairs_file, images)
    for rel in pairs[13]:
        (images / rel).parent.mkdir(exist_ok=True)
        shutil.copy(LFW / "lfw-deepfunneled" / rel, images / rel)
    kept = verify(PixelModel(), load_pair_set(pairs_file, images), batch_size=40)
    assert (kept.result.folds, kept.result.pairs, kept.pairs_skipped) == (10, 19, 1)
    shutil.rmtree(images)
    images.mkdir()
    with pytest.raises(DataError, match="40 of its 40 images are missing: no pairs left to evaluate"):
        load_pair_set(pairs_file, images)


def test_pair_file_with_all_images_missing_is_one_line_exit_2(tmp_path):
    pairs_file, images, _ = small_lfw_view1(tmp_path)
    shutil.rmtree(images)
    images.mkdir()
    torch.manual_seed(0)
    model = build_face_model(load_config(StageConfig, preset="tiny").model, with_landmark_cnn=False)
    checkpoint = save_model_checkpoint(tmp_path / "tiny.pt", model, "tiny", "test")
    code = "from lafs_cli.main import main; main()"
    args = ["eval", "verify", "--model", str(checkpoint), "--pairs", str(pairs_file), "--images", str(images)]
    env = {**os.environ, "COLUMNS": "1000"}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {pairs_file}: 40 of its 40 images are missing: no pairs left to evaluate "
        "(every pair has an unreadable image)"
    ]


def test_an_image_the_fixed_crop_cannot_take_is_skipped_not_fatal(tmp_path):
    cv2.imwrite(str(tmp_path / "small.jpg"), np.full((100, 80, 3), 128, np.uint8))
    images = FileImages([tmp_path / "small.jpg", LFW / "lfw-deepfunneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"],
                        "lfw-deepfunneled")  # fmt: skip
    assert images.load(0) is None and images.load(1).shape == (112, 112, 3)
