"""The ``seq_lstm`` head (CLIP4Clip seqLSTM): masking, packing, order, freezing.

Exactness against CLIP4Clip's own code is in test_convert.py (parity on ViT-B/32).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vidclip
from vidclip.heads import create_head
from vidclip.heads.layers import masked_mean

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vidclip.create_model("tiny", head="seq_lstm", num_frames=4).eval()


def frames(b=3, t=4, d=64, seed=0):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed))


def test_registered_with_flags(model):
    head = create_head("seq_lstm")
    assert not head.text_conditioned and head.order_aware and not head.parameter_efficient
    lstm = model.head.lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.batch_first) == (64, 64, 1, True)
    assert not lstm.bidirectional


def test_matches_an_lstm_run_on_each_videos_real_frames(model):
    x = frames()
    pooled = model.head.pool(x, MASK)
    assert pooled.shape == (3, 64)
    for video, valid, result in zip(x, MASK, pooled, strict=True):
        real = video[valid][None]  # (1, k, D)
        states, _ = model.head.lstm(real)
        expected = F.normalize(
            masked_mean(F.normalize(states + real, dim=-1), torch.ones(1, real.shape[1]).bool())
        )
        torch.testing.assert_close(result, expected[0])


def test_padded_frames_change_nothing(model):
    x = frames()
    garbage = x.clone()
    noise = torch.randn(int((~MASK).sum()), 64) * 1e3
    noise[:, 0] = float("nan")
    garbage[~MASK] = noise
    torch.testing.assert_close(model.head.pool(garbage, MASK), model.head.pool(x, MASK))


def test_padding_anywhere_equals_the_video_of_its_real_frames(model):
    x = frames(b=1)
    holes = model.head.pool(x, torch.tensor([[True, False, True, True]]))
    compact = model.head.pool(x[:, [0, 2, 3]], torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(holes, compact)


def test_video_without_real_frames_is_finite(model):
    pooled = model.head.pool(frames(b=2), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))
    assert torch.isfinite(pooled).all() and torch.all(pooled[1] == 0)


def test_order_aware(model):
    x, full = frames(), torch.ones(3, 4, dtype=torch.bool)
    assert (model.head.pool(x.flip(1), full) - model.head.pool(x, full)).abs().max() > 1e-3


def test_frozen_backbone_trains_exactly_the_head():
    model = vidclip.create_model("tiny", head="seq_lstm", num_frames=4, freeze_backbone=True)
    head_params = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == head_params
    text = model.encode_text(torch.randint(1, 1000, (2, 32)))
    model.similarity(text, model.encode_video(torch.randn(2, 4, 3, 32, 32), MASK[:2])).sum().backward()
    for name, param in model.named_parameters():
        has_grad = param.grad is not None and param.grad.abs().sum() > 0
        assert has_grad == (id(param) in head_params), name
