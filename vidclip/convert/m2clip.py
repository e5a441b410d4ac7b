"""Load M2-CLIP's trained checkpoints (sallymmx/m2clip) as vidclip ``ted_adapter`` models: ``from_m2clip``.

M2-CLIP's ``save_model`` writes ``{'model', 'optimizer', 'lr_sched', 'loss_scaler', 'next_epoch'}``; ``model``
is its CLIP's state dict (OpenAI CLIP parameter names, no ``module.`` prefix) with every frozen parameter
deleted, so a real checkpoint holds only parameters whose name contains ``adapter`` (its trainable rule):

- ``visual.transformer.resblocks.{i}.adapter_pre_mlp.{fc1,conv,fc2}`` and ``...offset_adapter.{fc1,conv,fc2}``:
  the TED-Adapter of ViT block i (temporal enhancement, temporal difference);
- ``visual.t_adapter.{fc1,conv,fc2}``: the temporal adapter on the frame embeddings;
- ``transformer.resblocks.{11,12}.adapter_pre_mlp.{textad_fc1,textad_fc2}``: the text adapters of its 13-block
  text transformer, whose ``encode_text`` runs blocks 0-11 only (block 12 is its MLM branch's);
- ``mlm_adapter.*`` (masked-language-model head) and ``visual.adapter_fc.*`` (classification fc).

The CLIP backbone therefore comes from ``pretrained`` (OpenAI's ViT-B/16: the ``openai`` tag or a local
file); a full state dict (backbone included) loads too. Parts of M2-CLIP that vidclip's model has no place for
(text block 12, the MLM head, the class fc) are named in a warning and not loaded; any other key that does
not fit, and any missing one, is refused with the list.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from vidclip.convert.common import describe_keys, load_strict, read_checkpoint_file
from vidclip.heads import InstalledModule
from vidclip.heads.layers import WrappedBlock
from vidclip.model import ModelSpec, VideoCLIP, build_model, register_model_configs

_SAVED_KEYS = ("model", "optimizer", "lr_sched", "loss_scaler", "next_epoch")  # M2-CLIP's save_model
_VISUAL_ADAPTER = re.compile(
    r"visual\.transformer\.resblocks\.(\d+)\.adapter_pre_mlp\.((?:offset_adapter\.)?(?:fc1|conv|fc2))\.(\w+)"
)
_FRAME_ADAPTER = re.compile(r"visual\.t_adapter\.(fc1|conv|fc2)\.(\w+)")
_TEXT_ADAPTER = re.compile(r"transformer\.resblocks\.(\d+)\.adapter_pre_mlp\.(textad_fc[12])\.(\w+)")
_TEXT_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\..+")
_VISUAL_NAMES = {  # M2-CLIP's Adapter2 (+ its OffsetAdapter) -> TEDAdapter
    "fc1": "enhance_down",
    "conv": "enhance_conv",
    "fc2": "enhance_up",
    "offset_adapter.fc1": "diff_down",
    "offset_adapter.conv": "diff_conv",
    "offset_adapter.fc2": "diff_up",
}
_FRAME_NAMES = {"fc1": "down", "conv": "conv", "fc2": "up"}  # its Adapter1 (t_adapter) -> FrameAdapter
_TEXT_NAMES = {"textad_fc1": "down", "textad_fc2": "up"}  # its TextAdapter -> TextAdapter
_NOT_IN_VIDCLIP = {
    "mlm_adapter.": "its masked-language-model head",
    "visual.adapter_fc.": "its classification fc",
}
_UNSUPPORTED = {  # what unexpected M2-CLIP keys mean
    "adapter_pre_attn": "adapters before attention (M2-CLIP's 24x384 variants)",
    "textad_fc": "text adapters outside the last text block (M2-CLIP's 24x384 variants)",
}


def from_m2clip(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    model_name: str = "ViT-B-16",
    pretrained: str | None = None,
    num_frames: int = 8,
) -> VideoCLIP:
    """A ``ted_adapter`` VideoCLIP with an M2-CLIP checkpoint's adapters (fp32, QuickGELU as OpenAI CLIP).

    ``path_or_state_dict``: a ``checkpoint-N.pth`` M2-CLIP saved, its ``model`` dict, or a full state dict.
    ``pretrained``: the CLIP the adapters were trained on (``openai`` or a local weights file); required when
    the checkpoint holds only adapters, unused when it holds the backbone too. The head's options (bottleneck,
    adapted blocks, frame and text adapters) are read off the checkpoint. M2-CLIP parts vidclip has no place
    for are named in a warning; keys that do not fit the model raise a ``ValueError`` listing them.
    """
    state = _load_state_dict(path_or_state_dict)
    full = any("adapter" not in key for key in state)  # M2-CLIP's saver keeps only names with "adapter"
    if not full and pretrained is None:
        raise ValueError(
            "this M2-CLIP checkpoint holds only its adapters (its saver drops the frozen CLIP weights): pass "
            "pretrained= the CLIP it was trained from ('openai' for ViT-B/16, or a local weights file)"
        )
    options = _head_options(state, model_name)
    spec = ModelSpec(model_name, pretrained, "ted_adapter", num_frames, options, quick_gelu=True)
    model = build_model(spec, load_pretrained=not full)
    mapped, extras = _vidclip_state_dict(state, model)
    if extras:
        warnings.warn(
            f"M2-CLIP parts with no place in vidclip's ted_adapter, not loaded: {_parts(extras)}",
            stacklevel=2,
        )
    if not full:  # the backbone is the pretrained one just loaded; only the adapters come from the checkpoint
        new = _new_module_keys(model)
        mapped = {**{k: v for k, v in model.state_dict().items() if k not in new}, **mapped}
    hint = " (is model_name the architecture the checkpoint was trained from?)"
    load_strict(model, mapped, "M2-CLIP", hint)
    return model


def _load_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model state dict, out of M2-CLIP's saved dict if it is one; floating tensors in fp32."""
    where = "the M2-CLIP checkpoint"
    if not isinstance(source, Mapping):
        where = str(source)
        source = read_checkpoint_file(source, "M2-CLIP")
    if isinstance(source, Mapping) and isinstance(source.get("model"), Mapping):
        source = source["model"]  # M2-CLIP's saved dict
    if not isinstance(source, Mapping) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        found = sorted(map(str, source)) if isinstance(source, Mapping) else type(source).__name__
        raise ValueError(
            f"{where} is neither M2-CLIP's saved dict (keys {', '.join(_SAVED_KEYS)}) nor a state dict of "
            f"tensors: found {found}"
        )
    return {key: value.float() if value.is_floating_point() else value for key, value in source.items()}


