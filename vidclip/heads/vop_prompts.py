"""VoP's prompt modules and the wrappers that run open_clip's own blocks with them (used by ``heads/vop.py``).

Deep prompts: a prompted block gets its layer's own prompt tokens next to its input tokens, and they are
dropped after it, so the next layer sees fresh ones and open_clip's pooling (the image tower's CLS token at
index 0, the text tower's EOT token at the argmax of the ids) finds the token layout it expects. Prompts are
added after the position embeddings, so they carry no position and CLIP's own tokens keep theirs.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from vidclip.heads.base import HeadContext, InstalledModule
from vidclip.heads.layers import WrappedBlock, key_padding_bias, run_on_valid_frames, zero_padding

PROMPT_STD = 0.02  # VoP's init, N(0, 0.02) (ModelScope vop_retrieval: VisualPromptLearner, TextPromptLearner)


def prompt_tokens(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.normal_(torch.empty(*shape), std=PROMPT_STD))


class PromptContext(HeadContext):
    """The head's per-call state plus what VoP's installed modules share across layers."""

    def __init__(self) -> None:
        super().__init__()
        self.eot: torch.Tensor | None = None  # (N,) EOT index of each text of the current text call
        self.generator: ContextPromptGenerator | None = None  # VoP^C's generator, registered in the head

    def record_eot(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the token embedding: each text's EOT index, the argmax of its ids (CLIP's rule)."""
        self.eot = args[0].argmax(dim=-1)

    def require_eot(self, num_texts: int) -> torch.Tensor:
        if self.eot is None or self.eot.shape[0] != num_texts:
            raise RuntimeError("vop's text prompts need the token ids: encode text through clip.encode_text")
        return self.eot


