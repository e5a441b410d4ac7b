"""Frame-index sampling strategies: which frames of a video the model sees.

Every strategy works in two steps. First the *candidate* frames: all frames of the video, or, when a target
``fps`` is given, the frames nearest to that rate (CLIP4Clip samples 1 frame per second this way). Then the
strategy picks at most ``num_frames`` of the candidates, in increasing order:

==========  ==================================================================================
uniform     the centre frame of each of ``num_frames`` equal segments (deterministic; evaluation)
random      one random frame inside each segment (training; reproducible given ``seed``)
head        the first ``num_frames`` candidates (CLIP4Clip ``slice_framepos=0``)
tail        the last ``num_frames`` candidates (CLIP4Clip ``slice_framepos=1``)
fps         the candidates at ``fps`` (default 1); if more than ``num_frames``, an evenly spaced
            subset ``linspace(0, n-1, num_frames)`` (CLIP4Clip's default ``slice_framepos=2``)
==========  ==================================================================================

A video with fewer candidates than ``num_frames`` gives all of them; :func:`pad_indices` then repeats the last
one and returns a mask (True = a real frame), so batches keep a fixed ``T``.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

SamplingStrategy = Literal["uniform", "random", "head", "tail", "fps"]
SAMPLING_STRATEGIES: tuple[str, ...] = get_args(SamplingStrategy)


def candidate_indices(
    num_total_frames: int, *, fps: float | None = None, video_fps: float | None = None
) -> torch.Tensor:
    """All frame indices, or those at ``fps`` frames per second of a ``video_fps`` video: frame floor(k·video_fps/fps)."""
    if fps is None:
        return torch.arange(num_total_frames)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if video_fps is None or video_fps <= 0:
        raise ValueError(f"sampling at fps={fps} needs the video's frame rate (video_fps), got {video_fps}")
    step = video_fps / fps
    count = max(1, math.ceil(num_total_frames / step))
    # The small epsilon keeps k*step from landing just below an integer through float error (29.97/1.0 etc.).
    idx = torch.floor(torch.arange(count, dtype=torch.float64) * step + 1e-6).long()
    return idx[idx < num_total_frames]


def sample_indices(
    num_total_frames: int,
    num_frames: int,
    strategy: SamplingStrategy = "uniform",
    *,
    fps: float | None = None,
    video_fps: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the frames to decode: a sorted LongTensor of ``min(num_frames, candidates)`` indices in range.

    ``fps`` restricts the candidates to that rate (needs ``video_fps``); the ``fps`` strategy defaults it to 1.
    ``random`` draws from ``generator`` if given, else from a generator seeded with ``seed`` (default 0), so the
    same arguments always give the same indices. Use :func:`pad_indices` to get exactly ``num_frames``.
    """
    if not isinstance(num_total_frames, int) or num_total_frames < 1:
        raise ValueError(f"num_total_frames must be a positive int, got {num_total_frames!r}")
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"strategy must be one of {SAMPLING_STRATEGIES}, got {strategy!r}")
    if strategy == "fps" and fps is None:
        fps = 1.0
    candidates = candidate_indices(num_total_frames, fps=fps, video_fps=video_fps)
    n = len(candidates)
    if n <= num_frames:
        return candidates
    if strategy == "head":
        picked = torch.arange(num_frames)
    elif strategy == "tail":
        picked = torch.arange(n - num_frames, n)
    elif strategy == "fps":
        picked = torch.linspace(0, n - 1, num_frames, dtype=torch.float64).long()
    else:
        # Segment i covers candidates [bounds[i], bounds[i+1]); every segment is non-empty because n > num_frames.
        bounds = torch.floor(torch.arange(num_frames + 1, dtype=torch.float64) * n / num_frames).long()
        starts, lengths = bounds[:-1], bounds[1:] - bounds[:-1]
        if strategy == "uniform":
            picked = starts + lengths // 2
        else:
            if generator is None:
                generator = torch.Generator().manual_seed(0 if seed is None else seed)
            offsets = torch.rand(num_frames, generator=generator, dtype=torch.float64)
            picked = starts + torch.floor(offsets * lengths).long()
    return candidates[picked]


def pad_indices(indices: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat the last index up to ``num_frames``; returns (indices (T,), mask (T,) bool, True = real frame)."""
    if indices.ndim != 1 or len(indices) == 0:
        raise ValueError(f"indices must be a non-empty 1-D tensor, got shape {tuple(indices.shape)}")
    if len(indices) > num_frames:
        raise ValueError(f"got {len(indices)} indices, more than num_frames={num_frames}")
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[: len(indices)] = True
    padded = torch.cat([indices, indices[-1:].expand(num_frames - len(indices))])
    return padded, mask
