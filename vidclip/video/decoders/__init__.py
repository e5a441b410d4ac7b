"""Decoder backends: importing this package registers every built-in backend (one module each).

A backend's module imports its library only when a video is opened, so importing them all here costs nothing
and ``import vidclip`` loads no decoder library. A new backend is one module that applies
``@register_decoder("name")`` to its reader class, plus one line below.
"""

from vidclip.video.decoders import (
    decord,  # noqa: F401  (registers "decord")
    pyav,  # noqa: F401  (registers "pyav", the one "auto" picks)
    torchcodec,  # noqa: F401  (registers "torchcodec" and "nvdec")
)
from vidclip.video.decoders.base import (
    AUTO,
    DECODERS,
    DEFAULT_MAX_PIXELS,
    VideoReader,
    check_decoder,
    check_frame_size,
    decodes_on_device,
    frames_device,
    get_decoder,
    in_worker_process,
    list_decoders,
    register_decoder,
    resolve_decoder,
)
from vidclip.video.decoders.torchcodec import nvdec_cpu_fallbacks

__all__ = [
    "AUTO",
    "DECODERS",
    "DEFAULT_MAX_PIXELS",
    "VideoReader",
    "check_decoder",
    "check_frame_size",
    "decodes_on_device",
    "frames_device",
    "get_decoder",
    "in_worker_process",
    "list_decoders",
    "nvdec_cpu_fallbacks",
    "register_decoder",
    "resolve_decoder",
]
