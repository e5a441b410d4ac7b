"""``vidclip search``: the videos or moments of an index that best match a sentence, or a video (``--like``).

Prints the ranked results (rank, video, start, end, score) and writes them with ``--output`` (.csv, .json,
.parquet). The query is encoded by the model the index was built with, rebuilt from the index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vidclip.commands.common import COMMAND_ERRORS, check_writable, fail, positive_int

EPILOG = """examples:
  vidclip search my-index "a dog catches a frisbee"
  vidclip search moments-index "a red square moving left" --moments --top-k 5
  vidclip search moments-index "a goal" --rerank --output results.csv    # index built with --frame-features
  vidclip search my-index --like clip.mp4                                # near duplicates, more like this
"""
OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from vidclip.index.rerank import DEFAULT_WEIGHT, RERANK_MODES

    parser = argparse.ArgumentParser(
        prog="vidclip search",
        description="Search an index made by vidclip index with a sentence or a video.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("index", type=Path, metavar="INDEX", help="the index folder")
    parser.add_argument("query", nargs="?", help="what to look for, in words")
    parser.add_argument("--like", metavar="VIDEO", help="search with a video instead of words")
    parser.add_argument("--top-k", type=positive_int, default=10, help="results to show (default 10)")
    parser.add_argument(
        "--moments", action="store_true", help="merge neighbouring windows of a video into moments"
    )
    parser.add_argument(
        "--rerank",
        nargs="?",
        const="max_frame",
        choices=RERANK_MODES,
        help="rescore the top candidates on their frame features: max_frame (CLIPRerank, the default) or "
        "query_scored (needs an index built with --frame-features)",
    )
    parser.add_argument(
        "--rerank-weight",
        type=float,
        default=DEFAULT_WEIGHT,
        help=f"max_frame: score + weight x the best frame's cosine (default {DEFAULT_WEIGHT})",
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="also write the results (.csv .json .parquet)"
    )
    parser.add_argument("--device", help="torch device for the query (default: cuda if available, else cpu)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip search`` command: 0 with results printed, 2 on bad input."""
    args = parse_args(argv)
    try:
        results = run(args)
    except COMMAND_ERRORS as err:
        return fail("search", err)
    print(format_results(results))
    if args.output is not None:
        write_results(results, args.output)
    return 0


def run(args: argparse.Namespace):
    from vidclip.index import VideoIndex

    if (args.query is None) == (args.like is None):
        raise ValueError('give a query in words ("a dog catches a frisbee") or --like VIDEO, not both')
    if args.output is not None:
        if args.output.suffix not in OUTPUT_SUFFIXES:
            raise ValueError(f"--output {args.output}: write .csv, .json or .parquet")
        check_writable(args.output)
    if args.like is not None and args.rerank:
        raise ValueError("--rerank scores frames against words; it does not apply to --like")
    index = VideoIndex.load(args.index, device=args.device)
    if args.like is not None:
        return index.search_like(args.like, k=args.top_k, moments=args.moments)
    return index.search(
        args.query,
        k=args.top_k,
        moments=args.moments,
        rerank=args.rerank or False,
        rerank_weight=args.rerank_weight,
    )


def format_results(results) -> str:
    """The results as an aligned table; times as m:ss.s."""
    if len(results) == 0:
        return "no results"
    lines = [f"{'rank':>4}  {'score':>7}  {'start':>8}  {'end':>8}  video"]
    for row in results.itertuples():
        lines.append(
            f"{row.rank:>4}  {row.score:7.4f}  {clock(row.start):>8}  {clock(row.end):>8}  {row.video}"
        )
    return "\n".join(lines)


def clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: unknown (an index made from extract parts)
        return "-"
    minutes, rest = divmod(float(seconds), 60)
    return f"{int(minutes)}:{rest:04.1f}"


def write_results(results, path: Path) -> None:
    """``results`` to ``path`` by its suffix, atomically."""
    from vidclip.fileio import atomic_path

    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            results.to_csv(tmp, index=False)
        elif path.suffix == ".json":
            results.to_json(tmp, orient="records", indent=1)
        else:
            results.to_parquet(tmp, index=False)
    print(f"search: {len(results)} results -> {path}", file=sys.stderr)
