"""Checkpoint import/export: our own format (with a ``meta`` header) and the official LAFS / Part fViT files.

Official names are mapped to ours through an explicit, two-way table of key templates (official_state_dict.md):
``stn.*`` / ``output_layer.*`` -> ``landmark_cnn.*``; the ViT keys -> ``backbone.*``; ``loss.weight`` ->
``margin.weight`` (the CosFace class matrix); the SSL checkpoint's ``teacher`` ``backbone.*`` / ``head.*`` ->
``backbone.*`` / ``dino_head.*``. Every ``torch.load`` uses ``weights_only=True``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lafs_core.checkpoint_io import atomic_torch_save, read_checkpoint
from lafs_core.config.model import ModelConfig
from lafs_core.errors import DataError
from lafs_core.models.build import build_face_model
from lafs_core.models.face_model import FaceModel
from lafs_core.models.landmark_cnn import LARGE_BLOCKS

FORMAT = "lafs-model"
FORMAT_VERSION = 1
CHANNEL_ORDER = "RGB"
FACE_MODEL_PARTS = ("backbone", "landmark_cnn")

# (official template, our template); {i} = integer index, {p} = weight|bias, {rest} = any suffix.
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("pos_embedding", "backbone.pos_embed"),
    ("cls_token", "backbone.cls_token"),
    ("patch_to_embedding.{p}", "backbone.patch_embed.{p}"),
    ("transformer.layers.{i}.0.fn.norm.{p}", "backbone.blocks.{i}.norm1.{p}"),
    ("transformer.layers.{i}.0.fn.fn.to_qkv.{p}", "backbone.blocks.{i}.attn.qkv.{p}"),
    ("transformer.layers.{i}.0.fn.fn.to_out.0.{p}", "backbone.blocks.{i}.attn.proj.{p}"),
    ("transformer.layers.{i}.1.fn.norm.{p}", "backbone.blocks.{i}.norm2.{p}"),
    ("transformer.layers.{i}.1.fn.fn.net.0.{p}", "backbone.blocks.{i}.mlp.fc1.{p}"),
    ("transformer.layers.{i}.1.fn.fn.net.3.{p}", "backbone.blocks.{i}.mlp.fc2.{p}"),
    ("mlp_head.0.{p}", "backbone.norm.{p}"),
    ("stn.features.{rest}", "landmark_cnn.features.{rest}"),
    ("output_layer.1.{p}", "landmark_cnn.output_layer.1.{p}"),
    ("loss.weight", "margin.weight"),
    ("head.mlp.{i}.{p}", "dino_head.mlp.{i}.{p}"),
    ("head.last_layer.weight_g", "dino_head.last_layer.parametrizations.weight.original0"),
    ("head.last_layer.weight_v", "dino_head.last_layer.parametrizations.weight.original1"),
)
_FIELDS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "rest": r"(?P<rest>.+)"}


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, regex in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), regex)
    return re.compile(pattern + r"\Z")


_TO_OURS = tuple((_compile(official), ours) for official, ours in KEY_MAP)
_TO_OFFICIAL = tuple((_compile(ours), official) for official, ours in KEY_MAP)


def _rename(key: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, target in table:
        if match := pattern.match(key):
            return target.format(**match.groupdict())
    return None


def official_to_ours(key: str) -> str | None:
    """Our name for an official key (prefixes already stripped), or None when it has no counterpart."""
    return _rename(key, _TO_OURS)


def ours_to_official(key: str) -> str | None:
    """The official name of one of our keys, or None."""
    return _rename(key, _TO_OFFICIAL)


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Remove ``prefix`` from every key that has it."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


@dataclass
class ConvertedState:
    """A checkpoint translated to our names (``backbone.``/``landmark_cnn.``/``margin.``/``dino_head.`` keys)."""

    kind: str
    state: dict[str, torch.Tensor]
    unmapped: list[str] = field(default_factory=list)
    meta: dict[str, Any] | None = None

    def part(self, name: str) -> dict[str, torch.Tensor]:
        """The keys of one part (``margin``, ``dino_head``, ...) without the part prefix."""
        prefix = name + "."
        return {k[len(prefix) :]: v for k, v in self.state.items() if k.startswith(prefix)}


@dataclass
class ImportReport:
    """What a load did: our keys left at their init (missing) and source keys nobody took (unexpected)."""

    kind: str
    missing: list[str]
    unexpected: list[str]


def _convert_official(state: Mapping[str, Any], kind: str) -> ConvertedState:
    converted: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in strip_prefix(state, "module.").items():
        ours = official_to_ours(key)
        if ours is None or not isinstance(value, torch.Tensor):
            unmapped.append(key)
        else:
            converted[ours] = value
    return ConvertedState(kind, converted, unmapped)


def convert_checkpoint(obj: Mapping[str, Any]) -> ConvertedState:
    """Translate any supported checkpoint object (already loaded) to our names.

    Supported: our format (``meta`` + ``model``), the LAFS SSL checkpoint (``teacher``), insightface-style dicts
    (``state_dict_backbone`` [+ ``state_dict_softmax_fc``]), ``state_dict``/``model`` wrappers and plain official
    Part fViT state dicts (with or without ``module.``).
    """
    meta = obj.get("meta")
    if isinstance(meta, Mapping) and meta.get("format") == FORMAT:
        state = dict(obj["model"])
        for part in ("margin", "dino_head"):
            state.update({f"{part}.{k}": v for k, v in (obj.get(part) or {}).items()})
        return ConvertedState("lafs", state, [], dict(meta))
    if isinstance(obj.get("teacher"), Mapping):
        teacher = strip_prefix(strip_prefix(obj["teacher"], "module."), "backbone.")
        return _convert_official(teacher, "lafs-ssl")
    if isinstance(obj.get("state_dict_backbone"), Mapping):
        state = dict(obj["state_dict_backbone"])
        fc = obj.get("state_dict_softmax_fc") or {}
        if "weight" in fc:
            state["loss.weight"] = fc["weight"]
        return _convert_official(state, "insightface")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            return _convert_official(obj[wrapper], "official")
    return _convert_official(obj, "official")


def infer_model_config(converted: ConvertedState) -> ModelConfig:
    """The ``ModelConfig`` of an official-format checkpoint, read off its tensor shapes (heads of 64 assumed)."""
    if converted.meta is not None:
        return ModelConfig.model_validate(converted.meta["model"])
    state = converted.state
    if "backbone.patch_embed.weight" not in state:
        raise ValueError("no Part fViT backbone keys (patch_to_embedding) in this checkpoint")
    dim, token_dim = state["backbone.patch_embed.weight"].shape
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("backbone.blocks."))
    inner = state["backbone.blocks.0.attn.qkv.weight"].shape[0] // 3
    dim_head = 64 if inner % 64 == 0 else inner
    fields: dict[str, Any] = {
        "dim": dim,
        "depth": depth,
        "dim_head": dim_head,
        "heads": inner // dim_head,
        "mlp_dim": state["backbone.blocks.0.mlp.fc1.weight"].shape[0],
        "patch_size": math.isqrt(token_dim // 3),
        "num_landmarks": state["backbone.pos_embed"].shape[1] - 1,
        "qkv_bias": "backbone.blocks.0.attn.qkv.bias" in state,
        "attn_scale": "dim",
        "sampler_convention": "official",
        "init": "official",
        "pos_embed_init": "random",
        "landmark_head_init": "default",
        "landmark_range": "image",
    }
    if "landmark_cnn.output_layer.1.weight" in state:
        fields["num_landmarks"] = state["landmark_cnn.output_layer.1.weight"].shape[0] // 2
        fields["landmark_width"] = state["landmark_cnn.output_layer.1.weight"].shape[1] / LARGE_BLOCKS[-1][2]
    if "dino_head.mlp.0.weight" in state:
        fields["dino_hidden_dim"] = state["dino_head.mlp.0.weight"].shape[0]
        fields["dino_out_dim"] = state["dino_head.last_layer.parametrizations.weight.original1"].shape[0]
        fields["dino_bottleneck_dim"] = state["dino_head.last_layer.parametrizations.weight.original1"].shape[1]
    return ModelConfig(**fields)


def load_parts(
    module: nn.Module, converted: ConvertedState, parts: Iterable[str], source: str | Path = "<state>"
) -> ImportReport:
    """Load the keys of ``parts`` (e.g. ``backbone``, ``landmark_cnn``) into ``module``; shapes must match.

    Keys of ``module`` under those parts that the checkpoint lacks are reported as missing; checkpoint keys of those
    parts that ``module`` lacks, plus keys with no mapping at all, are reported as unexpected.
    """
    parts = tuple(parts)
    own = module.state_dict()
    wanted = {k for k in own if k.split(".", 1)[0] in parts}
    given = {k: v for k, v in converted.state.items() if k.split(".", 1)[0] in parts}
    for key in wanted & given.keys():
        if tuple(given[key].shape) != tuple(own[key].shape):
            raise DataError(
                source, f"{key}: checkpoint shape {tuple(given[key].shape)} != model {tuple(own[key].shape)}"
            )
    module.load_state_dict({k: given[k] for k in wanted & given.keys()}, strict=False)
    unexpected = sorted(given.keys() - wanted) + sorted(converted.unmapped)
    return ImportReport(converted.kind, sorted(wanted - given.keys()), unexpected)


@dataclass
class LoadedCheckpoint:
    """A ``FaceModel`` with whatever else the file held (class matrix, DINO head state, meta, import report)."""

    model: FaceModel
    meta: dict[str, Any]
    margin_state: dict[str, torch.Tensor]
    dino_head_state: dict[str, torch.Tensor]
    report: ImportReport


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Build and load a ``FaceModel`` from our format or any official format; see ``convert_checkpoint``."""
    converted = convert_checkpoint(read_checkpoint(path, map_location))
    try:
        cfg = infer_model_config(converted)
    except (ValueError, KeyError) as exc:
        raise DataError(path, f"cannot read a model configuration ({exc})") from None
    has_cnn = any(k.startswith("landmark_cnn.") for k in converted.state)
    if converted.meta is not None:
        has_cnn = bool(converted.meta.get("has_landmark_cnn", has_cnn))
    model = build_face_model(cfg, with_landmark_cnn=has_cnn)
    report = load_parts(model, converted, FACE_MODEL_PARTS, path)
    meta = converted.meta or {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": converted.kind,
        "model": cfg.model_dump(mode="json"),
        "convention": cfg.sampler_convention,
        "num_landmarks": cfg.num_landmarks,
        "channel_order": CHANNEL_ORDER,
        "has_landmark_cnn": has_cnn,
    }
    return LoadedCheckpoint(model, meta, converted.part("margin"), converted.part("dino_head"), report)


