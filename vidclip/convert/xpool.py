"""Load X-Pool's trained checkpoints as vidclip models: ``from_xpool``.

X-Pool's trainer (``trainer/base_trainer.py`` ``_save_checkpoint``) saves ``{'epoch', 'state_dict',
'optimizer'}`` to ``model_best.pth`` / ``checkpoint-epochN.pth``; ``state_dict`` is its ``CLIPTransformer``'s:
``clip.`` + the CLIP model and ``pool_frames.`` + its pooling ``Transformer``. The CLIP is OpenAI's
(``model/clip_model.py``, OpenAI parameter names, fp32) or, with ``--huggingface`` (its released checkpoints),
transformers' ``CLIPModel`` of openai/clip-vit-base-patch32 (transformers names). Both are OpenAI's ViT with
QuickGELU; the pooling's head count (``--num_mha_heads``, default 1) is not in the weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from vidclip.convert.common import describe_keys, load_strict, openai_to_open_clip_names, read_checkpoint_file
from vidclip.convert.hf_clip import convert_hf_clip_state_dict
from vidclip.heads.x_pool import XPOOL_PREFIX, convert_xpool_state_dict
from vidclip.model import ModelSpec, VideoCLIP, build_model

_HF_TOWERS = ("clip.text_model.", "clip.vision_model.")


def from_xpool(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    model_name: str = "ViT-B-32",
    num_frames: int = 12,
    **head_options: Any,
) -> VideoCLIP:
    """A VideoCLIP (head ``x_pool``) with an X-Pool checkpoint's weights, CLIP in fp32 with QuickGELU.

    ``path_or_state_dict``: a file X-Pool's trainer saved (read with ``weights_only=True``), that dict, or its
    ``state_dict``. ``model_name`` is the open_clip architecture X-Pool started from (``--clip_arch``; the
    ``--huggingface`` CLIP is ``ViT-B-32``). ``head_options`` go to the x_pool head: pass ``num_heads`` if
    X-Pool ran with ``--num_mha_heads`` other than 1. Keys that do not fit raise a ``ValueError`` listing them.
    """
    source = "the state dict" if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
    state = _model_state(path_or_state_dict, source)
    clip_state = {k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.")}
    others = [k for k in state if not k.startswith(("clip.", XPOOL_PREFIX))]
    if others:
        raise ValueError(f"{source}: keys with no place in a vidclip x_pool model: {describe_keys(others)}")
    spec = ModelSpec(model_name, None, "x_pool", num_frames, dict(head_options), quick_gelu=True)
    model = build_model(spec, load_pretrained=False)
    if any(key.startswith(_HF_TOWERS) for key in state):  # --huggingface
        clip_state = convert_hf_clip_state_dict(clip_state, source)
    else:
        clip_state = openai_to_open_clip_names(
            {k: v.float() if v.is_floating_point() else v for k, v in clip_state.items()}, model.clip
        )
    try:
        pooling = convert_xpool_state_dict(state, XPOOL_PREFIX)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    head_state = {f"head.{k}": v.float() for k, v in pooling.items()}
    hint = " (is model_name the architecture X-Pool was trained from?)"
    load_strict(
        model, {**{f"clip.{k}": v for k, v in clip_state.items()}, **head_state}, f"X-Pool ({source})", hint
    )
    return model


def _model_state(source: str | os.PathLike | Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    """The model's state dict out of a trainer checkpoint (``state_dict`` beside ``epoch``/``optimizer``)."""
    saved = source if isinstance(source, Mapping) else read_checkpoint_file(source, "X-Pool")
    if isinstance(saved, Mapping) and isinstance(saved.get("state_dict"), Mapping):
        saved = saved["state_dict"]
    if not isinstance(saved, Mapping) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        kind = type(saved).__name__ if not isinstance(saved, Mapping) else "dict of non-tensors"
        raise ValueError(
            f"{name} holds a {kind}, not an X-Pool checkpoint (a state dict, or one under 'state_dict')"
        )
    return dict(saved)
