"""``seq_lstm``: CLIP4Clip's seqLSTM — an LSTM over the frame sequence with a residual, then meanP."""

from __future__ import annotations

import torch
from torch import nn

from vidclip.heads.base import register_head
from vidclip.heads.layers import clip_embed_dim, require_attached, run_on_valid_frames, zero_padding
from vidclip.heads.mean import MeanHead


@register_head("seq_lstm")
class SeqLSTMHead(MeanHead):
    """A one-layer unidirectional LSTM (D -> D) over each video's real frames, plus a residual, then meanP.

    frames (B, T, D) -> h = LSTM(real frames, in order) -> h + frames -> meanP (normalise each frame, masked
    mean, normalise). The LSTM sees only each video's real frames (packed by length), so padding never enters
    its state. CLIP4Clip packs the first ``mask.sum()`` frames, which is the same thing for its masks (real
    frames first); here real frames are moved to the front first, so any mask works. The LSTM keeps PyTorch's
    initialisation, as in CLIP4Clip (its ``init_weights`` does not touch LSTMs).

    Reference: Luo et al., "CLIP4Clip", 2021, Sec. 3.3 (sequential type); code: ArrowLuo/CLIP4Clip
    ``modules/modeling.py`` (``_loose_similarity``, ``sim_header == "seqLSTM"``). CLIP4Clip also builds a frame
    position table for seqLSTM but never uses it; this head has none.

    No options. Text-independent, order-aware, not parameter-efficient.
    """

    order_aware = True

    def __init__(self) -> None:
        super().__init__()
        self.lstm: nn.LSTM | None = None  # built by attach, once the embedding width is known

    def attach(self, clip: nn.Module, *, num_frames: int) -> None:
        width = clip_embed_dim(clip)
        self.lstm = nn.LSTM(input_size=width, hidden_size=width, num_layers=1, batch_first=True)

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, D), mask: (B, T) -> LSTM states plus frames (B, T, D); padded positions hold zeros."""
        lstm = require_attached(self.lstm, "seq_lstm")
        frames = zero_padding(frames, mask).to(lstm.weight_ih_l0.dtype)  # (B, T, D)
        lstm.flatten_parameters()  # keeps cuDNN's weight layout contiguous after .to(device)
        return zero_padding(run_on_valid_frames(lstm, frames, mask), mask) + frames
