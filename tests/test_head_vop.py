"""vop: deep prompts match a token-inserting reference, EOT pooling survives text prompts, padding counts as
absent, order awareness per variant, only prompts train, and the ViT-B/32 parameter counts against the paper."""

import pytest
import torch

import vidclip
from vidclip.heads.vop_prompts import JointBlock, PromptedBlock, PromptedTextBlock
from vidclip.optim import no_weight_decay_names

T, S = 4, 32
VARIANTS = ["base", "P", "C", "F", "F+P", "F+C"]
TEXTS = ["a red square moving left", "a dog", "a blue disc slowly turning around the centre"]


def build(seed: int = 0, perturb: bool = True, **options) -> vidclip.VideoCLIP:
    torch.manual_seed(seed)
    model = vidclip.create_model("tiny", head="vop", num_frames=T, **options).eval()
    if perturb:  # move the generator's linear map and the prompts to a scale where they change things
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in model.new_modules():
                for param in module.parameters():
                    param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def tokens() -> torch.Tensor:
    return vidclip.get_tokenizer("tiny")(TEXTS)


def similarities(model, video, mask=None):
    return model.similarity(model.encode_text(tokens()), model.encode_video(video, mask))


def reference_frames(model, video):
    """Base VoP's image tower written out as VoP's code runs it: the first layer's prompts go in before
    ln_pre; prompts sit after CLS and are dropped before the next layer's are inserted."""
    visual = model.clip.visual
    wrappers = list(visual.transformer.resblocks)
    images = video.flatten(0, 1)
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B*T, patches, C)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
    for index, wrapper in enumerate(wrappers):
        prompts = wrapper.prompts.shared.expand(len(x), -1, -1)
        x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)
        if index == 0:
            x = visual.ln_pre(x)
        x = wrapper.block(x)
        if index + 1 < len(wrappers):
            x = torch.cat([x[:, :1], x[:, 1 + prompts.shape[1] :]], dim=1)
    return (visual.ln_post(x[:, 0]) @ visual.proj).view(*video.shape[:2], -1)


def reference_text(model, ids):
    """The text tower with each layer's prompts physically inserted, [SOT, prefix, words, suffix, EOT, pad],
    under a plain causal mask, pooled at EOT's shifted index."""
    clip = model.clip
    wrappers = list(clip.transformer.resblocks)
    prefix = wrappers[0].prompts.num_prefix
    count = wrappers[0].prompts.tokens.shape[0]
    size = ids.shape[1] + count
    causal = torch.full((size, size), float("-inf")).triu(1)
    x = clip.token_embedding(ids) + clip.positional_embedding
    eot = ids.argmax(dim=-1).tolist()
    for wrapper in wrappers:
        prompts = wrapper.prompts.tokens
        rows = []
        for text, e in zip(x, eot, strict=True):
            seq = torch.cat([text[:1], prompts[:prefix], text[1:e], prompts[prefix:], text[e:]])
            out = wrapper.block(seq[None], attn_mask=causal)[0]
            rows.append(torch.cat([out[:1], out[1 + prefix : e + prefix], out[e + count :]]))
        x = torch.stack(rows)
    x = clip.ln_final(x)
    return x[torch.arange(len(x)), ids.argmax(dim=-1)] @ clip.text_projection


def test_video_prompts_match_the_inserting_reference():
    model = build()
    video = torch.randn(2, T, 3, S, S)
    assert all(isinstance(block, PromptedBlock) for block in model.clip.visual.transformer.resblocks)
    assert torch.allclose(model.encode_video(video).frames, reference_frames(model, video), atol=1e-5)


def test_text_prompts_match_the_inserting_reference_and_keep_eot_pooling():
    model = build()
    ids = tokens()
    assert len({int(i) for i in ids.argmax(dim=-1)}) == 3  # texts of different lengths: EOT moves
    assert all(isinstance(block, PromptedTextBlock) for block in model.clip.transformer.resblocks)
    assert torch.allclose(model.encode_text(ids), reference_text(model, ids), atol=1e-5)


def test_without_text_prompts_the_text_tower_is_plain_clip():
    model = build(perturb=False, text_prompts=False)
    torch.manual_seed(0)
    # frozen like vop's: PyTorch picks another attention kernel for trainable weights (1e-6 apart)
    plain = vidclip.create_model("tiny", head="mean", num_frames=T, freeze_backbone=True).eval()
    assert torch.equal(model.encode_text(tokens()), plain.encode_text(tokens()))
    frames = model.encode_video(torch.randn(1, T, 3, S, S)).frames
    assert frames.shape == (1, T, 64)


def test_gradients_reach_prefix_and_suffix_text_prompts():
    model = build(perturb=False).train()
    model.encode_text(tokens()).sum().backward()
    for block in model.clip.transformer.resblocks:
        grad, prefix = block.prompts.tokens.grad, block.prompts.num_prefix
        assert grad[:prefix].abs().sum(-1).min() > 0 and grad[prefix:].abs().sum(-1).min() > 0