def _head_options(state: Mapping[str, torch.Tensor], model_name: str) -> dict[str, Any]:
    """ted_adapter's options as the checkpoint's adapter keys say (M2-CLIP's 12x384 gives the defaults)."""
    options: dict[str, Any] = {}
    vision_layers, text_layers = _tower_depths(model_name)
    adapted = {
        int(m[1]): state[key] for key in state if (m := _VISUAL_ADAPTER.fullmatch(key)) and m[2] == "fc1"
    }
    if adapted:
        options["bottleneck"] = next(iter(adapted.values())).shape[0]
    every_block = vision_layers is not None and sorted(adapted) == list(range(vision_layers))
    if not every_block:  # every block is the default
        options["blocks"] = sorted(adapted)
    if not any(_FRAME_ADAPTER.fullmatch(key) for key in state):
        options["frame_adapter"] = False
    text = {int(m[1]) for key in state if (m := _TEXT_ADAPTER.fullmatch(key))}
    if (text_layers - 1 if text_layers else max(text, default=-1)) not in text:
        options["text_adapters"] = False  # none in the last block its encode_text runs (ViT-B/32 12x384's)
    return options


def _tower_depths(model_name: str) -> tuple[int | None, int | None]:
    """(ViT blocks, text blocks) of an open_clip model config; None where there is no local config to read."""
    import open_clip

    register_model_configs()
    config = open_clip.get_model_config(model_name) or {}
    depths = (config.get("vision_cfg", {}).get("layers"), config.get("text_cfg", {}).get("layers"))
    return tuple(depth if isinstance(depth, int) else None for depth in depths)


