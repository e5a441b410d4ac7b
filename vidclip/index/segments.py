"""Embeddings of overlapping windows of long videos, decoded once, in order, at the sampling rate.

A window of ``segment`` seconds sees ``T`` frames (the model's), sampled as ``uniform`` samples a whole video:
the centre frame of each of ``T`` equal steps of ``h = segment / T`` seconds. Every window's frames lie on one
grid of such steps over the whole video (window starts are rounded to the grid), so overlapping windows share
frames: a frame is decoded once, and with a head that installs nothing in the image tower (``mean``,
``seq_transformer``...) it is encoded once too; the windows are then pooled from the frame features. Heads
with image-tower modules (adapters, prompts) see each window's frames as one video, as they were trained.

Decoding streams (:func:`vidclip.video.iter_frames`): a 2-hour video is read once from the start, never seeked
per window, and at most a chunk of frames and the frames of the windows still open are held. Decoding runs
in DataLoader workers (one video per worker at a time, a time limit per chunk, the pipeline's failure
reasons); a video that cannot be decoded costs its own row, whatever it had sent before.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vidclip.data.dataset import failure_reason, init_worker, time_limit
from vidclip.data.shard_stream import ShardPlan, all_refs
from vidclip.data.shards import iter_wanted
from vidclip.heads.base import InstalledModule
from vidclip.inference.pipeline import EncodeOptions
from vidclip.inference.runtime import autocast, resolve_device
from vidclip.model import VideoCLIP
from vidclip.video import iter_frames, loader_workers, open_video, sample_indices

CHUNK_FRAMES = 64  # decoded frames a worker sends at once: ~38 MB of 224 px float frames


@dataclass
class WindowPlan:
    """Where a video's windows lie: ``frames[w]`` the T frame indices of window ``w`` (a short video repeats
    its last one, masked in ``mask[w]``), ``starts``/``ends`` in seconds."""

    frames: list[list[int]]
    mask: list[list[bool]]
    starts: list[float]
    ends: list[float]
    duration: float

    def wanted(self) -> list[int]:
        """Every frame some window needs, sorted, once."""
        return sorted({i for window in self.frames for i in window})


def plan_windows(
    num_total_frames: int, fps: float, *, segment: float, stride: float, frames_per_window: int
) -> WindowPlan:
    """Windows of ``segment`` seconds every ``stride`` seconds (starts rounded to the frame grid), the last
    one ending at the video's end; a video no longer than ``segment`` is one window over all of it, sampled
    exactly as a whole video is (``uniform``)."""
    if not fps > 0:
        raise ValueError("the video has no frame rate: windows cannot be placed in time")
    duration, t = num_total_frames / fps, frames_per_window
    if duration <= segment:
        real = sample_indices(num_total_frames, t, "uniform").tolist()
        padded = real + [real[-1]] * (t - len(real))
        mask = [True] * len(real) + [False] * (t - len(real))
        return WindowPlan([padded], [mask], [0.0], [duration], duration)
    step = segment / t
    first_points = []
    w = 0
    while (k := math.floor(w * stride / step + 0.5)) * step + segment < duration - 1e-9:
        first_points.append(k)
        w += 1
    last = math.ceil((duration - segment) / step - 1e-9)  # the first grid start whose window reaches the end
    if not first_points or last > first_points[-1]:
        first_points.append(last)

    def frame_at(point: int) -> int:
        return min(num_total_frames - 1, math.floor((point + 0.5) * step * fps + 1e-6))

    frames = [[frame_at(k + j) for j in range(t)] for k in first_points]
    starts = [k * step for k in first_points]
    ends = [min(duration, s + segment) for s in starts]
    return WindowPlan(frames, [[True] * t for _ in frames], starts, ends, duration)


class WindowFrames(IterableDataset):
    """Each video's window plan, then its wanted frames transformed, in chunks: items are dicts with ``kind``
    ``plan`` / ``frames`` (``indices`` (c,), ``pixels`` float (c, 3, S, S)) / ``end`` / ``error`` (``reason``)
    and ``video`` (the position in ``paths``). Worker ``w`` of ``W`` takes the videos at positions w mod W
    (shard samples ``url#key``: those of the shards w::W, decoded from the tar's bytes)."""

    def __init__(
        self,
        paths: list[str],
        *,
        segment: float,
        stride: float,
        frames_per_window: int,
        transform: Any,
        options: EncodeOptions,
    ) -> None:
        self.paths, self.segment, self.stride, self.t = paths, segment, stride, frames_per_window
        self.transform, self.options = transform, options

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if all_refs(self.paths):  # shard samples: worker w reads shards w::W, each video from its bytes
            shards = ShardPlan.of_refs(self.paths).shards[worker::workers]
            for position, raw, reason in iter_wanted(shards):
                video = raw.video() if raw is not None else None
                if video is None:
                    reason = reason or "the sample has no video member"
                    yield {"kind": "error", "video": position, "reason": reason}
                else:
                    yield from self._video(position, video[1])
            return
        for position in range(worker, len(self.paths), workers):
            yield from self._video(position)

    def _video(self, position: int, data: bytes | None = None) -> Iterator[dict[str, Any]]:
        path, timeout = self.paths[position], self.options.timeout
        try:
            with time_limit(timeout):
                reader = open_video(path, self.options.decoder, max_pixels=self.options.max_pixels, data=data)
        except Exception as err:
            yield {"kind": "error", "video": position, "reason": failure_reason(err, timeout)}
            return
        try:
            plan = plan_windows(
                reader.num_frames,
                reader.fps,
                segment=self.segment,
                stride=self.stride,
                frames_per_window=self.t,
            )
            yield {"kind": "plan", "video": position, "plan": plan}
            frames = iter_frames(reader, plan.wanted(), CHUNK_FRAMES)
            while True:
                with time_limit(timeout):  # per chunk: a long video may take long, a stalled one may not
                    chunk = list(itertools.islice(frames, CHUNK_FRAMES))
                    if not chunk:
                        break
                    pixels = self.transform(torch.stack([frame for _, frame in chunk]))  # (c, 3, S, S)
                indices = torch.tensor([index for index, _ in chunk])
                yield {"kind": "frames", "video": position, "indices": indices, "pixels": pixels}
            yield {"kind": "end", "video": position}
        except Exception as err:  # costs this video only
            yield {"kind": "error", "video": position, "reason": failure_reason(err, timeout)}
        finally:
            reader.close()


@dataclass
class VideoWindows:
    """One video's result: its windows' times and L2-normalised embeddings (W, D), their frame features
    (W, T, D) when kept, or the reason it failed."""

    position: int
    path: str
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    frames: np.ndarray | None = None
    error: str | None = None


def frames_shared(model: VideoCLIP) -> bool:
    """Whether a frame's features are the same in every window: the head installed nothing in the image tower."""
    return not any(isinstance(m, InstalledModule) for m in model.clip.visual.modules())


class _Assembly:
    """A video's windows being put together from its frames as they arrive (frames come in increasing order)."""

    def __init__(self, plan: WindowPlan) -> None:
        self.plan, self.held, self.next_window, self.last_frame = plan, {}, 0, -1
        self.pooled: list[torch.Tensor] = []
        self.frame_features: list[torch.Tensor] = []

    def ready(self) -> list[int]:
        """Windows whose frames have all arrived and that were not taken yet."""
        ready = []
        while (
            self.next_window < len(self.plan.frames)
            and self.plan.frames[self.next_window][-1] <= self.last_frame
        ):
            ready.append(self.next_window)
            self.next_window += 1
        return ready

    def release(self) -> None:
        """Drop the frames no open window needs (all windows' frames increase with the window)."""
        if self.next_window < len(self.plan.frames):
            keep_from = self.plan.frames[self.next_window][0]
            self.held = {i: v for i, v in self.held.items() if i >= keep_from}
        else:
            self.held = {}


def encode_windows(
    model: VideoCLIP,
    paths: list[str],
    options: EncodeOptions,
    *,
    segment: float,
    stride: float,
    keep_frames: bool = False,
) -> Iterator[VideoWindows]:
    """Embed the windows of every video of ``paths``, one :class:`VideoWindows` per video as each finishes
    (not in input order when several workers decode)."""
    from vidclip.video import get_video_transform

    if not segment > 0 or not stride > 0:
        raise ValueError(f"segment and stride must be positive seconds, got {segment} and {stride}")
    device = resolve_device(options.device)
    model = model.to(device).eval()
    dataset = WindowFrames(
        list(paths),
        segment=segment,
        stride=stride,
        frames_per_window=options.num_frames or model.num_frames,
        transform=get_video_transform(model, train=False),
        options=options,
    )
    workers = loader_workers(options.decoder, options.num_workers)
    items: Iterable[dict[str, Any]] = (
        DataLoader(dataset, batch_size=None, num_workers=workers, worker_init_fn=init_worker)
        if workers
        else dataset
    )
    shared = frames_shared(model)
    open_videos: dict[int, _Assembly] = {}
    with torch.inference_mode():
        for item in items:
            position = item["video"]
            if item["kind"] == "plan":
                open_videos[position] = _Assembly(item["plan"])
            elif item["kind"] == "frames":
                _take_frames(model, open_videos[position], item, shared, options, device, keep_frames)
            elif item["kind"] == "end":
                yield _finish(position, paths[position], open_videos.pop(position), keep_frames)
            else:
                open_videos.pop(position, None)
                yield VideoWindows(position, paths[position], error=item["reason"])


def _take_frames(
    model: VideoCLIP,
    video: _Assembly,
    item: dict[str, Any],
    shared: bool,
    options: EncodeOptions,
    device: torch.device,
    keep_frames: bool,
) -> None:
    pixels = item["pixels"].to(device)  # (c, 3, S, S)
    if shared:  # encode each frame once; windows are pooled from features
        with autocast(device, options.precision):
            values = model.clip.encode_image(pixels).float()  # (c, D)
    else:
        values = pixels
    video.held.update(zip(item["indices"].tolist(), values, strict=True))
    video.last_frame = int(item["indices"][-1])
    ready = video.ready()
    for start in range(0, len(ready), options.batch_size):
        windows = ready[start : start + options.batch_size]
        stacked = torch.stack([torch.stack([video.held[i] for i in video.plan.frames[w]]) for w in windows])
        mask = torch.tensor([video.plan.mask[w] for w in windows], device=device)  # (W, T)
        with autocast(device, options.precision):
            if shared:
                frames, pooled = stacked, model.head.pool(stacked, mask)  # (W, T, D), (W, D)
            else:
                features = model.encode_video(stacked, mask)  # stacked: (W, T, 3, S, S)
                frames, pooled = features.frames, features.pooled
        video.pooled.append(pooled.float().cpu())
        if keep_frames:
            video.frame_features.append(frames.float().cpu())
    video.release()


def _finish(position: int, path: str, video: _Assembly, keep_frames: bool) -> VideoWindows:
    if video.next_window < len(video.plan.frames):  # frames promised by the plan never came
        return VideoWindows(position, path, error="truncated: some frames could not be decoded")
    embeddings = torch.cat(video.pooled).numpy()
    if not np.isfinite(embeddings).all():
        return VideoWindows(position, path, error="the embedding is not finite (NaN or inf)")
    frames = torch.cat(video.frame_features).numpy() if keep_frames else None
    return VideoWindows(position, path, video.plan.starts, video.plan.ends, embeddings, frames)
