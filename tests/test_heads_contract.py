"""Contract tests run over every registered head: a new head gets them for free by registering."""

import pytest
import torch

import vidclip
from vidclip.heads import HEADS

B, T, S = 3, 4, 32


def build(name: str, seed: int = 0) -> vidclip.VideoCLIP:
    torch.manual_seed(seed)
    return vidclip.create_model("tiny", head=name, num_frames=T)


def perturb_new_modules(model: vidclip.VideoCLIP, seed: int = 1) -> None:
    """Move zero-initialised adapters/prompts off their identity so they do something measurable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.new_modules():
            for param in module.parameters():
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def similarities(model, video, mask, texts=("a red square moving left", "a blue disc", "something else")):
    tokens = vidclip.get_tokenizer("tiny")(list(texts))
    return model.similarity(model.encode_text(tokens), model.encode_video(video, mask))


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(B, T, 3, S, S, generator=generator)
    mask = torch.tensor([[True] * T, [True, True, False, False], [True, False, False, False]])
    return video, mask


@pytest.mark.parametrize("name", sorted(HEADS))
def test_shapes_range_and_no_nan(name, inputs):
    model = build(name).eval()
    video, mask = inputs
    features = model.encode_video(video, mask)
    assert features.frames.shape == (B, T, 64) and features.mask.shape == (B, T)
    if model.head.text_conditioned:
        assert features.pooled is None
    else:
        assert features.pooled.shape == (B, 64)
        assert torch.allclose(features.pooled.norm(dim=-1), torch.ones(B), atol=1e-5)
    sim = similarities(model, video, mask)
    assert sim.shape == (3, B) and torch.isfinite(sim).all() and sim.abs().max() <= 1 + 1e-5


@pytest.mark.parametrize("name", sorted(HEADS))
def test_garbage_in_masked_frames_changes_nothing(name, inputs):
    model = build(name).eval()
    perturb_new_modules(model)
    video, mask = inputs
    garbage = video.clone()
    garbage[~mask] = 50 * torch.randn(int((~mask).sum()), 3, S, S)
    assert torch.allclose(similarities(model, video, mask), similarities(model, garbage, mask), atol=1e-5)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_order_awareness_matches_the_declared_flag(name, inputs):
    model = build(name).eval()
    perturb_new_modules(model)
    video, _ = inputs
    full = torch.ones(B, T, dtype=torch.bool)
    forwards, backwards = similarities(model, video, full), similarities(model, video.flip(1), full)
    if model.head.order_aware:
        assert not torch.allclose(forwards, backwards, atol=1e-4), (
            f"{name} claims order awareness but ignores order"
        )
    else:
        assert torch.allclose(forwards, backwards, atol=1e-5), f"{name} claims to be order-blind but is not"


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_trainable_parameter_gets_a_gradient_and_frozen_ones_none(name, inputs):
    model = build(name).train()
    perturb_new_modules(model)  # zero-init outputs would block gradients to the layers before them
    video, mask = inputs
    similarities(model, video, mask).sum().backward()
    for param_name, param in model.named_parameters():
        if param_name in ("clip.logit_scale", "clip.logit_bias"):
            continue  # used by the loss, not by cosine similarity
        if param.requires_grad:
            assert param.grad is not None, f"{name}: trainable {param_name} got no gradient"
        else:
            assert param.grad is None, f"{name}: frozen {param_name} got a gradient"
    if model.head.parameter_efficient:
        assert model.parameter_groups()["backbone"] == [], f"{name}: backbone should be frozen by default"


@pytest.mark.parametrize("name", sorted(HEADS))
def test_checkpoint_round_trip(name, inputs, tmp_path):
    model = build(name).eval()
    perturb_new_modules(model)
    vidclip.save_checkpoint(model, tmp_path)
    loaded = vidclip.load_checkpoint(tmp_path).eval()
    video, mask = inputs
    assert torch.equal(similarities(model, video, mask), similarities(loaded, video, mask))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_documents_itself(name):
    doc = HEADS[name].__doc__ or ""
    assert len(doc.split()) >= 10, f"{name} needs a docstring saying what it is and its reference"
