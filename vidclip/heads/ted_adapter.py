"""``ted_adapter``: M2-CLIP's TED-Adapter — temporal adapters inside the ViT blocks, then frame mean pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidclip.heads.base import HeadContext, InstalledModule, register_head
from vidclip.heads.mean import MeanHead


class TEDAdapter(InstalledModule):
    """Global temporal Enhancement + local temporal Difference on one block's tokens (B*T, L, C).

    E (all tokens): fc C->bottleneck, depthwise Conv1d over time (kernel 3), fc back.
    D (patch tokens): Δ_t = x_t - x_{t-1} (0 at t = 0), fc C->bottleneck, depthwise Conv3d (1, 3, 3) over the
    patch grid, fc back. Output: x + E(x) + [0; D(x)]. Both convolutions and all fc biases start at zero, so
    the adapter starts as the identity. Padded frames (mask False) are zeroed inside both branches, so they never
    reach a real frame through the temporal convolution or the difference.
    """

    def __init__(self, width: int, bottleneck: int, context: HeadContext) -> None:
        super().__init__()
        self._context = context  # shared with the head: the (B, T, mask) layout of the current call
        self.enhance_down, self.enhance_up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        self.enhance_conv = nn.Conv1d(bottleneck, bottleneck, 3, padding=1, groups=bottleneck)
        self.diff_down, self.diff_up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        self.diff_conv = nn.Conv3d(bottleneck, bottleneck, (1, 3, 3), padding=(0, 1, 1), groups=bottleneck)
        for module in (self.enhance_conv, self.diff_conv):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        for module in (self.enhance_down, self.enhance_up, self.diff_down, self.diff_up):
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self._context.require_layout(x.shape[0])
        batch, frames = layout.batch_size, layout.num_frames
        tokens, width = x.shape[1:]
        valid = layout.mask.to(x.dtype).view(batch, frames, 1, 1)  # (B, T, 1, 1)
        video = x.view(batch, frames, tokens, width)  # (B, T, L, C)
        difference = F.pad(self.difference(video[:, :, 1:], valid), (0, 0, 1, 0))  # nothing for the CLS token
        return (video + self.enhance(video, valid) + difference).view(batch * frames, tokens, width)

    def enhance(self, video: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, L, C) -> (B, T, L, C): a depthwise temporal convolution per token position."""
        batch, frames, tokens, _ = video.shape
        h = self.enhance_down(video) * valid  # (B, T, L, Cb)
        h = h.permute(0, 2, 3, 1).reshape(batch * tokens, -1, frames)  # (B*L, Cb, T)
        h = self.enhance_conv(h)
        h = h.view(batch, tokens, -1, frames).permute(0, 3, 1, 2)  # (B, T, L, Cb)
        return self.enhance_up(h)

    def difference(self, patches: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, P, C) patch tokens -> (B, T, P, C): spatially filtered frame-to-frame differences."""
        batch, frames, num_patches, _ = patches.shape
        side = int(round(num_patches**0.5))
        if side * side != num_patches:
            raise ValueError(f"ted_adapter needs a square patch grid, got {num_patches} patch tokens")
        previous = torch.cat([patches[:, :1], patches[:, :-1]], dim=1)  # frame t-1 (frame 0 for t = 0)
        both_valid = valid * torch.cat(
            [valid[:, :1], valid[:, :-1]], dim=1
        )  # a difference needs two real frames
        h = self.diff_down((patches - previous) * both_valid)  # (B, T, P, Cb)
        h = h.view(batch, frames, side, side, -1).permute(0, 4, 1, 2, 3)  # (B, Cb, T, H, W)
        h = self.diff_conv(h).permute(0, 2, 3, 4, 1).reshape(batch, frames, num_patches, -1)
        return self.diff_up(h)


class AdaptedBlock(nn.Module):
    """open_clip's ResidualAttentionBlock with an adapter between its attention and MLP residuals.

    It calls the wrapped block's own modules in the block's order (open_clip 3's pre-LN block with optional
    layer scale); ``tests/test_head_ted_adapter.py`` checks it equals the plain block when the adapter is off.
    """

    def __init__(self, block: nn.Module, adapter: TEDAdapter) -> None:
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):  # open_clip's call signature
        block = self.block
        x = q_x + block.ls_1(block.attention(q_x=block.ln_1(q_x), attn_mask=attn_mask))
        x = self.adapter(x)  # (B*T, L, C)
        return x + block.ls_2(block.mlp(block.ln_2(x)))


@register_head("ted_adapter")
class TEDAdapterHead(MeanHead):
    """M2-CLIP's visual TED-Adapter in the open_clip ViT blocks, then meanP over frames.

    In each chosen block one adapter sits before the MLP (as M2-CLIP's ``adapter_pre_mlp``): global temporal
    enhancement (a depthwise temporal convolution on every token) and local temporal difference (spatially
    filtered differences of consecutive frames' patch tokens), zero-initialised so the untrained model equals
    plain CLIP. The image tower sees each call's (B, T) layout through the head's context.

    Reference: Wang et al., "M2-CLIP: A Multimodal, Multi-task Adapting Framework for Video Action Recognition",
    AAAI 2024; code: sallymmx/m2clip ``models_adapter.py`` (``Adapter2`` + ``OffsetAdapter``, ViT-B/16
    ``adapter12x384``). vidclip implements the visual adapters only (M2-CLIP also adapts the text tower and adds
    a multi-task head).

    Options:
        bottleneck: adapter width (default 384, M2-CLIP's for ViT-B).
        blocks: indices of the ViT blocks that get an adapter (default: all, as ``adapter12x384``).

    Text-independent, order-aware, parameter-efficient (CLIP frozen by default): 14.2 M trainable parameters
    on ViT-B/16 (12 adapters of 1.19 M; M2-CLIP's ~16 M also counts its text adapters).
    """

    order_aware = True
    parameter_efficient = True

    def __init__(self, *, bottleneck: int = 384, blocks: list[int] | None = None) -> None:
        super().__init__()
        if not isinstance(bottleneck, int) or bottleneck < 1:
            raise ValueError(f"bottleneck must be a positive int, got {bottleneck!r}")
        self.bottleneck = bottleneck
        self.blocks = None if blocks is None else [int(i) for i in blocks]

    def attach(self, clip: nn.Module, *, num_frames: int) -> None:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        visual = clip.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"ted_adapter needs an open_clip VisionTransformer image tower, got {type(visual).__name__}"
            )
        resblocks = visual.transformer.resblocks
        chosen = range(len(resblocks)) if self.blocks is None else self.blocks
        for index in chosen:
            if not 0 <= index < len(resblocks):
                raise ValueError(f"blocks: index {index} is out of range for a {len(resblocks)}-block ViT")
            block = resblocks[index]
            if type(block) is not ResidualAttentionBlock:
                raise ValueError(
                    f"ted_adapter supports open_clip ResidualAttentionBlock, got {type(block).__name__}"
                )
            width = block.ln_1.normalized_shape[0]
            resblocks[index] = AdaptedBlock(block, TEDAdapter(width, self.bottleneck, self.context))
