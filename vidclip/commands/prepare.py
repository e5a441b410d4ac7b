"""``vidclip prepare``: re-encode a dataset for training and evaluation (frame rate, size, keyframe interval,
codec and quality, an optional cut, audio dropped unless asked), mirroring the source tree under ``--out``; or,
with ``--shards``, pack it into WebDataset tar shards (``--out/{split}-NNNNNN.tar``) with a Parquet index per
split (``--out/{split}-samples.parquet``), the splits and captions or labels from ``--annotations CONFIG``.

The work and its guarantees are :mod:`vidclip.prepare`'s: the FFmpeg that PyAV bundles (no system ffmpeg),
several processes, each output written atomically, a Parquet manifest (``--out/manifest.parquet``) in which a
broken source costs its own row, and a re-run that resumes where an interrupted one stopped. Shards hold the
source files' bytes unchanged, unless a re-encoding option is given: the sources are then prepared first into
``--out/files`` and the shards hold those outputs.
"""

from __future__ import annotations

import argparse
import math
import sys
from fractions import Fraction
from pathlib import Path

from vidclip.commands.common import non_negative_int, positive_int, run_resumable, seconds
from vidclip.prepare import (
    CODECS,
    DEFAULT_SHARD_SIZE,
    PRESETS,
    PrepareSettings,
    prepare_dataset,
    write_shards,
)

EPILOG = """examples:
  vidclip prepare msrvtt/videos/ --out msrvtt/videos_3fps_224/ --fps 3 --short-side 224
  vidclip prepare didemo/videos/ --out didemo/prepared/ --max-seconds 31 --short-side 224 --keyframe-interval 1
  vidclip prepare clips/ extra.mov --out prepared/ --keep-audio --crf 18 --num-workers 8
  python -c "import pandas; print(pandas.read_parquet('prepared/manifest.parquet'))"
  vidclip prepare msrvtt/videos/ --out msrvtt/shards/ --shards --annotations msrvtt.yaml --splits train,test
  vidclip prepare msrvtt/videos/ --out msrvtt/shards_3fps/ --shards --annotations msrvtt.yaml --fps 3 --short-side 224
  vidclip prepare clips/ --out clips_shards/ --shards --shard-size 500

Outputs keep their source's path relative to the folder given (sub/a.avi -> OUT/sub/a.mp4), so annotation
files keep working. Run the same command again to resume an interrupted run: finished files are kept, failed
sources are tried again. A file under --out that vidclip prepare did not write is never overwritten.

--shards: sample i of a split (its i-th annotated video; without --annotations, the split "videos" of every
source) is {i:08d}.json + {i:08d}.<ext> in shard i // --shard-size. Without a re-encoding option the video is
the source file, byte for byte; with one (--fps, --short-side, ...) the sources are prepared into OUT/files
first and the shards hold those MP4s. A video that cannot be read is a row with its error in the index, in no
shard. A re-run skips the shards done; a different --shard-size or other settings on the same --out is refused.
"""


