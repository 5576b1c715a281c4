"""Part fViT backbone (method.md section 5): landmark-patch tokens -> CLS transformer -> LayerNorm'd CLS embedding.

Built from timm's ``Mlp`` / ``DropPath`` / ``trunc_normal_`` with an SDPA attention whose inner width
(heads x dim_head) may differ from the model width and whose softmax scale is configurable, both needed for parity
with the official model (11 x 64 = 704 inner, scale 768**-0.5, no qkv bias). ``GridFViT`` is the same backbone fed
with non-overlapping grid patches (the regular-grid fViT / DINO-face baseline, method.md section 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from lafs_core.config.model import ModelConfig
from lafs_core.models.sampler import grid_patches, landmark_layout, sample_patches


class Attention(nn.Module):
    """Multi-head self-attention via ``F.scaled_dot_product_attention`` with an explicit softmax scale."""

    def __init__(
        self, dim: int, heads: int, dim_head: int, scale: float, qkv_bias: bool = False, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = scale
        inner = heads * dim_head
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN x)); x + DropPath(MLP(LN x))."""

    def __init__(self, cfg: ModelConfig, drop_path: float) -> None:
        super().__init__()
        scale = (cfg.dim if cfg.attn_scale == "dim" else cfg.dim_head) ** -0.5
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dim_head, scale, cfg.qkv_bias, cfg.dropout)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = Mlp(cfg.dim, cfg.mlp_dim, drop=cfg.dropout)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def compile_blocks(module: nn.Module) -> int:
    """``torch.compile`` every transformer ``Block`` inside ``module`` in place; returns how many.

    Per block, so parameter names (checkpoints, DDP buckets, the EMA pairing) stay as they are and the sampler and
    heads run eagerly; static shapes give one graph per token count (global and local views). On 2 CPU cores it
    buys little (docs/benchmarks.md: tiny steps 1.01-1.11x after ~40 s of compilation, small ones 0.83-0.98x), so
    it is off by default; it is meant for GPUs, where it was not measured here.
    """
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(dynamic=False)
    return len(blocks)


# Amplitude of the sin-cos rows; tiny fine-tuning, 12 epochs, validation pairs: 0.2 / 0.5 / 1.0 -> 64.4 / 66.5 / 65.5 %.
SINCOS_SCALE = 0.5


def sincos_position_rows(points: torch.Tensor, dim: int, cell: float, scale: float = SINCOS_SCALE) -> torch.Tensor:
    """(N, dim) 2-D sin-cos codes of (N, 2) pixel positions: dim/4 frequencies per axis, positions in ``cell`` units.

    The transformer's attention needs to know where a token comes from; a learnt table started near zero takes
    most of a small-data run to find out (tiny preset: 59.5 % vs 66.5 % on validation pairs after 12 epochs).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position codes need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    angles = [(points[:, axis : axis + 1] / cell) * omega for axis in (0, 1)]
    return scale * torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)


def num_positions(cfg: ModelConfig) -> int:
    """Rows of the position table: CLS + one per landmark slot (197 for the paper's model). No view has more tokens
    than R: without landmarks the model samples the R-point layout, which is the patch grid when R = (S / P)^2."""
    return 1 + cfg.num_landmarks


class PartFViT(nn.Module):
    """Transformer over landmark-patch tokens; the embedding is LayerNorm(CLS output), ``cfg.dim`` wide."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.convention = cfg.sampler_convention
        token_dim = cfg.patch_size * cfg.patch_size * 3
        self.patch_embed = nn.Linear(token_dim, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions(cfg), cfg.dim))
        self.pos_drop = nn.Dropout(cfg.emb_dropout)
        if cfg.drop_path_schedule == "linear":
            rates = torch.linspace(0.0, cfg.drop_path, cfg.depth).tolist()
        else:
            rates = [cfg.drop_path] * cfg.depth
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm = nn.LayerNorm(cfg.dim)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.cfg.init == "official":
            nn.init.normal_(self.cls_token)
            nn.init.normal_(self.pos_embed)
            return
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.cfg.pos_embed_init == "sincos":
            layout = landmark_layout(self.cfg.num_landmarks, self.cfg.image_size, self.convention)
            cell = self.cfg.image_size / round(self.cfg.num_landmarks**0.5)
            with torch.no_grad():
                self.pos_embed[0, 1 : 1 + len(layout)] = sincos_position_rows(layout, self.cfg.dim, cell)

    def embed_tokens(self, tokens: torch.Tensor, landmark_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n, P*P*3) tokens -> (B, 1+n, dim): patch embedding, CLS, position table, embedding dropout.

        With ``pos_embed="slot"`` token k gets row k+1 (the paper); with ``"landmark"`` it gets row
        ``landmark_ids[k] + 1`` (``landmark_ids``: (n,) or (B, n) int).
        """
        b, n, _ = tokens.shape
        if n + 1 > self.pos_embed.shape[1]:
            raise ValueError(f"{n} tokens exceed the position table ({self.pos_embed.shape[1] - 1} slots)")
        x = torch.cat((self.cls_token.expand(b, -1, -1), self.patch_embed(tokens)), dim=1)
        if self.cfg.pos_embed == "slot":
            pos = self.pos_embed[:, : n + 1]
        else:
            if landmark_ids is None:
                raise ValueError("pos_embed='landmark' needs landmark_ids")
            ids = landmark_ids.to(tokens.device).long().expand(b, n)
            table = self.pos_embed[0]
            pos = torch.cat((table[:1].expand(b, 1, -1), table[ids + 1]), dim=1)
        return self.pos_drop(x + pos)

    def forward_features(self, tokens: torch.Tensor, landmark_ids: torch.Tensor | None = None) -> torch.Tensor:
        """All (B, 1+n, dim) outputs of the last block (before the final LayerNorm)."""
        x = self.embed_tokens(tokens, landmark_ids)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_tokens(self, tokens: torch.Tensor, landmark_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, dim) embedding: LayerNorm of the CLS output."""
        return self.norm(self.forward_features(tokens, landmark_ids)[:, 0])

    def tokenize(
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None, affine: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens of normalised images at ``landmarks`` (B, N, 2), or at the regular layout of R landmarks when None
        (cut by reshaping when that layout is the non-overlapping patch grid)."""
        cfg = self.cfg
        if landmarks is None and affine is None and cfg.num_landmarks == (cfg.image_size // cfg.patch_size) ** 2:
            return grid_patches(images, cfg.patch_size, self.convention)
        if landmarks is None:
            landmarks = self.grid_landmarks(images.shape[0], images.device)
        return sample_patches(images, landmarks, cfg.patch_size, self.convention, affine)

    def grid_landmarks(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """(B, R, 2) the regular layout of R landmarks (:func:`landmark_layout`) in this model's convention."""
        layout = landmark_layout(self.cfg.num_landmarks, self.cfg.image_size, self.convention)
        return layout.to(device).expand(batch, -1, -1)

    def forward(
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None, affine: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embedding (B, dim) of normalised images sampled at ``landmarks`` (grid patches when None)."""
        return self.forward_tokens(self.tokenize(images, landmarks, affine))


class GridFViT(PartFViT):
    """Regular-grid fViT: patches on the regular layout of R landmarks in the centred convention, i.e. the official
    no-landmark model's non-overlapping (row, col, channel) patches when R = (image / patch)^2."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.model_copy(update={"sampler_convention": "centered"}))

    def forward(
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None, affine: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embedding (B, dim) from the grid patches (``landmarks`` must be None)."""
        if landmarks is not None:
            raise ValueError("GridFViT takes no landmarks")
        return self.forward_tokens(self.tokenize(images, None, affine))
