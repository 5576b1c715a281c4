"""``lafs export --register``: the logged MLflow model's signature, and the real ``mlflow models serve`` answering
with torch's embeddings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from data_tools.faces import open_faces
from lafs_cli.main import app
from lafs_core.config import load_config
from lafs_core.config.loader import StageConfig
from lafs_core.eval.embed import embed_source
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import load_face_model, save_model_checkpoint

START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture
def served(mlflow_store, mlflow_uri: str, tmp_path: Path) -> Iterator[tuple]:
    """(face model, format, signature, URL) of a tiny model registered by ``lafs export`` and served on 127.0.0.1."""
    torch.manual_seed(0)
    model = build_face_model(load_config(StageConfig, preset="tiny").model, with_landmark_cnn=True)
    checkpoint = save_model_checkpoint(tmp_path / "tiny.pt", model, "tiny", "test")
    name = f"face-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(app, ["export", "--model", str(checkpoint), "--register", name, "--json"])
    assert result.exit_code == 0, result.output
    fmt = json.loads(result.stdout)["mlflow_format"]
    face = load_face_model(checkpoint).eval()
    signature = mlflow.models.get_model_info(f"models:/{name}/1").signature
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{name}/1",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    server = subprocess.Popen(
        command,
        # mlflow starts `uvicorn` by name: the environment's scripts must be on PATH even when it is not activated
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
                time.sleep(0.5)
        yield face, fmt, signature, url
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (uvicorn runs as a child); nothing to do if it has already exited."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def test_served_model_answers_with_the_torch_embeddings(served, shared_datasets: Path) -> None:
    face, fmt, signature, url = served
    assert fmt == "pt2"
    (inputs,), (outputs,) = signature.inputs.inputs, signature.outputs.inputs
    assert (inputs.type, inputs.shape) == (np.dtype(np.float32), (-1, 3, 112, 112))
    assert (outputs.type, outputs.shape) == (np.dtype(np.float32), (-1, 96))
    faces = open_faces(shared_datasets / "att_faces/att_faces/s4")
    reference = embed_source(face, faces, batch_size=4).features  # the torch path of `lafs embed`
    images = np.stack([faces.load(i) for i in range(3)]).transpose(0, 3, 1, 2).astype(np.float32)
    answer = np.array(_post(f"{url}/invocations", {"inputs": images.tolist()})["predictions"], dtype=np.float32)
    diff = np.abs(answer - reference[:3]).max()
    print(f"mlflow models serve vs torch on 3 AT&T faces: max abs diff {diff:.2e}")
    assert answer.shape == (3, 96) and diff <= 1e-4
