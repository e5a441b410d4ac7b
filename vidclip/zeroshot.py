"""``vidclip zeroshot``: classify videos against text labels with no training, or score a labelled dataset.

Each label becomes one embedding: every template (``a photo of a {}.``...) is filled with the label, each
filled prompt's text embedding is normalised, the K embeddings of a label are averaged and the mean is
renormalised (CLIP's prompt ensemble). A video's logits are 100 x its similarity to every label embedding
(CLIP's fixed zero-shot scale), through ``model.similarity``, so text-conditioned heads score each label
against the video's frames like any caption.

Files mode writes one row per video: ``video`` (the path as given), ``label`` and ``score`` (softmax
probability over the labels) of the best label, then ``label_2``, ``score_2`` ... up to ``--top-k``, and
``error`` (empty, or why the video could not be decoded: its row has no label). ``--show DIR`` also draws them:
contact sheets of 16 videos, each with its frames and top-3 labels (:mod:`vidclip.viz`).

Dataset mode (``--config`` with a classification ``data`` section) reports top-1 / top-5 accuracy in percent.
``--split-ids 1 2 3`` runs the official splits of UCF101 / HMDB51 (``data.options.split_id``) and reports each
and their mean ± standard deviation (population, over the splits), ViFi-CLIP's protocol.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vidclip.data.base import ClassificationAnnotations
from vidclip.data.lookup import ensure_checked
from vidclip.inference import (
    EncodedVideos,
    Precision,
    caption_tokenizer,
    check_precision,
    encode_texts,
    encode_videos,
    resolve_device,
)
from vidclip.losses import class_embeddings
from vidclip.model import VideoCLIP, VideoFeatures
from vidclip.templates import TEMPLATE_SETS, build_prompts, get_templates
from vidclip.viz import require_plotting

logger = logging.getLogger("vidclip.zeroshot")
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
    *,
    top_k: int = 5,
    **options,
) -> pd.DataFrame:
    """The ``top_k`` labels of every video, one row per path (see the module docstring for the columns).

    ``options`` go to :func:`vidclip.inference.encode_videos` (num_frames, batch_size, num_workers, device...).
    """
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"labels must be distinct and non-empty, got {list(labels)[:10]}")
    device = resolve_device(options.pop("device", None))
    model = model.to(device).eval()
    classes = label_embeddings(  # before decoding: a bad template fails at once
        model, labels, templates, device=device, precision=options.get("precision", "fp32")
    )
    videos = encode_videos(model, paths, device=device, **options)
    probs = label_logits(model, videos.features, classes).softmax(dim=-1).cpu()  # (N, C)
    return prediction_table(paths, list(labels), probs, videos, top_k)


def prediction_table(
    paths: list[str], labels: list[str], probs: torch.Tensor, videos: EncodedVideos, top_k: int
) -> pd.DataFrame:
    """Rows ``video, label, score, label_2, score_2 ..., error``; a video that failed keeps its row, no label."""
    scores, indices = probs.topk(min(top_k, len(labels)), dim=-1)  # (N, k)
    errors = dict(videos.errors)
    rows = []
    for i, path in enumerate(paths):
        valid = bool(videos.valid[i])
        row: dict[str, object] = {"video": path}
        for rank, (score, index) in enumerate(zip(scores[i].tolist(), indices[i].tolist(), strict=True)):
            suffix = "" if rank == 0 else f"_{rank + 1}"
            row[f"label{suffix}"] = labels[index] if valid else None
            row[f"score{suffix}"] = round(score, 6) if valid else None
        row["error"] = None if valid else errors.get(path, "could not be decoded")
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
    **options,
) -> dict[str, float]:
    """Zero-shot ``top1`` / ``top5`` on a labelled split, with ``num_videos``, ``num_missing``, ``num_failed``.

    Videos that fail to decode are dropped (named in a warning); accuracy is over the videos that decoded.
    """
    device = resolve_device(options.pop("device", None))
    model = model.to(device).eval()
    annotations = ensure_checked(annotations, "zero-shot evaluation")
    classes = label_embeddings(
        model, annotations.class_names, templates, device=device, precision=options.get("precision", "fp32")
    )
    videos = encode_videos(model, annotations.video_paths(), device=device, **options)
    if videos.errors:
        shown = "; ".join(f"{path}: {reason}" for path, reason in videos.errors[:5])
        logger.warning(f"{len(videos.errors)} videos could not be decoded and were dropped: {shown}")
    if not bool(videos.valid.any()):
        raise RuntimeError(f"none of the {len(videos.valid)} videos could be decoded: {videos.errors[:3]}")
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


# -- command line ---------------------------------------------------------------------------------------------
EPILOG = """examples:
  vidclip zeroshot clips/ --labels "cooking,dancing,surfing" --model ViT-B-32 --pretrained openai
  vidclip zeroshot clips/ --labels "cooking,dancing,surfing" --model ViT-B-32 --pretrained openai --show sheets/
  vidclip zeroshot a.mp4 b.mp4 --labels-file labels.txt --checkpoint runs/k400 --templates kinetics --output preds.csv
  vidclip zeroshot --config configs/recognition/ucf101_zeroshot.yaml --split-ids 1 2 3 --output ucf101.json
  vidclip zeroshot --config configs/recognition/hmdb51_zeroshot.yaml --checkpoint runs/k400-vifi --split-ids 1 2 3

