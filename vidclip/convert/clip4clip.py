"""Load other codebases' trained video-CLIP checkpoints as vidclip models: ``from_clip4clip``.

A CLIP4Clip checkpoint (``pytorch_model.bin.N``, a plain state dict written by its ``save_model``) holds
``clip.`` + OpenAI CLIP parameter names (its Linear/attention/projection weights in fp16) and, depending on its
``sim_header``, the temporal module: ``frame_position_embeddings.weight`` + ``transformerClip.resblocks.{i}.*``
(seqTransf), ``lstm_visual.*`` (seqLSTM, which also stores an unused ``frame_position_embeddings``) or nothing
(meanP). Its tightTransf cross encoder (``cross.*``) and 3-D patch embedding (``clip.visual.conv2``) have no
vidclip equivalent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vidclip.convert.common import describe_keys, load_strict, openai_to_open_clip_names, read_checkpoint_file
from vidclip.model import ModelSpec, VideoCLIP, build_model

_UNSUPPORTED = {"cross.": "tightTransf's cross encoder", "clip.visual.conv2.": "linear_patch='3d'"}


@dataclass(frozen=True)
class Clip4ClipHead:
    """How a CLIP4Clip temporal module's parameters land in a vidclip head.

    renames: CLIP4Clip key prefix -> VideoCLIP key prefix (the parameter names below the prefix are the same:
    both sides use OpenAI CLIP's block layout, or ``nn.LSTM``'s). unused: keys CLIP4Clip stores but never reads.
    options: head options read off the checkpoint (sizes that may differ from the defaults).
    """

    head: str
    renames: dict[str, str] = field(default_factory=dict)
    unused: tuple[str, ...] = ()
    options: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]] = lambda state: {}


def _seq_transformer_options(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Depth (CLIP4Clip's ``cross_num_hidden_layers``) and position-table size; defaults where keys are absent."""
    options: dict[str, Any] = {}
    blocks = {key.split(".")[2] for key in state if key.startswith("transformerClip.resblocks.")}
    if blocks:
        options["num_layers"] = len(blocks)
    if "frame_position_embeddings.weight" in state:
        options["max_positions"] = state["frame_position_embeddings.weight"].shape[0]
    return options


CLIP4CLIP_HEADS = {  # CLIP4Clip's sim_header -> vidclip
    "meanP": Clip4ClipHead("mean"),
    "seqTransf": Clip4ClipHead(
        "seq_transformer",
        renames={
            "frame_position_embeddings.": "head.position_embedding.",
            "transformerClip.": "head.transformer.",
        },
        options=_seq_transformer_options,
    ),
    "seqLSTM": Clip4ClipHead(
        "seq_lstm", renames={"lstm_visual.": "head.lstm."}, unused=("frame_position_embeddings.weight",)
    ),
}


def from_clip4clip(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    model_name: str = "ViT-B-32",
    num_frames: int = 12,
    head: str | None = None,
) -> VideoCLIP:
    """A VideoCLIP with a CLIP4Clip checkpoint's weights (CLIP in fp32, QuickGELU as OpenAI CLIP).

    ``head`` is the vidclip head name (``mean``, ``seq_transformer``, ``seq_lstm``); by default it is read off
    the checkpoint's keys. ``model_name`` is the open_clip architecture CLIP4Clip started from (``ViT-B-32`` or
    ``ViT-B-16``). Keys that do not fit the model raise a ``ValueError`` listing them.
    """
    state = _load_state_dict(path_or_state_dict)
    layout = _layout(state, head)
    spec = ModelSpec(model_name, None, layout.head, num_frames, layout.options(state), quick_gelu=True)
    model = build_model(spec, load_pretrained=False)
    hint = " (is model_name the architecture the checkpoint was trained from?)"
    load_strict(model, _vidclip_state_dict(state, layout, model), "CLIP4Clip", hint)
    return model


def _load_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return dict(source)
    state = read_checkpoint_file(source, "CLIP4Clip")
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} holds a {type(state).__name__}, not a CLIP4Clip state dict")
    return dict(state)


def _layout(state: Mapping[str, torch.Tensor], head: str | None) -> Clip4ClipHead:
    """The checkpoint's temporal module: the one asked for, else seqTransf/seqLSTM if their keys are there."""
    if head is not None:
        layouts = {layout.head: layout for layout in CLIP4CLIP_HEADS.values()}
        if head not in layouts:
            raise ValueError(f"CLIP4Clip has no equivalent of head {head!r}; choose one of {sorted(layouts)}")
        return layouts[head]
    if any(key.startswith("transformerClip.") for key in state):
        return CLIP4CLIP_HEADS["seqTransf"]
    if any(key.startswith("lstm_visual.") for key in state):
        return CLIP4CLIP_HEADS["seqLSTM"]
    return CLIP4CLIP_HEADS["meanP"]


def _vidclip_state_dict(
    state: Mapping[str, torch.Tensor], layout: Clip4ClipHead, model: VideoCLIP
) -> dict[str, torch.Tensor]:
    """CLIP4Clip names -> VideoCLIP names, every floating tensor in fp32; unmappable keys raise."""
    clip_state, head_state, unknown = {}, {}, []
    for key, value in state.items():
        value = value.float() if value.is_floating_point() else value
        if key.startswith("clip."):
            clip_state[key.removeprefix("clip.")] = value
        elif key in layout.unused:
            continue
        elif (prefix := _matching_prefix(key, layout.renames)) is not None:
            head_state[layout.renames[prefix] + key.removeprefix(prefix)] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"keys with no place in a vidclip '{layout.head}' model: {describe_keys(unknown, hints=_UNSUPPORTED)}"
        )
    return {
        **{f"clip.{k}": v for k, v in openai_to_open_clip_names(clip_state, model.clip).items()},
        **head_state,
    }


def _matching_prefix(key: str, prefixes: Mapping[str, str]) -> str | None:
    return next((prefix for prefix in prefixes if key.startswith(prefix)), None)
