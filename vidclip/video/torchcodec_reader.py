"""The torchcodec backend: FFmpeg on the CPU (``torchcodec``) or NVIDIA's NVDEC on the GPU (``nvdec``).

torchcodec (pytorch/torchcodec) decodes straight into torch tensors. With a CUDA device it decodes with NVDEC
and converts to RGB on the GPU, so frames never cross PCIe and the CPU does no decoding. Both use
``seek_mode="exact"``: opening scans the packet headers, so index i is the i-th frame in presentation order,
as in the PyAV backend and the reference decode; display rotation is applied, as PyAV's backend does.

Needs ``pip install torchcodec`` (``vidclip[gpu]``) and FFmpeg's shared libraries on the system (versions 4
to 7, e.g. ``apt install ffmpeg``). :func:`check_torchcodec` says what is missing before any work starts.
"""

from __future__ import annotations

import functools

import torch

from vidclip.video.errors import VideoDecodeError, diagnose
from vidclip.video.pyav_reader import in_worker_process


class DecoderUnavailableError(RuntimeError):
    """A decoder that this machine cannot run (library, system libraries or GPU missing); says what to install."""


@functools.cache
def _load_torchcodec():
    """torchcodec's VideoDecoder class, or DecoderUnavailableError saying why it cannot be loaded."""
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as err:
        raise DecoderUnavailableError(
            "the torchcodec decoders need `pip install torchcodec` (or `pip install 'vidclip[gpu]'`)"
        ) from err
    except (OSError, RuntimeError) as err:  # its core library failed to load: no FFmpeg, or another torch
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DecoderUnavailableError(
            "torchcodec is installed but cannot load FFmpeg's shared libraries (install FFmpeg 4-7, e.g. "
            f"`apt install ffmpeg`) or was built for another torch version: {first_line}"
        ) from err
    return VideoDecoder


def check_torchcodec(device: str):
    """torchcodec's VideoDecoder class, or DecoderUnavailableError unless it can decode on ``device`` ("cpu" or
    "cuda") here; a missing GPU is named first, as no install fixes it."""
    if device == "cuda" and not torch.cuda.is_available():
        raise DecoderUnavailableError("decoder 'nvdec' decodes on an NVIDIA GPU, and none is visible here")
    return _load_torchcodec()


class TorchCodecReader:
    """Decoding with torchcodec on ``device``; ``get_frames`` returns uint8 (k, H, W, 3) RGB on that device."""

    @staticmethod
    def check_available() -> None:
        check_torchcodec("cpu")

    def __init__(self, path: str, device: str = "cpu"):
        video_decoder = check_torchcodec(device)
        self.path = path
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


class NvdecReader(TorchCodecReader):
    """torchcodec's NVDEC decoder on the current CUDA device: frames come back on the GPU."""

    on_device = True

    @staticmethod
    def check_available() -> None:
        check_torchcodec("cuda")

    def __init__(self, path: str):
        super().__init__(path, device="cuda")
