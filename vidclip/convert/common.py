"""What every converter shares: reading a checkpoint file as data, and a strict load that lists every key that
does not fit (missing, unexpected, wrongly shaped) instead of loading part of a model in silence."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch

from vidclip.heads import TemporalHead
from vidclip.model import VideoCLIP

# Entries OpenAI's JIT archives carry beside the weights (open_clip drops them the same way).
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


def read_checkpoint_file(source: str | os.PathLike, what: str) -> Any:
    """The object saved in ``source`` by ``torch.save``, read with ``weights_only=True`` (tensors and plain
    containers only: a pickle that would run code is refused by PyTorch, never executed)."""
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no {what} checkpoint at {source}")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # an unsafe pickle, a torn file, not a torch file at all
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"{source} is not a {what} checkpoint vidclip can read safely: {reason}") from None


def load_strict(model: VideoCLIP, state: dict[str, torch.Tensor], what: str, hint: str = "") -> None:
    """Load ``state`` into ``model`` only if every key fits; else a ValueError listing the missing, unexpected
    and wrongly shaped keys together (``hint`` is added when shapes differ)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in state
        if key in expected and state[key].shape != expected[key].shape
    ]
    problems = [
        f"{label}: {describe_keys(keys)}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape (checkpoint vs model)", shapes),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"the {what} checkpoint does not fit {model.spec.model_name} with head '{model.spec.head}': "
            + "; ".join(problems)
            + (hint if shapes else "")
        )
    model.load_state_dict(state)


def describe_keys(keys: list[str], limit: int = 12, hints: Mapping[str, str] | None = None) -> str:
    """The first ``limit`` keys, the count, and what unsupported feature some prefixes mean (``hints``)."""
    found = {hint for prefix, hint in (hints or {}).items() for key in keys if key.startswith(prefix)}
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
    return shown + (f" [unsupported feature: {', '.join(sorted(found))}]" if found else "")


def attach_head(model: VideoCLIP, head: TemporalHead, name: str, options: Mapping[str, Any]) -> VideoCLIP:
    """``model``'s CLIP, its converted weights loaded, under a new ``head`` (registered as ``name``).

    Heads that wrap CLIP's blocks (adapters, prompts) rename CLIP's keys, so they attach after the weights are
    in, as they do after open_clip loads pretrained weights; the head keeps its own initialisation.
    """
    spec = dataclasses.replace(model.spec, head=name, head_options=dict(options))
    return VideoCLIP(model.clip, head, spec)


def openai_to_open_clip_names(
    state: dict[str, torch.Tensor], clip: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """OpenAI CLIP names -> open_clip's: the same for open_clip's ``CLIP``; its ``CustomTextCLIP`` nests the
    text tower under ``text.`` (open_clip's own converter does that move)."""
    from open_clip.model import convert_to_custom_text_state_dict

    state = {k: v for k, v in state.items() if k not in _OPENAI_METADATA}
    return state if hasattr(clip, "positional_embedding") else convert_to_custom_text_state_dict(state)
