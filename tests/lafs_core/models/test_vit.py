"""Part fViT: sizes, attention scale, position tables, token counts, grid baseline, FaceModel plumbing."""

from __future__ import annotations

import copy

import pytest
import torch

from lafs_core.config import ModelConfig, StageConfig, load_config
from lafs_core.models.build import build_face_model
from lafs_core.models.sampler import grid_landmarks, landmark_layout, sample_patches, warp_images
from lafs_core.models.vit import Attention, GridFViT, PartFViT, compile_blocks, sincos_position_rows


def tiny(**update: object) -> ModelConfig:
    return load_config(StageConfig, preset="tiny").model.model_copy(update=update)


def test_base_vit_parameter_count_matches_method_reference() -> None:
    cfg = load_config(StageConfig, preset="base").model
    with torch.device("meta"):
        vit = PartFViT(cfg)
    assert sum(p.numel() for p in vit.parameters()) == 64_082_688
    block = vit.blocks[0]
    assert block.attn.qkv.weight.shape == (3 * 704, 768) and block.attn.qkv.bias is None
    assert block.attn.scale == pytest.approx(768**-0.5)
    assert vit.pos_embed.shape == (1, 197, 768)


def test_attention_matches_explicit_softmax_with_configured_scale() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=48, heads=3, dim_head=20, scale=48**-0.5).eval()
    x = torch.randn(2, 7, 48)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 3, 20).permute(2, 0, 3, 1, 4)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 48**-0.5, dim=-1)
    expected = attn.proj((probs @ v).transpose(1, 2).reshape(2, 7, 60))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_slot_positions_depend_on_order_landmark_positions_follow_ids() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(2, 10, 192)
    ids = torch.tensor([3, 7, 0, 12, 5, 9, 40, 2, 1, 8])
    perm = torch.randperm(10)
    landmark = PartFViT(tiny(pos_embed="landmark")).eval()
    a = landmark.forward_tokens(tokens, ids)
    b = landmark.forward_tokens(tokens[:, perm], ids[perm])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    slot = PartFViT(tiny()).eval()
    assert not torch.allclose(slot.forward_tokens(tokens), slot.forward_tokens(tokens[:, perm]), atol=1e-4)
    with pytest.raises(ValueError, match="landmark_ids"):
        landmark.forward_tokens(tokens)


def test_any_token_count_up_to_the_table_and_feature_split() -> None:
    vit = PartFViT(tiny()).eval()
    for n in (1, 16, 49):
        features = vit.forward_features(torch.randn(3, n, 192))
        assert features.shape == (3, 1 + n, 96)
        torch.testing.assert_close(vit.forward_tokens(torch.randn(0, n, 192)), torch.zeros(0, 96))
    tokens = torch.randn(3, 16, 192)
    torch.testing.assert_close(vit.forward_tokens(tokens), vit.norm(vit.forward_features(tokens)[:, 0]))
    with pytest.raises(ValueError, match="position table"):
        vit.forward_tokens(torch.randn(1, 197, 192))


