"""The torchcodec backends: FFmpeg on the CPU (``torchcodec``) or NVIDIA's NVDEC on the GPU (``nvdec``).

torchcodec (meta-pytorch/torchcodec) decodes straight into torch tensors. With a CUDA device it decodes with
NVDEC and converts to RGB on the GPU, so frames never cross PCIe and the CPU does no decoding. Both use
``seek_mode="exact"``: opening scans the packet headers, so index i is the i-th frame in presentation order,
as in the PyAV backend and the reference decode; display rotation is applied, as PyAV's backend does.

A codec or format that NVDEC cannot decode makes torchcodec decode on the CPU instead (its frames still end
on the GPU). torchcodec 0.10 and later report that as ``VideoDecoder.cpu_fallback``; ``nvdec`` warns once per
process when it happens and counts the videos (:func:`nvdec_cpu_fallbacks`), rather than claim GPU decoding.

Needs ``pip install torchcodec`` (``vidclip[gpu]``) and FFmpeg's shared libraries on the system (e.g.
``apt install ffmpeg``; torchcodec 0.9-0.15 loads FFmpeg 4 to 8, 0.16 and later 4 to 9).
The pixel budget is checked with PyAV, from the header (or FFmpeg's refusal of the first frames), before
torchcodec opens the file; a stream whose frames grow later is not caught.
:func:`check_torchcodec` says what is missing before any work starts.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch

from vidclip.video.decoders.base import DEFAULT_MAX_PIXELS, in_worker_process, register_decoder
from vidclip.video.decoders.pyav import check_pixel_budget
from vidclip.video.errors import DecoderUnavailableError, VideoDecodeError, diagnose

log = logging.getLogger(__name__)

_cpu_fallback_paths: list[str] = []  # videos asked of NVDEC that torchcodec decoded on the CPU, this process


@functools.cache
def _load_torchcodec():
    """torchcodec's VideoDecoder class, or DecoderUnavailableError saying why it cannot be loaded."""
    try:
        from torchcodec.decoders import VideoDecoder  # lazy: `import vidclip` loads no decoder library
    except ImportError as err:
        raise DecoderUnavailableError(
            "the torchcodec decoders need `pip install torchcodec` (or `pip install 'vidclip[gpu]'`)"
        ) from err
    except (OSError, RuntimeError) as err:  # its core library failed to load: no FFmpeg, or another torch
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DecoderUnavailableError(
            f"{_NO_FFMPEG} or was built for another torch version: {first_line}"
        ) from err
    import torchcodec

    # from 0.16 torchcodec imports without FFmpeg (for its image decoders) and says so here
    if getattr(torchcodec, "ffmpeg_major_version", 0) is None:
        raise DecoderUnavailableError(f"{_NO_FFMPEG}, or was built for another torch version")
    return VideoDecoder


_NO_FFMPEG = (
    "torchcodec is installed but cannot load FFmpeg's shared libraries (install FFmpeg, e.g. `apt install "
    "ffmpeg`, a major version that your torchcodec supports: 4-8, or 4-9 from torchcodec 0.16)"
)


def check_torchcodec(device: str):
    """torchcodec's VideoDecoder class, or DecoderUnavailableError unless it can decode on ``device`` ("cpu" or
    "cuda") here; a missing GPU is named first, as no install fixes it."""
    if device == "cuda" and not torch.cuda.is_available():
        raise DecoderUnavailableError("decoder 'nvdec' decodes on an NVIDIA GPU, and none is visible here")
    return _load_torchcodec()


@register_decoder("torchcodec")
class TorchCodecReader:
    """Decoding with torchcodec on ``device``; ``get_frames`` returns uint8 (k, H, W, 3) RGB on that device."""

    @staticmethod
    def check_available() -> None:
        check_torchcodec("cpu")

    def __init__(self, path: str, device: str = "cpu", max_pixels: int | None = DEFAULT_MAX_PIXELS):
        video_decoder = check_torchcodec(device)
        self.path = path
        check_pixel_budget(path, max_pixels)  # with PyAV, before torchcodec's opening decodes frames
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device(device)
        )
        try:
            self._decoder = video_decoder(
                path,
                seek_mode="exact",
                dimension_order="NHWC",
                device=self.device,
                num_ffmpeg_threads=1 if in_worker_process() else 0,
            )
        except Exception as err:  # torchcodec raises RuntimeError/ValueError with FFmpeg's text
            raise VideoDecodeError(path, diagnose(path, err)) from err
        metadata = self._decoder.metadata
        self.num_frames = int(metadata.num_frames or 0)
        self.fps = float(metadata.average_fps or 0.0)

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed, each in [0, num_frames)): uint8 (k, H, W, 3)."""
        indices = [int(i) for i in indices]
        if indices and not 0 <= min(indices) <= max(indices) < self.num_frames:
            raise ValueError(
                f"indices must lie in [0, {self.num_frames}), got {min(indices)}..{max(indices)}"
            )
        try:
            return self._decoder.get_frames_at(indices=indices).data
        except Exception as err:
            raise VideoDecodeError(self.path, diagnose(self.path, err, num_frames=self.num_frames)) from err

    def close(self) -> None:
        self._decoder = None


@register_decoder("nvdec")
class NvdecReader(TorchCodecReader):
    """torchcodec's NVDEC decoder on the current CUDA device: frames come back on the GPU."""

    on_device = True

    @staticmethod
    def check_available() -> None:
        check_torchcodec("cuda")

    def __init__(self, path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        super().__init__(path, device="cuda", max_pixels=max_pixels)
        self._fallback_checked = False
        self._check_cpu_fallback()  # NVDEC knows at once; FFmpeg's CUDA backend after the first frame

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        frames = super().get_frames(indices)
        self._check_cpu_fallback()
        return frames

    def _check_cpu_fallback(self) -> None:
        if self._fallback_checked:
            return
        try:
            status = getattr(self._decoder, "cpu_fallback", None)  # torchcodec >= 0.10: CpuFallbackStatus
        except Exception:  # it asks the decoder core: never fail a decode over a report
            status = None
        if status is not None and not getattr(status, "status_known", True):
            return  # not decided until a frame is decoded
        self._fallback_checked = True
        if status:  # truthy only when known and fallen back; older torchcodec cannot tell (None)
            report_cpu_fallback(self.path, str(status))


def report_cpu_fallback(path: str, status: str) -> None:
    """Count a video that torchcodec decoded on the CPU although ``nvdec`` asked for NVDEC; warn on the first."""
    _cpu_fallback_paths.append(path)
    if len(_cpu_fallback_paths) == 1:
        warnings.warn(
            f"decoder 'nvdec': torchcodec decoded {path!r} on the CPU, not with NVDEC ({status}); the frames "
            "still end on the GPU. Later fallbacks in this process are counted, not warned: "
            "vidclip.video.nvdec_cpu_fallbacks()",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        log.debug("nvdec fell back to the CPU on %s (%s)", path, status)


def nvdec_cpu_fallbacks() -> int:
    """How many videos this process asked of ``nvdec`` that torchcodec decoded on the CPU instead."""
    return len(_cpu_fallback_paths)
