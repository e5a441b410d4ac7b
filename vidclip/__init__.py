"""vidclip: video-language models from image CLIP (open_clip) with swappable temporal heads.

The public contract (DESIGN.md). Importing vidclip loads no decoder, no weights and needs no GPU.
"""

import importlib

from vidclip.checkpoint import load_checkpoint, save_checkpoint
from vidclip.heads import list_heads, register_head
from vidclip.metrics import retrieval_metrics
from vidclip.model import VideoCLIP, VideoFeatures, create_model, get_tokenizer
from vidclip.version import __version__
from vidclip.video import (
    SampledFrames,
    VideoDecodeError,
    get_video_transform,
    load_clip,
    load_frames,
    load_video,
    sample_indices,
)

__all__ = [
    "SampledFrames",
    "VideoCLIP",
    "VideoDecodeError",
    "VideoFeatures",
    "__version__",
    "create_model",
    "get_tokenizer",
    "get_video_transform",
    "list_heads",
    "load_checkpoint",
    "load_clip",
    "load_frames",
    "load_video",
    "register_head",
    "retrieval_metrics",
    "sample_indices",
    "save_checkpoint",
]


def __getattr__(name: str):
    if name == "convert":  # loaded on first use: vidclip.convert.from_clip4clip(...)
        return importlib.import_module("vidclip.convert")
    if name == "VideoIndex":  # loaded on first use: vidclip.VideoIndex.load("INDEX")
        return importlib.import_module("vidclip.index").VideoIndex
    if name == "push_to_hub":  # loaded on first use: importing vidclip loads no huggingface_hub
        return importlib.import_module("vidclip.hub").push_to_hub
    raise AttributeError(f"module 'vidclip' has no attribute {name!r}")