templates: a named set (vifi, video, kinetics, ucf101) or sentences with one {} for the label.
--show DIR (files mode) writes contact sheets DIR/contact_sheet_001.png, ... of 16 videos each: every video's
frames, its name and its top-3 labels with their scores; a video that could not be decoded shows why.
It needs matplotlib: pip install "vidclip[viz]".
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from vidclip.inference import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="vidclip zeroshot",
        description="Classify videos against text labels with no training (or score a labelled dataset).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="*", help="videos, folders or list files; with --config: key=value overrides"
    )
    parser.add_argument("--labels", help='comma-separated labels, e.g. "cooking,dancing,surfing"')
    parser.add_argument("--labels-file", help="a file with one label per line")
    parser.add_argument(
        "--config", action="append", help="dataset mode: a classification config (repeatable)"
    )
    parser.add_argument("--templates", nargs="+", help="template sets or sentences (default: config or vifi)")
    parser.add_argument("--top-k", type=int, default=5, help="labels per video in the output (default 5)")
    parser.add_argument("--output", help="files mode: predictions CSV; dataset mode: metrics JSON")
    parser.add_argument(
        "--split", choices=["train", "val", "test"], default="test", help="dataset mode split"
    )
    parser.add_argument("--split-ids", type=int, nargs="+", help="dataset mode: official splits, e.g. 1 2 3")
    parser.add_argument(
        "--show", metavar="DIR", help="files mode: write contact sheets (frames + top-3 labels) into DIR"
    )
    add_model_arguments(parser)
    return parser.parse_args(argv)


def read_labels(args: argparse.Namespace) -> list[str]:
    """Labels from ``--labels "a,b,c"`` or ``--labels-file`` (one per line); exactly one must be given."""
    from vidclip.data.base import read_lines

    if (args.labels is None) == (args.labels_file is None):
        raise ValueError('give the labels with --labels "a,b,c" or --labels-file FILE (one of them)')
    if args.labels_file is not None:
        return read_lines(args.labels_file)
    return [label.strip() for label in args.labels.split(",") if label.strip()]


def run_files(args: argparse.Namespace) -> int:
    """Files mode: top-k labels per video, printed or written as CSV."""
    from vidclip.inference import load_model
    from vidclip.inputs import find_videos

    labels = read_labels(args)
    paths = find_videos(args.inputs)
    if not paths:
        raise ValueError(f"no video files found in {args.inputs}")
    if args.show:
        require_plotting("--show")
    device = resolve_device(args.device)
    check_precision(args.precision, device)
    model = load_model(args, None, device)
    table = classify_videos(
        model,
        paths,
        labels,
        get_templates(args.templates or ["vifi"]),
        top_k=args.top_k,
        num_frames=args.num_frames,
        batch_size=args.batch_size,
        num_workers=4 if args.num_workers is None else args.num_workers,
        device=device,
        precision=args.precision,
        progress=sys.stderr.isatty(),
    )
    failed = int(table["error"].notna().sum())
    if args.output:
        table.to_csv(args.output, index=False)
        print(f"wrote {len(table)} rows to {args.output} ({failed} videos could not be decoded)")
    else:
        print(table[["video", "label", "score", "error"]].to_string(index=False))
    if args.show:
        sheets = write_contact_sheets(table, args.show, num_frames=args.num_frames or model.num_frames)
        print(f"wrote {len(sheets)} contact sheet{'s' if len(sheets) > 1 else ''} to {args.show}")
    return 0


