"""Video input: frame sampling, decoding backends and frame transforms."""

from vidclip.video.decode import (
    DECODERS,
    VideoClip,
    check_decoder,
    decodes_on_device,
    frames_device,
    load_clip,
    load_video,
    loader_workers,
    open_video,
    register_decoder,
)
from vidclip.video.errors import VideoDecodeError
from vidclip.video.sampling import SAMPLING_STRATEGIES, pad_indices, sample_indices
from vidclip.video.torchcodec_reader import DecoderUnavailableError
from vidclip.video.transforms import VideoTransform, get_video_transform

__all__ = [
    "DECODERS",
    "DecoderUnavailableError",
    "SAMPLING_STRATEGIES",
    "VideoClip",
    "VideoDecodeError",
    "VideoTransform",
    "check_decoder",
    "decodes_on_device",
    "frames_device",
    "get_video_transform",
    "load_clip",
    "load_video",
    "loader_workers",
    "open_video",
    "pad_indices",
    "register_decoder",
    "sample_indices",
]
