"""``vidclip index``: embed videos (whole, or overlapping windows with ``--segment``) into a searchable index.

The index folder (:mod:`vidclip.index.store`) holds the rows as Parquet (``rows/``: video, start, end,
embedding; ``failures/``: video, error), their vectors and a FAISS index chosen by size. Re-running the same
command adds only the videos it lacks and finishes what a killed run left; another model is refused.
``--from-embeddings DIR`` indexes what ``vidclip extract`` wrote instead of embedding videos.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vidclip.commands.common import (
    Shard,
    add_encoding_arguments,
    add_model_arguments,
    check_encoding,
    collect_inputs,
    encode_options,
    positive_int,
    run_resumable,
)
from vidclip.commands.extract import check_model_args

EPILOG = """examples:
  vidclip index videos/ --out my-index --model ViT-B-32 --pretrained openai
  vidclip index long_videos/ --out moments --checkpoint runs/msrvtt-seqtransf --segment 4 --stride 2 --frame-features
  vidclip index --from-embeddings embeddings/ --out my-index      # what vidclip extract wrote
  vidclip search my-index "a dog catches a frisbee"

Run the same command again to add new videos or to finish an interrupted run: videos already indexed are
skipped. The index type is chosen by size (exact for small collections; see the README's search section).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from vidclip.index.ann import INDEX_TYPES

    parser = argparse.ArgumentParser(
        prog="vidclip index",
        description="Embed videos (or windows of them) into a searchable index folder (resumable).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="VIDEOS", help="video files, folders, or .txt lists")
    parser.add_argument("--out", required=True, type=Path, metavar="INDEX", help="the index folder")
    parser.add_argument("--segment", type=float, metavar="SECONDS", help="index windows of this length")
    parser.add_argument(
        "--stride", type=float, metavar="SECONDS", help="window step (default: half a window)"
    )
    parser.add_argument(
        "--frame-features", action="store_true", help="also keep per-frame features (for search --rerank)"
    )
    parser.add_argument(
        "--index-type", choices=INDEX_TYPES, default="auto", help="FAISS index kind (default: by size)"
    )
    parser.add_argument(
        "--from-embeddings", type=Path, metavar="DIR", help="index the Parquet parts vidclip extract wrote"
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="embed again the videos that failed before"
    )
    parser.add_argument(
        "--part-rows", type=positive_int, default=10_000, help="rows per Parquet part (default 10000)"
    )
    add_model_arguments(parser, what="--model with head mean and 12 frames")
    add_encoding_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip index`` command: 0 when the index is up to date (failed videos included), 2 on bad input."""
    args = parse_args(argv)
    return run_resumable("index", lambda: run(args))


def run(args: argparse.Namespace) -> str:
    from vidclip.index.build import IndexSettings, build_index, index_embeddings

    settings = IndexSettings(args.segment, args.stride, args.frame_features, args.index_type, args.part_rows)
    if args.from_embeddings is not None:
        if args.inputs or args.checkpoint or args.model or args.segment or args.frame_features:
            raise ValueError(
                "--from-embeddings takes the model and rows from the parts: give no videos or model"
            )
        summary = index_embeddings(args.out, args.from_embeddings, index_type=args.index_type)
        return (
            f"index: {summary.ok} embeddings added from {args.from_embeddings} ({summary.failed} failed rows, "
            f"{summary.skipped} already in); {summary.ntotal} vectors ({summary.ann}) -> {args.out}"
        )
    if not args.inputs:
        raise ValueError("give the videos to index (files, folders or lists), or --from-embeddings DIR")
    check_model_args(args)
    shard = Shard.from_env()
    options = check_encoding(encode_options(args, sampling="uniform", progress=False), shard.local_rank)
    videos = collect_inputs(args.inputs)
    model, source, weights = load_model(args, options.device)
    summary = build_index(
        args.out,
        videos,
        model,
        source=source,
        weights=weights,
        options=options,
        settings=settings,
        retry_failed=args.retry_failed,
        rank=shard.rank,
        world=shard.world,
    )
    rows = f", {summary.rows} windows" if settings.segment else ""
    return (
        f"index{shard}: {summary.total} videos, {summary.ok} ok{rows}, {summary.failed} failed, "
        f"{summary.skipped} skipped (already in); {summary.ntotal} vectors ({summary.ann}) -> {args.out}"
    )


def load_model(args: argparse.Namespace, device):
    from vidclip.index.build import load_source_model, model_source

    source = model_source(
        checkpoint=args.checkpoint,
        model_name=args.model,
        pretrained=args.pretrained,
        head=args.head,
        num_frames=args.num_frames,
    )
    if not args.checkpoint and args.pretrained is None:
        print("vidclip index: note: no --pretrained given, so the weights are random", file=sys.stderr)
    try:
        model, weights = load_source_model(source, device)
    except RuntimeError as err:
        raise ValueError(str(err)) from err
    return model, source, weights