def write_contact_sheets(
    table: pd.DataFrame,
    folder: str | os.PathLike,
    *,
    num_frames: int = 8,
    per_sheet: int = 16,
    decoder: str = "auto",
) -> list[Path]:
    """PNG contact sheets of a prediction table, ``per_sheet`` videos each (``contact_sheet_001.png``...): each
    video's frames (at most 8, uniform), its path and its top-3 labels; a failed video shows its error."""
    from vidclip import viz

    rows = table.to_dict("records")
    written = []
    for page, start in enumerate(range(0, len(rows), per_sheet), start=1):
        chunk = rows[start : start + per_sheet]
        videos = [_sheet_frames(row, min(num_frames, 8), decoder) for row in chunk]
        figure = viz.contact_sheet(
            videos, [row["video"] for row in chunk], [_top_labels(row) for row in chunk]
        )
        written.append(viz.save_figure(figure, Path(folder) / f"contact_sheet_{page:03d}.png"))
    return written


def _sheet_frames(row: dict, num_frames: int, decoder: str) -> torch.Tensor | str:
    """The video's uniformly sampled frames, or why there are none (its classification error, or a new one)."""
    from vidclip.video import VideoDecodeError, load_video

    if not pd.isna(row["error"]):
        return str(row["error"])
    try:
        return load_video(row["video"], num_frames, "uniform", decoder=decoder)
    except VideoDecodeError as err:
        return str(err)


def _top_labels(row: dict, k: int = 3) -> list[tuple[str, float]]:
    """The row's first ``k`` (label, score) pairs (fewer when ``--top-k`` was smaller; none for a failure)."""
    columns = [("label", "score")] + [(f"label_{rank}", f"score_{rank}") for rank in range(2, k + 1)]
    return [(row[label], float(row[score])) for label, score in columns if isinstance(row.get(label), str)]


def run_dataset(args: argparse.Namespace) -> int:
    """Dataset mode: accuracy on one split, or on each official split with mean ± std."""
    from vidclip.config import load_config
    from vidclip.data import read_annotations
    from vidclip.evaluate import write_json
    from vidclip.inference import load_model

    bad = [item for item in args.inputs if "=" not in item]
    if bad:
        raise ValueError(f"with --config, positional arguments are overrides key.sub=value; got {bad[:3]}")
    if args.show:
        raise ValueError(
            "--show draws the videos of files mode (vidclip zeroshot VIDEOS --labels ...); "
            "in dataset mode (--config) use --output for the metrics"
        )
    config = load_config(args.config, args.inputs)
    device = resolve_device(args.device)
    check_precision(args.precision, device)
    model = load_model(args, config.model, device)
    options = dict(
        templates=get_templates(args.templates or config.data.templates),
        num_frames=args.num_frames,
        sampling=config.data.eval_sampling,
        fps=config.data.fps,
        decoder=config.data.decoder,
        batch_size=args.batch_size,
        num_workers=config.data.num_workers if args.num_workers is None else args.num_workers,
        device=device,
        precision=args.precision,
        progress=sys.stderr.isatty(),
    )
    per_split = {}
    for split_id in args.split_ids or [None]:
        if split_id is not None:
            config.data.options["split_id"] = split_id
        annotations = read_annotations(config.data, "classification", args.split)
        per_split[split_id] = evaluate_classification(model, annotations, **options)
        print(_describe(config.data.format, args.split, split_id, per_split[split_id]))
    result = per_split[None] if args.split_ids is None else summarize_splits(per_split)
    if args.split_ids is not None:
        print(
            f"mean ± std over splits {' '.join(map(str, args.split_ids))}: top1 {result['top1']:.2f} ± "
            f"{result['top1_std']:.2f}  top5 {result['top5']:.2f} ± {result['top5_std']:.2f}"
        )
    if args.output:
        write_json(result, args.output)
        print(f"wrote {args.output}")
    return 0


def _describe(name: str, split: str, split_id: int | None, metrics: dict[str, float]) -> str:
    which = f"{name} {split}" + (f" split {split_id}" if split_id is not None else "")
    return (
        f"{which}: top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}  ({metrics['num_videos']} videos, "
        f"{metrics['num_missing']} missing, {metrics['num_failed']} failed to decode)"
    )


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip zeroshot`` command: 0 when done, 2 for bad arguments, config or data settings."""
    from vidclip.inference import COMMAND_ERRORS, setup_logging

    args = parse_args(argv)
    setup_logging()
    try:
        return run_dataset(args) if args.config else run_files(args)
    except COMMAND_ERRORS as err:
        print(f"vidclip zeroshot: {err}", file=sys.stderr)
        return 2