def test_image_tower_keeps_clip_token_layout():
    video = torch.randn(2, T, 3, S, S)
    for variant, tokens_out in (("base", 1 + 16), ("F", 1)):
        model = build(variant=variant)
        visual = model.clip.visual
        layout = vidclip.heads.VideoLayout(2, T, torch.ones(2, T, dtype=torch.bool))
        with model.head.video_context(layout):
            out = visual.transformer(visual._embeds(video.flatten(0, 1)))
        assert out.shape == (2 * T, tokens_out, 64)  # the CLS token stays at index 0 for open_clip's pooling
    assert isinstance(model.clip.visual.transformer.resblocks[1], JointBlock)  # F: the last of 2 layers


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_runs_forward_and_backward_training_only_prompts(variant):
    model = build(variant=variant, perturb=False).train()
    video, mask = torch.randn(2, T, 3, S, S), torch.tensor([[True] * T, [True, True, False, False]])
    sim = similarities(model, video, mask)
    assert sim.shape == (3, 2) and torch.isfinite(sim).all()
    sim.sum().backward()
    assert model.parameter_groups()["backbone"] == []
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert name.startswith("clip.") and param.grad is None, name
    exempt = no_weight_decay_names(model)
    assert {name for name, _ in model.named_parameters() if "prompts." in name} <= exempt


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mask", [[True, True, True, False], [True, False, False, False]])
def test_padded_video_equals_the_video_cut_to_its_real_frames(variant, mask):
    model = build(variant=variant)
    video = torch.randn(1, T, 3, S, S)
    mask = torch.tensor([mask])
    real = int(mask.sum())
    garbage = video.clone()
    garbage[~mask] = 1e3 * torch.randn(T - real, 3, S, S)
    padded, cut = model.encode_video(garbage, mask), model.encode_video(video[:, :real])
    assert torch.allclose(padded.pooled, cut.pooled, atol=1e-5)
    assert torch.allclose(padded.frames[:, :real], cut.frames, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_order_awareness_per_variant(variant):
    model = build(variant=variant)
    video = torch.randn(2, T, 3, S, S)
    forwards, backwards = model.encode_video(video).pooled, model.encode_video(video.flip(1)).pooled
    assert model.head.order_aware == (variant != "base")
    assert torch.allclose(forwards, backwards, atol=1e-5) == (variant == "base")


def test_gradient_checkpointing_gives_the_same_gradients():
    video = torch.randn(2, T, 3, S, S)
    grads = []
    for checkpointing in (False, True):
        model = build(variant="F+C").train()
        model.clip.set_grad_checkpointing(checkpointing)
        similarities(model, video).sum().backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads, strict=True))


def test_options_are_validated():
    with pytest.raises(ValueError, match="variant"):
        vidclip.create_model("tiny", head="vop", variant="X")
    with pytest.raises(ValueError, match="num_prompts"):
        vidclip.create_model("tiny", head="vop", variant="P", num_prompts=1)
    with pytest.raises(ValueError, match="joint_layers"):
        vidclip.create_model("tiny", head="vop", variant="F", joint_layers=2)
    with pytest.raises(ValueError, match="frame-position"):
        vidclip.create_model("tiny", head="vop", variant="P", num_frames=2).encode_video(
            torch.randn(3, 3, S, S)
        )
    shallow = vidclip.create_model("tiny", head="vop", depth=1, num_prompts=3, num_text_prompts=5)
    assert isinstance(shallow.clip.visual.transformer.resblocks[0], PromptedBlock)
    assert not isinstance(shallow.clip.visual.transformer.resblocks[1], PromptedBlock)
    assert shallow.num_trainable_parameters() == 3 * 64 + 5 * 64


# ViT-B/32 (width 768, 12 layers; text 512, 12 layers), 12 frames: text prompts 12 x 8 x 512 = 49,152; the
# paper's Table reports 0.1 M / 0.5 M / 14.3 M / 0.1 M for VoP / VoP^P / VoP^C / VoP^F (one decimal).
TEXT = 12 * 8 * 512
LSTM = 2 * 4 * (768 * 768 + 768 * 768 + 2 * 768)  # bidirectional, hidden = width, two bias vectors
EXPECTED = {
    "base": (12 * 8 * 768 + TEXT, 0.1),
    "P": (12 * (4 + 12 * 4) * 768 + TEXT, 0.5),
    "C": (12 * 4 * 768 + LSTM + (1536 * 3072 + 3072) + TEXT, 14.3),
    "F": (12 * 8 * 768 + 12 * 768 + TEXT, 0.1),
    "F+P": (8 * (4 + 12 * 4) * 768 + 4 * 8 * 768 + 12 * 768 + TEXT, None),
    "F+C": (8 * 4 * 768 + 4 * 8 * 768 + LSTM + (1536 * 3072 + 3072) + 12 * 768 + TEXT, None),
}


def test_trainable_parameters_on_vit_b32_match_the_paper():
    for variant, (count, paper) in EXPECTED.items():
        with torch.device("meta"):  # counts only: no memory, no init time
            model = vidclip.create_model(
                "ViT-B-32", head="vop", variant=variant, num_frames=12, device="meta"
            )
        assert model.num_trainable_parameters() == count, variant
        if paper is not None:
            assert round(count / 1e6, 1) == paper, variant


def test_builds_in_bf16_precision():
    model = vidclip.create_model("tiny", head="vop", variant="F+C", num_frames=T, precision="bf16")
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
    sim = similarities(model, torch.randn(2, T, 3, S, S, dtype=torch.bfloat16))
    assert sim.dtype == torch.bfloat16 and torch.isfinite(sim).all()
