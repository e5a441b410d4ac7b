"""Zero-shot classification: each label becomes one embedding, every video is scored against all of them.

Each label becomes one embedding: every template (``a photo of a {}.``...) is filled with the label, each
filled prompt's text embedding is normalised, the K embeddings of a label are averaged and the mean is
renormalised (CLIP's prompt ensemble). A video's logits are 100 x its similarity to every label embedding
(CLIP's fixed zero-shot scale), through ``model.similarity``, so text-conditioned heads score each label
against the video's frames like any caption. Videos are encoded by the shared pipeline
(:mod:`vidclip.inference.pipeline`) and fail the same way as everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from vidclip.data.base import ClassificationAnnotations
from vidclip.data.files import display_path
from vidclip.data.lookup import ensure_checked
from vidclip.inference.pipeline import (
    EncodedVideos,
    EncodeOptions,
    caption_tokenizer,
    encode_texts,
    encode_videos,
    report_failures,
)
from vidclip.inference.runtime import Precision, resolve_device
from vidclip.losses import class_embeddings
from vidclip.model import VideoCLIP, VideoFeatures
from vidclip.templates import TEMPLATE_SETS, build_prompts, get_templates

NON_FINITE = "the scores are not finite (NaN or inf): the model's weights or this video's frames give NaN"
LOGIT_SCALE = 100.0  # CLIP's zero-shot logits: 100 x cosine similarity
DEFAULT_TEMPLATES = TEMPLATE_SETS["vifi"]


@torch.no_grad()
def label_embeddings(
    model: VideoCLIP,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    device: torch.device | None = None,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """One unit embedding per label (C, D): the normalised mean of its normalised template embeddings."""
    templates = get_templates(templates)
    prompts = build_prompts(labels, templates)  # class-major: C x K
    text = encode_texts(model, prompts, caption_tokenizer(model), device=device, precision=precision)
    return class_embeddings(text, len(templates))


@torch.no_grad()
def label_logits(
    model: VideoCLIP, videos: VideoFeatures, labels: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """Logits (V, C) = 100 x similarity of every video to every label embedding (C, D)."""
    return LOGIT_SCALE * model.similarity(labels, videos, chunk_size=chunk_size).T.float()


def classify_videos(
    model: VideoCLIP,
    paths: list[str],
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    options: EncodeOptions | None = None,
    *,
    top_k: int = 5,
    **overrides,
) -> pd.DataFrame:
    """The ``top_k`` labels of every video, one row per path: ``video``, ``label`` and ``score`` (softmax
    probability over the labels) of the best label, then ``label_2``, ``score_2`` ... and ``error`` (empty, or
    why the video could not be decoded: its row has no label). ``overrides``: :class:`EncodeOptions` fields.
    """
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"labels must be distinct and non-empty, got {list(labels)[:10]}")
    options = EncodeOptions.of(options, **overrides)
    options = EncodeOptions.of(options, device=resolve_device(options.device))
    model = model.to(options.device).eval()
    classes = label_embeddings(  # before decoding: a bad template fails at once
        model, labels, templates, device=options.device, precision=options.precision
    )
    videos = encode_videos(model, paths, options)
    probs = label_logits(model, videos.features, classes).softmax(dim=-1).cpu()  # (N, C)
    return prediction_table(paths, list(labels), probs, videos, top_k)


def prediction_table(
    paths: list[str], labels: list[str], probs: torch.Tensor, videos: EncodedVideos, top_k: int
) -> pd.DataFrame:
    """Rows ``video, label, score, label_2, score_2 ..., error``; a video that failed keeps its row, no label."""
    scores, indices = probs.topk(min(top_k, len(labels)), dim=-1)  # (N, k)
    errors = dict(videos.errors)
    finite = torch.isfinite(probs).all(dim=-1)  # (N,)
    rows = []
    for i, path in enumerate(paths):
        valid = bool(videos.valid[i]) and bool(finite[i])  # never a label with a NaN score
        if bool(videos.valid[i]) and not finite[i]:
            errors[path] = NON_FINITE
        row: dict[str, object] = {"video": display_path(path)}  # a DataFrame holds no surrogate escapes
        for rank, (score, index) in enumerate(zip(scores[i].tolist(), indices[i].tolist(), strict=True)):
            suffix = "" if rank == 0 else f"_{rank + 1}"
            row[f"label{suffix}"] = labels[index] if valid else None
            row[f"score{suffix}"] = round(score, 6) if valid else None
        row["error"] = None if valid else display_path(errors.get(path, "could not be decoded"))
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent; logits (V, C), targets (V,)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()  # (V, k)
    hits = top == targets[:, None]
    return {
        "top1": 100.0 * hits[:, 0].float().mean().item(),
        "top5": 100.0 * hits.any(1).float().mean().item(),
    }


def evaluate_classification(
    model: VideoCLIP,
    annotations: ClassificationAnnotations,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    options: EncodeOptions | None = None,
    **overrides,
) -> dict[str, float]:
    """Zero-shot ``top1`` / ``top5`` on a labelled split, with ``num_videos``, ``num_missing``, ``num_failed``.

    Videos that fail to decode are dropped (named in a warning); accuracy is over the videos that decoded.
    """
    options = EncodeOptions.of(options, **overrides)
    options = EncodeOptions.of(options, device=resolve_device(options.device))
    model = model.to(options.device).eval()
    annotations = ensure_checked(annotations, "zero-shot evaluation")
    classes = label_embeddings(
        model, annotations.class_names, templates, device=options.device, precision=options.precision
    )
    videos = encode_videos(model, annotations.video_paths(), options)
    report_failures(videos.errors, len(videos.valid))
    if not bool(videos.valid.any()):
        raise ValueError(f"none of the {len(videos.valid)} videos could be decoded: nothing to score")
    logits = label_logits(model, videos.decoded(), classes)
    targets = torch.tensor(annotations.labels)[videos.valid.cpu()]
    return {
        **accuracy(logits, targets),
        "num_videos": int(videos.valid.sum()),
        "num_missing": len(annotations.missing),
        "num_failed": len(videos.errors),
    }


def summarize_splits(per_split: dict[int, dict[str, float]]) -> dict[str, float]:
    """``split{i}/key`` for every split, and ``top1``/``top5`` as the mean with ``*_std`` (population std)."""
    flat = {f"split{i}/{key}": value for i, metrics in per_split.items() for key, value in metrics.items()}
    for key in ("top1", "top5"):
        values = np.array([metrics[key] for metrics in per_split.values()])
        flat[key], flat[f"{key}_std"] = float(values.mean()), float(values.std())
    return flat
