"""1:N identification: the gallery/probe split, rank-k and TPIR@FPIR by hand and on AT&T pixels; the CLI."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from data_tools.faces import open_faces
from lafs_cli.main import app
from lafs_core.config import load_config
from lafs_core.config.loader import StageConfig
from lafs_core.eval.identification import GalleryProbeSplit, identify, split_gallery_probe
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import save_model_checkpoint


def test_split_is_seeded_disjoint_and_keeps_unenrolled_identities_out_of_the_gallery() -> None:
    labels = np.r_[np.repeat(np.arange(10), 4), [-1, -1]]
    split = split_gallery_probe(labels, gallery_per_identity=2, unenrolled_fraction=0.3, seed=3)
    parts = [split.gallery, split.mated, split.non_mated]
    assert sorted(np.concatenate(parts).tolist()) == list(range(40))  # every labelled image once, no -1
    enrolled, unenrolled = set(labels[split.gallery]), set(labels[split.non_mated])
    assert len(unenrolled) == 3 and not enrolled & unenrolled and set(labels[split.mated]) == enrolled
    assert np.bincount(labels[split.gallery]).max() == 2 and split.mated.size == 7 * 2
    again = split_gallery_probe(labels, 2, 0.3, seed=3)
    other = split_gallery_probe(labels, 2, 0.3, seed=4)
    assert np.array_equal(again.gallery, split.gallery)
    assert not np.array_equal(other.gallery, split.gallery)


def test_rank_and_tpir_at_fpir_match_a_hand_count() -> None:
    # identities 0, 1, 2 along the axes; one gallery image each (indices 0-2)
    eye = np.eye(4)
    mated = [eye[0] + 0.1 * eye[3], eye[1] + 0.5 * eye[3], eye[2] + 2.0 * eye[3], 0.9 * eye[1] + eye[0]]
    mated_labels = [0, 1, 2, 1]  # the last one is closer to identity 0: rank 2
    # ten non-mated probes (identity 3) whose best cosine to a template falls from 0.95 to 0.05
    best = np.linspace(0.95, 0.05, 10)
    non_mated = [b * eye[0] + np.sqrt(1 - b**2) * eye[3] for b in best]
    features = np.stack([eye[0], eye[1], eye[2], *mated, *non_mated])
    labels = np.r_[[0, 1, 2], mated_labels, np.full(10, 3)]
    split = GalleryProbeSplit(np.arange(3), np.arange(3, 7), np.arange(7, 17))
    result = identify(features, labels, split, ranks=(1, 2), fpirs=(0.1, 0.3))
    assert result.cmc == {1: 0.75, 2: 1.0}
    own = np.array([1 / np.sqrt(1.01), 1 / np.sqrt(1.25), 1 / np.sqrt(5.0)])  # cosines of the 3 rank-1 probes
    assert result.thresholds[0.1] == pytest.approx(best[1]) and result.fpir_reached[0.1] == pytest.approx(0.1)
    assert result.tpir[0.1] == pytest.approx((own > best[1]).sum() / 4)  # 0.995, 0.894 > 0.85; 0.447 is not
    assert result.thresholds[0.3] == pytest.approx(best[3]) and result.tpir[0.3] == pytest.approx(2 / 4)
    assert (result.gallery_identities, result.mated_probes, result.non_mated_probes) == (3, 4, 10)


def test_pixels_identify_att_faces_far_above_chance(shared_datasets) -> None:
    faces = open_faces(shared_datasets / "att_faces/att_faces")
    small = [cv2.resize(faces.load(i)[..., 0], (23, 28), interpolation=cv2.INTER_AREA) for i in range(len(faces))]
    pixels = np.stack(small).reshape(len(faces), -1).astype(float)
    pixels -= pixels.mean(0)
    labels = np.array([e.label for e in faces.entries])
    one = identify(pixels, labels, split_gallery_probe(labels, 1, 0.2, 0))
    three = identify(pixels, labels, split_gallery_probe(labels, 3, 0.2, 0))
    random_labels = np.random.default_rng(0).permutation(labels)
    shuffled = identify(pixels, random_labels, split_gallery_probe(random_labels, 1, 0.2, 0))
    assert one.rank1 > 0.6 and three.rank1 > one.rank1 and shuffled.rank1 < 0.15  # chance: 1/32
    assert one.cmc[5] >= one.rank1 and 0.0 < one.tpir[0.1] <= one.rank1
    assert (one.gallery_identities, one.mated_probes, one.non_mated_probes) == (32, 288, 80)


def test_cli_identify_writes_the_report_and_logs_mlflow_metrics(tmp_path, mlflow_store) -> None:
    torch.manual_seed(0)
    model = build_face_model(load_config(StageConfig, preset="tiny").model, with_landmark_cnn=False)
    checkpoint = save_model_checkpoint(tmp_path / "tiny.pt", model, "tiny", "test")
    out = tmp_path / "att_identify.json"
    experiment = os.environ["MLFLOW_EXPERIMENT_NAME"]
    args = ["eval", "identify", "--model", str(checkpoint), "--data", "att", "--json", str(out), "--fpir", "0.05",
            "--rank", "1", "--rank", "10", "--device", "cpu", "--mlflow", "--experiment", experiment]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["images"], report["images_skipped"], report["mated_probes"]) == (400, 0, 288)
    assert set(report["cmc"]) == {"1", "10"} and report["cmc"]["10"] >= report["rank_1"]
    assert set(report["tpir_at_fpir"]) == {"0.05"} and report["fpir_reached"]["0.05"] <= 0.05
    assert f"rank-1 {report['rank_1'] * 100:.2f} %" in result.output
    (run,) = mlflow_store.search_runs([mlflow_store.get_experiment_by_name(experiment).experiment_id])
    assert run.data.metrics["att/rank_1"] == pytest.approx(report["rank_1"])
    assert "att/tpir_at_fpir_0.05" in run.data.metrics
