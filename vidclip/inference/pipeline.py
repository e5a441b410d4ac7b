"""The one video-encoding pipeline: every command that encodes videos (extract, eval, zeroshot, index) and
validation during training decode, sample, transform and fail the same way.

Videos are decoded, sampled and transformed in DataLoader worker processes by :class:`vidclip.data.VideoDataset`
(or, for a GPU decoder, in the main process by a thread that reads ahead of the model), each decode under a
time limit. The failure policy is one: a video that cannot be decoded, or whose decoding runs past the limit,
keeps its slot marked invalid with its reason, is never scored, and is named and counted by
:func:`report_failures`; one broken file costs its own row, never the run.

That holds for a video that kills the worker process decoding it (the kernel's OOM killer, a decoder crash)
too: :class:`SurvivingBatches` finds it and gives it its row ("the decoding process died (killed by signal 9:
out of memory?)"), and the run goes on. Decoding in the main process (0 workers, or a GPU decoder) cannot be
isolated: there such a video ends the run. Memory is bounded by a pixel budget (``max_pixels``), checked from
a video's header before decoding, and by resizing that never grows with a frame's aspect ratio.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from vidclip.config import check_timeout, normalize_precision
from vidclip.data.dataset import (
    VideoDataset,
    collate,
    create_caption_tokenizer,
)
from vidclip.data.shard_stream import ShardPlan, ShardStream, all_refs, create_stream_loader
from vidclip.inference.prefetch import decode_ahead
from vidclip.inference.runtime import Precision, autocast, compile_image_tower, resolve_device
from vidclip.inference.surviving import SurvivingBatches
from vidclip.model import VideoCLIP, VideoFeatures
from vidclip.video.decoders import DEFAULT_MAX_PIXELS

logger = logging.getLogger("vidclip.inference")
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class EncodeOptions:
    """How videos are read and encoded; the same fields are the same flags in every command
    (``--decoder --timeout --max-pixels --precision --compile --batch-size --num-workers --device``).

    ``num_frames`` None is the model's; ``num_workers`` None is min(4, the CPUs this process may use);
    ``timeout`` is seconds per video (0: no limit; not applied by GPU decoders, which decode in a thread);
    ``max_pixels`` is the pixel budget of a frame, above which a video fails before decoding (0: none).
    """

    num_frames: int | None = None
    sampling: str = "uniform"
    fps: float | None = None
    decoder: str = "auto"
    timeout: float = DEFAULT_TIMEOUT
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int = 32
    num_workers: int | None = None
    device: str | torch.device | None = None
    precision: Precision = "fp32"
    compile: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout", check_timeout(self.timeout, "timeout"))
        object.__setattr__(self, "precision", normalize_precision(self.precision))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        if self.max_pixels < 0:
            raise ValueError(f"max_pixels must be 0 (no limit) or more, got {self.max_pixels}")

    @classmethod
    def of(cls, options: EncodeOptions | None = None, **overrides: Any) -> EncodeOptions:
        """``options`` (or the defaults) with ``overrides``; unknown names are a TypeError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown encoding option(s) {unknown}; known: {sorted(known)}")
        return replace(options or cls(), **overrides)


@dataclass
class EncodedBatch:
    """One batch through the model: ``index`` (B,) positions in the input list, ``valid`` (B,) bool,
    ``features`` for every slot (zeros and an all-False mask where a video failed) and the failures'
    (path, reason)."""

    index: torch.Tensor
    valid: torch.Tensor
    features: VideoFeatures
    errors: list[tuple[str, str]]
    duration: torch.Tensor | None = None  # (B,) seconds, 0 where unknown or failed


@dataclass
class EncodedVideos:
    """``features``: every input slot on the device, frames (N, T, D); ``valid``: (N,) bool, False where the
    video failed; ``errors``: (path, reason) of those failures, in input order."""

    features: VideoFeatures
    valid: torch.Tensor
    errors: list[tuple[str, str]]

    def decoded(self) -> VideoFeatures:
        """Features of the videos that decoded, in input order."""
        return self.features[self.valid]


def create_video_loader(
    model: VideoCLIP, paths: list[str], options: EncodeOptions, device: torch.device
) -> Iterable[dict[str, Any]]:
    """Batches of ``paths`` decoded in worker processes (or read ahead in a thread for a GPU decoder), in order;
    a video that kills its worker gets a failed slot saying so (:class:`vidclip.inference.surviving.SurvivingBatches`)."""
    from vidclip.video import get_video_transform, loader_workers

    dataset = VideoDataset(
        list(paths),
        num_frames=options.num_frames or model.num_frames,
        sampling=options.sampling,
        transform=get_video_transform(model, train=False),
        image_size=model.image_size,
        fps=options.fps,
        decoder=options.decoder,
        timeout=options.timeout,
        max_pixels=options.max_pixels,
    )
    workers = loader_workers(options.decoder, options.num_workers)
    if all_refs(dataset.paths):  # shard samples (url#key): stream their shards, batches in any order
        return create_stream_loader(
            ShardStream(dataset, ShardPlan.of_refs(dataset.paths)), options.batch_size, workers
        )
    if workers:
        return SurvivingBatches(dataset, options.batch_size, workers, pin_memory=device.type == "cuda")
    loader = DataLoader(dataset, batch_size=options.batch_size, collate_fn=collate)  # in this process
    return decode_ahead(loader, options.decoder, device)


