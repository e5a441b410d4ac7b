"""``x_pool``: X-Pool's text-conditioned pooling — each text attends over the frames, one video per text."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidclip.heads.base import TemporalHead, register_head
from vidclip.heads.layers import clip_embed_dim, key_padding_bias, require_attached, zero_padding

# X-Pool's pooling module (``modules/transformer.py``: ``Transformer`` holding a ``MultiHeadedAttention``) ->
# this head's modules; every entry has a weight and a bias. Issue 18's ``from_xpool`` reuses it.
XPOOL_KEY_MAP = {
    "layer_norm1": "input_norm",
    "cross_attn.q_proj": "query",
    "cross_attn.k_proj": "key",
    "cross_attn.v_proj": "value",
    "cross_attn.out_proj": "attn_out",
    "layer_norm2": "attn_norm",
    "linear_proj": "linear",
    "layer_norm3": "output_norm",
}
XPOOL_PREFIX = "pool_frames."  # where X-Pool's CLIPTransformer keeps that module in its checkpoints


@register_head("x_pool")
class XPoolHead(TemporalHead):
    """Text-conditioned cross-attention pooling (X-Pool): the text is the query, the frames keys and values.

    For raw text features t (N, D) and frames f (B, T, D) (mask (B, T), True = real frame)::

        a      = MHA(q = LN1(t), k = v = LN1(f))        softmax over the video's real frames only
        x      = LN2(out_proj(a))
        pooled = LN3(x + dropout(linear(x)))            (N, B, D): the video as pooled for each text
        score  = <t / |t|, pooled / |pooled|>

    LN1 is shared by text and frames and sees the raw text (LayerNorm is not scale-invariant: its eps),
    hence ``raw_text``. The q/k/v/out projections and ``linear`` start as identities with zero biases, as
    X-Pool initialises them. X-Pool has no mask: padded frames get no weight here, so a padded video scores
    as the same video cut to its real frames; a video with no real frame scores 0.

    Reference: Gorti et al., "X-Pool: Cross-Modal Language-Video Attention for Text-Video Retrieval", CVPR
    2022; code: layer6ai-labs/xpool ``modules/transformer.py`` (``Transformer``, ``MultiHeadedAttention``)
    and ``modules/metrics.py`` (``sim_matrix_training``, ``sim_matrix_inference``). MSR-VTT 9k, ViT-B/32,
    12 frames, t2v R@1 46.9. ``XPOOL_KEY_MAP`` maps its weights onto this head (``convert_xpool_state_dict``).

    Options:
        num_heads: attention heads (default 1, X-Pool's ``num_mha_heads``); must divide D.
        dropout: dropout on the ``linear`` branch in training (default 0.3, X-Pool's ``transformer_dropout``).
        text_chunk_size, video_chunk_size: texts and videos pooled per block (default 256 each). The pooled
            videos are (N, B, D), 190 GiB for 10k x 10k at D = 512; only one block's (text chunk, video
            chunk, D) tensors exist at a time (peak ~5 of them: about 0.8 GiB at the defaults, D = 512).

    Text-conditioned, order-blind (no frame positions), not parameter-efficient (1.3 M on ViT-B/32; X-Pool
    fine-tunes CLIP with it).
    """

    text_conditioned = True
    raw_text = True

    def __init__(
        self,
        *,
        num_heads: int = 1,
        dropout: float = 0.3,
        text_chunk_size: int = 256,
        video_chunk_size: int = 256,
    ) -> None:
        super().__init__()
        for name, value in [
            ("num_heads", num_heads),
            ("text_chunk_size", text_chunk_size),
            ("video_chunk_size", video_chunk_size),
        ]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.num_heads = num_heads
        self.text_chunk_size = text_chunk_size
        self.video_chunk_size = video_chunk_size
        self.dropout = nn.Dropout(float(dropout))
        self.width: int | None = None  # D; build creates the layers once it is known
        self.input_norm: nn.LayerNorm | None = None
        self.query = self.key = self.value = self.attn_out = self.linear = None
        self.attn_norm = self.output_norm = None

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, num_heads={self.num_heads}, text_chunk_size={self.text_chunk_size}, "
            f"video_chunk_size={self.video_chunk_size}"
        )

    def attach(self, clip: nn.Module, *, num_frames: int) -> None:
        self.build(clip_embed_dim(clip))

    def build(self, width: int) -> None:
        """Create the layers for width D = ``width`` (``attach`` passes CLIP's), X-Pool's initialisation."""
        if width % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} of the x_pool head does not divide the width {width}"
            )
        self.width = width
        for name in ("input_norm", "attn_norm", "output_norm"):
            setattr(self, name, nn.LayerNorm(width))
        for name in ("query", "key", "value", "attn_out", "linear"):
            layer = nn.Linear(width, width)
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
            setattr(self, name, layer)

    def score(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """text: (N, D) raw text features, frames: (B, T, D), mask: (B, T) -> cosine similarities (N, B)."""
        if not len(text) or not len(frames):
            return text.new_zeros(len(text), len(frames))
        query, key, value, bias = self.project(text, frames, mask)
        unit_text = F.normalize(text.to(query.dtype), dim=-1)  # X-Pool's cosine takes the raw text, not LN1's
        real = mask.any(dim=1)  # (B,)
        rows = []
        for n in range(0, len(text), self.text_chunk_size):
            texts = slice(n, n + self.text_chunk_size)
            blocks = []
            for b in range(0, len(frames), self.video_chunk_size):
                videos = slice(b, b + self.video_chunk_size)
                pooled = self.attend(query[:, texts], key[videos], value[videos], bias[videos])  # (n, b, D)
                cosine = torch.einsum("nd,nbd->nb", unit_text[texts], F.normalize(pooled, dim=-1))
                blocks.append(cosine.masked_fill(~real[videos], 0.0))  # (n, b)
            rows.append(torch.cat(blocks, dim=1))
        return torch.cat(rows)  # (N, B)

    def pool_per_text(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every video pooled for every text, unchunked: (N, B, D) (X-Pool's pooled output is (B, N, D))."""
        return self.attend(*self.project(text, frames, mask))

    def project(
        self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """LN1 and the q/k/v projections, once for all texts and videos -> query (H, N, d), key and value
        (B, H, T, d), and the attention bias (B, 1, 1, T) that gives padded frames no weight."""
        norm = require_attached(self.input_norm, "x_pool")
        text, frames = text.to(norm.weight.dtype), zero_padding(frames, mask).to(norm.weight.dtype)
        frames = norm(frames)  # padding was zeroed (it may hold NaN); the bias keeps it out of the softmax
        query = self._split_heads(self.query(norm(text)))  # (H, N, d)
        key = self._split_heads(self.key(frames))  # (B, H, T, d)
        value = self._split_heads(self.value(frames))  # (B, H, T, d)
        bias = key_padding_bias(mask, 1, key.dtype)[:, None, :1]  # (B, 1, 1, T), -inf on padded frames
        return query, key, value, bias

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """query: (H, n, d), key, value: (b, H, T, d), bias: (b, 1, 1, T) -> pooled per text (n, b, D)."""
        query = query.expand(key.shape[0], -1, -1, -1)  # (b, H, n, d), a view
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)  # (b, H, n, d)
        x = self.attn_norm(self.attn_out(rearrange(attended, "b h n d -> n b (h d)")))  # (n, b, D)
        return self.output_norm(x + self.dropout(self.linear(x)))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., L, D) -> (..., H, L, D/H): head h takes channels [h D/H, (h+1) D/H), as in X-Pool."""
        return rearrange(x, "... l (h d) -> ... h l d", h=self.num_heads)


def convert_xpool_state_dict(
    state: Mapping[str, torch.Tensor], prefix: str = XPOOL_PREFIX
) -> dict[str, torch.Tensor]:
    """X-Pool's pooling weights (its keys under ``prefix``) -> a state dict for :class:`XPoolHead`.

    Fails naming the key when one is missing or when ``prefix`` holds a key the map does not know (another
    version of X-Pool's module), so nothing is silently dropped.
    """
    expected = {
        f"{prefix}{theirs}.{p}": f"{ours}.{p}"
        for theirs, ours in XPOOL_KEY_MAP.items()
        for p in ("weight", "bias")
    }
    missing = sorted(set(expected) - set(state))
    unknown = sorted(k for k in state if k.startswith(prefix) and k not in expected)
    if missing or unknown:
        raise ValueError(
            f"not X-Pool's pooling weights under prefix {prefix!r}: missing {missing or 'none'}, "
            f"unknown {unknown or 'none'}"
        )
    return {ours: state[theirs] for theirs, ours in expected.items()}
