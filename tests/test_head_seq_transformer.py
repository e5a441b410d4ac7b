"""The ``seq_transformer`` head (CLIP4Clip seqTransf): masking, order, init from the text tower, freezing.

Exactness against CLIP4Clip's own code is in test_convert.py (parity on ViT-B/32).
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

import vidclip
from vidclip.heads import create_head
from vidclip.model import ModelSpec, VideoCLIP

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vidclip.create_model("tiny", head="seq_transformer", num_frames=4).eval()


def frames(b=3, t=4, d=64, seed=0):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed))


def test_registered_with_flags():
    head = create_head("seq_transformer")
    assert not head.text_conditioned and head.order_aware and not head.parameter_efficient


def test_shapes_and_unit_norm(model):
    pooled = model.head.pool(frames(), MASK)
    assert pooled.shape == (3, 64) and torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3))
    features = model.encode_video(torch.randn(3, 4, 3, 32, 32), MASK)
    assert features.pooled.shape == (3, 64)
    assert model.similarity(torch.randn(5, 64), features).shape == (5, 3)


def test_architecture_follows_clip4clip_and_the_text_tower(model):
    head = model.head
    assert head.position_embedding.weight.shape == (32, 64)  # tiny's text context length
    assert len(head.transformer.resblocks) == 4
    block = head.transformer.resblocks[0]
    assert block.attn.num_heads == 2 and block.attn.embed_dim == 64  # the text tower's
    assert block.mlp.c_fc.out_features == 4 * 64 and isinstance(block.mlp.gelu, QuickGELU)
    assert block.ln_1.eps == 1e-12 and block.ln_2.eps == 1e-12  # CLIP4Clip's LayerNorm (until_module.py)


def test_initialised_from_the_text_tower(model):
    clip, head = model.clip, model.head
    torch.testing.assert_close(head.position_embedding.weight, clip.positional_embedding[:32])
    for mine, text in zip(head.transformer.resblocks, clip.transformer.resblocks, strict=False):
        text_params = dict(text.named_parameters())
        for name, param in mine.named_parameters():
            torch.testing.assert_close(param, text_params[name], msg=name)
            assert param.data_ptr() != text_params[name].data_ptr()  # a copy, not shared weights
    # tiny's text tower has 2 blocks: blocks 2 and 3 keep CLIP4Clip's init (N(0, 0.02) weights, zero biases)
    extra = head.transformer.resblocks[2]
    assert torch.all(extra.mlp.c_fc.bias == 0) and torch.all(extra.ln_1.weight == 1)
    assert 0.01 < extra.mlp.c_fc.weight.std() < 0.03


def test_init_from_text_can_be_turned_off():
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head="seq_transformer", num_frames=4, init_from_text=False)
    assert not torch.allclose(model.head.position_embedding.weight, model.clip.positional_embedding)
    first, text = model.head.transformer.resblocks[0], model.clip.transformer.resblocks[0]
    assert not torch.allclose(first.attn.in_proj_weight, text.attn.in_proj_weight)


def test_options():
    model = vidclip.create_model("tiny", head="seq_transformer", num_frames=4, num_layers=1, max_positions=8)
    assert len(model.head.transformer.resblocks) == 1
    torch.testing.assert_close(model.head.position_embedding.weight, model.clip.positional_embedding[:8])
    with pytest.raises(ValueError, match="max_positions"):
        vidclip.create_model("tiny", head="seq_transformer", num_frames=9, max_positions=8)
    with pytest.raises(ValueError, match="num_layers"):
        vidclip.create_model("tiny", head="seq_transformer", num_layers=0)
    with pytest.raises(ValueError, match="frames"):
        model.head.pool(frames(t=9), torch.ones(3, 9, dtype=torch.bool))


def test_padded_frames_change_nothing(model):
    x = frames()
    garbage = x.clone()
    noise = torch.randn(int((~MASK).sum()), 64) * 1e3
    noise[:, 0] = float("nan")
    garbage[~MASK] = noise
    torch.testing.assert_close(model.head.pool(garbage, MASK), model.head.pool(x, MASK))


def test_padding_equals_a_shorter_video(model):
    # A video with 2 real frames and 2 padded ones is the 2-frame video: padding is invisible as keys too.
    x = frames(b=1)
    padded = model.head.pool(x, torch.tensor([[True, True, False, False]]))
    short = model.head.pool(x[:, :2], torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(padded, short)


def test_video_without_real_frames_is_finite(model):
    pooled = model.head.pool(frames(b=2), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))
    assert torch.isfinite(pooled).all() and torch.all(pooled[1] == 0)


def test_order_aware(model):
    x = frames()
    full = torch.ones(3, 4, dtype=torch.bool)
    reversed_ = model.head.pool(x.flip(1), full)
    assert (reversed_ - model.head.pool(x, full)).abs().max() > 1e-3
    mean = create_head("mean")  # the same check on an order-blind head does not move
    torch.testing.assert_close(mean.pool(x.flip(1), full), mean.pool(x, full))


def test_residual_skips_position_embeddings(model):
    # With zeroed blocks the transformer is the identity: output = (frames + P) + frames.
    head = model.head
    x = frames()
    blocks = head.transformer.resblocks
    saved = [{k: v.clone() for k, v in b.state_dict().items()} for b in blocks]
    with torch.no_grad():
        for block in blocks:
            for output in (block.attn.out_proj, block.mlp.c_proj):  # each residual branch's last layer
                output.weight.zero_()
                output.bias.zero_()
        out = head.encode_frames(x, torch.ones(3, 4, dtype=torch.bool))
        for block, state in zip(blocks, saved, strict=True):
            block.load_state_dict(state)
    torch.testing.assert_close(out, 2 * x + head.position_embedding.weight[:4])


def test_frozen_backbone_trains_exactly_the_head():
    model = vidclip.create_model("tiny", head="seq_transformer", num_frames=4, freeze_backbone=True)
    head_params = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == head_params
    text = model.encode_text(torch.randint(1, 1000, (2, 32)))
    model.similarity(text, model.encode_video(torch.randn(2, 4, 3, 32, 32), MASK[:2])).sum().backward()
    for name, param in model.named_parameters():
        has_grad = param.grad is not None and param.grad.abs().sum() > 0
        assert has_grad == (id(param) in head_params), name


def test_embedding_width_unlike_text_width_falls_back_to_random_init():
    vision = open_clip.model.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32)
    text = open_clip.model.CLIPTextCfg(context_length=16, width=64, heads=2, layers=1)
    clip = open_clip.model.CLIP(embed_dim=48, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    head = create_head("seq_transformer")
    model = VideoCLIP(clip, head, ModelSpec("custom", head="seq_transformer", num_frames=4))
    block = head.transformer.resblocks[0]
    assert block.attn.embed_dim == 48 and block.attn.num_heads == 1 and isinstance(block.mlp.gelu, QuickGELU)
    assert head.position_embedding.weight.shape == (
        77,
        48,
    )  # CLIP4Clip's table size when there is no text to copy
    pooled = model.encode_video(torch.randn(2, 4, 3, 32, 32)).pooled
    assert pooled.shape == (2, 48) and torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(2))
    assert F.cosine_similarity(pooled[0], pooled[1], dim=0) < 1
