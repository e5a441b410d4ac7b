"""``ted_adapter``: M2-CLIP's TED-Adapter — temporal adapters in the ViT blocks, a text adapter, meanP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidclip.heads.base import HeadContext, InstalledModule, register_head
from vidclip.heads.layers import WrappedBlock, zero_padding
from vidclip.heads.mean import MeanHead


class TEDAdapter(InstalledModule):
    """Global temporal Enhancement + local temporal Difference on one block's tokens (B*T, L, C).

    E (all tokens, CLS included): fc C->bottleneck, depthwise Conv1d over time (kernel 3, zero padding), fc back.
    D (patch tokens): Δ_t = x_t - x_{t-1} (0 at t = 0), fc C->bottleneck, depthwise Conv3d (1, 3, 3) over the
    patch grid, fc back. No activation anywhere. Output: x + E(x) + [0; D(x)]. Both convolutions and all fc
    biases start at zero (fc weights keep PyTorch's init), so the adapter starts as the identity.

    Padded frames (mask False) are zeros to the temporal convolution, exactly like the zero padding past a
    video's ends, and a difference needs two real frames: a padded video gives its real frames the result of
    the video cut to its real length, whatever its padding holds.
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
        video = rearrange(x, "(b t) l c -> b t l c", b=layout.batch_size)  # (B, T, L, C)
        difference = F.pad(self.difference(video[:, :, 1:], layout.mask), (0, 0, 1, 0))  # nothing for CLS
        out = video + self.enhance(video, layout.mask) + difference  # (B, T, L, C)
        return rearrange(out, "b t l c -> (b t) l c")  # (B*T, L, C)

    def enhance(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, L, C), mask (B, T) -> (B, T, L, C): a depthwise temporal convolution per token position."""
        h = zero_padding(self.enhance_down(video), mask)  # (B, T, L, Cb)
        h = self.enhance_conv(rearrange(h, "b t l c -> (b l) c t"))  # (B*L, Cb, T)
        h = rearrange(h, "(b l) c t -> b t l c", b=video.shape[0])  # (B, T, L, Cb)
        return self.enhance_up(h)

    def difference(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, P, C) patch tokens, mask (B, T) -> (B, T, P, C): spatially filtered frame-to-frame differences."""
        num_patches = patches.shape[2]
        side = int(round(num_patches**0.5))
        if side * side != num_patches:
            raise ValueError(f"ted_adapter needs a square patch grid, got {num_patches} patch tokens")
        previous = torch.cat([patches[:, :1], patches[:, :-1]], dim=1)  # frame t-1 (frame 0 itself at t = 0)
        both_valid = mask & torch.cat([mask[:, :1], mask[:, :-1]], dim=1)  # (B, T)
        h = self.diff_down(zero_padding(patches - previous, both_valid))  # (B, T, P, Cb)
        h = self.diff_conv(rearrange(h, "b t (y x) c -> b c t y x", y=side))  # (B, Cb, T, H, W)
        return self.diff_up(rearrange(h, "b c t y x -> b t (y x) c"))  # (B, T, P, C)


class TextAdapter(InstalledModule):
    """M2-CLIP's text adapter on one text block's tokens (N, L, C): x + fc(GELU(fc(x))), every token.

    Exact (erf) GELU; fc biases start at zero and fc weights keep PyTorch's init, as in M2-CLIP: unlike the
    visual adapters it is *not* the identity at initialisation.
    """

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))  # (N, L, C)


class AdaptedBlock(WrappedBlock):
    """open_clip's ResidualAttentionBlock with an adapter between its attention and MLP residuals.

    The adapter's output replaces the residual stream (M2-CLIP's ``adapter_pre_mlp``): a :class:`TEDAdapter`
    in the ViT, a :class:`TextAdapter` in the text tower. It calls the wrapped block's own modules in the
    block's order (open_clip 3's pre-LN block with optional layer scale); ``tests/test_head_ted_adapter.py``
    checks it equals the plain block when the adapter is off.
    """

    def __init__(self, block: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):  # open_clip's call signature
        block = self.block
        x = q_x + block.ls_1(block.attention(q_x=block.ln_1(q_x), attn_mask=attn_mask))
        x = self.adapter(x)  # (B*T, L, C) frames or (N, L, C) texts
        return x + block.ls_2(block.mlp(block.ln_2(x)))


