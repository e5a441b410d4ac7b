"""What a decoder backend is, the registry that names them, and how a name (or ``auto``) becomes a reader.

A backend is a class that opens one file as a :class:`VideoReader` and registers itself in its own module
with ``@register_decoder("name")``. ``auto`` is not a backend: it resolves to the registered backend with the
highest ``auto_preference`` that can run on this machine (backends without one are used only by name).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from vidclip.registry import Registry
from vidclip.video.errors import DecoderUnavailableError, UnknownDecoderError, VideoDecodeError

AUTO = "auto"


class VideoReader(Protocol):
    """An open video: ``get_frames`` returns uint8 RGB frames (k, H, W, 3) for in-range indices.

    A backend class may also set ``on_device = True`` (its frames come back on a GPU) and define a static
    ``check_available()`` that raises DecoderUnavailableError where the machine cannot run it. A backend whose
    constructor takes a keyword ``max_pixels`` enforces that pixel budget itself, from the stream's header
    before it decodes anything (:func:`check_frame_size`); for any other (a subclass whose ``__init__`` takes
    only the path included), :func:`vidclip.video.open_video` reads the header with PyAV first."""

    path: str
    num_frames: int
    fps: float

    def get_frames(self, indices: list[int]) -> torch.Tensor: ...

    def close(self) -> None: ...


Reader = TypeVar("Reader", bound=type)

# The pixel budget: frames larger than this are refused before decoding. The largest standard frame, DCI 8K
# (8192 x 4320; 8K UHD 7680 x 4320 fits), is 106 MB as RGB; a video's sampled frames take num_frames x that.
DEFAULT_MAX_PIXELS = 8192 * 4320


def check_frame_size(path: str, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse, with VideoDecodeError, a frame size above ``max_pixels`` (None or 0: no budget); a size the
    header does not give (0) passes here and is left to the decoder's own check (PyAV's backend sets it)."""
    if max_pixels and width * height > max_pixels:
        raise VideoDecodeError(path, pixel_budget_reason(width, height, max_pixels))


@functools.cache
def enforces_pixel_budget(backend: type) -> bool:
    """Whether a reader class takes ``max_pixels`` (and so checks the budget itself when it opens a file)."""
    try:
        return "max_pixels" in inspect.signature(backend).parameters
    except (TypeError, ValueError):  # no signature to read: assume it does not
        return False


def pixel_budget_reason(width: int, height: int, max_pixels: int) -> str:
    return f"frame size {width}x{height} is above the pixel budget of {max_pixels} pixels (--max-pixels)"


DECODERS: Registry[type[VideoReader]] = Registry("decoder")
_AUTO_PREFERENCE: dict[str, int] = {}  # name -> rank for ``auto``; higher is tried first


def register_decoder(name: str, *, auto_preference: int | None = None) -> Callable[[Reader], Reader]:
    """Class decorator: make a reader class available as ``decoder=name``; with ``auto_preference``, ``auto``
    may pick it too (the highest preference that can run here wins)."""
    if name == AUTO:
        raise ValueError(f"{AUTO!r} names the automatic choice, not a decoder")

    register = DECODERS.register(name)

    def wrap(cls: Reader) -> Reader:
        register(cls)
        _AUTO_PREFERENCE.pop(name, None)
        if auto_preference is not None:
            _AUTO_PREFERENCE[name] = auto_preference
        return cls

    return wrap


def list_decoders() -> list[str]:
    """Names of the registered decoders (``auto`` is not one)."""
    return DECODERS.names()


def _runs_here(name: str) -> bool:
    try:
        _check_available(name)
    except DecoderUnavailableError:
        return False
    return True


def resolve_decoder(decoder: str) -> str:
    """The registered name ``decoder`` stands for: itself, or for ``auto`` the preferred backend that runs
    here; UnknownDecoderError (a ValueError) for a name nobody registered."""
    if decoder != AUTO:
        if decoder not in DECODERS:
            raise UnknownDecoderError(f"{DECODERS.unknown(decoder)} (or {AUTO!r})")
        return decoder
    ranked = sorted(
        (n for n in _AUTO_PREFERENCE if n in DECODERS), key=_AUTO_PREFERENCE.__getitem__, reverse=True
    )
    for name in ranked:
        if _runs_here(name):
            return name
    raise DecoderUnavailableError(f"decoder {AUTO!r}: none of {ranked} can run here")


def get_decoder(decoder: str) -> type[VideoReader]:
    """The reader class registered as ``decoder`` (``auto`` resolved); raises as :func:`resolve_decoder`."""
    return DECODERS[resolve_decoder(decoder)]


def _check_available(name: str) -> None:
    check_available = getattr(DECODERS[name], "check_available", None)  # backends with extra needs
    if check_available is not None:
        check_available()


def check_decoder(decoder: str) -> None:
    """Raise before any work if ``decoder`` is unknown (ValueError) or cannot run on this machine
    (DecoderUnavailableError, saying what to install), rather than once per video."""
    _check_available(resolve_decoder(decoder))


def decodes_on_device(decoder: str) -> bool:
    """Whether ``decoder`` returns frames on a GPU: such frames are decoded in the main process (CUDA cannot
    start in forked DataLoader workers) and are not pinned. False for names nobody registered."""
    try:
        cls = get_decoder(decoder)
    except (UnknownDecoderError, DecoderUnavailableError):
        return False
    return bool(getattr(cls, "on_device", False))


def frames_device(decoder: str) -> torch.device:
    """Where ``decoder`` puts its frames: the current CUDA device for GPU decoders, else the CPU."""
    if decodes_on_device(decoder) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def in_worker_process() -> bool:
    """Whether this runs in a DataLoader worker, where videos are decoded in parallel across processes and
    threads within one decode only compete for the same cores (tools/bench_extract.py measured the gain):
    a backend then decodes with one thread."""
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None
