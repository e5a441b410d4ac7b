"""``vidclip zeroshot``: classify videos against text labels with no training, or score a labelled dataset.

The scoring is :mod:`vidclip.inference.classify`'s. Files mode writes one row per video: ``video`` (the path as
given), ``label`` and ``score`` (softmax probability over the labels) of the best label, then ``label_2``,
``score_2`` ... up to ``--top-k``, and ``error`` (empty, or why the video could not be used: its row has no
label). ``--show DIR`` also draws them: contact sheets of 16 videos, each with its frames and top-3 labels.

Dataset mode (``--config`` with a classification ``data`` section) reports top-1 / top-5 accuracy in percent.
``--split-ids 1 2 3`` runs the official splits of UCF101 / HMDB51 (``data.options.split_id``) and reports each
and their mean ± standard deviation (population, over the splits), ViFi-CLIP's protocol.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from vidclip.commands.common import (
    COMMAND_ERRORS,
    add_encoding_arguments,
    add_model_arguments,
    check_encoding,
    check_writable,
    collect_inputs,
    encode_options,
    fail,
    model_from_args,
    setup_logging,
)
from vidclip.commands.eval import write_json
from vidclip.data.files import display_path
from vidclip.data.shard_stream import all_refs
from vidclip.data.shards import iter_videos
from vidclip.inference.classify import classify_videos, evaluate_classification, summarize_splits
from vidclip.templates import get_templates
from vidclip.viz import require_plotting

# -- command line ---------------------------------------------------------------------------------------------
EPILOG = """examples:
  vidclip zeroshot clips/ --labels "cooking,dancing,surfing" --model ViT-B-32 --pretrained openai
  vidclip zeroshot clips/ --labels "cooking,dancing,surfing" --model ViT-B-32 --pretrained openai --show sheets/
  vidclip zeroshot a.mp4 b.mp4 --labels-file labels.txt --checkpoint runs/k400 --templates kinetics --output preds.csv
  vidclip zeroshot --config configs/recognition/ucf101_zeroshot.yaml --split-ids 1 2 3 --output ucf101.json
  vidclip zeroshot --config configs/recognition/hmdb51_zeroshot.yaml --checkpoint runs/k400-vifi --split-ids 1 2 3

templates: a named set (vifi, video, kinetics, ucf101) or sentences with one {} for the label.
--show DIR (files mode) writes contact sheets DIR/contact_sheet_001.png, ... of 16 videos each: every video's
frames, its name and its top-3 labels with their scores; a video that could not be decoded shows why. Shard
samples are drawn from their bytes, each shard read once for all the sheets.
It needs matplotlib: pip install "vidclip[viz]".
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    add_encoding_arguments(parser)
    return parser.parse_args(argv)


def read_labels(args: argparse.Namespace) -> list[str]:
    """Labels from ``--labels "a,b,c"`` or ``--labels-file`` (one per line, read by
    :func:`~vidclip.data.base.read_lines`: UTF-8, UTF-16 with a byte-order mark, or Windows-1252 with a warning);
    exactly one must be given."""
    from vidclip.data.base import read_lines

    if (args.labels is None) == (args.labels_file is None):
        raise ValueError('give the labels with --labels "a,b,c" or --labels-file FILE (one of them)')
    if args.labels_file is not None:
        return read_lines(args.labels_file)
    return [label.strip() for label in args.labels.split(",") if label.strip()]


def run_files(args: argparse.Namespace) -> int:
    """Files mode: top-k labels per video, printed or written as CSV."""
    labels = read_labels(args)
    paths = collect_inputs(args.inputs)
    if args.show:
        require_plotting("--show")
    if args.output:
        check_writable(args.output)
    options = check_encoding(encode_options(args))
    model = model_from_args(args, None, options.device)
    templates = get_templates(args.templates or ["vifi"])
    table = classify_videos(model, paths, labels, templates, options, top_k=args.top_k)
    failed = int(table["error"].notna().sum())
    if args.output:
        table.to_csv(args.output, index=False, encoding="utf-8")
        print(
            f"wrote {len(table)} rows to {display_path(args.output)} ({failed} videos could not be decoded)"
        )
    else:
        print(table[["video", "label", "score", "error"]].to_string(index=False))
    if args.show:
        frames = args.num_frames or model.num_frames
        sheets = write_contact_sheets(
            table, args.show, num_frames=frames, decoder=options.decoder, paths=paths
        )
        print(f"wrote {len(sheets)} contact sheet{'s' if len(sheets) > 1 else ''} to {args.show}")
    return 0


