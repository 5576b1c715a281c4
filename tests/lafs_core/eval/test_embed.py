"""Flip-sum embeddings: the formula, flip invariance, skipped images and the model's train/eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafs_core.config import load_config
from lafs_core.config.loader import StageConfig
from lafs_core.data.normalize import normalize
from lafs_core.eval.embed import embed_source
from lafs_core.models.build import build_face_model


class ArraySource:
    """Images in memory; indices listed in ``broken`` are unreadable."""

    def __init__(self, images: np.ndarray, broken: tuple[int, ...] = ()) -> None:
        self.images, self.broken = images, set(broken)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> np.ndarray | None:
        return None if index in self.broken else self.images[index]


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_face_model(load_config(StageConfig, preset="tiny").model)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(7, 112, 112, 3), dtype=np.uint8)


def test_embeddings_are_normalised_flip_sums(tiny_model, faces):
    emb = embed_source(tiny_model, ArraySource(faces), batch_size=3)
    x = normalize(torch.from_numpy(faces).permute(0, 3, 1, 2))
    with torch.no_grad():
        tiny_model.eval()
        ref = (tiny_model(x) + tiny_model(torch.flip(x, dims=[3]))).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(emb.features, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb.features, axis=1), 1.0, atol=1e-5)
    assert emb.valid.all()


def test_flip_sum_makes_embeddings_mirror_invariant(tiny_model, faces):
    mirrored = np.ascontiguousarray(faces[:, :, ::-1])
    a = embed_source(tiny_model, ArraySource(faces), batch_size=4).features
    b = embed_source(tiny_model, ArraySource(mirrored), batch_size=4).features
    np.testing.assert_allclose(a, b, atol=1e-5)
    # ...while the single-view embedding is not mirror invariant (so the check above is not vacuous).
    with torch.no_grad():
        single = tiny_model(normalize(torch.from_numpy(faces[:1]).permute(0, 3, 1, 2)))
        single_m = tiny_model(normalize(torch.from_numpy(mirrored[:1]).permute(0, 3, 1, 2)))
    assert not torch.allclose(single, single_m, atol=1e-3)


def test_unreadable_images_are_skipped_and_mode_restored(tiny_model, faces):
    tiny_model.train()
    emb = embed_source(tiny_model, ArraySource(faces, broken=(2, 5)), batch_size=4, l2_normalize=False)
    assert tiny_model.training
    assert emb.skipped == 2 and emb.valid.tolist() == [True, True, False, True, True, False, True]
    assert np.all(emb.features[[2, 5]] == 0)
    full = embed_source(tiny_model, ArraySource(faces), batch_size=4, l2_normalize=False)
    np.testing.assert_allclose(emb.features[emb.valid], full.features[emb.valid], atol=1e-5)
    assert np.all(np.linalg.norm(full.features, axis=1) > 0)
