"""Video input: frame sampling, decoding backends and frame transforms."""

from vidclip.video.decode import DECODERS, VideoClip, load_clip, load_video, open_video, register_decoder
from vidclip.video.errors import VideoDecodeError
from vidclip.video.sampling import SAMPLING_STRATEGIES, pad_indices, sample_indices
from vidclip.video.transforms import VideoTransform, get_video_transform

__all__ = [
    "DECODERS",
    "SAMPLING_STRATEGIES",
    "VideoClip",
    "VideoDecodeError",
    "VideoTransform",
    "get_video_transform",
    "load_clip",
    "load_video",
    "open_video",
    "pad_indices",
    "register_decoder",
    "sample_indices",
]
