"""``seq_lstm``: CLIP4Clip's seqLSTM — an LSTM over the frame sequence with a residual, then meanP."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vidclip.heads.base import register_head
from vidclip.heads.mean import MeanHead
from vidclip.heads.seq_transformer import clip_embed_dim


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

    def pool(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, D), mask: (B, T) -> L2-normalised video embeddings (B, D)."""
        return super().pool(self.encode_frames(frames, mask), mask)

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, D), mask: (B, T) -> LSTM states plus frames (B, T, D); padded positions hold zeros."""
        if self.lstm is None:
            raise RuntimeError(
                "the seq_lstm head is not attached to a CLIP model (build it with create_model)"
            )
        frames = frames.masked_fill(~mask.unsqueeze(-1), 0.0).to(self.lstm.weight_ih_l0.dtype)
        # Real frames first, in their order; packing needs >= 1 step (an empty video's output is discarded later).
        order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # (B, T)
        index = order.unsqueeze(-1).expand_as(frames)  # (B, T, D)
        lengths = mask.sum(dim=1).clamp_min(1).cpu()
        packed = pack_padded_sequence(
            frames.gather(1, index), lengths, batch_first=True, enforce_sorted=False
        )
        self.lstm.flatten_parameters()  # keeps cuDNN's weight layout contiguous after .to(device)
        states, _ = self.lstm(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=frames.shape[1])  # (B, T, D)
        states = torch.zeros_like(states).scatter(1, index, states)  # back to the original frame positions
        return states.masked_fill(~mask.unsqueeze(-1), 0.0) + frames
