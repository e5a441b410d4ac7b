"""Reading a step checkpoint's files back as data: JSON and safetensors only, each checked against the structure
this run would write and refused naming the file and why (nothing is unpickled, nothing executed)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidclip.config import ConfigError


class CheckpointFileError(ValueError):
    """A file of a step checkpoint that is not what vidclip writes there; the message names it and why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name}: {reason}")
        self.path = path


def rng_state() -> dict[str, Any]:
    """This process's random generator states as JSON values (torch's byte states as hex)."""
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
        "cuda": [state.numpy().tobytes().hex() for state in cuda],
    }


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Whatever goes wrong while reading or applying ``path`` is reported as that file's error."""
    try:
        yield
    except (CheckpointFileError, ConfigError):
        raise
    except Exception as err:
        raise CheckpointFileError(path, f"{type(err).__name__}: {' '.join(str(err).split())[:200]}") from None


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; anything else (a pickle, say) is refused unread, never executed."""
    if not path.is_file():
        raise CheckpointFileError(path, "missing")
    raw = path.read_bytes()
    try:
        return json.loads(raw)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        what = "a pickle, which vidclip never loads" if raw[:1] == b"\x80" else f"{err}"
        raise CheckpointFileError(path, f"not JSON ({what})") from None


def conform(path: Path, where: str, saved: Any, like: Any) -> Any:
    """``saved`` (read from JSON) checked to have the structure and kinds of ``like`` (what this run holds
    now), with tuples restored; anything else is refused."""

    def kind(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return type(value).__name__
        return "number" if isinstance(value, (int, float)) else type(value).__name__

    if isinstance(like, dict):
        if not isinstance(saved, dict):
            raise CheckpointFileError(path, f"{where or 'the file'}: expected an object, found {kind(saved)}")
        missing, unexpected = sorted(like.keys() - saved.keys()), sorted(saved.keys() - like.keys())
        if missing or unexpected:
            raise CheckpointFileError(
                path, f"{where or 'the file'}: missing keys {missing}, unexpected keys {unexpected}"
            )
        return {key: conform(path, f"{where}.{key}".lstrip("."), saved[key], like[key]) for key in like}
    if isinstance(like, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(like):
            found = f"{len(saved)} items" if isinstance(saved, list) else kind(saved)
            raise CheckpointFileError(path, f"{where}: expected a list of {len(like)} items, found {found}")
        return type(like)(
            conform(path, f"{where}[{i}]", s, item)
            for i, (s, item) in enumerate(zip(saved, like, strict=True))
        )
    if kind(saved) != kind(like) and None not in (saved, like):
        raise CheckpointFileError(path, f"{where}: expected a {kind(like)}, found {kind(saved)}")
    return saved


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointFileError(path, "missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}
    except Exception as err:  # a pickle or a torn file: safetensors parses a header, it never runs code
        reason = " ".join(str(err).split())[:200]
        raise CheckpointFileError(path, f"not a readable safetensors file ({reason})") from None


def metadata_json(path: Path, metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, ValueError):
        raise CheckpointFileError(path, f"no readable {key} in its metadata") from None


def read_rng(path: Path) -> Callable[[], None]:
    """This process's random generator states, checked against the structure of the current ones."""
    saved = read_json(path)
    like = rng_state()
    if isinstance(saved, dict) and isinstance(saved.get("cuda"), list):
        like["cuda"] = [""] * len(saved["cuda"])  # from another number of GPUs: not applied, see below
    saved = conform(path, "", saved, like)
    (version, internal, gauss_next), (keys, pos, has_gauss, cached_gaussian) = saved["python"], saved["numpy"]
    if not all(type(word) is int and 0 <= word < 2**32 for word in [*internal, *keys, pos, has_gauss]):
        raise CheckpointFileError(path, "python/numpy: expected 32-bit unsigned integers")
    states = [bytes.fromhex(saved["torch"]), *(bytes.fromhex(state) for state in saved["cuda"])]
    if len(states[0]) != len(like["torch"]) // 2:
        raise CheckpointFileError(
            path, f"torch: expected {len(like['torch']) // 2} bytes, found {len(states[0])}"
        )
    tensors = [torch.frombuffer(bytearray(state), dtype=torch.uint8) for state in states]

    def apply() -> None:
        random.setstate((version, tuple(internal), gauss_next))
        np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
        torch.set_rng_state(tensors[0])
        if tensors[1:] and torch.cuda.is_available() and len(tensors) - 1 == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(tensors[1:])

    return apply
