"""``vidclip train``: train a model from YAML configs with Accelerate (the loop is :mod:`vidclip.train`'s)."""

from __future__ import annotations

import argparse
import sys

from vidclip.commands.common import EXIT_FAILED, EXIT_INTERRUPTED, fail, setup_logging

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
    """The ``vidclip train`` command: 0 when done, 2 for a bad config or data setting, 130 when interrupted."""
    from vidclip.config import ConfigError, load_config
    from vidclip.data import AnnotationError
    from vidclip.model import WeightsDownloadError
    from vidclip.train import train
    from vidclip.train.state import TrainingDiverged

    args = parse_args(argv)
    setup_logging(with_time=True)
    try:
        return train(load_config(args.config, args.overrides), resume=args.resume)
    except (ConfigError, AnnotationError, WeightsDownloadError) as err:
        return fail("train", err)
    except TrainingDiverged as err:
        print(f"vidclip train: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("vidclip train: interrupted; exiting without saving", file=sys.stderr)
        return EXIT_INTERRUPTED
