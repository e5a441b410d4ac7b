"""``vidclip extract``: pooled video embeddings of files, folders and list files, as Parquet parts.

``pandas.read_parquet(OUT)`` reads ``--out`` as one table with one row per video: ``video`` (the path as
given, or as found under a folder / in a list file), ``embedding`` (list of float32, the L2-normalised pooled
embedding; null when the video failed) and ``error`` (null on success, else why the video could not be used).
The parts and their guarantees are :mod:`vidclip.inference.parts`'s; the decoding, time limit and failure policy
are the shared pipeline's (:mod:`vidclip.inference.pipeline`).

Re-running the same command (from the same folder: rows are keyed by the path as given) skips the videos
already in ``--out``, so an interrupted run resumes and loses nothing; a run with another model, checkpoint or
frame sampling refuses to add to that ``--out``. A video that failed is tried again when the cause can have
passed (:func:`worth_retrying`: a time limit, a missing or unreadable file, another OS error, or a file changed
since), every failed one with ``--retry-failed``; the new row takes the failed row's place. One run at a time
writes in an ``--out``: another is refused at once (:func:`vidclip.fileio.exclusive_lock`).

Several processes (``accelerate launch -m vidclip extract ...`` or ``torchrun``) share the work without talking
to each other: process ``r`` of ``w`` embeds the videos whose input position is ``r`` modulo ``w`` (on GPU
``LOCAL_RANK``; from shards, every sample of the shards ``r::w``, so each process reads only its own shards)
and writes its own parts into the same ``--out``. Ownership depends only on the input list, so
a resumed run, with any number of processes, neither repeats nor misses a video.
"""

from __future__ import annotations

import argparse
import builtins
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
from vidclip.data.files import display_path
from vidclip.fileio import exclusive_lock
from vidclip.inference.parts import Done, PartBuffer, Row, check_parts_folder, model_identity, read_done
from vidclip.inference.pipeline import EncodedBatch, EncodeOptions, iter_encoded
from vidclip.model import VideoCLIP
from vidclip.version import __version__
from vidclip.video import SAMPLING_STRATEGIES

LOCK_NAME = ".vidclip-extract.lock"  # hidden: pandas, pyarrow and check_parts_folder pass it by
# Failures whose cause can pass, retried by default (the reasons of vidclip.data.dataset.failure_reason and
# vidclip.video.errors): a time limit, a file missing or unreadable, any OS error or a full memory by name.
TRANSIENT = (
    "timed out",
    "no such file",
    "cannot read the file",
    "the decoding process died",
)  # may pass: OOM
TRANSIENT_TYPES = frozenset(
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, OSError)
) | {"MemoryError"}
NON_FINITE = "the embedding is not finite (NaN or inf): the model's weights or this video's frames give NaN"
EPILOG = """examples:
  vidclip extract videos/ --out embeddings/ --model ViT-B-32 --pretrained openai --num-frames 12
  vidclip extract train_list.txt clip.mp4 --out embeddings/ --checkpoint runs/msrvtt-meanp
  python -c "import pandas; print(pandas.read_parquet('embeddings/'))"

Run the same command again to resume an interrupted run: videos already in --out are skipped, and the
failed ones whose cause can have passed (timed out, missing, unreadable, killed its worker, changed since) are tried again;
--retry-failed tries every failed one again.
Several GPUs or machines: accelerate launch -m vidclip extract ... (each process writes its share of --out).
"""