class FrameAdapter(nn.Module):
    """M2-CLIP's temporal adapter on the frame embeddings (its ``t_adapter``): x + fc(Conv1d_t(fc(x))).

    (B, T, D) -> (B, T, D); bottleneck D/2, depthwise kernel 3 over time, no activation, zero-initialised
    convolution and fc biases (identity at init); padded frames are zeros to the convolution.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(width, width // 2), nn.Linear(width // 2, width)
        self.conv = nn.Conv1d(width // 2, width // 2, 3, padding=1, groups=width // 2)
        for param in (self.conv.weight, self.conv.bias, self.down.bias, self.up.bias):
            nn.init.zeros_(param)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = zero_padding(self.down(frames), mask)  # (B, T, D/2)
        h = self.conv(rearrange(h, "b t c -> b c t"))  # (B, D/2, T): convolve over T
        return frames + self.up(rearrange(h, "b c t -> b t c"))  # (B, T, D)


@register_head("ted_adapter")
class TEDAdapterHead(MeanHead):
    """M2-CLIP's TED-Adapter in the ViT blocks and on the frame embeddings, its text adapter, then meanP.

    In each chosen ViT block one adapter sits before the MLP: global temporal enhancement (a depthwise
    temporal convolution on every token) and local temporal difference (spatially filtered differences of
    consecutive frames' patch tokens). After the tower, M2-CLIP's temporal adapter (a depthwise temporal
    convolution on the projected frame embeddings, always on in its visual branch) and the ``mean`` head's
    pooling. These start as the identity, so the untrained model's video embeddings equal plain CLIP's.
    Padded frames count as absent: a padded video gives what the video cut to its real frames gives.

    Text side (``text_adapters``, on by default as in M2-CLIP): one :class:`TextAdapter` (fc, exact GELU, fc,
    residual) before the MLP of the last text block. M2-CLIP's ``multimodal_adapter12x384`` builds a 13-block
    text transformer with adapters in blocks 11 and 12, but its ``Transformer.forward`` runs only blocks
    0-11 (block 12, a copy of block 11, serves its masked-language-model branch), so the adapter that acts
    on text features is block 11's: the last of CLIP's own blocks. It is not zero-initialised, so with it
    the untrained model's *text* features are not plain CLIP's (``text_adapters=False`` keeps them).

    Reference: Wang et al., "M2-CLIP: A Multimodal, Multi-task Adapting Framework for Video Action Recognition",
    AAAI 2024; code: sallymmx/m2clip ``models_adapter.py`` (``Adapter2`` + ``OffsetAdapter`` per block,
    ``Adapter1`` as ``t_adapter``, ``TextAdapter``; ViT-B/16 ``multimodal_adapter12x384``);
    ``vidclip.convert.from_m2clip`` loads its checkpoints. M2-CLIP averages the adapted frame embeddings
    before normalising; vidclip's meanP normalises each frame first. Not included: its masked-language-model
    head (``mlm_adapter``, text block 12) and its classification fc (``visual.adapter_fc``), the multi-task
    losses.

    Options:
        bottleneck: adapter width in the blocks, visual and text (default 384, M2-CLIP's for ViT-B/16).
        blocks: indices of the ViT blocks that get an adapter (default: all, as ``adapter12x384``).
        frame_adapter: the temporal adapter on the frame embeddings (default True, as M2-CLIP).
        text_adapters: M2-CLIP's text adapter in the last text block (default True, as M2-CLIP).

    Text-independent, order-aware, parameter-efficient (CLIP frozen by default). Trainable parameters on
    ViT-B/16: 14,905,984 = 12 block adapters of 1,187,328 + the frame adapter's 263,936 + the text adapter's
    394,112 (14,511,872 with ``text_adapters=False``). M2-CLIP trains 16.1 M on Kinetics-400: these plus its
    unused block-12 text adapter (0.39 M), MLM head and class fc.
    """

    order_aware = True
    parameter_efficient = True

    def __init__(
        self,
        *,
        bottleneck: int = 384,
        blocks: list[int] | None = None,
        frame_adapter: bool = True,
        text_adapters: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(bottleneck, int) or bottleneck < 1:
            raise ValueError(f"bottleneck must be a positive int, got {bottleneck!r}")
        self.bottleneck = bottleneck
        self.blocks = None if blocks is None else [int(i) for i in blocks]
        self.use_frame_adapter = bool(frame_adapter)
        self.use_text_adapters = bool(text_adapters)
        self.frame_adapter: FrameAdapter | None = None  # built by attach, once the embedding width is known

    def attach(self, clip: nn.Module, *, num_frames: int) -> None:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        visual = clip.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"ted_adapter needs an open_clip VisionTransformer image tower, got {type(visual).__name__}"
            )
        resblocks = visual.transformer.resblocks
        # new modules take the dtype of CLIP's weights (open_clip's precision="bf16" casts them)
        dtype = visual.transformer.get_cast_dtype()
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
            adapter = TEDAdapter(width, self.bottleneck, self.context).to(dtype)
            resblocks[index] = AdaptedBlock(block, adapter)
        if self.use_frame_adapter:
            self.frame_adapter = FrameAdapter(visual.output_dim).to(dtype)
        if self.use_text_adapters:
            self._attach_text(clip)

    def _attach_text(self, clip: nn.Module) -> None:
        """Wrap the last text block with M2-CLIP's text adapter (the one its ``encode_text`` runs)."""
        from open_clip.transformer import ResidualAttentionBlock, Transformer

        tower = getattr(clip, "text", clip)  # CustomTextCLIP keeps its text tower under .text
        transformer = getattr(tower, "transformer", None)
        blocks = getattr(transformer, "resblocks", None)
        if (
            not isinstance(transformer, Transformer)
            or not blocks
            or type(blocks[-1]) is not ResidualAttentionBlock
        ):
            raise ValueError(
                "ted_adapter's text adapters need an open_clip text transformer of ResidualAttentionBlocks; "
                "pass text_adapters=False for this model"
            )
        adapter = TextAdapter(transformer.width, self.bottleneck).to(transformer.get_cast_dtype())
        blocks[-1] = AdaptedBlock(blocks[-1], adapter)

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, D), mask: (B, T) -> frames through the frame adapter, if any (B, T, D)."""
        return frames if self.frame_adapter is None else self.frame_adapter(frames, mask)
