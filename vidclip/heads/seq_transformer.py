"""``seq_transformer``: CLIP4Clip's seqTransf — a small transformer over the frame sequence, then meanP."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from vidclip.heads.base import register_head
from vidclip.heads.layers import clip_embed_dim, key_padding_bias, require_attached, zero_padding
from vidclip.heads.mean import MeanHead

if TYPE_CHECKING:
    from open_clip.transformer import Transformer

CLIP4CLIP_MAX_POSITIONS = 77  # CLIP4Clip sizes its frame position table like OpenAI CLIP's text context


@register_head("seq_transformer")
class SeqTransformerHead(MeanHead):
    """Frame position embeddings + a transformer over frames + a residual, then meanP (CLIP4Clip "seqTransf").

    frames (B, T, D) -> x = frames + P[0..T) -> transformer (no causal mask; padded frames are masked out as
    keys) -> x + frames (the residual skips the position embeddings) -> meanP: normalise each frame, masked
    mean, normalise.

    The transformer has ``num_layers`` pre-LN residual attention blocks (open_clip's own block class) with the
    text tower's width, head count and MLP activation (4x MLP; QuickGELU for OpenAI CLIP, as in CLIP4Clip),
    LayerNorm eps 1e-12 as CLIP4Clip's blocks have it, no dropout. ``attach`` initialises them like CLIP4Clip:
    P from the first rows of the text positional embedding, block i from text block i; what the text tower
    cannot provide (blocks past its depth, rows past its context length) gets CLIP4Clip's init (normal, std
    0.02; zero biases; PyTorch's default for the attention input projection).

    If the text tower is not an open_clip transformer of the embedding width (e.g. RN50: embed 1024, text 512,
    or a Hugging Face text tower), nothing can be copied: the blocks are built at the embedding width with
    width // 64 heads and QuickGELU, and start from CLIP4Clip's random init.

    Reference: Luo et al., "CLIP4Clip: An Empirical Study of CLIP for End to End Video Clip Retrieval", 2021,
    Sec. 3.3 (sequential type); code: ArrowLuo/CLIP4Clip ``modules/modeling.py`` (``_loose_similarity``,
    ``sim_header == "seqTransf"``; initialisation in ``from_pretrained``) and ``modules/module_cross.py``.
    MSR-VTT 1k-A ViT-B/32 t2v R@1: meanP 43.1 -> seqTransf 44.5.

    Options:
        num_layers: transformer blocks (default 4, CLIP4Clip's ``cross_num_hidden_layers``).
        max_positions: size of the frame position table, the most frames a video may have (default: the text
            context length, 77 for OpenAI CLIP as in CLIP4Clip).
        init_from_text: copy the position table and blocks from the text tower (default True).

    Text-independent, order-aware, not parameter-efficient (CLIP is fine-tuned with it in CLIP4Clip).
    """

    order_aware = True

    def __init__(
        self, *, num_layers: int = 4, max_positions: int | None = None, init_from_text: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        if max_positions is not None and (not isinstance(max_positions, int) or max_positions < 1):
            raise ValueError(f"max_positions must be a positive int or None, got {max_positions!r}")
        self.num_layers = num_layers
        self.max_positions = max_positions
        self.init_from_text = init_from_text
        self.position_embedding: nn.Embedding | None = None  # built by attach, once the widths are known
        self.transformer: Transformer | None = None

    def attach(self, clip: nn.Module, *, num_frames: int) -> None:
        from open_clip.transformer import LayerNorm, QuickGELU, Transformer  # open_clip loads on first use

        width = clip_embed_dim(clip)
        text = text_tower(clip, width)
        default = text.positional_embedding.shape[0] if text is not None else CLIP4CLIP_MAX_POSITIONS
        positions = self.max_positions or default
        if num_frames > positions:
            raise ValueError(
                f"num_frames={num_frames} exceeds max_positions={positions} of the seq_transformer head"
            )
        template = text.transformer.resblocks[0] if text is not None else None
        heads = template.attn.num_heads if template is not None else max(1, width // 64)
        activation = type(template.mlp.gelu) if template is not None else QuickGELU
        norm = partial(LayerNorm, eps=1e-12)
        self.position_embedding = nn.Embedding(positions, width)
        self.transformer = Transformer(width, self.num_layers, heads, act_layer=activation, norm_layer=norm)
        self.apply(init_like_clip4clip)
        if text is not None and self.init_from_text:
            init_from_text_tower(self.position_embedding, self.transformer, text)

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, D), mask: (B, T) -> temporally contextualised frame features (B, T, D), unnormalised."""
        transformer = require_attached(self.transformer, "seq_transformer")
        num_frames = frames.shape[1]
        if num_frames > self.position_embedding.num_embeddings:
            raise ValueError(
                f"frames has {num_frames} frames; this head holds {self.position_embedding.num_embeddings}"
            )
        weight = self.position_embedding.weight  # (P, D)
        frames = zero_padding(frames, mask).to(weight.dtype)  # padding may hold anything
        x = frames + weight[:num_frames]  # (B, T, D)
        bias = key_padding_bias(mask, transformer.resblocks[0].attn.num_heads, x.dtype)  # (B*heads, T, T)
        return transformer(x, attn_mask=bias) + frames  # the residual skips the position embeddings


def init_like_clip4clip(module: nn.Module) -> None:
    """CLIP4Clip's ``init_weights`` for its head: linear and embedding weights N(0, 0.02), zero linear biases.

    (LayerNorms start at ones/zeros and the attention input projection keeps PyTorch's init, as there.)
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


@torch.no_grad()
def init_from_text_tower(position_embedding: nn.Embedding, transformer: Transformer, text: nn.Module) -> None:
    """CLIP4Clip's initialisation: P[i] <- text positional_embedding[i], block i <- text block i, as far as both go.

    ``text`` is an open_clip text tower of the same width (``text_tower``); its blocks are open_clip
    ``ResidualAttentionBlock``s like ours, so the copy is a strict per-block state-dict load.
    """
    rows = min(position_embedding.num_embeddings, text.positional_embedding.shape[0])
    position_embedding.weight[:rows] = text.positional_embedding[:rows]
    # zip stops at the shorter: blocks past the text tower's depth keep their init, extra text blocks go unused
    for block, text_block in zip(transformer.resblocks, text.transformer.resblocks, strict=False):
        block.load_state_dict(text_block.state_dict())


def text_tower(clip: nn.Module, width: int) -> nn.Module | None:
    """The module holding ``clip``'s open_clip text transformer and positional embedding, if its blocks can seed ours.

    open_clip's ``CLIP`` keeps the text tower's parts on itself; ``CustomTextCLIP`` keeps them under ``.text``.
    """
    from open_clip.transformer import ResidualAttentionBlock, Transformer

    tower = getattr(clip, "text", clip)
    transformer = getattr(tower, "transformer", None)
    if not isinstance(transformer, Transformer) or not hasattr(tower, "positional_embedding"):
        return None  # e.g. a Hugging Face text tower
    plain_blocks = all(type(block) is ResidualAttentionBlock for block in transformer.resblocks)
    return tower if plain_blocks and transformer.width == width else None
