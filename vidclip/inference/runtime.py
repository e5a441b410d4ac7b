"""Where and how a model runs: the device, the precision (one vocabulary: fp32, bf16, fp16) and compilation.

Shared by every command that runs a model (extract, eval, zeroshot, index and training), so that a flag means
the same thing everywhere and a machine that cannot run a choice is refused before any work.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from vidclip.config import PRECISIONS, Precision, normalize_precision
from vidclip.model import VideoCLIP

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
logger = logging.getLogger("vidclip.inference")

__all__ = [
    "PRECISIONS",
    "Precision",
    "autocast",
    "check_precision",
    "compile_image_tower",
    "normalize_precision",
    "resolve_device",
]


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``device`` as given, else ``cuda`` where a GPU is visible, else ``cpu``; ``cuda`` without an index is
    GPU ``local_rank`` (this process's, under a launcher). ValueError for a name that is not a device or a
    GPU that is not here, before a model is built on it."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {str(device)!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available here; use cpu")
    if resolved.type == "cuda" and resolved.index is None and torch.cuda.device_count():
        resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
    return resolved


def check_precision(precision: str, device: torch.device, fix: str = "--precision fp16 (or fp32)") -> None:
    """Refuse bf16 on a CUDA GPU without bfloat16 (before any work), naming ``fix``; warn where it is only
    emulated (pre-Ampere GPUs under recent PyTorch: it runs, several times slower than fp16)."""
    precision = normalize_precision(precision)
    if precision != "bf16" or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return
    if _bf16_supported(including_emulation=False):
        return
    name = _gpu_name(device)
    if _bf16_supported(including_emulation=True):
        logger.warning(f"{name} emulates bf16 (no native support): {fix} is faster")
        return
    raise ValueError(
        f"precision bf16 needs a GPU with bfloat16 support (Ampere or newer); {name} has none: use {fix}"
    )


def _bf16_supported(including_emulation: bool) -> bool:
    """torch.cuda.is_bf16_supported, on PyTorch versions with and without its ``including_emulation``."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=including_emulation))
    except TypeError:  # PyTorch < 2.3 knows no emulation
        return bool(torch.cuda.is_bf16_supported())


def _gpu_name(device: torch.device) -> str:
    """The GPU's name for messages ("this GPU" when the driver cannot say)."""
    try:
        return torch.cuda.get_device_name(device)
    except (AssertionError, RuntimeError):
        return "this GPU"


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision | str) -> Iterator[None]:
    """Mixed precision on ``device`` for bf16/fp16; nothing for fp32."""
    precision = normalize_precision(precision)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_AUTOCAST[precision]):
        yield


def compile_image_tower(model: VideoCLIP) -> VideoCLIP:
    """``torch.compile`` the image tower, where nearly all the compute of encoding a video is, in place.

    Only its ``forward`` is replaced, so parameters and state-dict keys stay as they were. The first batch pays
    for compilation (about a minute for ViT-B/32) and a different batch shape for a recompilation.
    """
    visual = model.clip.visual
    if not getattr(visual, "_vidclip_compiled", False):  # twice would compile the compiled forward again
        visual.forward = torch.compile(visual.forward)
        visual._vidclip_compiled = True
    return model
