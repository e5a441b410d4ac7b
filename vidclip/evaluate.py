"""``vidclip eval``: text-video retrieval metrics of a model on a dataset split, exactly as CLIP4Clip reports them.

Every video is decoded (in DataLoader workers, uniform sampling by default) and encoded once; its frame
features stay on the device, so text-conditioned heads score all captions against them in chunks without
re-encoding. Several captions per video (MSR-VTT full protocol, 9k/7k train splits) are scored the CLIP4Clip
way (:func:`vidclip.retrieval_metrics` with ``text_to_video``).

Videos listed by the annotations but absent on disk are dropped by the reader (``num_missing``); videos that
fail to decode are dropped with their captions here (``num_failed``), each named in a warning. The metrics
are over what remains: ``num_queries`` captions against ``num_videos`` videos.

``--dsl`` adds dual-softmax re-scored metrics under ``dsl/`` beside the plain ones (never instead): DSL uses
the whole query set as a prior, an inference trick the CLIP4Clip forks (CAMoE, EMCL) report separately.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

from vidclip.data.base import RetrievalAnnotations
from vidclip.data.lookup import CheckedRetrievalAnnotations, ensure_checked
from vidclip.inference import (
    EncodedVideos,
    Precision,
    caption_tokenizer,
    encode_texts,
    encode_videos,
    resolve_device,
)
from vidclip.metrics import dual_softmax, retrieval_metrics
from vidclip.model import VideoCLIP

logger = logging.getLogger("vidclip.evaluate")
COUNT_KEYS = ("num_queries", "num_videos", "num_missing", "num_failed")


@torch.no_grad()
def evaluate(
    model: VideoCLIP,
    annotations: RetrievalAnnotations,
    *,
    num_frames: int | None = None,
    sampling: str = "uniform",
    fps: float | None = None,
    decoder: str = "auto",
    max_words: int | None = None,
    batch_size: int = 32,
    num_workers: int = 4,
    device: str | torch.device | None = None,
    precision: Precision = "fp32",
    chunk_size: int = 256,
    dsl: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``annotations``: ``t2v/R@1`` ... ``v2t/MnR`` (``dsl/...`` too with
    ``dsl``), plus ``num_queries``, ``num_videos``, ``num_missing`` and ``num_failed``.

    ``chunk_size`` texts are scored at a time by text-conditioned heads (memory ~ chunk x videos x frames).
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    tokenizer = caption_tokenizer(model, max_words)  # a bad max_words fails here, not after hours of decoding
    annotations = ensure_checked(annotations, "evaluation")
    videos = encode_videos(
        model,
        annotations.video_paths(),
        num_frames=num_frames,
        sampling=sampling,
        fps=fps,
        decoder=decoder,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        precision=precision,
        progress=progress,
    )
    captions, text_to_video = keep_decoded(annotations, videos)
    text = encode_texts(model, captions, tokenizer, device=device, precision=precision)
    sim = model.similarity(text, videos.decoded(), chunk_size=chunk_size).float()  # (N_text, V)
    metrics = retrieval_metrics(sim, text_to_video)
    if dsl:
        metrics.update(dsl_metrics(model.logit_scale.exp().float() * sim, text_to_video))
    metrics.update(
        num_queries=len(captions),
        num_videos=int(videos.valid.sum()),
        num_missing=len(annotations.missing),
        num_failed=len(videos.errors),
    )
    return metrics


def keep_decoded(
    annotations: CheckedRetrievalAnnotations, videos: EncodedVideos
) -> tuple[list[str], torch.Tensor]:
    """Captions of the videos that decoded, and their video index among those (N_text,); warns on failures."""
    valid = videos.valid.cpu().tolist()
    if videos.errors:
        dropped = sum(not valid[v] for v in annotations.caption_video)
        shown = "; ".join(f"{path}: {reason}" for path, reason in videos.errors[:5])
        more = f" and {len(videos.errors) - 5} more" if len(videos.errors) > 5 else ""
        logger.warning(
            f"{len(videos.errors)} of {len(valid)} videos could not be decoded and were dropped with their "
            f"{dropped} captions: {shown}{more}"
        )
    if not any(valid):
        raise RuntimeError(f"none of the {len(valid)} videos could be decoded: {videos.errors[:3]}")
    new_index = torch.tensor(valid).long().cumsum(0) - 1  # old video index -> index among decoded videos
    kept = [
        (c, int(new_index[v]))
        for c, v in zip(annotations.captions, annotations.caption_video, strict=True)
        if valid[v]
    ]
    return [caption for caption, _ in kept], torch.tensor([video for _, video in kept])


def dsl_metrics(logits: torch.Tensor, text_to_video: torch.Tensor) -> dict[str, float]:
    """``dsl/t2v/...`` and ``dsl/v2t/...``: metrics of the dual-softmax re-scored matrix, each direction's
    prior taken over the other modality (texts for t2v, videos for v2t); ``logits``: scaled (N_text, V)."""
    t2v = retrieval_metrics(dual_softmax(logits), text_to_video)
    v2t = retrieval_metrics(dual_softmax(logits.T).T, text_to_video)
    return {
        **{f"dsl/{key}": value for key, value in t2v.items() if key.startswith("t2v/")},
        **{f"dsl/{key}": value for key, value in v2t.items() if key.startswith("v2t/")},
    }


def format_table(metrics: dict[str, float], title: str) -> str:
    """The metrics as a small table: one row per direction (t2v, v2t, dsl/t2v, dsl/v2t)."""
    columns = ("R@1", "R@5", "R@10", "MdR", "MnR")
    directions = [d for d in ("t2v", "v2t", "dsl/t2v", "dsl/v2t") if f"{d}/R@1" in metrics]
    counts = ", ".join(f"{metrics[k]:g} {k.removeprefix('num_')}" for k in COUNT_KEYS if k in metrics)
    lines = [f"{title} ({counts})", f"{'':8}" + "".join(f"{c:>8}" for c in columns)]
    for direction in directions:
        lines.append(f"{direction:8}" + "".join(f"{metrics[f'{direction}/{c}']:>8.1f}" for c in columns))
    return "\n".join(lines)


def write_json(values: dict, path: str | os.PathLike) -> None:
    """Write ``values`` as indented JSON, atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(tmp, path)


