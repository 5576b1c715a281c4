"""The MLflow model of a trained face model: the served embedding model with an input/output signature.

What ``mlflow models serve`` then answers (see :mod:`lafs_core.eval.serving`): ``POST /invocations`` with
``{"inputs": <(B, 3, 112, 112) nested list of RGB pixel values 0..255>}`` returns ``{"predictions": <(B, dim)
unit-norm flip-sum embeddings>}``, the same vectors as ``lafs embed``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from lafs_core.eval.serving import embedding_model

log = logging.getLogger(__name__)


def embedding_signature(image_size: int, dim: int) -> object:
    """Tensor signature: float32 ``(-1, 3, S, S)`` in, float32 ``(-1, dim)`` out (``-1``: any batch size)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, image_size, image_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
    )


def log_face_model(face: nn.Module, image_size: int, registered_name: str) -> str:
    """Log the served model of ``face`` to the active MLflow run as ``model`` and register it as ``registered_name``.

    torch.export (``pt2``, a free batch dimension) is tried first, the pickle flavour second; returns the format that
    worked.
    """
    import mlflow

    model = embedding_model(face)
    example = np.random.default_rng(0).uniform(0, 255, (2, 3, image_size, image_size)).astype(np.float32)
    with torch.inference_mode():
        dim = int(model(torch.from_numpy(example)).shape[1])
    signature = embedding_signature(image_size, dim)
    for fmt in ("pt2", "pickle"):
        try:
            mlflow.pytorch.log_model(
                model,
                name="model",
                input_example=example,
                signature=signature,
                serialization_format=fmt,
                registered_model_name=registered_name,
            )
            return fmt
        except Exception as exc:  # torch.export failures come in many types: fall back to pickle
            if fmt == "pickle":
                raise
            log.warning("mlflow pt2 (torch.export) logging failed (%s); logging the pickle flavour", exc)
    return "pickle"
