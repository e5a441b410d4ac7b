"""Decoder backends behind one small interface, and ``load_video``.

A backend opens a file as a :class:`VideoReader` (frame count, frame rate, ``get_frames(indices)``) and is
registered by name in :data:`DECODERS`. ``pyav`` is the default (``auto``): it seeks like decord and is as
fast (tools/bench_decode.py), but identifies frames by timestamp, so it is exact. ``decord`` (the decord2
fork) stays available as ``decoder="decord"``; after seeking it returns wrong frames on H.264 streams with
non-IDR I-frames (tests/test_video_decode.py shows one), and fails on some frame sizes. A GPU decoder
registers the same way and returns frames on its device. Backends are imported lazily: ``import vidclip``
needs neither library.

Frames are indexed in presentation order from 0, as both decord and FFmpeg's decoder emit them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from vidclip.video.errors import VideoDecodeError, diagnose
from vidclip.video.sampling import SamplingStrategy, pad_indices, sample_indices


class VideoReader(Protocol):
    """An open video: ``get_frames`` returns uint8 RGB frames (k, H, W, 3) for sorted, in-range indices."""

    path: str
    num_frames: int
    fps: float

    def get_frames(self, indices: list[int]) -> torch.Tensor: ...

    def close(self) -> None: ...


DECODERS: dict[str, Callable[[str], VideoReader]] = {}


def register_decoder(name: str) -> Callable:
    """Class decorator: make a reader class available as ``decoder=name``."""

    def wrap(cls):
        DECODERS[name] = cls
        return cls

    return wrap


@register_decoder("decord")
class DecordReader:
    """CPU decoding with decord (the ``decord2`` fork); ``get_batch`` seeks instead of decoding every frame."""

    def __init__(self, path: str, num_threads: int = 1):
        import decord  # lazy: optional at import time

        self.path = path
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as err:  # decord raises DECORDError / RuntimeError with FFmpeg's text
            raise VideoDecodeError(path, diagnose(path, err)) from err
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        try:
            frames = self._reader.get_batch(list(indices)).asnumpy()
        except Exception as err:
            raise VideoDecodeError(self.path, diagnose(self.path, err, num_frames=self.num_frames)) from err
        return torch.from_numpy(frames)

    def close(self) -> None:
        self._reader = None


@register_decoder("pyav")
class PyAVReader:
    """CPU decoding with PyAV (FFmpeg), exact by construction: frames are identified by their timestamps; frames
    with a display rotation (phone videos) come out upright.

    Opening demuxes the packet headers once (no decoding) to list every frame's presentation timestamp; frame
    i is the i-th smallest. ``get_frames`` seeks to the sync frame before each needed frame (FFmpeg's index,
    which knows real IDR frames), decodes forward, and keeps the frames whose timestamps are wanted, so a seek
    that lands early or a decoder that skips frames can never shift the result by one. Streams without
    timestamps are decoded in order from the start.
    """

    SEEK_GAP = 64  # decode through gaps shorter than this instead of seeking again

    def __init__(self, path: str):
        import av

        self.path = path
        try:
            self._container = av.open(path)
        except Exception as err:
            raise VideoDecodeError(path, diagnose(path, err)) from err
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(path, "no video stream (the file holds only audio, subtitles or data)")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        self.fps = float(rate) if rate else 0.0
        self._pts = self._frame_timestamps()
        self.num_frames = len(self._pts) if self._pts is not None else (self._stream.frames or 0)

    def _frame_timestamps(self) -> list[int] | None:
        """Sorted presentation timestamps of all frames (from packet headers), or None if some are missing."""
        try:
            stamps = [packet.pts for packet in self._container.demux(self._stream) if packet.size > 0]
        except Exception as err:
            raise VideoDecodeError(self.path, diagnose(self.path, err)) from err
        self._container.seek(0)
        if not stamps or any(pts is None for pts in stamps):
            return None
        return sorted(stamps)

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        wanted = sorted(set(int(i) for i in indices))
        try:
            found = self._decode_seeking(wanted) if self._pts is not None else {}
            if len(found) < len(wanted):  # no timestamps, or a seek that could not reach a frame
                found.update(self._decode_in_order([i for i in wanted if i not in found]))
        except VideoDecodeError:
            raise
        except Exception as err:
            raise VideoDecodeError(self.path, diagnose(self.path, err, num_frames=self.num_frames)) from err
        return torch.stack([found[int(i)] for i in indices])

    def _decode_seeking(self, wanted: list[int]) -> dict[int, torch.Tensor]:
        """Seek near each run of wanted frames and decode forward; frames are matched by timestamp."""
        position_of = {pts: i for i, pts in enumerate(self._pts)}
        found: dict[int, torch.Tensor] = {}
        pending = list(wanted)
        while pending:
            self._container.seek(self._pts[pending[0]], backward=True, any_frame=False, stream=self._stream)
            skipped = False
            for frame in self._container.decode(self._stream):
                position = position_of.get(frame.pts)
                if position is None:
                    continue
                if position > pending[0]:
                    skipped = True  # the decoder never produced a wanted frame
                    break
                if position == pending[0]:
                    found[position] = upright_rgb(frame)
                    pending.pop(0)
                    # the next wanted frame is far: seeking again is cheaper than decoding up to it
                    if not pending or pending[0] - position > self.SEEK_GAP:
                        break
            else:
                break  # the stream ended first: the in-order pass finds the rest or says it is truncated
            if skipped:
                break
        return found

    def _decode_in_order(self, wanted: list[int]) -> dict[int, torch.Tensor]:
        """Decode from the start, counting frames, up to the last wanted one (the reference behaviour)."""
        found: dict[int, torch.Tensor] = {}
        remaining, decoded = set(wanted), 0
        self._container.seek(0)
        for frame in self._container.decode(self._stream):
            if decoded in remaining:
                found[decoded] = upright_rgb(frame)
                remaining.discard(decoded)
            decoded += 1
            if not remaining:
                return found
        raise VideoDecodeError(
            self.path,
            f"truncated: the container lists {self.num_frames} frames but only {decoded} could be decoded "
            f"(frame {min(remaining)} is missing)",
        )

    def close(self) -> None:
        self._container.close()


def upright_rgb(frame) -> torch.Tensor:
    """A PyAV frame as uint8 (H, W, 3) RGB, turned upright as a player shows it (phone videos store the sensor's
    orientation and a display rotation: ``frame.rotation`` degrees counter-clockwise, as FFmpeg's autorotate)."""
    array = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) or 0) // 90 % 4
    return torch.from_numpy(np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array)


