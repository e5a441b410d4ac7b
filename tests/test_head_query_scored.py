"""The ``query_scored`` head (CLIP-Hitchhiker query scoring): formula, masking, chunking, memory, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import vidclip
from vidclip.heads import create_head


def reference_score(
    text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """One (text, video) pair at a time, straight from the paper's formula, over the real frames only."""
    scores = torch.zeros(text.shape[0], frames.shape[0], dtype=torch.float64)
    for n, t in enumerate(text.double()):
        for b, (video, valid) in enumerate(zip(frames.double(), mask, strict=True)):
            real = video[valid]  # (k, D)
            if len(real) == 0:
                continue
            weights = torch.softmax(F.normalize(real, dim=-1) @ t / temperature, dim=0)  # (k,)
            pooled = (weights[:, None] * real).sum(0)  # unnormalised frame features
            scores[n, b] = F.cosine_similarity(t, pooled, dim=0)
    return scores.float()


def random_inputs(n=5, b=6, t=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    frames = (
        torch.randn(b, t, d, generator=g) * 3 + 1
    )  # off-centre and of varied norm: raw != normalised mean
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[:, 0] = True
    return text, frames, mask


def test_registered_with_flags():
    assert "query_scored" in vidclip.list_heads()
    head = create_head("query_scored")
    assert head.text_conditioned and not head.order_aware and not head.parameter_efficient
    assert head.temperature == 0.1 and len(list(head.parameters())) == 0


def test_bad_options_fail_with_the_name():
    with pytest.raises(ValueError, match="temperature"):
        create_head("query_scored", temperature=0.0)
    with pytest.raises(ValueError, match="video_chunk_size"):
        create_head("query_scored", video_chunk_size=0)


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
def test_matches_straightforward_loop(temperature):
    text, frames, mask = random_inputs()
    head = create_head("query_scored", temperature=temperature)
    scores = head.score(text, frames, mask)
    assert scores.shape == (5, 6)
    torch.testing.assert_close(scores, reference_score(text, frames, mask, temperature), atol=1e-5, rtol=1e-5)


def test_weighted_sum_uses_unnormalised_features():
    # Two frames with the same direction but different norms: the raw weighted sum leans to the long one.
    text = F.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)
    frames = torch.tensor([[[10.0, 10.0], [1.0, -1.0]]])  # cosines with text are equal: weights are 1/2 each
    score = create_head("query_scored").score(text, frames, torch.ones(1, 2, dtype=torch.bool))
    expected = F.cosine_similarity(
        text[0], frames[0].mean(0), dim=0
    )  # mean of raw features, not of unit ones
    torch.testing.assert_close(score[0, 0], expected)


@given(
    n=st.integers(1, 5),
    b=st.integers(1, 7),
    t=st.integers(1, 5),
    chunk=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None, database=None)
def test_chunked_equals_unchunked(n, b, t, chunk, seed):
    text, frames, mask = random_inputs(n, b, t, 8, seed)
    whole = create_head("query_scored", video_chunk_size=1024).score(text, frames, mask)
    chunked = create_head("query_scored", video_chunk_size=chunk).score(text, frames, mask)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(whole, reference_score(text, frames, mask, 0.1), atol=1e-5, rtol=1e-5)


def test_padded_frames_change_nothing():
    text, frames, mask = random_inputs()
    head = create_head("query_scored")
    garbage = frames.clone()
    noise = torch.randn(int((~mask).sum()), frames.shape[-1]) * 1e3
    noise[:, 0] = float("nan")
    garbage[~mask] = noise
    torch.testing.assert_close(head.score(text, garbage, mask), head.score(text, frames, mask))
    assert (~mask).any()


def test_one_real_frame_is_that_frames_cosine():
    text, frames, _ = random_inputs()
    mask = torch.zeros(frames.shape[:2], dtype=torch.bool)
    mask[torch.arange(len(mask)), torch.arange(len(mask)) % frames.shape[1]] = True
    chosen = frames[mask]  # (B, D), one frame per video
    expected = text @ F.normalize(chosen, dim=-1).T
    torch.testing.assert_close(create_head("query_scored").score(text, frames, mask), expected)


