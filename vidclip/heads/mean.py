"""``mean``: CLIP4Clip's meanP — the parameter-free baseline every other head is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidclip.heads.base import TemporalHead, register_head
from vidclip.heads.layers import masked_mean


@register_head("mean")
class MeanHead(TemporalHead):
    """Masked mean of L2-normalised frame features, renormalised (CLIP4Clip "meanP").

    Text-independent, order-blind, no parameters. Reference: Luo et al., "CLIP4Clip", 2021, Sec. 3.3.
    Heads that contextualise the frames first (seq_lstm, seq_transformer, ted_adapter) override
    :meth:`encode_frames` and keep this pooling.
    """

    def pool(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        frames = F.normalize(self.encode_frames(frames, mask), dim=-1)  # (B, T, D)
        return F.normalize(masked_mean(frames, mask), dim=-1)  # (B, D)

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, D), mask: (B, T) -> the frame features meanP averages (B, T, D); here unchanged."""
        return frames
