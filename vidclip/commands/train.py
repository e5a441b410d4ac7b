"""``vidclip train``: train a model from YAML configs with Accelerate (the loop is :mod:`vidclip.train`'s)."""

from __future__ import annotations

import argparse
import sys

from vidclip.commands.common import EXIT_FAILED, EXIT_INTERRUPTED, fail, setup_logging
from vidclip.config import ConfigError
from vidclip.data import AnnotationError
from vidclip.fileio import DiskFullError
from vidclip.model import WeightsDownloadError
from vidclip.train.state import RunError, TrainingDiverged
from vidclip.video import DecoderUnavailableError

# What ``vidclip train`` reports as one line and exit status 2: the user's config, data, files or machine. Not
# ValueError or RuntimeError at large: those from deep in a library are bugs, and keep their traceback.
TRAIN_ERRORS = (
    ConfigError,  # the config, and what preflight checks (model name, head, output_dir)
    AnnotationError,  # the annotation files
    RunError,  # no video of the first batch decodes; no step checkpoint reads back on --resume
    DiskFullError,  # a checkpoint, config or log that the disk has no room for (the files before are kept)
    WeightsDownloadError,
    DecoderUnavailableError,
    FileNotFoundError,  # e.g. model.pretrained naming a weights file that is not there
    NotADirectoryError,
    PermissionError,
)

EPILOG = """examples:
  vidclip train --config configs/demo.yaml
  vidclip train --config configs/retrieval/msrvtt_seqtransf.yaml train.lr=5e-5 output_dir=runs/lr5e-5
  vidclip train --config configs/demo.yaml --resume          # continue from the latest checkpoint
  vidclip train --config configs/retrieval/msrvtt_meanp.yaml train.precision=fp16   # GPUs without bf16 (V100, T4)
  accelerate launch --multi_gpu --num_processes 8 -m vidclip train --config configs/retrieval/msrvtt_meanp.yaml
  torchrun --nproc_per_node 8 -m vidclip train --config configs/retrieval/msrvtt_meanp.yaml
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vidclip train",
        description="Train a VideoCLIP from YAML configs (later files and key=value overrides win).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", action="append", required=True, help="YAML config; repeat to merge several"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in output_dir"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides as key.sub=value (e.g. train.lr=1e-5)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip train`` command: 0 when done, 1 when training diverged, 2 for a bad config, data, file or
    a full disk (one line each: :data:`TRAIN_ERRORS`), 130 when interrupted."""
    from vidclip.config import load_config
    from vidclip.train import train

    args = parse_args(argv)
    setup_logging(with_time=True)
    try:
        return train(load_config(args.config, args.overrides), resume=args.resume)
    except TRAIN_ERRORS as err:
        return fail("train", err)
    except TrainingDiverged as err:
        print(f"vidclip train: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("vidclip train: interrupted; exiting without saving", file=sys.stderr)
        return EXIT_INTERRUPTED