def write_contact_sheets(
    table: pd.DataFrame,
    folder: str | os.PathLike,
    *,
    num_frames: int = 8,
    per_sheet: int = 16,
    decoder: str = "auto",
    paths: list[str] | None = None,
) -> list[Path]:
    """PNG contact sheets of a prediction table, ``per_sheet`` videos each (``contact_sheet_001.png``...): each
    video's frames (at most 8, uniform), its path and its top-3 labels; a failed video shows its error.
    ``paths``: the files (or shard samples, each shard read once for all the sheets) to open, one per row,
    when the table's ``video`` column is their printable form (:func:`~vidclip.data.files.display_path`); by
    default that column."""
    from vidclip import viz

    rows = table.to_dict("records")
    paths = list(table["video"]) if paths is None else paths
    take = _shard_videos(paths) if all_refs(paths) else None
    written = []
    for page, start in enumerate(range(0, len(rows), per_sheet), start=1):
        chunk = rows[start : start + per_sheet]
        opened = paths[start : start + per_sheet]
        datas = take(range(start, start + len(opened))) if take else [None] * len(opened)
        videos = [
            _sheet_frames(row, path, min(num_frames, 8), decoder, data)
            for row, path, data in zip(chunk, opened, datas, strict=True)
        ]
        figure = viz.contact_sheet(
            videos, [row["video"] for row in chunk], [_top_labels(row) for row in chunk]
        )
        written.append(viz.save_figure(figure, Path(folder) / f"contact_sheet_{page:03d}.png"))
    return written


def _shard_videos(refs: list[str]) -> Callable[[range], list[bytes | str]]:
    """``take(positions)``: the videos (bytes, or why not) of those references, from one pass over their
    shards in order; only samples read ahead of their sheet are held."""
    stream = iter_videos(refs)
    held: dict[int, bytes | str] = {}

    def take(positions: range) -> list[bytes | str]:
        for position in positions:
            while position not in held:
                got = next(stream, None)
                if got is None:
                    held[position] = "not found in its shard"
                    break
                held[got[0]] = got[1]
        return [held.pop(position) for position in positions]

    return take


def _sheet_frames(
    row: dict, path: str, num_frames: int, decoder: str, data: bytes | str | None = None
) -> torch.Tensor | str:
    """The video's uniformly sampled frames, or why there are none (its classification error, or a new one).
    ``data``: a shard sample's bytes, or why they could not be read."""
    from vidclip.video import VideoDecodeError, load_frames

    if not pd.isna(row["error"]):
        return str(row["error"])
    if isinstance(data, str):
        return data
    try:
        return load_frames(path, num_frames, "uniform", decoder=decoder, data=data).frames
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

    bad = [item for item in args.inputs if "=" not in item]
    if bad:
        raise ValueError(f"with --config, positional arguments are overrides key.sub=value; got {bad[:3]}")
    if args.show:
        raise ValueError(
            "--show draws the videos of files mode (vidclip zeroshot VIDEOS --labels ...); "
            "in dataset mode (--config) use --output for the metrics"
        )
    if args.output:
        check_writable(args.output)
    config = load_config(args.config, args.inputs)
    options = check_encoding(encode_options(args, config.data))
    model = model_from_args(args, config.model, options.device)
    templates = get_templates(args.templates or config.data.templates)
    per_split = {}
    for split_id in args.split_ids or [None]:
        if split_id is not None:
            config.data.options["split_id"] = split_id
        annotations = read_annotations(config.data, "classification", args.split)
        per_split[split_id] = evaluate_classification(model, annotations, templates, options)
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
    args = parse_args(argv)
    setup_logging()
    try:
        return run_dataset(args) if args.config else run_files(args)
    except COMMAND_ERRORS as err:
        return fail("zeroshot", err)
