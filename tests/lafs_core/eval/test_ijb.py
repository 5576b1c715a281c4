"""IJB template protocol: pooling formula, streaming equivalence, and a synthetic IJB-layout tree end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_tools.align import ARCFACE_TEMPLATE
from data_tools.readers.ijb import IjbImages, open_ijb
from lafs_core.config import load_config
from lafs_core.config.loader import StageConfig
from lafs_core.eval.embed import embed_source
from lafs_core.eval.ijb import TemplatePooler, evaluate_ijb, pool_templates, template_features
from lafs_core.eval.roc import IJB_FARS
from lafs_core.models.build import build_face_model


def formula_templates(features, templates, medias):
    """method.md 10.2 with loops: mean over each media's images, sum over media, L2-normalise."""
    out = {}
    for t in sorted(set(templates.tolist())):
        in_t = templates == t
        total = 0.0
        for m in sorted(set(medias[in_t].tolist())):
            total = total + features[in_t & (medias == m)].mean(axis=0)
        out[t] = total / np.linalg.norm(total)
    return out


def test_pooling_matches_formula_and_streaming_is_order_free():
    rng = np.random.default_rng(0)
    n = 300
    templates = rng.integers(100, 130, size=n)
    medias = rng.integers(0, 6, size=n)  # media ids repeat across templates: groups are (template, media)
    features = rng.normal(size=(n, 24)).astype(np.float32)
    ids, pooled = pool_templates(features, templates, medias)
    ref = formula_templates(features.astype(np.float64), templates, medias)
    assert ids.tolist() == sorted(ref)
    np.testing.assert_allclose(pooled, np.stack([ref[t] for t in ids]), atol=1e-5)
    pooler = TemplatePooler(templates, medias)
    order = rng.permutation(n)
    for chunk in np.array_split(order, 7):
        pooler.add(chunk, features[chunk])
    np.testing.assert_allclose(pooler.finish()[1], pooled, atol=1e-5)


def _face(rng: np.random.Generator) -> np.ndarray:
    """A smooth random 112x112 RGB pattern: one synthetic identity."""
    small = rng.integers(0, 256, size=(7, 7, 3), dtype=np.uint8)
    return cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)


def build_ijb_tree(root: Path, subjects: int = 5, seed: int = 0) -> dict:
    """loose_crop/ JPEGs (each identity's face pasted with a random similarity) + the three meta files."""
    rng = np.random.default_rng(seed)
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    faces = [_face(rng) for _ in range(subjects)]
    lines_5pts, lines_tid, subject_of = [], [], {}
    image_no, tid = 0, 0
    for s in range(subjects):
        for _ in range(2):  # two templates per subject
            tid += 1
            subject_of[tid] = s
            for mid in rng.choice(1000, size=rng.integers(1, 4), replace=False):
                for _ in range(rng.integers(1, 3)):
                    image_no += 1
                    scale, angle = rng.uniform(1.1, 1.5), rng.uniform(-15, 15)
                    m = cv2.getRotationMatrix2D((56, 56), angle, scale)
                    m[:, 2] += rng.uniform(10, 40, size=2)
                    noisy = np.clip(faces[s] + rng.normal(0, 3, faces[s].shape), 0, 255).astype(np.uint8)
                    crop = cv2.warpAffine(noisy, m, (200, 200), borderValue=(0, 0, 0))
                    points = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
                    name = f"{image_no}.jpg"
                    cv2.imwrite(str(root / "loose_crop" / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                    coords = " ".join(f"{v:.3f}" for v in points.ravel())
                    lines_5pts.append(f"{name} {coords} {rng.uniform(0.5, 1.0):.4f}")
                    lines_tid.append(f"{name} {tid} {mid}")
    pairs = [(a, b, int(subject_of[a] == subject_of[b])) for a in range(1, tid + 1) for b in range(a + 1, tid + 1)]
    (root / "meta" / "ijbb_name_5pts_score.txt").write_text("\n".join(lines_5pts) + "\n")
    (root / "meta" / "ijbb_face_tid_mid.txt").write_text("\n".join(lines_tid) + "\n")
    (root / "meta" / "ijbb_template_pair_label.txt").write_text("\n".join(f"{a} {b} {y}" for a, b, y in pairs) + "\n")
    return {"images": image_no, "templates": tid, "pairs": len(pairs)}


@pytest.fixture(scope="module")
def ijb_tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ijb") / "IJBB"
    return root, build_ijb_tree(root)


@pytest.fixture(scope="module")
def grid_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_face_model(load_config(StageConfig, preset="tiny").model, with_landmark_cnn=False).eval()


@pytest.mark.parametrize(("norm_score", "detector_score"), [(True, True), (False, False)])
def test_template_features_on_tree_match_formula(ijb_tree, grid_model, norm_score, detector_score):
    root, _ = ijb_tree
    _, meta, faces = open_ijb(root, "ijbb")
    ids, feats, skipped = template_features(grid_model, meta, faces, batch_size=8, use_norm_score=norm_score,
                                            use_detector_score=detector_score)  # fmt: skip
    assert skipped == 0
    raw = embed_source(grid_model, IjbImages(meta), batch_size=8, l2_normalize=False).features.astype(np.float64)
    if not norm_score:
        raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    if detector_score:
        raw *= meta.scores[:, None]
    ref = formula_templates(raw, meta.templates, meta.medias)
    np.testing.assert_allclose(feats, np.stack([ref[t] for t in ids]), atol=1e-5)


def test_evaluate_ijb_end_to_end_and_skips_missing_images(ijb_tree, grid_model, tmp_path):
    root, counts = ijb_tree
    result = evaluate_ijb(grid_model, *open_ijb(root), batch_size=16)
    assert (result.name, result.pairs, result.templates, result.images) == (
        "ijbb", counts["pairs"], counts["templates"], counts["images"])  # fmt: skip
    assert list(result.tar) == list(IJB_FARS)
    # Alignment undoes each image's random similarity, so same-subject templates score highest.
    assert result.auc > 0.95
    broken = tmp_path / "IJBB"
    build_ijb_tree(broken)
    (broken / "loose_crop" / "1.jpg").unlink()
    assert evaluate_ijb(grid_model, *open_ijb(broken), batch_size=16).images_skipped == 1


def test_ijb_command_writes_report(ijb_tree, grid_model, tmp_path):
    import json

    from typer.testing import CliRunner

    from lafs_cli.main import app
    from lafs_core.models.checkpoint import save_model_checkpoint

    root, counts = ijb_tree
    ckpt = save_model_checkpoint(tmp_path / "grid.pt", grid_model, "tiny", "test")
    out = tmp_path / "ijbb.json"
    args = ["eval", "ijb", "--model", str(ckpt), "--root", str(root), "--json", str(out), "--tar-rule", "nearest",
            "--no-detector-score", "--device", "cpu", "--batch-size", "16"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["set"], report["pairs"], report["templates"]) == ("ijbb", counts["pairs"], counts["templates"])
    assert list(report["tar_at_far"]) == ["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1"]
    assert report["tar_rule"] == "nearest" and report["detector_score"] is False
    assert out.with_suffix(".png").is_file() and "TAR (%) at FAR" in result.output
