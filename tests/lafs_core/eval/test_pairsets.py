"""Pair sources: .bin round trip to accuracy, LFW View 1 / View 2 fold structure, balanced generated pairs."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from data_tools.readers.verification_bin import write_verification_bin
from lafs_core.env import shared_datasets
from lafs_core.errors import DataError
from lafs_core.eval.pairsets import balanced_pairs, load_pair_set, resize_center_crop
from lafs_core.eval.probe import probe_verification, verify_pair_set

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
    verified = verify_pair_set(PixelModel(), pair_set, batch_size=32)
    assert verified.result.pairs == 60 and verified.result.folds == 10
    assert verified.result.accuracy_mean > 0.95 and verified.result.auc > 0.99
    # Swapped labels invert the ROC: the pairs really are image 2i vs 2i+1 with flag i.
    write_verification_bin(path, images, [not s for s in issame])
    swapped = verify_pair_set(PixelModel(), load_pair_set(path), batch_size=32).result
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


def test_balanced_pairs_follow_protocol():
    labels = np.repeat(np.arange(40), 10)  # AT&T: 40 ids x 10
    pairs, issame = balanced_pairs(labels, seed=1)
    assert issame.sum() == 40 * 45 and (~issame).sum() == 40 * 45
    assert np.all(labels[pairs[issame, 0]] == labels[pairs[issame, 1]])
    assert np.all(labels[pairs[~issame, 0]] != labels[pairs[~issame, 1]])
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == len(pairs)
    again, _ = balanced_pairs(labels, seed=1)
    other, _ = balanced_pairs(labels, seed=2)
    assert np.array_equal(pairs, again) and not np.array_equal(pairs, other)
    big = np.repeat(np.arange(38), 64)  # Extended Yale B scale: same pairs capped at 3000
    _, big_same = balanced_pairs(big, seed=0)
    assert big_same.sum() == 3000 and (~big_same).sum() == 3000


def test_labelled_folder_pairs_on_att_and_in_training_probe():
    pair_set = load_pair_set(ATT, seed=0)
    assert len(pair_set) == 3600 and pair_set.fold_rule.startswith("stratified")
    image = pair_set.images.load(0)  # 92x112 grey PGM -> 112x112 RGB
    assert image.shape == (112, 112, 3) and np.array_equal(image[..., 0], image[..., 1])
    small = load_pair_set(ATT, seed=0, max_same=100).cached()
    model = PixelModel().train()
    metrics = probe_verification(model, small, batch_size=64)
    assert model.training
    assert set(metrics) >= {"att_faces/acc", "att_faces/acc_std", "att_faces/auc", "att_faces/tar_at_far_1e-2"}
    assert 0.6 < metrics["att_faces/acc"] <= 1.0  # raw pixels separate AT&T identities well above chance


def test_resize_center_crop_keeps_the_centre():
    image = np.zeros((224, 300, 3), np.uint8)
    image[:, 150:] = 255
    out = resize_center_crop(image)
    assert out.shape == (112, 112, 3)
    assert out[:, :50].max() == 0 and out[:, 62:].min() == 255
