"""Decoder backends behind one small interface, and ``load_video``.

A backend opens a file as a :class:`VideoReader` (frame count, frame rate, ``get_frames(indices)``) and is
registered by name in :data:`DECODERS`. ``pyav`` is the default (``auto``): it seeks like decord and is
faster (tools/bench_decode.py), but identifies frames by timestamp, so it is exact. ``decord`` (the decord2
fork) stays available as ``decoder="decord"``; after seeking it returns wrong frames on H.264 streams with
non-IDR I-frames (tests/test_video_decode.py shows one), and fails on some frame sizes. ``torchcodec``
decodes with torchcodec on the CPU and ``nvdec`` with NVIDIA's hardware decoder through torchcodec, returning
frames on the GPU. Backends import their libraries lazily: ``import vidclip`` needs none of them.

Frames are indexed in presentation order from 0, as both decord and FFmpeg's decoder emit them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from vidclip.video.errors import VideoDecodeError
from vidclip.video.pyav_reader import PyAVReader
from vidclip.video.sampling import SamplingStrategy, pad_indices, sample_indices
from vidclip.video.torchcodec_reader import NvdecReader, TorchCodecReader

log = logging.getLogger(__name__)


class VideoReader(Protocol):
    """An open video: ``get_frames`` returns uint8 RGB frames (k, H, W, 3) for sorted, in-range indices.

    A backend class may also set ``on_device = True`` (its frames come back on a GPU) and define a static
    ``check_available()`` that raises DecoderUnavailableError where the machine cannot run it."""

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
    """CPU decoding with decord (the ``decord2`` fork); only on request, as it is fast but not exact everywhere."""

    def __init__(self, path: str, num_threads: int = 1):
        import decord  # lazy: optional at import time

        self.path = path
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as err:  # decord raises DECORDError / RuntimeError with FFmpeg's text
            raise VideoDecodeError(path, decord_failure_reason(path, err)) from err
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        try:
            frames = self._reader.get_batch(list(indices)).asnumpy()  # (k, H, W, 3)
        except Exception as err:
            raise VideoDecodeError(self.path, decord_failure_reason(self.path, err)) from err
        return torch.from_numpy(frames)

    def close(self) -> None:
        self._reader = None


def decord_failure_reason(path: str, error: BaseException) -> str:
    """Why decord failed: PyAV's own reason when FFmpeg cannot read the file either, else a decord bug."""
    try:
        reader = PyAVReader(path)
        try:
            reader.get_frames([0, reader.num_frames - 1])
        finally:
            reader.close()
    except VideoDecodeError as err:
        return err.reason
    first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return f"decord failed on a file FFmpeg decodes ({first_line}); use decoder='pyav' or 'auto'"


register_decoder("pyav")(PyAVReader)
register_decoder("torchcodec")(TorchCodecReader)
register_decoder("nvdec")(NvdecReader)


def decodes_on_device(decoder: str) -> bool:
    """Whether ``decoder`` returns frames on a GPU: such frames are decoded in the main process (CUDA cannot
    start in forked DataLoader workers) and are not pinned."""
    return bool(getattr(DECODERS.get(decoder), "on_device", False))


def frames_device(decoder: str) -> torch.device:
    """Where ``decoder`` puts its frames: the current CUDA device for GPU decoders, else the CPU."""
    if decodes_on_device(decoder) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def loader_workers(decoder: str, num_workers: int) -> int:
    """DataLoader worker processes for decoding with ``decoder``: ``num_workers``, or 0 for a GPU decoder, which
    decodes in the main process (NVDEC works asynchronously in hardware, and forked workers cannot use CUDA)."""
    if decodes_on_device(decoder) and num_workers:
        log.info(
            "decoder %r decodes on the GPU in the main process: %d workers not started", decoder, num_workers
        )
        return 0
    return num_workers


def check_decoder_name(decoder: str) -> None:
    """ValueError unless ``decoder`` is ``auto`` or registered."""
    if decoder != "auto" and decoder not in DECODERS:
        raise ValueError(f"decoder must be 'auto' or one of {sorted(DECODERS)}, got {decoder!r}")


def check_decoder(decoder: str) -> None:
    """Raise before any work if ``decoder`` is unknown (ValueError) or cannot run on this machine
    (DecoderUnavailableError, saying what to install), rather than once per video."""
    check_decoder_name(decoder)
    check_available = getattr(DECODERS.get(decoder), "check_available", None)  # backends with extra needs
    if check_available is not None:
        check_available()


def open_video(path: str | os.PathLike, decoder: str = "auto") -> VideoReader:
    """Open ``path`` with the named backend; raises FileNotFoundError or VideoDecodeError naming the file.

    ``auto`` is PyAV: exact frames on every file tested (see the README's decoding section); ``decord`` is
    available on request but returns wrong frames after seeking in some H.264 streams; ``nvdec`` returns frames
    on the GPU. A decoder this machine cannot run raises DecoderUnavailableError saying what to install.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such video file: {path}")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    name = "pyav" if decoder == "auto" else decoder
    check_decoder_name(decoder)  # what the backend itself needs, it checks when it opens the file
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
