"""Retrieval scoring: every video encoded once by the shared pipeline, every caption, all scored against
each other, and the metrics exactly as CLIP4Clip reports them (used by ``vidclip eval`` and by validation during
training through :func:`keep_decoded`, so both score a split the same way).

Videos listed by the annotations but absent on disk are dropped by the reader (``num_missing``); videos that
fail to decode, or time out, are dropped with their captions (``num_failed``), each named in a warning. The
metrics are over what remains: ``num_queries`` captions against ``num_videos`` videos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidclip.data.base import RetrievalAnnotations
from vidclip.data.lookup import ensure_checked
from vidclip.inference.pipeline import (
    EncodeOptions,
    caption_tokenizer,
    encode_texts,
    encode_videos,
    report_failures,
)
from vidclip.inference.runtime import resolve_device
from vidclip.metrics import dual_softmax, retrieval_metrics
from vidclip.model import VideoCLIP

COUNT_KEYS = ("num_queries", "num_videos", "num_missing", "num_failed")


@dataclass
class RetrievalScores:
    """What an evaluation scored: ``similarity`` (N_text, V) over the videos that decoded, each caption's video
    index among them (``text_to_video``), those videos (``videos``, as the annotations name them, and their
    ``paths``), the model's logit scale and the counts of ``COUNT_KEYS``."""

    similarity: torch.Tensor
    text_to_video: torch.Tensor
    captions: list[str]
    videos: list[str]
    paths: list[str]
    logit_scale: float
    counts: dict[str, int]


def evaluate_retrieval(
    model: VideoCLIP, annotations: RetrievalAnnotations, *, dsl: bool = False, **options
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``annotations``: ``t2v/R@1`` ... ``v2t/MnR`` (``dsl/...`` too with
    ``dsl``), plus ``num_queries``, ``num_videos``, ``num_missing`` and ``num_failed``.

    ``options`` are :func:`score_retrieval`'s (max_words, chunk_size and the EncodeOptions fields).
    """
    return retrieval_report(score_retrieval(model, annotations, **options), dsl=dsl)


@torch.no_grad()
def score_retrieval(
    model: VideoCLIP,
    annotations: RetrievalAnnotations,
    options: EncodeOptions | None = None,
    *,
    max_words: int | None = None,
    chunk_size: int = 256,
    **overrides,
) -> RetrievalScores:
    """Encode every video once and every caption, and score them all against each other.

    ``chunk_size`` texts are scored at a time by text-conditioned heads (memory ~ chunk x videos x frames);
    ``overrides`` are :class:`EncodeOptions` fields.
    """
    options = EncodeOptions.of(options, **overrides)
    device = resolve_device(options.device)
    options = EncodeOptions.of(options, device=device)
    model = model.to(device).eval()
    tokenizer = caption_tokenizer(model, max_words)  # a bad max_words fails here, not after hours of decoding
    annotations = ensure_checked(annotations, "evaluation")
    paths = annotations.video_paths()
    videos = encode_videos(model, paths, options)
    keep, text_to_video = keep_decoded(torch.tensor(annotations.caption_video), videos.valid.cpu())
    report_failures(videos.errors, len(paths), dropped=f" with their {int((~keep).sum())} captions")
    captions = [caption for caption, kept in zip(annotations.captions, keep.tolist(), strict=True) if kept]
    text = encode_texts(model, captions, tokenizer, device=device, precision=options.precision)
    sim = model.similarity(text, videos.decoded(), chunk_size=chunk_size).float()  # (N_text, V)
    valid = videos.valid.cpu().tolist()
    return RetrievalScores(
        similarity=sim,
        text_to_video=text_to_video,
        captions=captions,
        videos=[video.path for video, ok in zip(annotations.videos, valid, strict=True) if ok],
        paths=[path for path, ok in zip(paths, valid, strict=True) if ok],
        logit_scale=float(model.logit_scale.exp()),
        counts={
            "num_queries": len(captions),
            "num_videos": int(videos.valid.sum()),
            "num_missing": len(annotations.missing),
            "num_failed": len(videos.errors),
        },
    )


def retrieval_report(scores: RetrievalScores, dsl: bool = False) -> dict[str, float]:
    """The metrics (and ``dsl/...`` ones with ``dsl``) of ``scores``, then its counts."""
    metrics = retrieval_metrics(scores.similarity, scores.text_to_video)
    if dsl:
        metrics.update(dsl_metrics(scores.logit_scale * scores.similarity, scores.text_to_video))
    return {**metrics, **scores.counts}


def keep_decoded(text_to_video: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The failure policy for retrieval: a video that failed is dropped with its captions.

    ``text_to_video`` (N_text,) each caption's video, ``valid`` (V,) bool. Returns which captions stay
    (N_text,) bool, and their video's index among the videos that stay (N_kept,). ValueError when no video
    decoded: there is nothing to score.
    """
    valid = valid.bool().cpu()
    if not bool(valid.any()):
        raise ValueError(f"none of the {len(valid)} videos could be decoded: nothing to score")
    text_to_video = text_to_video.long().cpu()
    keep = valid[text_to_video]
    new_index = valid.long().cumsum(0) - 1  # old video index -> index among decoded videos
    return keep, new_index[text_to_video[keep]]


def dsl_metrics(logits: torch.Tensor, text_to_video: torch.Tensor) -> dict[str, float]:
    """``dsl/t2v/...`` and ``dsl/v2t/...``: metrics of the dual-softmax re-scored matrix, each direction's
    prior taken over the other modality (texts for t2v, videos for v2t); ``logits``: scaled (N_text, V)."""
    t2v = retrieval_metrics(dual_softmax(logits), text_to_video)
    v2t = retrieval_metrics(dual_softmax(logits.T).T, text_to_video)
    return {
        **{f"dsl/{key}": value for key, value in t2v.items() if key.startswith("t2v/")},
        **{f"dsl/{key}": value for key, value in v2t.items() if key.startswith("v2t/")},
    }