def load_face_model(path: str | Path, map_location: str | torch.device = "cpu") -> FaceModel:
    """A ``FaceModel`` from our checkpoint format or an official file; a missing backbone key is an error."""
    loaded = load_checkpoint(path, map_location)
    missing = [k for k in loaded.report.missing if k.startswith("backbone.")]
    if missing:
        raise DataError(path, f"checkpoint lacks {len(missing)} backbone keys, e.g. {missing[0]}")
    return loaded.model


def inference_model(path: str | Path, device: str = "auto") -> FaceModel:
    """A ``FaceModel`` for inference: loaded from ``path``, on ``device`` (``auto``: CUDA when there is one), in eval
    mode."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_face_model(path).to(torch.device(device)).eval()


def model_meta(model: FaceModel, preset: str, stage: str, **extra: Any) -> dict[str, Any]:
    """The ``meta`` header of our checkpoints."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": preset,
        "stage": stage,
        "model": model.cfg.model_dump(mode="json"),
        "convention": model.convention,
        "num_landmarks": model.cfg.num_landmarks,
        "channel_order": CHANNEL_ORDER,
        "has_landmark_cnn": model.landmark_cnn is not None,
        **extra,
    }


def save_model_checkpoint(
    path: str | Path,
    model: FaceModel,
    preset: str,
    stage: str,
    margin: nn.Module | None = None,
    dino_head: nn.Module | None = None,
    **extra_meta: Any,
) -> Path:
    """Write ``{meta, model[, margin][, dino_head]}`` atomically."""
    payload: dict[str, Any] = {"meta": model_meta(model, preset, stage, **extra_meta), "model": model.state_dict()}
    if margin is not None:
        payload["margin"] = margin.state_dict()
    if dino_head is not None:
        payload["dino_head"] = dino_head.state_dict()
    return atomic_torch_save(payload, path)


def export_official_state_dict(
    model: FaceModel, margin: nn.Module | None = None, dino_head: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Our weights under the official key names (the inverse of the import map)."""
    state = dict(model.state_dict())
    for part, module in (("margin", margin), ("dino_head", dino_head)):
        if module is not None:
            state.update({f"{part}.{k}": v for k, v in module.state_dict().items()})
    exported: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        official = ours_to_official(key)
        if official is None:
            raise ValueError(f"{key} has no official name")
        exported[official] = value
    return exported
