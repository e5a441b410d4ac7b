"""Video input: frame sampling, decoder backends (:mod:`vidclip.video.decoders`) and frame transforms."""

from vidclip.video.decode import (
    SampledFrames,
    iter_frames,
    load_clip,
    load_frames,
    load_video,
    open_video,
)
from vidclip.video.decode import deprecated_attribute as _deprecated_attribute
from vidclip.video.decoders import (
    DECODERS,
    VideoReader,
    check_decoder,
    decodes_on_device,
    frames_device,
    get_decoder,
    list_decoders,
    nvdec_cpu_fallbacks,
    register_decoder,
)
from vidclip.video.errors import DecoderUnavailableError, UnknownDecoderError, VideoDecodeError
from vidclip.video.sampling import SAMPLING_STRATEGIES, pad_indices, sample_indices
from vidclip.video.transforms import VideoTransform, get_video_transform
from vidclip.video.workers import available_cpus, default_num_workers, loader_workers

__all__ = [
    "DECODERS",
    "DecoderUnavailableError",
    "SAMPLING_STRATEGIES",
    "SampledFrames",
    "UnknownDecoderError",
    "VideoDecodeError",
    "VideoReader",
    "VideoTransform",
    "available_cpus",
    "check_decoder",
    "decodes_on_device",
    "default_num_workers",
    "frames_device",
    "get_decoder",
    "get_video_transform",
    "iter_frames",
    "list_decoders",
    "load_clip",
    "load_frames",
    "load_video",
    "loader_workers",
    "nvdec_cpu_fallbacks",
    "open_video",
    "pad_indices",
    "register_decoder",
    "sample_indices",
]


def __getattr__(name: str):
    value = _deprecated_attribute(name)  # VideoClip, renamed SampledFrames
    if value is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return value
