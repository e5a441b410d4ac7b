"""``vidclip extract``: pooled video embeddings of files, folders and list files, as Parquet parts.

Output: ``--out`` holds ``part-IIIIIIII-XXXXXXXXXXXX.parquet`` files (``IIIIIIII``: the input position of the
part's first video, ``X``: a random token, so no run ever overwrites an earlier part and separate processes
can write side by side). ``pandas.read_parquet(OUT)`` reads them as one table with one row per video:

- ``video``: the path as given (or as found under a folder / in a list file);
- ``embedding``: list of float32, the L2-normalised pooled embedding; null when the video failed;
- ``error``: null on success, else why the video could not be decoded.

A broken video costs its own row, never the run. Each part is written under a hidden temporary name, synced
and renamed, so a crash never leaves a half-written part. Re-running the same command (from the same folder:
rows are keyed by the path as given) skips the videos already in ``--out``, so an interrupted run resumes and
loses nothing. Every part's schema metadata records the model it was made with, and a run with another model,
checkpoint or frame sampling refuses to add to that ``--out``: embeddings of two models must not mix.

Several processes (``accelerate launch -m vidclip extract ...`` or ``torchrun``) share the work without talking
to each other: process ``r`` of ``w`` embeds the videos whose input position is ``r`` modulo ``w`` (on GPU
``LOCAL_RANK``) and writes its own parts into the same ``--out``. Ownership depends only on the input list, so
a resumed run, with any number of processes, neither repeats nor misses a video.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vidclip import __version__
from vidclip.checkpoint import find_weights, load_checkpoint
from vidclip.inference import Precision, autocast, check_precision, compile_image_tower, resolve_device
from vidclip.inputs import VIDEO_EXTENSIONS, find_videos
from vidclip.model import VideoCLIP, create_model
from vidclip.prefetch import decode_ahead
from vidclip.video import (
    DECODERS,
    SAMPLING_STRATEGIES,
    DecoderUnavailableError,
    check_decoder,
    decodes_on_device,
    get_video_transform,
    load_clip,
    loader_workers,
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C
PART_PATTERN = "part-*.parquet"
METADATA_KEY = b"vidclip.extract"
EPILOG = """examples:
  vidclip extract videos/ --out embeddings/ --model ViT-B-32 --pretrained openai --num-frames 12
  vidclip extract train_list.txt clip.mp4 --out embeddings/ --checkpoint runs/msrvtt-meanp
  python -c "import pandas; print(pandas.read_parquet('embeddings/'))"

Run the same command again to resume an interrupted run: videos already in --out are skipped.
Several GPUs or machines: accelerate launch -m vidclip extract ... (each process writes its share of --out).
"""


class ExtractError(Exception):
    """A refusal or a bad argument, reported as one line and exit status 2 (no traceback)."""


class Row(NamedTuple):
    """One output row; ``index`` is the video's position in the input list."""

    index: int
    video: str
    embedding: np.ndarray | None  # float32 (D,)
    error: str | None


