"""heads/layers.py: packing real frames for an LSTM and scattering back, the key-padding bias, masked means."""

import torch
import torch.nn.functional as F
from torch import nn

from vidclip.heads.layers import (
    key_padding_bias,
    masked_mean,
    pack_valid_frames,
    run_on_valid_frames,
    scatter_to_frames,
    zero_padding,
)

MASK = torch.tensor([[1, 1, 1, 1], [0, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)  # real frames anywhere


def test_pack_keeps_only_the_real_frames_in_order_and_scatter_puts_them_back():
    frames = torch.randn(3, 4, 5)
    packed, order = pack_valid_frames(frames, MASK)
    padded, lengths = nn.utils.rnn.pad_packed_sequence(packed, batch_first=True)
    assert lengths.tolist() == [4, 2, 1]
    for b in range(3):
        assert torch.equal(padded[b, : lengths[b]], frames[b, MASK[b]])  # real frames first, in their order
    restored = scatter_to_frames(packed, order)  # (B, T, 5)
    assert torch.equal(restored, zero_padding(frames, MASK))


def test_a_video_without_real_frames_packs_one_step():
    packed, order = pack_valid_frames(torch.randn(1, 3, 2), torch.zeros(1, 3, dtype=torch.bool))
    assert packed.batch_sizes.tolist() == [1]
    assert scatter_to_frames(packed, order).shape == (1, 3, 2)


def test_lstm_on_valid_frames_equals_the_lstm_on_the_video_cut_to_them():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 6, batch_first=True)
    frames = torch.randn(3, 4, 5)
    frames[~MASK] = 1e6  # padding must not reach the state
    states = run_on_valid_frames(lstm, frames, MASK)  # (B, T, 6)
    for b in range(3):
        alone, _ = lstm(frames[b, MASK[b]][None])
        assert torch.allclose(states[b, MASK[b]], alone[0], atol=1e-6)
        assert torch.all(states[b, ~MASK[b]] == 0)


def test_key_padding_bias_blocks_padded_keys_for_every_head_and_query():
    heads = 2
    bias = key_padding_bias(MASK, heads, torch.float32)
    assert bias.shape == (3 * heads, 4, 4)
    for row in range(3 * heads):
        video = row // heads  # nn.MultiheadAttention's batch-major order: b * heads + h
        expected = torch.zeros(4).masked_fill(~MASK[video], float("-inf")).expand(4, -1)
        assert torch.equal(bias[row], expected)


def test_key_padding_bias_hides_padded_values_from_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 8) for _ in range(3))
    bias = key_padding_bias(MASK, 1, torch.float32)  # (B, T, T)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    k2, v2 = k.clone(), v.clone()
    k2[~MASK], v2[~MASK] = 100.0, -100.0
    assert torch.allclose(F.scaled_dot_product_attention(q, k2, v2, attn_mask=bias), out, atol=1e-6)


def test_key_padding_bias_extra_keys_stay_visible_and_no_row_is_all_blocked():
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    bias = key_padding_bias(mask, 1, torch.float32, num_extra_keys=2)
    assert bias.shape == (2, 5, 5)
    assert torch.equal(bias[0, 0], torch.tensor([0.0, float("-inf"), 0.0, 0.0, 0.0]))
    assert torch.all(bias[1] == 0)  # a video without real frames attends to everything (output discarded)


def test_masked_mean_ignores_padding_even_nan():
    frames = torch.randn(3, 4, 5)
    frames[~MASK] = float("nan")
    mean = masked_mean(frames, MASK)  # (B, D)
    for b in range(3):
        assert torch.allclose(mean[b], frames[b, MASK[b]].mean(dim=0))
    assert torch.equal(masked_mean(frames[:1], torch.zeros(1, 4, dtype=torch.bool)), torch.zeros(1, 5))
