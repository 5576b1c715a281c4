"""Configuration of the shard writer (`lafs data shards`): alignment, landmark source, shard layout."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from lafs_core.config.loader import StageConfig


class ShardsConfig(StageConfig):
    """How a face source becomes WebDataset shards with precomputed landmarks (``seed`` drives the identity shuffle)."""

    section: ClassVar[str] = "shards"

    landmarks: str = Field("grid", description="landmark source: 'grid', 'cnn:PATH' or 'mediapipe'")
    align: Literal["lfw-deepfunneled", "none", "five-point", "detect"] = Field(
        "none",
        description="alignment to the 112x112 face: LFW fixed crop, none (resize only), 5-point similarity, "
        "or detect (dlib face detector + 5 points, the 'detect' extra)",
    )
    shard_size: int = Field(1000, ge=1, description="samples per shard (the last shard may hold fewer)")
    max_inputs: int | None = Field(None, ge=1, description="keep a seeded sample of at most N inputs (null: all)")
    batch_size: int = Field(64, ge=1, description="images per landmark-model forward pass")
    workers: int = Field(2, ge=1, description="processes that decode, align and JPEG-encode beside inference")
    jpeg_quality: int = Field(95, ge=50, le=100, description="fixed JPEG quality (part of the determinism contract)")