def open_video(path: str | os.PathLike, decoder: str = "auto") -> VideoReader:
    """Open ``path`` with the named backend; raises FileNotFoundError or VideoDecodeError naming the file.

    ``auto`` is PyAV: exact frames on every file tested (see the README's decoding section); ``decord`` is
    available on request but returns wrong frames after seeking in some H.264 streams.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such video file: {path}")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    name = "pyav" if decoder == "auto" else decoder
    if name not in DECODERS:
        raise ValueError(f"decoder must be 'auto' or one of {sorted(DECODERS)}, got {decoder!r}")
    reader = DECODERS[name](path)
    if reader.num_frames < 1:
        reader.close()
        raise VideoDecodeError(path, "the video stream has no frames")
    return reader


@dataclass
class VideoClip:
    """Sampled frames of one video. frames: uint8 (T, H, W, 3) RGB; mask: bool (T,), True = a real frame."""

    frames: torch.Tensor
    mask: torch.Tensor
    indices: torch.Tensor
    num_total_frames: int
    fps: float


def load_clip(
    path: str | os.PathLike,
    num_frames: int = 8,
    sampling: SamplingStrategy = "uniform",
    *,
    fps: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    decoder: str = "auto",
) -> VideoClip:
    """Decode the ``num_frames`` frames that ``sampling`` picks; a shorter video repeats its last frame (masked)."""
    reader = open_video(path, decoder)
    try:
        real = sample_indices(
            reader.num_frames,
            num_frames,
            sampling,
            fps=fps,
            video_fps=reader.fps,
            seed=seed,
            generator=generator,
        )
        frames = reader.get_frames(real.tolist())  # (k, H, W, 3)
    finally:
        reader.close()
    indices, mask = pad_indices(real, num_frames)
    if len(real) < num_frames:
        frames = torch.cat([frames, frames[-1:].expand(num_frames - len(real), *frames.shape[1:])])
    return VideoClip(
        frames=frames, mask=mask, indices=indices, num_total_frames=reader.num_frames, fps=reader.fps
    )


def load_video(
    path: str | os.PathLike,
    num_frames: int = 8,
    sampling: SamplingStrategy = "uniform",
    *,
    fps: float | None = None,
    seed: int | None = None,
    decoder: str = "auto",
    return_mask: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decode a video's sampled frames as torch.uint8 (T, H, W, 3) RGB (and the (T,) bool mask if asked).

    Only the sampled frames are decoded. A video with fewer usable frames than ``num_frames`` repeats its last
    frame; ``return_mask=True`` tells which frames are real. See :func:`vidclip.sample_indices` for strategies.
    """
    clip = load_clip(path, num_frames, sampling, fps=fps, seed=seed, decoder=decoder)
    return (clip.frames, clip.mask) if return_mask else clip.frames