def frame_rate(text: str) -> Fraction:
    """argparse type for ``--fps``: a positive number or a fraction (``3``, ``29.97``, ``30000/1001``)."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"not a frame rate: {text!r} (e.g. 3, 29.97 or 30000/1001)"
        ) from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"must be in (0, 1000], got {text}")
    return value


def even_pixels(text: str) -> int:
    """argparse type for ``--short-side``: an even number of pixels (yuv420p halves the colour planes)."""
    value = int(text)
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"must be an even number of pixels (2 or more), got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type for durations that must be a positive, finite number of seconds."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def crf(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 51:
        raise argparse.ArgumentTypeError(f"must be in [0, 51] (0: lossless, 23: the default), got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vidclip prepare",
        description="Re-encode videos into --out for fast loading: frame rate, size, keyframes (resumable).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="VIDEO_OR_DIR_OR_LIST",
        help="folders (searched recursively), video files, or lists (.txt .list .lst) of videos under the list's folder",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder for the re-encoded videos"
    )
    parser.add_argument(
        "--fps", type=frame_rate, help="output frame rate, e.g. 3 as CLIP4Clip (default: the source's)"
    )
    parser.add_argument(
        "--short-side",
        type=even_pixels,
        metavar="PIXELS",
        help="resize so the shorter side is PIXELS, aspect kept (default: the source's size)",
    )
    parser.add_argument(
        "--upscale",
        action="store_true",
        default=None,
        help="also enlarge sources smaller than --short-side (default: keep them)",
    )
    parser.add_argument(
        "--keyframe-interval",
        type=positive_seconds,
        metavar="SECONDS",
        help="a keyframe exactly every SECONDS, so sampling a few frames seeks cheaply (default 1)",
    )
    parser.add_argument("--codec", choices=sorted(CODECS), help="video codec (default h264)")
    parser.add_argument("--crf", type=crf, help="quality: lower is better and larger (default 23)")
    parser.add_argument("--preset", choices=PRESETS, help="encoder speed (default veryfast)")
    parser.add_argument(
        "--max-seconds",
        type=positive_seconds,
        metavar="SECONDS",
        help="keep only the first SECONDS of each video, e.g. 31 for DiDeMo as CLIP4Clip (default: all)",
    )
    parser.add_argument(
        "--keep-audio",
        action="store_true",
        default=None,
        help="keep the audio, re-encoded as AAC (default: drop it)",
    )
    parser.add_argument(
        "--num-workers",
        type=non_negative_int,
        help="encoding processes; 0 encodes in this process (default: min(4, the CPUs available))",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="stop a video whose re-encoding takes longer: it gets its row with the reason (default 0: no limit)",
    )
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    if not args.shards:
        given = [flag for flag in SHARD_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
        if given:
            parser.error(f"{', '.join(given)} need(s) --shards")
    elif args.splits is not None and args.annotations is None:
        parser.error("--splits needs --annotations CONFIG (without annotations the one split is 'videos')")
    return args


SHARD_FLAGS = ("--shard-size", "--annotations", "--splits")
# The re-encoding options: any of them with --shards packs re-encoded videos instead of the sources' bytes.
ENCODING_OPTIONS = ("fps", "short_side", "keyframe_interval", "codec", "crf", "preset", "max_seconds")
ENCODING_OPTIONS += ("keep_audio", "upscale")


def split_names(text: str) -> list[str]:
    """argparse type for ``--splits``: a comma list of train, val, test."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    bad = [name for name in names if name not in ("train", "val", "test")]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"must be a comma list of train, val, test, got {text!r}")
    return names


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("WebDataset shards (--shards)")
    group.add_argument(
        "--shards",
        action="store_true",
        help="write WebDataset tar shards and a Parquet index per split into --out, instead of a video tree",
    )
    group.add_argument(
        "--shard-size",
        type=positive_int,
        metavar="N",
        help=f"samples per shard (default {DEFAULT_SHARD_SIZE})",
    )
    group.add_argument(
        "--annotations",
        metavar="CONFIG",
        help="a vidclip config whose task and data section name the splits, their videos and captions or labels "
        "(default: one split 'videos' of every source)",
    )
    group.add_argument(
        "--splits",
        type=split_names,
        metavar="NAMES",
        help="comma list of the splits to shard, e.g. train,test (default: those the config sets)",
    )


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip prepare`` command: 0 when finished (failed sources included), 2 on a bad argument or setup."""
    args = parse_args(argv)
    return run_resumable("prepare", lambda: prepare(args))


def encoding_settings(args: argparse.Namespace) -> PrepareSettings:
    """The re-encoding settings the flags ask for, the defaults where a flag is not given."""
    defaults = PrepareSettings()
    return PrepareSettings(
        fps=args.fps,
        short_side=args.short_side,
        keyframe_interval=_given(args.keyframe_interval, defaults.keyframe_interval),
        codec=_given(args.codec, defaults.codec),
        crf=_given(args.crf, defaults.crf),
        preset=_given(args.preset, defaults.preset),
        max_seconds=args.max_seconds,
        keep_audio=bool(args.keep_audio),
        upscale=bool(args.upscale),
    )


def _given(value, default):
    return default if value is None else value


def prepare(args: argparse.Namespace) -> str:
    settings = encoding_settings(args)
    if args.shards:
        return shards(args, settings)
    summary = prepare_dataset(
        args.sources,
        args.out,
        settings,
        num_workers=args.num_workers,
        timeout=args.timeout or None,
        progress=sys.stderr.isatty(),
    )
    return summary.line(args.out)


def shards(args: argparse.Namespace, settings: PrepareSettings) -> str:
    reencode = any(getattr(args, option) is not None for option in ENCODING_OPTIONS)
    summary = write_shards(
        args.sources,
        args.out,
        shard_size=_given(args.shard_size, DEFAULT_SHARD_SIZE),
        annotations=args.annotations,
        splits=args.splits,
        settings=settings if reencode else None,
        num_workers=args.num_workers,
        timeout=args.timeout or None,
        progress=sys.stderr.isatty(),
    )
    return summary.line(args.out)
