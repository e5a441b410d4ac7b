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

``--plot DIR`` draws what the numbers summarise (:mod:`vidclip.viz`): recall@K curves, and the best and worst
ranked captions with the videos they retrieved, decoded again (with the evaluation's sampling) only for those.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vidclip.data.base import RetrievalAnnotations
from vidclip.data.lookup import CheckedRetrievalAnnotations, ensure_checked
from vidclip.inference import (
    EncodedVideos,
    Precision,
    caption_tokenizer,
    check_precision,
    encode_texts,
    encode_videos,
    resolve_device,
)
from vidclip.metrics import dual_softmax, retrieval_metrics
from vidclip.model import VideoCLIP
from vidclip.viz import require_plotting

if TYPE_CHECKING:
    from vidclip.config import Config

logger = logging.getLogger("vidclip.evaluate")
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


def evaluate(
    model: VideoCLIP, annotations: RetrievalAnnotations, *, dsl: bool = False, **options
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``annotations``: ``t2v/R@1`` ... ``v2t/MnR`` (``dsl/...`` too with
    ``dsl``), plus ``num_queries``, ``num_videos``, ``num_missing`` and ``num_failed``.

    ``options`` are :func:`score_retrieval`'s (num_frames, sampling, batch_size, device, chunk_size...).
    """
    return retrieval_report(score_retrieval(model, annotations, **options), dsl=dsl)


@torch.no_grad()
def score_retrieval(
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
    progress: bool = False,
) -> RetrievalScores:
    """Encode every video once and every caption, and score them all against each other.

    ``chunk_size`` texts are scored at a time by text-conditioned heads (memory ~ chunk x videos x frames).
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    tokenizer = caption_tokenizer(model, max_words)  # a bad max_words fails here, not after hours of decoding
    annotations = ensure_checked(annotations, "evaluation")
    paths = annotations.video_paths()
    videos = encode_videos(
        model,
        paths,
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


def write_plots(
    scores: RetrievalScores,
    folder: str | os.PathLike,
    *,
    num_frames: int,
    sampling: str = "uniform",
    fps: float | None = None,
    decoder: str = "auto",
    title: str | None = None,
) -> list[Path]:
    """``folder/recall_at_k.png`` (both directions' recall@K) and ``folder/queries.png`` (the 3 best and 3 worst
    ranked captions with their top-5 videos); only the videos the second figure shows are decoded."""
    from vidclip import viz
    from vidclip.video import load_video

    def frames(index: int) -> torch.Tensor:  # the frames the model saw (seeded, should sampling be random)
        return load_video(scores.paths[index], num_frames, sampling, fps=fps, decoder=decoder, seed=0)

    folder = Path(folder)
    sim, text_to_video = scores.similarity.cpu(), scores.text_to_video
    recall = viz.recall_at_k_figure(sim, text_to_video=text_to_video, title=title)
    queries = viz.query_grid(
        sim,
        scores.captions,
        frames,
        k=5,
        n_best=3,
        n_worst=3,
        text_to_video=text_to_video,
        video_names=scores.videos,
    )
    return [
        viz.save_figure(recall, folder / "recall_at_k.png"),
        viz.save_figure(queries, folder / "queries.png"),
    ]


# -- command line ---------------------------------------------------------------------------------------------
EPILOG = """examples:
  vidclip eval --config configs/retrieval/msrvtt_meanp.yaml --checkpoint runs/msrvtt-meanp --output metrics.json
  vidclip eval --config configs/retrieval/msrvtt_zeroshot.yaml              # pretrained CLIP, no training
  vidclip eval --config configs/retrieval/msrvtt_zeroshot.yaml --model ViT-B-16 --pretrained openai --num-frames 16
  vidclip eval --config configs/retrieval/msrvtt_meanp.yaml --checkpoint runs/x data.test=data/msrvtt/test_full.txt --dsl
  vidclip eval --config configs/retrieval/msrvtt_meanp.yaml --checkpoint runs/msrvtt-meanp --plot plots/

--plot DIR writes DIR/recall_at_k.png (recall@K curves, both directions) and DIR/queries.png (the 3 best and
3 worst ranked captions, each with its top-5 videos; the true video framed in green, or added at the end).
It needs matplotlib: pip install "vidclip[viz]". Classification datasets are scored by vidclip zeroshot.
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
    parser.add_argument(
        "--plot", metavar="DIR", help="write recall_at_k.png and queries.png into DIR (needs matplotlib)"
    )
    add_model_arguments(parser)
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[Config, RetrievalAnnotations, torch.device, VideoCLIP]:
    """Config, annotations, device and model of the command line; every refusal happens here, before any
    video is decoded."""
    from vidclip.config import ConfigError, load_config
    from vidclip.data import read_annotations
    from vidclip.inference import load_model

    if args.plot:
        require_plotting("--plot")
    config = load_config(args.config, args.overrides)
    if config.task != "retrieval":
        raise ConfigError(f"vidclip eval scores retrieval; task is {config.task!r} (use vidclip zeroshot)")
    annotations = read_annotations(config.data, "retrieval", args.split)
    device = resolve_device(args.device)
    check_precision(args.precision, device)
    return config, annotations, device, load_model(args, config.model, device)


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip eval`` command: 0 when done, 2 for a bad config, data setting or model choice."""
    from vidclip.config import ConfigError
    from vidclip.data import AnnotationError
    from vidclip.inference import COMMAND_ERRORS, setup_logging

    args = parse_args(argv)
    setup_logging()
    try:
        config, annotations, device, model = prepare(args)
    except COMMAND_ERRORS as err:
        print(f"vidclip eval: {err}", file=sys.stderr)
        return 2
    data = config.data
    try:
        scores = score_retrieval(
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
            progress=sys.stderr.isatty(),
        )
    except (ConfigError, AnnotationError) as err:
        print(f"vidclip eval: {err}", file=sys.stderr)
        return 2
    metrics = retrieval_report(scores, dsl=args.dsl)
    title = f"{data.format} {args.split}"
    print(format_table(metrics, title))
    if args.output:
        write_json(metrics, args.output)
        print(f"wrote {args.output}")
    if args.plot:
        frames = args.num_frames or model.num_frames
        options = dict(sampling=data.eval_sampling, fps=data.fps, decoder=data.decoder)
        written = write_plots(scores, args.plot, num_frames=frames, title=title, **options)
        print(f"wrote {', '.join(map(str, written))}")
    return 0