def test_dropouts_active_in_train_only_and_drop_path_schedule() -> None:
    cfg = tiny(dropout=0.1, emb_dropout=0.1, drop_path=0.2, drop_path_schedule="linear", depth=3)
    vit = PartFViT(cfg)
    rates = [getattr(block.drop_path2, "drop_prob", 0.0) for block in vit.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    tokens = torch.randn(2, 16, 192)
    assert not torch.allclose(vit.forward_tokens(tokens), vit.forward_tokens(tokens))
    vit.eval()
    torch.testing.assert_close(vit.forward_tokens(tokens), vit.forward_tokens(tokens))


@pytest.mark.parametrize("convention", ["official", "centered"])
def test_grid_unfold_path_equals_sampling_at_grid_landmarks(convention: str) -> None:
    vit = PartFViT(tiny(sampler_convention=convention, num_landmarks=196)).eval()
    images = torch.randn(2, 3, 112, 112)
    landmarks = grid_landmarks(112, 8, convention).expand(2, -1, -1)
    torch.testing.assert_close(vit(images), vit(images, landmarks), atol=1e-4, rtol=1e-4)
    sparse = PartFViT(tiny(sampler_convention=convention)).eval()  # 49 landmarks: the 7x7 layout, not the grid
    layout = landmark_layout(49, 112, convention).expand(2, -1, -1)
    torch.testing.assert_close(sparse(images), sparse(images, layout), atol=1e-4, rtol=1e-4)
    grid = GridFViT(tiny(sampler_convention=convention)).eval()
    assert grid.convention == "centered"
    with pytest.raises(ValueError, match="no landmarks"):
        grid(images, landmarks)


def test_face_model_landmark_sources_and_gradients() -> None:
    cfg = tiny()
    model = build_face_model(cfg)
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    embedding, landmarks = model.forward_with_landmarks(images)
    assert embedding.shape == (2, 96) and landmarks.shape == (2, 49, 2)
    embedding.pow(2).sum().backward()
    assert model.landmark_cnn.features[0][0].weight.grad.abs().sum() > 0
    model.eval()
    given = torch.rand(2, 30, 2) * 111
    tokens = sample_patches(images, given, 8, cfg.sampler_convention)
    torch.testing.assert_close(model(images, given), model.backbone.forward_tokens(tokens))
    torch.testing.assert_close(model(images, "grid"), model.backbone(images))
    no_cnn = build_face_model(cfg, with_landmark_cnn=False).eval()
    no_cnn.backbone.load_state_dict(model.backbone.state_dict())
    torch.testing.assert_close(no_cnn(images), model.backbone(images))
    assert model.convention == cfg.sampler_convention


def test_face_model_affine_view_equals_rendered_view() -> None:
    model = build_face_model(tiny()).eval()
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    affine = torch.tensor([[[-1.0, 0.0, 111.0 + 6.0], [0.0, 1.0, -4.0]], [[1.0, 0.0, 3.0], [0.0, 1.0, 9.0]]])
    view = warp_images(images, affine, (112, 112))
    torch.testing.assert_close(model.predict_landmarks(images, affine), model.landmark_cnn(view))
    inner = torch.rand(2, 49, 2) * 80 + 16  # away from the view border, where the view is zero-padded
    torch.testing.assert_close(model(images, inner, affine), model(view, inner), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_keep_parameter_names() -> None:
    torch.manual_seed(0)
    torch._dynamo.reset()
    eager = PartFViT(tiny(dropout=0.0, drop_path=0.0)).train()
    compiled = copy.deepcopy(eager)
    assert compile_blocks(compiled) == len(eager.blocks) == 2
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for count in (49, 9):  # global and local token counts: one graph each
        tokens = torch.randn(4, count, 192)
        outputs = [vit.forward_tokens(tokens) for vit in (eager, compiled)]
        torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
        for out in outputs:
            out.square().sum().backward()
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-4, msg=name)
            p.grad = q.grad = None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # the blocks really ran compiled


def test_position_rows_start_as_sincos_codes_of_the_layout() -> None:
    vit = PartFViT(tiny())
    layout = landmark_layout(49, 112)
    rows = vit.pos_embed[0, 1:].detach()
    torch.testing.assert_close(rows, sincos_position_rows(layout, 96, 16.0))
    near = torch.cdist(rows[24:25], rows).squeeze(0)  # the centre landmark's row is closest to its neighbours'
    assert near.argsort()[1:5].sort().values.tolist() == [17, 23, 25, 31]
    random = PartFViT(tiny(pos_embed_init="random"))
    assert float(random.pos_embed.detach().std()) < 0.05
    assert vit.pos_embed.shape[1] == 50 and PartFViT(tiny(num_landmarks=196)).pos_embed.shape[1] == 197