def test_video_without_real_frames_scores_zero_with_finite_gradient():
    text, frames, mask = random_inputs(b=3)
    mask[1] = False
    frames.requires_grad_(True)
    scores = create_head("query_scored").score(text, frames, mask)
    assert torch.all(scores[:, 1] == 0)
    scores.sum().backward()
    assert torch.isfinite(frames.grad).all()


def test_temperature_limits():
    text, frames, mask = random_inputs()
    sharp = create_head("query_scored", temperature=1e-4).score(text, frames, mask)
    best = torch.stack(
        [reference_score(text, frames[:, i : i + 1], mask[:, i : i + 1], 1.0) for i in range(4)]
    )
    best = best.masked_fill(~mask.T[:, None, :], -2).amax(0)  # cosine of the best-matching real frame
    torch.testing.assert_close(sharp, best, atol=1e-4, rtol=0)
    flat = create_head("query_scored", temperature=1e6).score(text, frames, mask)
    mean = torch.stack([(v[m]).mean(0) for v, m in zip(frames, mask, strict=True)])  # raw-feature mean
    torch.testing.assert_close(flat, text @ F.normalize(mean, dim=-1).T, atol=1e-4, rtol=0)


def test_order_blind():
    text, frames, mask = random_inputs()
    head = create_head("query_scored")
    order = torch.randperm(frames.shape[1])
    torch.testing.assert_close(
        head.score(text, frames[:, order], mask[:, order]), head.score(text, frames, mask)
    )


class _LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_memory_stays_at_one_block_of_text_video_frame_scores():
    n, b, t, d, chunk = 32, 64, 4, 64, 16
    text, frames, mask = random_inputs(n, b, t, d)
    with _LargestOutput() as probe:
        create_head("query_scored", video_chunk_size=chunk).score(text, frames, mask)
    # Inputs are (B, T, D) = 16384 values; per-text pooled videos would be (N, B, D) = 131072, and even one
    # block of them (N, chunk, D) = 32768; the head's largest intermediate must stay at the input's size.
    assert probe.largest <= max(b * t * d, n * b), probe.largest


@pytest.fixture(scope="module")
def tiny_model():
    return vidclip.create_model("tiny", head="query_scored", num_frames=4)


def test_through_videoclip(tiny_model):
    torch.manual_seed(0)
    video, mask = (
        torch.randn(3, 4, 3, 32, 32),
        torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool(),
    )
    text = tiny_model.encode_text(torch.randint(1, 1000, (5, 32)))
    with torch.no_grad():
        features = tiny_model.encode_video(video, mask)
        assert features.pooled is None and features.frames.shape == (3, 4, 64)
        sim = tiny_model.similarity(text, features)
        by_two = tiny_model.similarity(text, features, chunk_size=2)
    assert sim.shape == (5, 3)
    torch.testing.assert_close(by_two, sim)
    expected = reference_score(F.normalize(text, dim=-1), features.frames, mask, 0.1)
    torch.testing.assert_close(sim, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="text-conditioned"):
        tiny_model.head.pool(features.frames, mask)


def test_gradients_reach_the_backbone_and_freezing_leaves_nothing_trainable():
    model = vidclip.create_model("tiny", head="query_scored", num_frames=4)
    text = model.encode_text(torch.randint(1, 1000, (2, 32)))
    model.similarity(text, model.encode_video(torch.randn(2, 4, 3, 32, 32))).sum().backward()
    assert model.clip.visual.conv1.weight.grad.abs().sum() > 0
    assert model.clip.token_embedding.weight.grad.abs().sum() > 0
    frozen = vidclip.create_model("tiny", head="query_scored", num_frames=4, freeze_backbone=True)
    assert frozen.num_trainable_parameters() == 0  # the head has no parameters of its own
