"""Load a Hugging Face transformers ``CLIPModel`` as a vidclip model: ``from_hf_clip``.

``CLIPModel.save_pretrained`` writes ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, or
shards listed in a ``*.index.json``). Its towers are OpenAI CLIP's under other names: separate q/k/v
projections (open_clip concatenates them into ``in_proj``), embeddings as ``nn.Embedding``, projections as
``nn.Linear`` (open_clip stores the transposed matrix). transformers is not needed to read them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from vidclip.convert.common import attach_head, describe_keys, load_strict, read_checkpoint_file
from vidclip.heads import create_head
from vidclip.model import ModelSpec, VideoCLIP, build_model

# transformers' CLIPTextConfig / CLIPVisionConfig defaults: save_pretrained may leave default values out.
HF_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}
HF_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_ACTIVATIONS = {
    "quick_gelu": True,
    "gelu": False,
}  # HF hidden_act -> open_clip quick_gelu ("gelu" is erf GELU)
_LEGACY_EOS_ID = (
    2  # configs written before transformers 4.31 pool at the highest token id (open_clip's argmax)
)
_WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Persistent buffers in checkpoints of transformers < 4.31 (the arange of positions): nothing to load.
HF_IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

_FIXED_KEYS = {  # HF CLIPModel name -> open_clip CLIP name, same tensor
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
_PROJECTIONS = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_BLOCK_KEYS = {  # HF encoder layer -> open_clip resblock, same tensor (q/k/v are concatenated apart)
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "layer_norm2": "ln_2",
}
_TOWERS = {"text_model": "transformer", "vision_model": "visual.transformer"}


def from_hf_clip(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    head: str = "mean",
    num_frames: int = 12,
    *,
    config: Mapping[str, Any] | Any | None = None,
    **head_options: Any,
) -> VideoCLIP:
    """A VideoCLIP with a transformers ``CLIPModel``'s weights, built to its config (no transformers needed).

    ``path_or_state_dict``: a ``save_pretrained`` directory, a weights file (``config.json`` beside it, or
    ``config``), or a ``CLIPModel`` state dict with ``config`` (a ``CLIPConfig`` or ``config.json``'s dict).
    ``head`` and ``head_options`` choose the temporal head, which starts from its own initialisation. The
    open_clip config travels in the spec (``model_cfg``), so a vidclip checkpoint saved later rebuilds the
    model. Keys that do not fit raise a ``ValueError`` listing them.
    """
    head_module = create_head(head, **head_options)  # a bad head fails before any weights are read
    state, config, preprocess_cfg, source = _read_source(path_or_state_dict, config)
    model_cfg = open_clip_config(config, source)
    digest = hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
    spec = ModelSpec(
        f"hf-clip-{digest}",  # the same config always gets the same name
        num_frames=num_frames,
        quick_gelu=model_cfg["quick_gelu"],
        preprocess_cfg=preprocess_cfg,
        model_cfg=model_cfg,
    )
    model = build_model(spec, load_pretrained=False)
    clip_state = convert_hf_clip_state_dict(
        state,
        source,
        text_layers=model_cfg["text_cfg"]["layers"],
        vision_layers=model_cfg["vision_cfg"]["layers"],
    )
    load_strict(model, {f"clip.{key}": value for key, value in clip_state.items()}, f"HF CLIP ({source})")
    return attach_head(model, head_module, head, head_options)


def open_clip_config(config: Mapping[str, Any], source: str = "the config") -> dict[str, Any]:
    """A transformers ``CLIPConfig`` dict -> the open_clip model config of the same network (JSON-plain)."""
    if config.get("model_type", "clip") != "clip":
        raise ValueError(f"{source} is a {config['model_type']!r} model, not a transformers CLIPModel")
    text = {**HF_TEXT_DEFAULTS, **(config.get("text_config") or {})}
    vision = {**HF_VISION_DEFAULTS, **(config.get("vision_config") or {})}
    acts = {text["hidden_act"], vision["hidden_act"]}
    if not acts <= set(_ACTIVATIONS) or len(acts) != 1:
        raise ValueError(
            f"{source}: hidden_act {text['hidden_act']!r} (text) / {vision['hidden_act']!r} (vision) is not "
            f"supported; open_clip builds both towers with one of {sorted(_ACTIVATIONS)}"
        )
    if vision["num_channels"] != 3:
        raise ValueError(f"{source}: num_channels={vision['num_channels']}; vidclip needs RGB (3)")
    for tower, cfg in (("text", text), ("vision", vision)):
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise ValueError(f"{source}: {tower} num_attention_heads does not divide hidden_size")
    pool = (
        {} if text["eos_token_id"] == _LEGACY_EOS_ID else {"pool_type": "eos", "eos_id": text["eos_token_id"]}
    )
    return {
        "embed_dim": int(config.get("projection_dim", 512)),
        "quick_gelu": _ACTIVATIONS[text["hidden_act"]],
        "vision_cfg": {
            "image_size": int(vision["image_size"]),
            "patch_size": int(vision["patch_size"]),
            "width": vision["hidden_size"],
            "layers": vision["num_hidden_layers"],
            "head_width": vision["hidden_size"] // vision["num_attention_heads"],
            "mlp_ratio": _mlp_ratio(vision["hidden_size"], vision["intermediate_size"]),
            "norm_kwargs": {"eps": float(vision["layer_norm_eps"])},
        },
        "text_cfg": {
            "context_length": text["max_position_embeddings"],
            "vocab_size": text["vocab_size"],
            "width": text["hidden_size"],
            "heads": text["num_attention_heads"],
            "layers": text["num_hidden_layers"],
            "mlp_ratio": _mlp_ratio(text["hidden_size"], text["intermediate_size"]),
            "norm_kwargs": {"eps": float(text["layer_norm_eps"])},
            **pool,
        },
    }


def convert_hf_clip_state_dict(
    state: Mapping[str, torch.Tensor],
    source: str = "the checkpoint",
    *,
    text_layers: int | None = None,
    vision_layers: int | None = None,
) -> dict[str, torch.Tensor]:
    """A ``CLIPModel`` state dict -> open_clip ``CLIP`` names, floats in fp32. Layer counts default to those
    the keys show. A missing or unknown key raises a ``ValueError`` listing them all."""
    layers = {
        "text_model": _count_layers(state, "text_model") if text_layers is None else text_layers,
        "vision_model": _count_layers(state, "vision_model") if vision_layers is None else vision_layers,
    }
    plan = _key_plan(layers)
    expected = {name for sources, _ in plan.values() for name in sources}
    missing = [name for sources, _ in plan.values() for name in sources if name not in state]
    unknown = [key for key in state if key not in expected and key not in HF_IGNORED_KEYS]
    if missing or unknown:
        problems = [
            f"{label}: {describe_keys(keys)}"
            for label, keys in (("missing", missing), ("unknown", unknown))
            if keys
        ]
        raise ValueError(f"{source} is not a transformers CLIPModel state dict: " + "; ".join(problems))
    converted = {}
    for target, (sources, combine) in plan.items():
        tensors = [
            state[name].float() if state[name].is_floating_point() else state[name] for name in sources
        ]
        converted[target] = combine(tensors)
    return converted


def _key_plan(layers: Mapping[str, int]) -> dict[str, tuple[tuple[str, ...], Callable[[list], torch.Tensor]]]:
    """open_clip name -> (the HF names it is made of, how)."""
    same: Callable[[list], torch.Tensor] = lambda tensors: tensors[0]  # noqa: E731
    plan = {target: ((name,), same) for name, target in _FIXED_KEYS.items()}
    plan.update({target: ((name,), lambda t: t[0].T.contiguous()) for name, target in _PROJECTIONS.items()})
    for tower, blocks in _TOWERS.items():
        for i in range(layers[tower]):
            theirs, ours = f"{tower}.encoder.layers.{i}", f"{blocks}.resblocks.{i}"
            for param in ("weight", "bias"):
                qkv = tuple(f"{theirs}.self_attn.{p}_proj.{param}" for p in "qkv")
                plan[f"{ours}.attn.in_proj_{param}"] = (qkv, torch.cat)  # open_clip's in_proj is [q; k; v]
                for name, target in _BLOCK_KEYS.items():
                    plan[f"{ours}.{target}.{param}"] = ((f"{theirs}.{name}.{param}",), same)
    return plan


def _count_layers(state: Mapping[str, torch.Tensor], tower: str) -> int:
    pattern = re.compile(rf"{tower}\.encoder\.layers\.(\d+)\.")
    found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def _mlp_ratio(width: int, intermediate: int) -> float:
    """open_clip sizes the MLP as int(width * mlp_ratio): the ratio that gives back ``intermediate``."""
    ratio = intermediate / width
    while int(width * ratio) < intermediate:  # e.g. 176 * (240 / 176) = 239.99...
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _read_source(
    source: str | os.PathLike | Mapping[str, torch.Tensor], config: Mapping[str, Any] | Any | None
) -> tuple[Mapping[str, torch.Tensor], dict[str, Any], dict[str, Any], str]:
    """(state dict, config dict, preprocess overrides, what to call the weights in errors) from a directory,
    a weights file or a state dict."""
    if isinstance(source, Mapping):
        if config is None:
            raise ValueError("from_hf_clip needs config= (a CLIPConfig or its dict) with a state dict")
        return source, _config_dict(config), {}, "the state dict"
    path = Path(source)
    if path.is_dir():
        folder, weights = (
            path,
            next((path / name for name in _WEIGHTS_FILES if (path / name).is_file()), None),
        )
        if weights is None:
            raise FileNotFoundError(
                f"no CLIPModel weights in {path} (looked for {', '.join(_WEIGHTS_FILES)})"
            )
    elif path.is_file():
        folder, weights = path.parent, path
    else:
        raise FileNotFoundError(f"no HF CLIP checkpoint at {path}")
    if config is None:
        config = _read_json(folder / "config.json", "the CLIPModel config (config.json)")
    return _read_weights(weights), _config_dict(config), _preprocess_cfg(folder), str(weights)


def _config_dict(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):  # a transformers CLIPConfig
        return config.to_dict()
    raise ValueError(f"config must be a CLIPConfig or a dict, got {type(config).__name__}")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not {what}")
    return data


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """One weights file, or every shard an ``*.index.json`` lists, as one state dict."""
    if path.name.endswith(".index.json"):
        weight_map = _read_json(path, "a shard index").get("weight_map", {})
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_read_weights(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # a torn or foreign file
            raise ValueError(
                f"{path} is not a readable safetensors file: {' '.join(str(err).split())[:300]}"
            ) from None
    state = read_checkpoint_file(path, "HF CLIP")
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a CLIPModel state dict")
    return dict(state)


def _preprocess_cfg(folder: Path) -> dict[str, Any]:
    """The image normalisation of a ``preprocessor_config.json`` beside the weights (OpenAI's when absent)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    data = _read_json(path, "a CLIP image processor config")
    return {
        ours: list(data[theirs])
        for theirs, ours in (("image_mean", "mean"), ("image_std", "std"))
        if theirs in data
    }
