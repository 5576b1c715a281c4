"""ONNX export of the served face model (:mod:`lafs_core.eval.serving`) with a free batch size, and its check.

torch's dynamo exporter (``onnxscript``) writes the whole forward into one graph: normalisation, the landmark CNN and
its min-max, the patch sampler (``GridSample``), the ViT, the flip-sum and the L2 normalisation. The check runs the
file in onnxruntime and compares it with the torch model on the same images. Needs the ``export`` extra (``onnx``,
``onnxruntime``, ``onnxscript``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lafs_core.errors import ConfigError
from lafs_core.eval.serving import INPUT_NAME, OUTPUT_NAME, embedding_model

INSTALL_HINT = (
    "ONNX export needs the optional 'export' extra: pip install 'lafs[export]' (onnx, onnxruntime, onnxscript)"
)
INPUT_DOC = "images: float32 (B, 3, H, W) RGB 0..255, aligned faces; embedding: float32 (B, dim), unit L2, flip-sum"


def _require_export_packages() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def export_onnx(face: nn.Module, path: str | Path, image_size: int = 112, meta: dict[str, Any] | None = None) -> Path:
    """Write the served model of ``face`` to ``path`` (dynamic batch); ``meta`` goes into the file's metadata."""
    _require_export_packages()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = embedding_model(face)
    example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 255
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    proto = onnx.load(str(tmp))
    props = {"lafs.io": INPUT_DOC, "lafs.meta": json.dumps(meta or {}, default=str)}
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def onnx_embeddings(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Embeddings of float32 ``(B, 3, H, W)`` 0..255 images by the ONNX file, in onnxruntime on the CPU."""
    _require_export_packages()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]


def torch_embeddings(face: nn.Module, images: np.ndarray) -> np.ndarray:
    """The same embeddings from the torch model (float32, CPU)."""
    with torch.inference_mode():
        return embedding_model(face)(torch.from_numpy(np.asarray(images, dtype=np.float32))).numpy()


def check_onnx(path: str | Path, face: nn.Module, images: np.ndarray) -> float:
    """Max absolute difference between the ONNX file's and the torch model's embeddings of ``images``."""
    return float(np.abs(onnx_embeddings(path, images) - torch_embeddings(face, images)).max())


def check_images(batch_sizes: tuple[int, ...] = (1, 5), image_size: int = 112, seed: int = 0) -> list[np.ndarray]:
    """Seeded random 0..255 image batches of the given sizes (different sizes exercise the free batch dimension)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (b, 3, image_size, image_size)).astype(np.float32) for b in batch_sizes]