# -- command line ---------------------------------------------------------------------------------------------
EPILOG = """examples:
  vidclip eval --config configs/retrieval/msrvtt_meanp.yaml --checkpoint runs/msrvtt-meanp --output metrics.json
  vidclip eval --config configs/retrieval/msrvtt_zeroshot.yaml              # pretrained CLIP, no training
  vidclip eval --config configs/retrieval/msrvtt_zeroshot.yaml --model ViT-B-16 --pretrained openai --num-frames 16
  vidclip eval --config configs/retrieval/msrvtt_meanp.yaml --checkpoint runs/x data.test=data/msrvtt/test_full.txt --dsl
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from vidclip.inference import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="vidclip eval",
        description="Text-video retrieval metrics (R@1/5/10, MdR, MnR both ways) of a model on a dataset split.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", action="append", required=True, help="YAML config; repeat to merge several"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides as key.sub=value")
    parser.add_argument("--split", choices=["train", "val", "test"], default="test", help="default test")
    parser.add_argument("--output", help="write the metrics and counts as JSON here")
    parser.add_argument("--dsl", action="store_true", help="also report dual-softmax metrics (dsl/...)")
    parser.add_argument("--chunk-size", type=int, default=256, help="texts scored at once (text-conditioned)")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip eval`` command: 0 when done, 2 for a bad config, data setting or model choice."""
    from vidclip.config import ConfigError, load_config
    from vidclip.data import AnnotationError, read_annotations
    from vidclip.inference import load_model, setup_logging

    args = parse_args(argv)
    setup_logging()
    try:
        config = load_config(args.config, args.overrides)
        if config.task != "retrieval":
            raise ConfigError(
                f"vidclip eval scores retrieval; task is {config.task!r} (use vidclip zeroshot)"
            )
        annotations = read_annotations(config.data, "retrieval", args.split)
        device = resolve_device(args.device)
        model = load_model(args, config.model, device)
    except (ConfigError, AnnotationError, ValueError, FileNotFoundError) as err:
        print(f"vidclip eval: {err}", file=sys.stderr)
        return 2
    data = config.data
    try:
        metrics = evaluate(
            model,
            annotations,
            num_frames=args.num_frames,
            sampling=data.eval_sampling,
            fps=data.fps,
            decoder=data.decoder,
            max_words=data.max_words,
            batch_size=args.batch_size,
            num_workers=data.num_workers if args.num_workers is None else args.num_workers,
            device=device,
            precision=args.precision,
            chunk_size=args.chunk_size,
            dsl=args.dsl,
            progress=sys.stderr.isatty(),
        )
    except (ConfigError, AnnotationError) as err:
        print(f"vidclip eval: {err}", file=sys.stderr)
        return 2
    print(format_table(metrics, f"{data.format} {args.split}"))
    if args.output:
        write_json(metrics, args.output)
        print(f"wrote {args.output}")
    return 0
