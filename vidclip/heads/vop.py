"""``vop``: VoP's text and video prompts on a frozen CLIP, then frame mean pooling (modules: ``vop_prompts``)."""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from vidclip.heads.base import register_head
from vidclip.heads.mean import MeanHead
from vidclip.heads.vop_prompts import (
    ContextPromptGenerator,
    FramePrompts,
    JointBlock,
    JointPrompts,
    PromptContext,
    PromptedBlock,
    PromptedTextBlock,
    TextPrompts,
)

Variant = Literal["base", "P", "C", "F", "F+P", "F+C"]


@register_head("vop")
class VoPHead(MeanHead):
    """VoP: deep prompt tokens in every layer of both CLIP towers (CLIP frozen), then meanP over frames.

    Video prompts: ``num_prompts`` tokens per ViT layer, after the CLS token, replaced layer by layer (the
    first layer's go through ``ln_pre`` with the tokens, as in VoP's code). Text prompts: ``num_text_prompts``
    per text layer, half right after SOT and half right before EOT, replaced layer by layer; the causal mask
    and open_clip's EOT pooling stay CLIP's. All prompts start N(0, 0.02). Variants replace half of the video
    prompts:

    - ``P`` (frame position): those prompts are specific to the frame's position in the video;
    - ``C`` (frame context): generated per layer from the CLS tokens of the video's frames entering the layer
      by one BiLSTM (hidden = width) and linear map shared by all layers;
    - ``F`` (layer function): the last ``joint_layers`` layers (4 of 12) run one sequence per video, its
      frames' CLS tokens (+ a trainable frame position embedding) and the layer's video prompts; the patch
      tokens stop there. ``F+P``, ``F+C``: P or C in the per-frame layers.

    Padded frames count as absent (hidden from joint attention, skipped by the BiLSTM).

    Reference: Huang et al., "VoP: Text-Video Co-operative Prompt Tuning for Cross-Modal Retrieval", CVPR 2023;
    code (base VoP only): ModelScope ``modelscope/models/cv/vop_retrieval/model.py``. Differences from that
    code: its text prompts get position embeddings (the text shifts by 4 positions, the tokenizer keeps 69
    tokens), its suffix prompts sit at the end of the 77-token context and it pools at argmax + 8, which is
    EOT only for a full-length text; vidclip keeps CLIP's positions, context and EOT pooling and puts the
    suffix where EOT sees it. The variants' code is not public: their design follows the paper's description
    and its parameter counts (below).

    Options:
        variant: "base" (default, the paper's VoP), "P", "C", "F", "F+P" or "F+C".
        num_prompts: video prompts per layer (8); P and C replace ``num_prompts // 2`` of them.
        text_prompts: prompt the text tower too (True); num_text_prompts: per text layer (8).
        depth: prompt only the first ``depth`` layers of each tower (default: all, as VoP).
        joint_layers: F's joint layers at the top of the ViT (default: a third of its layers, 4 for ViT-B).

    Text-independent; order-aware except ``base``; parameter-efficient (CLIP frozen by default). Trainable
    parameters, ViT-B/32 and 12 frames (paper): base 122,880 (0.1 M), P 528,384 (0.5 M), C 14,257,152 (14.3 M),
    F 132,096 (0.1 M), F+P 402,432, F+C 14,278,656.
    """

    order_aware = True  # per instance below: base VoP's prompts are the same for every frame
    parameter_efficient = True

    def __init__(
        self,
        *,
        variant: Variant = "base",
        num_prompts: int = 8,
        text_prompts: bool = True,
        num_text_prompts: int = 8,
        depth: int | None = None,
        joint_layers: int | None = None,
    ) -> None:
        super().__init__()
        if variant not in get_args(Variant):
            raise ValueError(f"variant must be one of {get_args(Variant)}, got {variant!r}")
        for name, value in (("num_prompts", num_prompts), ("num_text_prompts", num_text_prompts)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if variant.endswith(("P", "C")) and num_prompts < 2:
            raise ValueError(f"variant {variant!r} replaces half of the prompts: num_prompts must be >= 2")
        for name, value in (("depth", depth), ("joint_layers", joint_layers)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.variant, self.num_prompts, self.num_text_prompts = variant, num_prompts, num_text_prompts
        self.text_prompts, self.depth, self.joint_layers = bool(text_prompts), depth, joint_layers
        self.order_aware = variant != "base"
        self.context = PromptContext()
        self.generator: ContextPromptGenerator | None = None  # VoP^C's, built by attach

    def attach(self, clip: nn.Module, *, num_frames: int) -> None:
        visual = self._check_visual(clip)
        blocks = visual.transformer.resblocks
        width, depth = visual.transformer.width, self.depth or len(blocks)
        # new modules take the dtype of CLIP's weights (open_clip's precision="bf16" casts them)
        dtype = visual.transformer.get_cast_dtype()
        specific = self.num_prompts // 2 if self.variant.endswith(("P", "C")) else 0
        if self.variant.endswith("C"):
            self.generator = ContextPromptGenerator(width, specific).to(dtype)
            self.context.generator = self.generator
        first_joint = len(blocks) - self._num_joint(len(blocks))
        for index, block in enumerate(blocks):
            if index >= first_joint:
                count = self.num_prompts if index < depth else 0
                prompts = JointPrompts(width, count, num_frames if index == first_joint else 0).to(dtype)
                blocks[index] = JointBlock(block, prompts, self.context)
            elif index < depth:
                prompts = FramePrompts(
                    width,
                    shared=self.num_prompts - specific,
                    per_position=specific if self.variant.endswith("P") else 0,
                    max_frames=num_frames,
                    context=specific if self.variant.endswith("C") else 0,
                ).to(dtype)
                blocks[index] = PromptedBlock(
                    block, prompts, self.context, visual.ln_pre if index == 0 else None
                )
        if self.text_prompts:
            self._attach_text(clip)

    def _num_joint(self, num_layers: int) -> int:
        if not self.variant.startswith("F"):
            return 0
        joint = self.joint_layers or max(1, num_layers // 3)  # VoP^F: 4 of ViT-B's 12 layers
        if joint >= num_layers:
            raise ValueError(f"joint_layers={joint} leaves no per-frame layer in a {num_layers}-layer ViT")
        return joint

    def _check_visual(self, clip: nn.Module) -> nn.Module:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        visual = clip.visual
        if not isinstance(visual, VisionTransformer) or any(
            type(block) is not ResidualAttentionBlock for block in visual.transformer.resblocks
        ):
            raise ValueError("vop needs an open_clip VisionTransformer of plain ResidualAttentionBlocks")
        if self.variant.startswith("F") and (visual.attn_pool is not None or visual.pool_type != "tok"):
            raise ValueError("vop's F variants need a ViT that pools its CLS token (pool_type 'tok')")
        return visual

    def _attach_text(self, clip: nn.Module) -> None:
        from open_clip.transformer import ResidualAttentionBlock, Transformer

        tower = getattr(clip, "text", clip)  # CustomTextCLIP keeps its text tower under .text
        transformer = getattr(tower, "transformer", None)
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
        if not isinstance(transformer, Transformer) or pool != "argmax":
            raise ValueError(
                "vop's text prompts need an open_clip text transformer pooled at EOT (argmax of the ids); "
                "pass text_prompts=False for this model"
            )
        depth = min(self.depth or len(transformer.resblocks), len(transformer.resblocks))
        prefix = (self.num_text_prompts + 1) // 2
        dtype = transformer.get_cast_dtype()
        for index in range(depth):
            block = transformer.resblocks[index]
            if type(block) is not ResidualAttentionBlock:
                raise ValueError(f"vop's text prompts need plain text blocks, got {type(block).__name__}")
            prompts = TextPrompts(transformer.width, self.num_text_prompts, prefix).to(dtype)
            transformer.resblocks[index] = PromptedTextBlock(block, prompts, self.context)
        tower.token_embedding.register_forward_pre_hook(self.context.record_eot)
