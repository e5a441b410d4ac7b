"""Pieces the heads share: masking padded frames, running an LSTM over real frames only, key-padding biases.

Masks are bool (B, T), True = a real frame. Padded frames may hold anything, even NaN: every helper that
reads frame values zeroes the padding with ``masked_fill`` (a multiplication would keep NaN).
"""

from __future__ import annotations

from typing import TypeVar

import torch
from einops import reduce, repeat
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

M = TypeVar("M", bound=nn.Module)


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x: (B, T, ...), mask: (B, T) -> x with the padded frames set to zero (NaN included)."""
    valid = mask.reshape(*mask.shape, *(1,) * (x.ndim - mask.ndim))  # (B, T, 1, ...)
    return x.masked_fill(~valid, 0.0)


def masked_mean(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """frames: (B, T, D), mask: (B, T) -> mean over valid frames (B, D); a video with none gives zeros."""
    # masked_fill, not a product with the mask: even NaN padding is dropped; no valid frame divides by 1 (CLIP4Clip)
    count = reduce(mask, "b t -> b 1", "sum").clamp_min(1).to(frames.dtype)  # (B, 1)
    return reduce(zero_padding(frames, mask), "b t d -> b d", "sum") / count  # (B, D)


def pack_valid_frames(frames: torch.Tensor, mask: torch.Tensor) -> tuple[PackedSequence, torch.Tensor]:
    """frames: (B, T, C), mask: (B, T) -> (each video's real frames in order, packed; the order (B, T)).

    Real frames move to the front first, so any mask works, not only real-frames-first ones. Packing needs one
    step per video: a video without real frames packs its first frame, whose output the caller discards.
    """
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # (B, T) real frames first
    lengths = mask.sum(dim=1).clamp_min(1).cpu()
    index = order.unsqueeze(-1).expand_as(frames)  # (B, T, C)
    packed = pack_padded_sequence(frames.gather(1, index), lengths, batch_first=True, enforce_sorted=False)
    return packed, order


def scatter_to_frames(packed: PackedSequence, order: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_valid_frames` on a packed output -> (B, T, H), zeros at padded frames."""
    padded, _ = pad_packed_sequence(packed, batch_first=True, total_length=order.shape[1])  # (B, T, H)
    index = order.unsqueeze(-1).expand_as(padded)  # (B, T, H)
    return torch.zeros_like(padded).scatter(1, index, padded)  # back to the original frame positions


def run_on_valid_frames(lstm: nn.LSTM, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A batch-first LSTM over each video's real frames only: (B, T, C) -> states (B, T, H), 0 on padding."""
    packed, order = pack_valid_frames(frames, mask)
    return scatter_to_frames(lstm(packed)[0], order)


def key_padding_bias(
    mask: torch.Tensor, heads: int, dtype: torch.dtype, *, num_extra_keys: int = 0
) -> torch.Tensor:
    """mask: (B, T) -> additive attention bias (B*heads, K, K), K = T + ``num_extra_keys``.

    -inf on padded frames as keys, 0 elsewhere; the extra keys (e.g. prompt tokens after the frames) are always
    visible. A video with no real frame attends to all of them (its output is discarded by the caller) so that
    no softmax row is all -inf.
    """
    valid = mask | ~mask.any(dim=1, keepdim=True)  # (B, T)
    keys = torch.cat([valid, valid.new_ones(valid.shape[0], num_extra_keys)], dim=1)  # (B, K)
    bias = torch.zeros(keys.shape, dtype=dtype, device=mask.device).masked_fill(~keys, float("-inf"))
    # nn.MultiheadAttention reads a 3-D mask batch-major: row b * heads + h
    return repeat(bias, "b k -> (b h) q k", h=heads, q=keys.shape[1])


def require_attached(module: M | None, head: str) -> M:
    """``module`` if the head built it in ``attach``, else the error that says how to build the head."""
    if module is None:
        raise RuntimeError(f"the {head} head is not attached to a CLIP model (build it with create_model)")
    return module


class WrappedBlock(nn.Module):
    """Base of the wrappers that stand in for an open_clip block in ``resblocks`` (``self.block``)."""

    block: nn.Module

    def get_weight_dtype(self) -> torch.dtype:  # open_clip's Transformer.get_cast_dtype asks block 0
        return self.block.get_weight_dtype()


def clip_embed_dim(clip: nn.Module) -> int:
    """The width D of ``clip``'s image and text embeddings (what ``encode_image`` returns)."""
    for tower in (clip.visual, getattr(clip, "text", None)):
        if isinstance(getattr(tower, "output_dim", None), int):
            return tower.output_dim
    projection = getattr(clip, "text_projection", None)  # (text width, D) on open_clip's CLIP
    if isinstance(projection, nn.Parameter):
        return projection.shape[1]
    raise ValueError(
        f"cannot tell the embedding width of {type(clip).__name__}: no output_dim or text_projection"
    )
