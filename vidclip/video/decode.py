"""Opening, sampling and decoding a video, whatever the backend: ``open_video``, ``load_frames``, ``load_video``.

The backends live in :mod:`vidclip.video.decoders`, one module each, registered by name; ``auto`` is PyAV,
exact on every file tested (see the README's decoding section). Frames are indexed in presentation order
from 0, as both decord and FFmpeg's decoder emit them.

Memory is bounded by a pixel budget: ``max_pixels`` per frame (default ``DEFAULT_MAX_PIXELS``, DCI 8K
8192 x 4320; None or 0: none), checked from the stream's header before anything is decoded, by every backend.
A larger frame fails that video ("frame size WxH is above the pixel budget ..."), as a downscaled decode
would not save memory: FFmpeg decodes the full frame before any scaler sees it. The sampled frames of one
video then take at most ``num_frames x max_pixels x 3`` bytes (12 frames of 8K UHD: 1.2 GB) per process.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from vidclip.video.decoders import AUTO, DEFAULT_MAX_PIXELS, VideoReader, get_decoder
from vidclip.video.decoders.base import enforces_pixel_budget
from vidclip.video.decoders.pyav import check_pixel_budget
from vidclip.video.errors import VideoDecodeError, check_video_file
from vidclip.video.sampling import SamplingStrategy, pad_indices, sample_indices


def open_video(
    path: str | os.PathLike,
    decoder: str = AUTO,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    data: bytes | None = None,
) -> VideoReader:
    """Open ``path`` with the named backend; raises FileNotFoundError or VideoDecodeError naming the file.

    ``auto`` is PyAV: exact frames on every file tested; ``decord`` is available on request but returns wrong
    frames after seeking in some H.264 streams; ``nvdec`` returns frames on the GPU. An unknown name raises
    ValueError; a decoder this machine cannot run raises DecoderUnavailableError saying what to install.
    A frame size above ``max_pixels`` is a VideoDecodeError before decoding (see the module's docstring).
    ``data``: the video's bytes (a shard's sample), decoded from memory by a backend that can (PyAV), with
    ``path`` naming it in errors; no temporary file is written.
    """
    path = os.fspath(path)
    backend = get_decoder(decoder)
    if data is not None:
        return _open_bytes(backend, path, data, max_pixels)
    check_video_file(path)  # from os.stat alone: a FIFO, device or link loop is refused before any open
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    if enforces_pixel_budget(backend):  # what the backend needs, it checks when it opens the file
        reader = backend(path, max_pixels=max_pixels)
    else:  # a backend registered without a budget of its own: PyAV reads the header first
        check_pixel_budget(path, max_pixels)
        reader = backend(path)
    if reader.num_frames < 1:
        reader.close()
        raise VideoDecodeError(path, "the video stream has no frames")
    return reader


def _open_bytes(backend: type, path: str, data: bytes, max_pixels: int | None) -> VideoReader:
    if not decodes_from_memory(backend):
        raise VideoDecodeError(
            path, f"decoder {backend.__name__} cannot decode from memory (a shard's sample): use decoder=pyav"
        )
    if not data:
        raise VideoDecodeError(path, "empty video (0 bytes)")
    reader = backend(path, max_pixels=max_pixels, data=data)
    if reader.num_frames < 1:
        reader.close()
        raise VideoDecodeError(path, "the video stream has no frames")
    return reader


def decodes_from_memory(backend: type) -> bool:
    """Whether a reader class takes the video's bytes (keyword ``data``) as well as a path."""
    try:
        return "data" in inspect.signature(backend).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class SampledFrames:
    """The sampled frames of one video (not the model, :class:`vidclip.VideoCLIP`).

    frames: uint8 (T, H, W, 3) RGB; mask: bool (T,), True = a real frame (False: a repeat padding a short
    video); indices: (T,) the frame index of each, padded like the frames; num_total_frames: frames in the
    video; fps: its frame rate."""

    frames: torch.Tensor
    mask: torch.Tensor
    indices: torch.Tensor
    num_total_frames: int
    fps: float


def load_frames(
    path: str | os.PathLike,
    num_frames: int = 8,
    sampling: SamplingStrategy = "uniform",
    *,
    fps: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    decoder: str = AUTO,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    data: bytes | None = None,
) -> SampledFrames:
    """Decode the ``num_frames`` frames that ``sampling`` picks; a shorter video repeats its last frame (masked).
    A video whose frames are above ``max_pixels`` is refused before decoding (VideoDecodeError). ``data``: the
    video's bytes, decoded from memory (:func:`open_video`)."""
    reader = open_video(path, decoder, max_pixels=max_pixels, data=data)
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
    return SampledFrames(
        frames=frames, mask=mask, indices=indices, num_total_frames=reader.num_frames, fps=reader.fps
    )


def load_video(
    path: str | os.PathLike,
    num_frames: int = 8,
    sampling: SamplingStrategy = "uniform",
    *,
    fps: float | None = None,
    seed: int | None = None,
    decoder: str = AUTO,
    return_mask: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decode a video's sampled frames as torch.uint8 (T, H, W, 3) RGB (and the (T,) bool mask if asked).

    Only the sampled frames are decoded. A video with fewer usable frames than ``num_frames`` repeats its last
    frame; ``return_mask=True`` tells which frames are real. See :func:`vidclip.sample_indices` for strategies.
    """
    sampled = load_frames(
        path, num_frames, sampling, fps=fps, seed=seed, decoder=decoder, max_pixels=max_pixels
    )
    return (sampled.frames, sampled.mask) if return_mask else sampled.frames


def iter_frames(
    reader: VideoReader, indices: list[int], chunk: int = 32
) -> Iterator[tuple[int, torch.Tensor]]:
    """Stream the frames of an open video at ``indices`` as (index, uint8 (H, W, 3)), in increasing order, each
    once, holding at most ``chunk`` decoded frames: a backend with its own ``iter_frames`` (PyAV: one pass
    from the start, no seek) streams; any other is asked ``chunk`` frames at a time."""
    if hasattr(reader, "iter_frames"):
        yield from reader.iter_frames(indices)
        return
    wanted = sorted({int(i) for i in indices})
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        yield from zip(part, reader.get_frames(part), strict=True)


# -- deprecated names (one release): VideoClip read as the model, VideoCLIP --------------------------------------
_RENAMED = {"VideoClip": "SampledFrames", "load_clip": "load_frames"}


def _renamed(old: str, stacklevel: int) -> None:
    warnings.warn(
        f"vidclip.video.{old} is renamed {_RENAMED[old]} (not to be confused with the model, VideoCLIP); "
        f"the old name goes in the next release",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def load_clip(*args, **kwargs) -> SampledFrames:
    """Deprecated: :func:`load_frames`."""
    _renamed("load_clip", stacklevel=2)
    return load_frames(*args, **kwargs)


def deprecated_attribute(name: str):
    """``VideoClip`` (deprecated: :class:`SampledFrames`) for a module's ``__getattr__``, else None; the
    warning points at the line that asked the module for it."""
    if name != "VideoClip":
        return None
    _renamed(name, stacklevel=3)
    return SampledFrames


def __getattr__(name: str):
    value = deprecated_attribute(name)
    if value is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return value
