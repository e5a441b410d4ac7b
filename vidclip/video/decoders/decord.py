"""The ``decord`` backend (the maintained ``decord2`` fork), used only on request.

decord is fast, but after seeking it returns wrong frames on H.264 streams with non-IDR I-frames
(tests/test_video_decode.py shows one) and fails on some frame sizes, so ``auto`` never picks it.
"""

from __future__ import annotations

import torch

from vidclip.video.decoders.base import DEFAULT_MAX_PIXELS, register_decoder
from vidclip.video.decoders.pyav import PyAVReader, check_pixel_budget
from vidclip.video.errors import VideoDecodeError


@register_decoder("decord")
class DecordReader:
    """CPU decoding with decord; ``get_frames`` returns uint8 (k, H, W, 3) RGB frames. ``max_pixels`` is the
    pixel budget, checked with PyAV before decord opens the file (its opening decodes)."""

    def __init__(self, path: str, num_threads: int = 1, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        import decord  # lazy: `import vidclip` loads no decoder library

        self.path = path
        check_pixel_budget(path, max_pixels)
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