@dataclass
class Summary:
    """What one run (one process's share, under a launcher) did, for the closing line."""

    total: int
    skipped: int
    ok: int = 0
    failed: int = 0
    shard: Shard = Shard()
    retried: int = 0  # failed before and embedded again: counted in ok / failed too

    def line(self, out: str) -> str:
        retried = f", {self.retried} retried (failed before)" if self.retried else ""
        return (
            f"extract{self.shard}: {self.total} videos, {self.ok} ok, {self.failed} failed, "
            f"{self.skipped} skipped (already done){retried} -> {out}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vidclip extract",
        description="Write pooled video embeddings to Parquet parts in --out (resumable).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="VIDEO_OR_DIR_OR_LIST",
        help="video files, folders (searched recursively), or lists (.txt .list .lst): one video path a line",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the Parquet parts")
    parser.add_argument(
        "--part-size",
        type=positive_int,
        default=1000,
        help="rows per Parquet part; a crash loses at most the part being filled (default 1000)",
    )
    parser.add_argument(
        "--sampling", choices=SAMPLING_STRATEGIES, default="uniform", help="frame sampling (default: uniform)"
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="embed again every video whose row in --out is an error (by default only those whose cause can "
        "have passed: timed out, missing, unreadable, or changed since; not an unchanged broken file)",
    )
    add_model_arguments(parser, what="--model with head mean and 12 frames")
    add_encoding_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip extract`` command: 0 when finished (failed videos included), 2 on a bad argument."""
    args = parse_args(argv)
    return run_resumable("extract", lambda: extract(args).line(str(args.out)))


def extract(args: argparse.Namespace) -> Summary:
    """Validate, lock ``--out`` for this process, load the model, skip what ``--out`` already holds (but the
    failures to retry), embed the rest part by part."""
    check_model_args(args)
    shard = Shard.from_env()
    options = check_encoding(encode_options(args, sampling=args.sampling, progress=False), shard.local_rank)
    videos = collect_inputs(args.inputs)
    check_parts_folder(args.out)
    lock = exclusive_lock(args.out / LOCK_NAME, "vidclip extract run", rank=shard.rank, world=shard.world)
    with lock as held:  # before reading --out: what is done cannot change under this run
        model, metadata = load_extract_model(args, options)
        mine = shard.share(videos)
        stored = read_done(args.out, metadata["identity"])  # keyed by the printable names parts store
        done = {video: stored[display_path(video)] for _, video in mine if display_path(video) in stored}
        retried = {
            video: done[video].part
            for _, video in mine
            if video in done and worth_retrying(video, done[video], args.retry_failed)
        }
        pending = [(index, video) for index, video in mine if video not in done or video in retried]
        summary = Summary(len(mine), len(mine) - len(pending), shard=shard, retried=len(retried))
        note_kept_failures(sum(done[v].error is not None for _, v in mine if v in done) - len(retried), shard)
        if pending:
            batches = iter_encoded(model, [video for _, video in pending], options)
            parts = PartBuffer(args.out, args.part_size, metadata, retried, held.turn)
            embed_all(batches, pending, parts, summary)
    return summary


def worth_retrying(video: str, row: Done, retry_failed: bool) -> bool:
    """Whether a video with a row in ``--out`` is embedded again: never when it was embedded; with
    ``--retry-failed`` whenever it failed; else when the cause can have passed (a time limit, a missing or
    unreadable file, an OS error, memory) or the file changed (modified, replaced) after its row's part was
    written. An unchanged broken file (truncated, not a video, empty) would only fail again."""
    if row.error is None:
        return False
    if retry_failed or row.error.startswith(TRANSIENT) or row.error.split(":", 1)[0] in TRANSIENT_TYPES:
        return True
    try:
        changed, written = os.stat(video), os.stat(row.part).st_mtime_ns
    except OSError:
        return False
    return max(changed.st_mtime_ns, changed.st_ctime_ns) > written


def note_kept_failures(count: int, shard: Shard) -> None:
    if count > 0:
        print(
            f"vidclip extract{shard}: note: {count} video{'s' if count > 1 else ''} that failed before "
            "(broken, unchanged since) not tried again; --retry-failed tries them",
            file=sys.stderr,
        )


def check_model_args(args: argparse.Namespace) -> None:
    """Exactly one way to name the model; fill in the defaults of the ``--model`` way."""
    names = ("model", "pretrained", "head", "num_frames")
    given = ["--" + name.replace("_", "-") for name in names if getattr(args, name) is not None]
    if args.checkpoint and given:
        raise ValueError(
            f"--checkpoint rebuilds the model it holds (name, weights, head, frames); drop {', '.join(given)}"
        )
    if not args.checkpoint and args.model is None:
        raise ValueError(
            "say which model: --model NAME [--pretrained TAG] [--head H], or --checkpoint RUN_DIR"
        )
    if not args.checkpoint:
        args.head = args.head or "mean"
        args.num_frames = args.num_frames or 12


def load_extract_model(args: argparse.Namespace, options: EncodeOptions) -> tuple[VideoCLIP, dict[str, Any]]:
    """The model in eval mode and the metadata that identifies its embeddings (stored in every part)."""
    from vidclip.checkpoint import find_weights, load_checkpoint
    from vidclip.model import create_model

    try:
        if args.checkpoint:
            model, weights = (
                load_checkpoint(args.checkpoint, device=options.device),
                find_weights(args.checkpoint),
            )
        else:
            if args.pretrained is None:
                print(
                    "vidclip extract: note: no --pretrained given, so the weights are random", file=sys.stderr
                )
            model = create_model(
                args.model, args.pretrained, args.head, args.num_frames, device=options.device
            )
            weights = None
    except RuntimeError as err:
        raise ValueError(str(err)) from err
    if model.head.text_conditioned:
        raise ValueError(
            f"head {model.spec.head!r} is text-conditioned: it scores each text against the frames and has no "
            "text-independent video embedding to extract; use a pooling head such as 'mean' or 'seq_transformer'"
        )
    identity = model_identity(model, weights, sampling=options.sampling, precision=options.precision)
    metadata = {"identity": identity, "checkpoint": args.checkpoint, "vidclip_version": __version__}
    return model.eval(), metadata


def batch_rows(batch: EncodedBatch, pending: list[tuple[int, str]]) -> list[Row]:
    """One row per slot of ``batch``: the pooled embedding of each decoded video, the reason of the others."""
    errors = dict(batch.errors)
    pooled = batch.features.pooled.cpu().numpy()  # (B, D)
    rows = []
    for slot, (position, ok) in enumerate(zip(batch.index.tolist(), batch.valid.tolist(), strict=True)):
        index, video = pending[position]
        if ok and not np.isfinite(pooled[slot]).all():  # never an ok row that holds NaN or inf
            rows.append(Row(index, video, None, NON_FINITE))
        elif ok:
            rows.append(Row(index, video, pooled[slot], None))
        else:
            rows.append(Row(index, video, None, errors.get(video, "could not be decoded")))
    return rows


def embed_all(
    batches: Iterable[EncodedBatch], pending: list[tuple[int, str]], parts: PartBuffer, summary: Summary
) -> None:
    """Rows batch by batch into ``parts`` (a part is written as soon as it fills); Ctrl-C keeps what is done."""
    from tqdm import tqdm

    progress = tqdm(
        total=summary.total,
        initial=summary.skipped,
        unit="video",
        desc=f"extract{summary.shard}",
        file=sys.stderr,
        disable=summary.shard.rank != 0,  # one bar, not one per process
    )
    try:
        for batch in batches:
            rows = batch_rows(batch, pending)
            parts.add(rows)
            failed = sum(row.error is not None for row in rows)
            summary.ok, summary.failed = summary.ok + len(rows) - failed, summary.failed + failed
            progress.set_postfix(failed=summary.failed, refresh=False)
            progress.update(len(rows))
    except KeyboardInterrupt:
        parts.flush()  # the rows embedded so far are complete: keep them
        raise
    finally:
        progress.close()
    parts.flush()
