"""``lafs export --onnx``: one graph with the landmark CNN and the sampler, a free batch size, torch's numbers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from data_tools.faces import open_faces
from lafs_cli.main import app
from lafs_core.config import load_config
from lafs_core.config.loader import StageConfig
from lafs_core.eval.embed import embed_source
from lafs_core.eval.onnx_export import onnx_embeddings
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import load_face_model, save_model_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(checkpoint, ONNX file, CLI output) of a random tiny model with its landmark CNN."""
    torch.manual_seed(0)
    model = build_face_model(load_config(StageConfig, preset="tiny").model, with_landmark_cnn=True)
    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = save_model_checkpoint(folder / "tiny.pt", model, "tiny", "test")
    result = CliRunner().invoke(app, ["export", "--model", str(checkpoint), "--onnx", str(folder / "tiny.onnx")])
    assert result.exit_code == 0, result.output
    return checkpoint, folder / "tiny.onnx", result.output


def test_cli_prints_the_checked_difference(exported) -> None:
    _, path, output = exported
    diff = float(re.search(r"max abs diff ([0-9.e+-]+)", output).group(1))
    assert path.is_file() and diff <= 1e-4


def test_graph_holds_landmark_cnn_and_sampler_with_a_free_batch(exported) -> None:
    proto = onnx.load(str(exported[1]))
    ops = {node.op_type for node in proto.graph.node}
    assert {"Conv", "HardSwish", "GridSample", "ReduceMin", "ReduceMax"} <= ops  # CNN, min-max, patch sampler
    (graph_input,) = proto.graph.input
    batch = graph_input.type.tensor_type.shape.dim[0]
    assert graph_input.name == "images" and batch.dim_param and not batch.dim_value
    assert {p.key for p in proto.metadata_props} == {"lafs.io", "lafs.meta"}


def test_onnxruntime_equals_torch_embeddings_of_real_faces(exported, shared_datasets: Path) -> None:
    checkpoint, path, _ = exported
    faces = open_faces(shared_datasets / "att_faces/att_faces/s3")
    face = load_face_model(checkpoint).eval()
    reference = embed_source(face, faces, batch_size=4).features  # the torch path of `lafs embed`
    images = np.stack([faces.load(i) for i in range(len(faces))]).transpose(0, 3, 1, 2).astype(np.float32)
    whole = onnx_embeddings(path, images[:7])
    one = onnx_embeddings(path, images[7:8])
    diff = np.abs(np.concatenate([whole, one]) - reference[:8]).max()
    print(f"ONNX vs torch on {len(faces)} AT&T faces: max abs diff {diff:.2e}")
    assert whole.shape == (7, 96) and diff <= 1e-4