class ContextPromptGenerator(nn.Module):
    """VoP^C: context prompts from the frames' CLS tokens, (B, T, C) -> (B, T, n, C): a BiLSTM, then a linear map.

    One generator serves every prompted layer; each feeds it the CLS tokens entering that layer. It reads only
    a video's real frames, in order, as if its padding were not there.
    """

    def __init__(self, width: int, num_prompts: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(width, width, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * width, num_prompts * width)
        nn.init.normal_(self.proj.weight, std=PROMPT_STD)  # prompts start at the scale of the learnt ones
        nn.init.zeros_(self.proj.bias)

    def forward(self, cls: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = run_on_valid_frames(self.lstm, cls, mask)  # (B, T, 2C), in frame order
        return rearrange(self.proj(hidden), "b t (n c) -> b t n c", c=cls.shape[-1])  # (B, T, n, C)


class FramePrompts(InstalledModule):
    """One ViT layer's prompts for per-frame attention: shared, frame-position (VoP^P) and context (VoP^C)."""

    def __init__(self, width: int, *, shared: int, per_position: int, max_frames: int, context: int) -> None:
        super().__init__()
        self.shared = prompt_tokens(shared, width)
        self.per_position = prompt_tokens(max_frames, per_position, width) if per_position else None
        self.num_context = context

    def forward(self, cls: torch.Tensor, mask: torch.Tensor, context: PromptContext) -> torch.Tensor:
        """cls: (B, T, C) CLS tokens entering the layer, mask: (B, T) -> prompts (B*T, n, C)."""
        batch, frames, _ = cls.shape
        parts = [repeat(self.shared, "n c -> b t n c", b=batch, t=frames)]  # (B, T, n, C) each
        if self.per_position is not None:
            if frames > self.per_position.shape[0]:
                raise ValueError(
                    f"video has {frames} frames; vop's frame-position prompts exist for "
                    f"{self.per_position.shape[0]} (the model's num_frames)"
                )
            parts.append(repeat(self.per_position[:frames], "t n c -> b t n c", b=batch))
        if self.num_context:
            parts.append(context.generator(cls, mask))
        return rearrange(torch.cat(parts, dim=2), "b t n c -> (b t) n c")  # (B*T, n, C)

    def no_weight_decay(self) -> set[str]:
        return {"shared", "per_position"} if self.per_position is not None else {"shared"}


class PromptedBlock(WrappedBlock):
    """An open_clip ViT block run per frame on [CLS, prompts, patches]; the prompts are dropped after it.

    ``prompt_norm`` is ``ln_pre`` for the first block: VoP inserts the first layer's prompts before it.
    """

    def __init__(
        self, block: nn.Module, prompts: FramePrompts, context: PromptContext, prompt_norm: nn.Module | None
    ) -> None:
        super().__init__()
        self.block, self.prompts = block, prompts
        self._context = context
        self._prompt_norm = (prompt_norm,)  # in a tuple: it is the tower's ln_pre, not registered twice

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):  # open_clip's call signature
        layout = self._context.require_layout(q_x.shape[0])
        cls = rearrange(q_x[:, 0], "(b t) c -> b t c", b=layout.batch_size)  # (B, T, C)
        prompts = self.prompts(cls, layout.mask, self._context).to(q_x.dtype)  # (B*T, n, C)
        if self._prompt_norm[0] is not None:
            prompts = self._prompt_norm[0](prompts)
        x = self.block(torch.cat([q_x[:, :1], prompts, q_x[:, 1:]], dim=1), attn_mask=attn_mask)
        return torch.cat([x[:, :1], x[:, 1 + prompts.shape[1] :]], dim=1)  # (B*T, 1 + patches, C)


class JointPrompts(InstalledModule):
    """One of VoP^F's joint layers: its video prompts, and (first joint layer) the frame position embedding."""

    def __init__(self, width: int, num_prompts: int, max_frames: int) -> None:
        super().__init__()
        self.tokens = prompt_tokens(num_prompts, width)
        self.frame_position = prompt_tokens(max_frames, width) if max_frames else None

    def no_weight_decay(self) -> set[str]:
        return {"tokens", "frame_position"} if self.frame_position is not None else {"tokens"}


class JointBlock(WrappedBlock):
    """VoP^F's later layers: one sequence per video, its frames' CLS tokens then the layer's video prompts.

    (B*T, L, C) -> (B*T, 1, C): the first joint layer leaves the patch tokens behind and adds the frame
    position embedding; padded frames are hidden from attention, so a padded video gives its real frames what
    the video cut to its real length gives.
    """

    def __init__(self, block: nn.Module, prompts: JointPrompts, context: PromptContext) -> None:
        super().__init__()
        self.block, self.prompts = block, prompts
        self._context = context

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        layout = self._context.require_layout(q_x.shape[0])
        batch, frames = layout.batch_size, layout.num_frames
        cls = rearrange(q_x[:, 0], "(b t) c -> b t c", b=batch)  # (B, T, C)
        position = self.prompts.frame_position
        if position is not None:
            if frames > position.shape[0]:
                raise ValueError(f"video has {frames} frames; vop's F variant embeds {position.shape[0]}")
            cls = cls + position[:frames].to(cls.dtype)
        cls = zero_padding(cls, layout.mask)  # padding may hold anything, even NaN
        prompts = repeat(self.prompts.tokens.to(cls.dtype), "n c -> b n c", b=batch)  # (B, n, C)
        heads, count = self.block.attn.num_heads, prompts.shape[1]
        # padded frames are hidden as keys, the prompts never are
        bias = key_padding_bias(layout.mask, heads, cls.dtype, num_extra_keys=count)  # (B*heads, T+n, T+n)
        x = self.block(torch.cat([cls, prompts], dim=1), attn_mask=bias)  # (B, T+n, C)
        return rearrange(x[:, :frames], "b t c -> (b t) 1 c")  # (B*T, 1, C)


class TextPrompts(InstalledModule):
    """One text layer's prompts: ``num_prefix`` tokens right after SOT, the rest right before EOT."""

    def __init__(self, width: int, num_prompts: int, num_prefix: int) -> None:
        super().__init__()
        self.tokens = prompt_tokens(num_prompts, width)
        self.num_prefix = num_prefix

    def no_weight_decay(self) -> set[str]:
        return {"tokens"}


class PromptedTextBlock(WrappedBlock):
    """An open_clip text block run with its layer's prompts; the prompts are dropped after it.

    The prompts are appended and placed by the attention mask instead of by moving tokens: without position
    embeddings, attention only sees *which* keys are visible. Under CLIP's causal mask every token after SOT
    sees the prefix prompts, and EOT (the pooled token) and what follows it see the suffix prompts.
    """

    def __init__(self, block: nn.Module, prompts: TextPrompts, context: PromptContext) -> None:
        super().__init__()
        self.block, self.prompts = block, prompts
        self._context = context

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        texts, length, _ = q_x.shape
        eot = self._context.require_eot(texts)
        prompts = repeat(self.prompts.tokens.to(q_x.dtype), "p c -> n p c", n=texts)  # (N, n, C)
        bias = text_prompt_bias(attn_mask, eot, length, self.prompts.num_prefix, prompts.shape[1])
        heads = self.block.attn.num_heads
        bias = repeat(bias.to(q_x.dtype), "n q k -> (n h) q k", h=heads)  # row n * heads + h
        return self.block(torch.cat([q_x, prompts], dim=1), attn_mask=bias)[:, :length]


def text_prompt_bias(
    attn_mask: torch.Tensor | None, eot: torch.Tensor, length: int, num_prefix: int, num_prompts: int
) -> torch.Tensor:
    """CLIP's (L, L) text mask extended by prompt keys -> additive bias (N, L+n, L+n).

    Prompt rows see everything (their outputs are dropped after the block).
    """
    texts, size = eot.shape[0], length + num_prompts
    bias = torch.zeros(texts, size, size, device=eot.device)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:  # True = blocked, as nn.MultiheadAttention reads it
            attn_mask = torch.zeros(attn_mask.shape, device=eot.device).masked_fill(attn_mask, float("-inf"))
        per_text = attn_mask.reshape(texts if attn_mask.ndim == 3 else 1, -1, length, length)[:, 0]
        bias[:, :length, :length] = per_text  # a per-head (N*heads, L, L) mask is the same for every head
    position = torch.arange(length, device=eot.device)
    blocked = torch.tensor(float("-inf"), device=eot.device)
    sees_prefix = repeat(position >= 1, "l -> n l", n=texts)  # SOT comes before the prefix
    sees_suffix = position >= eot.unsqueeze(1)  # (N, L): the suffix comes right before EOT
    bias[:, :length, length : length + num_prefix] = torch.where(sees_prefix, 0.0, blocked).unsqueeze(-1)
    bias[:, :length, length + num_prefix :] = torch.where(sees_suffix, 0.0, blocked).unsqueeze(-1)
    return bias