def _vidclip_state_dict(
    state: Mapping[str, torch.Tensor], model: VideoCLIP
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """M2-CLIP names -> VideoCLIP names, and the keys of M2-CLIP parts vidclip has no place for (warned).

    Anything else that has no VideoCLIP name (an adapter where vidclip has none, an unknown key) raises.
    """
    clip = model.clip
    text_prefix = "text." if hasattr(clip, "text") else ""  # CustomTextCLIP nests the text tower
    last_text = len(getattr(clip, "text", clip).transformer.resblocks) - 1
    names = _backbone_names(clip)
    expected = model.state_dict()
    mapped, extras, unknown = {}, [], []
    for key, value in state.items():
        block = _TEXT_BLOCK.fullmatch(key)
        if key.startswith(tuple(_NOT_IN_VIDCLIP)) or (block and int(block[1]) > last_text):
            extras.append(key)  # the MLM head, the class fc, text block 12 (the MLM branch's)
            continue
        name = _adapter_name(key, last_text, text_prefix) or names.get(_open_clip_name(key, text_prefix))
        if name in expected:
            mapped[name] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            "M2-CLIP keys with no place in vidclip's ted_adapter model "
            f"{model.spec.model_name}: {describe_keys(unknown)}{_unsupported(unknown)}"
        )
    return mapped, extras


def _adapter_name(key: str, last_text: int, text_prefix: str) -> str | None:
    """The VideoCLIP name of an M2-CLIP adapter parameter vidclip has, else None."""
    if match := _VISUAL_ADAPTER.fullmatch(key):
        return f"clip.visual.transformer.resblocks.{match[1]}.adapter.{_VISUAL_NAMES[match[2]]}.{match[3]}"
    if match := _FRAME_ADAPTER.fullmatch(key):
        return f"head.frame_adapter.{_FRAME_NAMES[match[1]]}.{match[2]}"
    if (match := _TEXT_ADAPTER.fullmatch(key)) and int(match[1]) == last_text:
        return (
            f"clip.{text_prefix}transformer.resblocks.{match[1]}.adapter.{_TEXT_NAMES[match[2]]}.{match[3]}"
        )
    return None


def _parts(extras: list[str]) -> str:
    """The M2-CLIP parts ``extras`` belong to, each with what it is and its number of keys."""
    parts: dict[str, list] = {}
    for key in extras:
        prefix = next((p for p in _NOT_IN_VIDCLIP if key.startswith(p)), None)
        if prefix is None:  # a text block past open_clip's: M2-CLIP's 13th, for its MLM branch only
            prefix = ".".join(key.split(".")[:3]) + "."
            what = f"text block {key.split('.')[2]}, which its encode_text never runs"
        else:
            what = _NOT_IN_VIDCLIP[prefix]
        parts.setdefault(prefix, [what, 0])[1] += 1
    return ", ".join(f"{prefix}* ({what}; {count} keys)" for prefix, (what, count) in sorted(parts.items()))


def _unsupported(keys: list[str]) -> str:
    found = sorted({what for marker, what in _UNSUPPORTED.items() for key in keys if marker in key})
    return f" [unsupported: {'; '.join(found)}]" if found else ""


def _open_clip_name(key: str, text_prefix: str) -> str:
    """An OpenAI CLIP backbone name as open_clip names it (CustomTextCLIP: the text tower under ``text.``)."""
    if not text_prefix or key.startswith("visual.") or key == "logit_scale":
        return key
    return text_prefix + key


def _backbone_names(clip: torch.nn.Module) -> dict[str, str]:
    """open_clip's plain names -> VideoCLIP names (a wrapped block's own weights sit under ``.block.``)."""
    wrapped = [name for name, module in clip.named_modules() if isinstance(module, WrappedBlock)]
    names = {}
    for key in clip.state_dict():
        owner = next((name for name in wrapped if key.startswith(f"{name}.block.")), None)
        plain = key if owner is None else f"{owner}.{key.removeprefix(f'{owner}.block.')}"
        names[plain] = f"clip.{key}"
    return names


def _new_module_keys(model: VideoCLIP) -> set[str]:
    """State-dict keys of the head and the modules it installed in the towers (what the adapters fill)."""
    installed = [name for name, module in model.clip.named_modules() if isinstance(module, InstalledModule)]
    prefixes = ("head.", *(f"clip.{name}." for name in installed))
    return {key for key in model.state_dict() if key.startswith(prefixes)}