@dataclass(frozen=True)
class Shard:
    """This process's share of the inputs when a launcher (torchrun, accelerate launch) starts several: the
    videos whose input position is ``rank`` modulo ``world``; read from the launcher's environment."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Shard:
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as err:
            raise ExtractError(f"the launcher's RANK/WORLD_SIZE/LOCAL_RANK are not integers: {err}") from err
        if not 0 <= rank < world:
            raise ExtractError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
        return cls(rank, world, local_rank)

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def __str__(self) -> str:
        return f" (process {self.rank} of {self.world})" if self.world > 1 else ""


@dataclass
class Summary:
    """What one run (one process's share, under a launcher) did, for the closing line."""

    total: int
    skipped: int
    ok: int = 0
    failed: int = 0
    shard: Shard = Shard()

    def line(self, out: str) -> str:
        return (
            f"extract{self.shard}: {self.total} videos, {self.ok} ok, {self.failed} failed, "
            f"{self.skipped} skipped (already done) -> {out}"
        )


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


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
    model = parser.add_argument_group("model (either --model ... or --checkpoint)")
    model.add_argument("--model", help="open_clip model name, e.g. ViT-B-32 ('tiny' for tests)")
    model.add_argument("--pretrained", help="open_clip pretrained tag or a local weights file")
    model.add_argument("--head", help="text-independent temporal head (default: mean)")
    model.add_argument("--num-frames", type=positive_int, help="frames sampled per video (default: 12)")
    model.add_argument(
        "--checkpoint", metavar="RUN_DIR", help="a vidclip training run folder or model.safetensors file"
    )
    parser.add_argument(
        "--part-size",
        type=positive_int,
        default=1000,
        help="rows per Parquet part; a crash loses at most the part being filled (default 1000)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="videos per forward (default 32)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="decoding worker processes; 0 decodes in the main process (default: min(4, cpus))",
    )
    parser.add_argument(
        "--sampling", choices=SAMPLING_STRATEGIES, default="uniform", help="frame sampling (default: uniform)"
    )
    parser.add_argument(
        "--decoder",
        choices=["auto", *sorted(DECODERS)],
        default="auto",
        help="video decoder: auto (= pyav, frame-exact), decord, torchcodec, or nvdec to decode on the GPU "
        '(needs pip install "vidclip[gpu]" and FFmpeg; decodes in a thread ahead of the model) (default: auto)',
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="autocast dtype of the forward pass; bf16 is the fast choice on recent GPUs (default: fp32)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image tower (pays off on a GPU over many videos; on a CPU it measured slower: "
        "see the README's performance section)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up on a video whose decoding takes longer: it gets a row with the reason (default 600; 0: "
        "no limit; not applied by nvdec, whose decoding runs in a thread)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip extract`` command: 0 when finished (failed videos included), 2 on a bad argument."""
    args = parse_args(argv)
    try:
        summary = extract(args)
    except ExtractError as err:
        print(f"vidclip extract: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("vidclip extract: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.line(str(args.out)))
    return 0


def extract(args: argparse.Namespace) -> Summary:
    """Validate, load the model, skip what ``--out`` already holds, embed the rest part by part."""
    check_model_args(args)
    try:
        check_decoder(args.decoder)
    except DecoderUnavailableError as err:
        raise ExtractError(f"--decoder {args.decoder}: {err}") from None
    shard = Shard.from_env()
    videos = collect_inputs(args.inputs)
    check_output_dir(args.out)
    device = get_device(args.device, shard)
    try:
        check_precision(args.precision, device)
    except ValueError as err:
        raise ExtractError(str(err)) from None
    model, metadata = load_model(args, device)
    done = read_done(args.out, metadata["identity"])
    mine = [(index, video) for index, video in enumerate(videos) if shard.owns(index)]
    pending = [(index, video) for index, video in mine if video not in done]
    summary = Summary(total=len(mine), skipped=len(mine) - len(pending), shard=shard)
    if pending:
        if args.compile:
            compile_image_tower(model)
        args.out.mkdir(parents=True, exist_ok=True)
        loader = decode_ahead(create_loader(model, pending, args, device), args.decoder, device)
        parts = PartBuffer(args.out, args.part_size, metadata)
        embed_all(model, loader, device, parts, summary, args.precision)
    return summary


# -- arguments -----------------------------------------------------------------------------------------------
def check_model_args(args: argparse.Namespace) -> None:
    """Exactly one way to name the model; fill in the defaults of the ``--model`` way."""
    names = ("model", "pretrained", "head", "num_frames")
    given = ["--" + name.replace("_", "-") for name in names if getattr(args, name) is not None]
    if args.checkpoint and given:
        raise ExtractError(
            f"--checkpoint rebuilds the model it holds (name, weights, head, frames); drop {', '.join(given)}"
        )
    if not args.checkpoint and args.model is None:
        raise ExtractError(
            "say which model: --model NAME [--pretrained TAG] [--head H], or --checkpoint RUN_DIR"
        )
    if args.num_workers < 0:
        raise ExtractError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.timeout < 0:
        raise ExtractError(f"--timeout must be 0 (no limit) or more seconds, got {args.timeout}")
    if not args.checkpoint:
        args.head = args.head or "mean"
        args.num_frames = args.num_frames or 12


def collect_inputs(sources: list[str]) -> list[str]:
    """Every video the sources name; refuses a missing source or sources that hold no video."""
    try:
        videos = find_videos(sources)
    except FileNotFoundError as err:
        raise ExtractError(f"{err}; pass video files, folders, or a .txt list of video paths") from err
    if not videos:
        raise ExtractError(
            f"no videos found in {', '.join(sources)} (folders are searched for "
            f"{' '.join(sorted(VIDEO_EXTENSIONS))}); pass video files, folders, or a .txt list of paths"
        )
    return videos


def check_output_dir(out: Path) -> None:
    """``--out`` must be a folder holding only our parts, so ``pandas.read_parquet(out)`` reads them alone."""
    if out.exists() and not out.is_dir():
        raise ExtractError(f"--out {out} is a file; give a folder (new or one written by vidclip extract)")
    if not out.is_dir():
        return
    foreign = sorted(
        p.name for p in out.iterdir() if not p.name.startswith((".", "_")) and not p.match(PART_PATTERN)
    )
    if foreign:
        raise ExtractError(
            f"--out {out} holds files that are not vidclip parts ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); pandas.read_parquet would read them too: "
            "choose a new or empty folder"
        )


def get_device(name: str | None, shard: Shard = Shard()) -> torch.device:
    """``--device`` checked before the model is built on it (default: cuda where available); under a
    launcher, ``cuda`` without an index means this process's GPU (``LOCAL_RANK``)."""
    try:
        return resolve_device(name, shard.local_rank)
    except ValueError as err:
        raise ExtractError(f"--{err}") from None


# -- the model and what identifies it --------------------------------------------------------------------------
def load_model(args: argparse.Namespace, device: torch.device) -> tuple[VideoCLIP, dict[str, Any]]:
    """The model in eval mode and the metadata that identifies its embeddings (stored in every part)."""
    try:
        if args.checkpoint:
            model = load_checkpoint(args.checkpoint, device=device)
            digest = weights_digest(find_weights(args.checkpoint))
        else:
            if args.pretrained is None:
                print(
                    "vidclip extract: note: no --pretrained given, so the weights are random", file=sys.stderr
                )
            model = create_model(args.model, args.pretrained, args.head, args.num_frames, device=device)
            digest = None
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise ExtractError(str(err)) from err
    if model.head.text_conditioned:
        raise ExtractError(
            f"head {model.spec.head!r} is text-conditioned: it scores each text against the frames and has no "
            "text-independent video embedding to extract; use a pooling head such as 'mean' or 'seq_transformer'"
        )
    # Flat, and through JSON so that it compares equal to what a part stored (tuples become lists).
    identity = json.loads(
        json.dumps(
            {
                **asdict(model.spec),
                "weights_sha256": digest,
                "sampling": args.sampling,
                "precision": args.precision,
            }
        )
    )
    metadata = {"identity": identity, "checkpoint": args.checkpoint, "vidclip_version": __version__}
    return model.eval(), metadata


def weights_digest(path: Path) -> str:
    """SHA-256 of a weights file: two checkpoints with the same spec differ only in their weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(identity: dict[str, Any]) -> str:
    """The identity as a user reads it: model, weights, head, frames, sampling."""
    sha = identity["weights_sha256"]
    return (
        f"{identity['model_name']} (pretrained {identity['pretrained'] or 'none'}), head {identity['head']}, "
        f"{identity['num_frames']} frames, {identity['sampling']} sampling, {identity.get('precision', 'fp32')}"
        + (f", checkpoint weights sha256 {sha[:12]}" if sha else "")
    )


# -- resuming ----------------------------------------------------------------------------------------------------
def read_done(out: Path, identity: dict[str, Any]) -> set[str]:
    """Videos already in ``out``'s parts; refuses parts made with another model or frame sampling."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for path in sorted(out.glob(PART_PATTERN)):
        part = pq.ParquetFile(path)
        stored = (part.schema_arrow.metadata or {}).get(METADATA_KEY)
        if stored is None:
            raise ExtractError(f"{path} was not written by vidclip extract; choose a new or empty --out")
        check_same_model(path, json.loads(stored)["identity"], identity)
        done.update(part.read(columns=["video"]).column("video").to_pylist())
    return done


def check_same_model(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to add embeddings of one model to a folder holding another's: they are not comparable."""
    changed = [key for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    if changed:
        raise ExtractError(
            f"--out {path.parent} holds embeddings of another model and cannot take these: {path.name} was "
            f"made with {describe(old)}; this run uses {describe(new)} (differs in {', '.join(changed)}). "
            "Choose another --out, or run with the model that made it"
        )


# -- decoding in worker processes --------------------------------------------------------------------------------
class ExtractDataset(Dataset):
    """Item ``i``: pending video ``i`` decoded and transformed, or the reason it could not be.

    Every failure is caught here, in the worker, and travels as a string: no exception leaves a worker.
    """

    def __init__(
        self,
        pending: list[tuple[int, str]],
        *,
        num_frames: int,
        sampling: str,
        decoder: str,
        transform: Any,
        timeout: float = 0.0,
    ) -> None:
        self.pending, self.transform, self.timeout = pending, transform, timeout
        self.num_frames, self.sampling, self.decoder = num_frames, sampling, decoder

    def __len__(self) -> int:
        return len(self.pending)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index, path = self.pending[i]
        item = {"index": index, "video": path, "frames": None, "mask": None, "error": None}
        try:
            with time_limit(self.timeout):
                clip = load_clip(path, self.num_frames, self.sampling, decoder=self.decoder)
            item["frames"], item["mask"] = self.transform(clip.frames), clip.mask  # (T, 3, S, S), (T,)
        except DecodeTimeout:
            item["error"] = f"timed out: decoding took longer than {self.timeout:g} s (--timeout)"
        except FileNotFoundError:  # listed but absent: the row already names the path
            item["error"] = "no such file"
        except Exception as err:  # a video's failure is data: it becomes that video's row
            item["error"] = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
        return item


class DecodeTimeout(Exception):
    """Raised inside a decode that ran past ``--timeout``."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise DecodeTimeout in the block after ``seconds`` (0: no limit), by SIGALRM: a worker's decode runs in its
    main thread. The signal is handled between Python steps, e.g. between the frames PyAV decodes; a single
    blocking C call (a decord batch) is interrupted only when it returns."""
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise DecodeTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decoded videos (k, T, 3, S, S) and masks (k, T); keep every item's index, path and error."""
    decoded = [item for item in items if item["error"] is None]
    batch = {key: [item[key] for item in items] for key in ("index", "video", "error")}
    batch["frames"] = torch.stack([item["frames"] for item in decoded]) if decoded else None
    batch["mask"] = torch.stack([item["mask"] for item in decoded]) if decoded else None
    return batch


def init_worker(worker_id: int) -> None:
    """Workers leave Ctrl-C to the main process (which writes what it has) and use one thread each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def create_loader(
    model: VideoCLIP, pending: list[tuple[int, str]], args: argparse.Namespace, device: torch.device
) -> DataLoader:
    """Batches of ``pending`` decoded in ``--num-workers`` processes, in input order."""
    dataset = ExtractDataset(
        pending,
        num_frames=model.num_frames,
        sampling=args.sampling,
        decoder=args.decoder,
        transform=get_video_transform(model, train=False),
        timeout=args.timeout,
    )
    workers = loader_workers(args.decoder, args.num_workers)
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=init_worker if workers else None,
        pin_memory=device.type == "cuda" and not decodes_on_device(args.decoder),
    )


# -- embedding and writing ---------------------------------------------------------------------------------------
def embed_batch(
    model: VideoCLIP, batch: dict[str, Any], device: torch.device, precision: Precision = "fp32"
) -> list[Row]:
    """One row per item of ``batch``: the pooled embedding of each decoded video, the error of the others."""
    pooled: list[np.ndarray] = []
    if batch["frames"] is not None:
        with torch.inference_mode(), autocast(device, precision):
            features = model.encode_video(
                batch["frames"].to(device, non_blocking=True), batch["mask"].to(device)
            )
        pooled = list(features.pooled.float().cpu().numpy())  # (k, D)
    embeddings = iter(pooled)
    return [
        Row(index, video, None if error else next(embeddings), error)
        for index, video, error in zip(batch["index"], batch["video"], batch["error"], strict=True)
    ]


def embed_all(
    model: VideoCLIP,
    loader: Iterable[dict[str, Any]],
    device: torch.device,
    parts: PartBuffer,
    summary: Summary,
    precision: Precision = "fp32",
) -> None:
    """Embed batch by batch into ``parts`` (a part is written as soon as it fills); Ctrl-C keeps what is done."""
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
        for batch in loader:
            rows = embed_batch(model, batch, device, precision)
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


class PartBuffer:
    """Rows waiting for their part; holds fewer than ``part_size + batch_size`` rows, so memory stays flat."""

    def __init__(self, out: Path, part_size: int, metadata: dict[str, Any]) -> None:
        self.out, self.part_size, self.metadata = out, part_size, metadata
        self.rows: list[Row] = []

    # Rows leave the buffer before their part is written: if writing fails or is interrupted, a later flush
    # cannot write them twice, and the re-run recomputes them (it skips only what is on disk).
    def add(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        while len(self.rows) >= self.part_size:
            part, self.rows = self.rows[: self.part_size], self.rows[self.part_size :]
            write_part(self.out, part, self.metadata)

    def flush(self) -> None:
        if self.rows:
            part, self.rows = self.rows, []
            write_part(self.out, part, self.metadata)


def write_part(out: Path, rows: list[Row], metadata: dict[str, Any]) -> Path:
    """Write ``rows`` as a new part, atomically: a hidden temp file in ``out``, synced, then renamed."""
    import pyarrow.parquet as pq

    path = out / f"part-{rows[0].index:08d}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = out / f".{path.name}.tmp"  # a leading dot: pyarrow's dataset reader skips it
    try:
        with open(tmp, "wb") as f:
            pq.write_table(part_table(rows, metadata), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def part_table(rows: list[Row], metadata: dict[str, Any]):
    """``rows`` as a pyarrow Table (video, embedding, error), with ``metadata`` in its schema."""
    import pyarrow as pa

    schema = pa.schema(
        [("video", pa.string()), ("embedding", pa.list_(pa.float32())), ("error", pa.string())],
        metadata={METADATA_KEY: json.dumps(metadata).encode()},
    )
    columns = [[row.video for row in rows], [row.embedding for row in rows], [row.error for row in rows]]
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )
