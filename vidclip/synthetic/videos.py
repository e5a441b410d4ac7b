"""Generated videos for tests, benchmarks and the offline demo (PyAV encoders, no downloads).

``index_frames`` draws frame i so that i can be read back from the pixels (large binary blocks survive lossy
codecs); ``write_video`` encodes frames with any encoder PyAV's FFmpeg carries (libx264, libx264rgb for
lossless, libvpx-vp9, libsvtav1).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction

import numpy as np

INDEX_BITS = 12  # frame indices up to 4095 are encoded in the pixels


def index_frames(num_frames: int, height: int = 64, width: int = 64) -> np.ndarray:
    """uint8 (T, H, W, 3) frames whose top half encodes the frame index in INDEX_BITS black/white columns and
    whose bottom half is a colour gradient that changes with the index (so frames also differ in colour)."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    col = np.arange(width) * INDEX_BITS // width  # which bit each pixel column shows
    for i in range(num_frames):
        bits = (i >> (INDEX_BITS - 1 - col)) & 1  # most significant bit on the left
        frames[i, : height // 2] = (bits * 255).astype(np.uint8)[None, :, None]
        ramp = np.linspace(0, 255, width, dtype=np.float64)
        frames[i, height // 2 :, :, 0] = ((ramp + 17 * i) % 256).astype(np.uint8)
        frames[i, height // 2 :, :, 1] = (37 * i) % 256
        frames[i, height // 2 :, :, 2] = 255 - ramp.astype(np.uint8)
    return frames


def read_frame_index(frame: np.ndarray) -> int:
    """Inverse of ``index_frames`` for one (H, W, 3) frame, tolerant to codec noise."""
    height, width = frame.shape[:2]
    top = frame[: height // 2].astype(np.float64).mean(axis=(0, 2))  # (W,)
    value = 0
    for bit in range(INDEX_BITS):
        lo, hi = bit * width // INDEX_BITS, (bit + 1) * width // INDEX_BITS
        inner = top[lo + (hi - lo) // 4 : hi - (hi - lo) // 4]  # skip block edges blurred by the codec
        value = (value << 1) | int(inner.mean() > 127)
    return value


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction = 25,
    codec: str = "libx264",
    *,
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
) -> str:
    """Encode uint8 RGB frames (T, H, W, 3) into ``path`` with PyAV; returns the path.

    ``codec="libx264rgb"`` with ``options={"crf": "0"}`` is lossless: decoded frames equal the input exactly.
    """
    import av

    path = os.fspath(path)
    frames = list(frames)
    if not frames:
        raise ValueError("write_video needs at least one frame")
    height, width = frames[0].shape[:2]
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    defaults = {
        "libx264": ("yuv420p", {"crf": "18", "preset": "veryfast"}),
        "libx264rgb": ("rgb24", {"crf": "0", "preset": "veryfast"}),
        "libvpx-vp9": ("yuv420p", {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
        "libsvtav1": ("yuv420p", {"crf": "35", "preset": "12"}),
    }
    default_fmt, default_options = defaults.get(codec, ("yuv420p", {}))
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or default_fmt
        stream.options = {**default_options, **(options or {})}
        for array in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_all_frames(path: str | os.PathLike) -> np.ndarray:
    """Reference decode: every frame of the first video stream, in order, as uint8 (N, H, W, 3) RGB (PyAV)."""
    import av

    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