def iter_encoded(
    model: VideoCLIP,
    paths: list[str],
    options: EncodeOptions | None = None,
    **overrides: Any,
) -> Iterator[EncodedBatch]:
    """Encode ``paths`` batch by batch (streaming: memory does not grow with the number of videos).

    Only the videos that decoded go through the model; a failed slot gets zero features and its reason.
    """
    options = EncodeOptions.of(options, **overrides)
    device = resolve_device(options.device)
    model = model.to(device).eval()
    if options.compile:
        compile_image_tower(model)
    batches = create_video_loader(model, paths, options, device)
    if options.progress:
        batches = _progress(batches, options.batch_size, -(-len(paths) // options.batch_size))
    for batch in batches:
        yield encode_batch(model, batch, device, options.precision)


@torch.inference_mode()
def encode_batch(
    model: VideoCLIP, batch: dict[str, Any], device: torch.device, precision: Precision = "fp32"
) -> EncodedBatch:
    """Features of one collated batch (float32 on ``device``); failed slots are zeros and never run."""
    valid = batch["valid"].to(device)
    video = batch["video"].to(device, non_blocking=device.type == "cuda")  # (B, T, 3, S, S)
    mask = batch["mask"].to(device)  # (B, T)
    size, frames_per_video = video.shape[0], video.shape[1]
    if bool(valid.all()):
        with autocast(device, precision):
            features = model.encode_video(video, mask)
        features = _as_float(features)
    elif bool(valid.any()):
        with autocast(device, precision):
            decoded = _as_float(model.encode_video(video[valid], mask[valid]))
        features = _scatter(decoded, valid, size, frames_per_video, mask)
    else:
        features = _empty(model, size, frames_per_video, mask, device)
    return EncodedBatch(batch["index"], valid, features, list(batch["errors"]), batch.get("duration"))


def _as_float(features: VideoFeatures) -> VideoFeatures:
    pooled = None if features.pooled is None else features.pooled.float()
    return VideoFeatures(features.frames.float(), features.mask, pooled)


def _scatter(
    decoded: VideoFeatures, valid: torch.Tensor, size: int, frames: int, mask: torch.Tensor
) -> VideoFeatures:
    """The decoded videos' features put back in their slots of a batch of ``size``; zeros elsewhere."""
    dim = decoded.frames.shape[-1]
    out = decoded.frames.new_zeros(size, frames, dim)  # (B, T, D)
    out[valid] = decoded.frames
    pooled = None
    if decoded.pooled is not None:
        pooled = decoded.pooled.new_zeros(size, decoded.pooled.shape[-1])  # (B, D)
        pooled[valid] = decoded.pooled
    return VideoFeatures(out, mask & valid[:, None], pooled)


def _empty(
    model: VideoCLIP, size: int, frames: int, mask: torch.Tensor, device: torch.device
) -> VideoFeatures:
    """Features of a batch in which no video decoded: zeros of the model's widths."""
    dim = model.clip.visual.output_dim  # the image tower's embedding width (ViT and ResNet towers alike)
    pooled = None if model.head.text_conditioned else torch.zeros(size, dim, device=device)
    return VideoFeatures(torch.zeros(size, frames, dim, device=device), torch.zeros_like(mask), pooled)


def encode_videos(
    model: VideoCLIP, paths: list[str], options: EncodeOptions | None = None, **overrides: Any
) -> EncodedVideos:
    """Encode every video of ``paths`` once and keep all their features (eval and zeroshot score them all).

    ``overrides`` are :class:`EncodeOptions` fields (num_frames, decoder, timeout, batch_size, device...).
    """
    parts, valid, errors, index = [], [], [], []
    for batch in iter_encoded(model, paths, options, **overrides):
        parts.append(batch.features)
        valid.append(batch.valid)
        index.append(batch.index)
        errors += batch.errors
    if not parts:
        raise ValueError("no videos to encode")
    features, valid_all, order = VideoFeatures.cat(parts), torch.cat(valid), torch.cat(index).argsort()
    if not torch.equal(order, torch.arange(len(order))):  # streamed shards come in any order: put it back
        features, valid_all = features[order.to(valid_all.device)], valid_all[order.to(valid_all.device)]
        position = {path: i for i, path in enumerate(paths)}
        errors.sort(key=lambda error: position.get(error[0], len(paths)))
    return EncodedVideos(features, valid_all, errors)


@torch.no_grad()
def encode_texts(
    model: VideoCLIP,
    texts: list[str],
    tokenizer: Callable[[list[str]], torch.Tensor],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """Text features (N, D), float32 on ``device``, unnormalised (``similarity`` normalises)."""
    device = resolve_device(device)
    parts = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start : start + batch_size]).to(device)
        with autocast(device, precision):
            parts.append(model.encode_text(tokens).float())
    return torch.cat(parts)


def caption_tokenizer(model: VideoCLIP, max_words: int | None = None) -> Callable[[list[str]], torch.Tensor]:
    """The model's tokenizer, captions cut at ``max_words`` tokens (start and end included; CLIP4Clip: 32)."""
    clip = model.clip
    context = getattr(clip, "context_length", None) or clip.positional_embedding.shape[0]
    return create_caption_tokenizer(model.spec.model_name, int(context), max_words)


def report_failures(
    errors: list[tuple[str, str]], total: int, what: str = "videos", dropped: str = ""
) -> None:
    """The failure policy's one message: how many of ``total`` failed and were dropped, the first five named."""
    from vidclip.data.files import display_path  # names that are not UTF-8 print as clip_\xff.mp4

    if not errors:
        return
    shown = "; ".join(f"{display_path(path)}: {display_path(reason)}" for path, reason in errors[:5])
    more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
    logger.warning(
        f"{len(errors)} of {total} {what} could not be decoded and were dropped{dropped}: {shown}{more}"
    )


def _progress(batches: Iterable, batch_size: int, total: int) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(batches, unit=" videos", unit_scale=batch_size, total=total, file=sys.stderr)
