"""Command plumbing shared by every ``vidclip`` command: the model arguments, the encoding flags (one meaning
in every command), the launcher's share of the work, logging and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vidclip.config import PRECISIONS, ConfigError, check_timeout, normalize_precision
from vidclip.data.base import AnnotationError
from vidclip.data.files import VIDEO_EXTENSIONS, find_videos
from vidclip.fileio import DiskFullError, FolderInUseError
from vidclip.inference.parts import PartsError
from vidclip.inference.pipeline import DEFAULT_TIMEOUT, EncodeOptions
from vidclip.inference.runtime import check_precision, resolve_device
from vidclip.model import VideoCLIP, WeightsDownloadError
from vidclip.video import DecoderUnavailableError

EXIT_OK = 0
EXIT_FAILED = 1  # the work itself failed (e.g. training diverged)
EXIT_USAGE = 2  # the user's input or setup, reported as one line
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C

# What a command reports as one line and exit status 2: the user's input or setup, not a bug in vidclip.
COMMAND_ERRORS = (
    ConfigError,
    AnnotationError,
    PartsError,
    DiskFullError,
    FolderInUseError,
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    WeightsDownloadError,
    DecoderUnavailableError,
)


def setup_logging(with_time: bool = False) -> None:
    """Warnings from libraries, and vidclip's own info lines (what was read, what was dropped), on stderr."""
    if not logging.getLogger().handlers:
        fmt = "%(asctime)s %(levelname)s %(message)s" if with_time else "%(levelname)s %(message)s"
        logging.basicConfig(level=logging.WARNING, format=fmt, datefmt="%H:%M:%S")
        logging.getLogger("vidclip").setLevel(logging.INFO)


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seconds(text: str) -> float:
    """argparse type for ``--timeout``: a finite number of seconds, 0 for none (``inf``/``nan`` refused)."""
    try:
        return check_timeout(float(text), "--timeout")
    except (ValueError, ConfigError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def precision(text: str) -> str:
    """argparse type for ``--precision``: fp32, bf16 or fp16 (``no``, ``float16``... mapped, with a hint)."""
    try:
        return normalize_precision(text, "--precision")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# -- arguments -----------------------------------------------------------------------------------------------
def add_model_arguments(parser: argparse.ArgumentParser, what: str = "the config's model section") -> None:
    """``--checkpoint RUN`` or ``--model/--pretrained/--head/--num-frames``."""
    group = parser.add_argument_group(f"model (either --checkpoint or --model ...; default: {what})")
    group.add_argument(
        "--checkpoint",
        metavar="RUN_DIR",
        help="a vidclip run folder, a .safetensors file, or hf-hub:ORG/NAME[@REVISION] (the Hugging Face Hub)",
    )
    group.add_argument("--model", help="open_clip model name, e.g. ViT-B-32 ('tiny' for tests)")
    group.add_argument("--pretrained", help="open_clip pretrained tag or local weights file, e.g. openai")
    group.add_argument("--head", help="temporal head (vidclip.list_heads()); default mean")
    group.add_argument(
        "--num-frames", type=positive_int, help="frames sampled per video (default: the model's)"
    )


def add_encoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the shared video-encoding pipeline, the same in every command that encodes videos."""
    from vidclip.video import DECODERS
    from vidclip.video.decoders import DEFAULT_MAX_PIXELS

    group = parser.add_argument_group("encoding videos (the same flags in every command)")
    group.add_argument(
        "--decoder",
        choices=["auto", *sorted(DECODERS)],
        help="video decoder: auto (= pyav, frame-exact), decord, torchcodec, or nvdec to decode on the GPU "
        '(needs pip install "vidclip[gpu]" and FFmpeg; decodes in a thread ahead of the model) '
        "(default: the config's data.decoder, else auto)",
    )
    group.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help=f"give up on a video whose decoding takes longer: it is dropped, named and counted (default: the "
        f"config's data.timeout, else {DEFAULT_TIMEOUT:g}; 0: no limit; not applied by nvdec)",
    )
    group.add_argument(
        "--max-pixels",
        type=non_negative_int,
        metavar="N",
        help="pixel budget of a frame: a video whose frames are larger (read from its header, before decoding) "
        "is dropped, named and counted; a video's frames then take at most num-frames x N x 3 bytes "
        f"(default: the config's data.max_pixels, else {DEFAULT_MAX_PIXELS} = 8192x4320, DCI 8K; 0: no limit)",
    )
    group.add_argument(
        "--precision",
        type=precision,
        default="fp32",
        metavar="{" + ",".join(PRECISIONS) + "}",
        help="autocast dtype of the forward pass; bf16 is the fast choice on recent GPUs (default: fp32)",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image tower (pays off on a GPU over many videos; on a CPU it measured no "
        "faster: see the README's performance section)",
    )
    group.add_argument("--batch-size", type=positive_int, default=32, help="videos per forward (default 32)")
    group.add_argument(
        "--num-workers",
        type=non_negative_int,
        help="decoding worker processes; 0 decodes in the main process (default: the config's, else "
        "min(4, the CPUs available))",
    )
    group.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def encode_options(args: argparse.Namespace, data: Any | None = None, **fields: Any) -> EncodeOptions:
    """The :class:`EncodeOptions` of the command line, falling back to a config's ``data`` section."""

    from vidclip.video.decoders import DEFAULT_MAX_PIXELS

    def pick(flag: Any, key: str, default: Any) -> Any:
        if flag is not None:
            return flag
        return getattr(data, key) if data is not None else default

    options = {
        "num_frames": getattr(args, "num_frames", None),
        "decoder": pick(args.decoder, "decoder", "auto"),
        "timeout": pick(args.timeout, "timeout", DEFAULT_TIMEOUT),
        "max_pixels": pick(getattr(args, "max_pixels", None), "max_pixels", DEFAULT_MAX_PIXELS),
        "num_workers": pick(args.num_workers, "num_workers", None),
        "batch_size": args.batch_size,
        "device": args.device,
        "precision": args.precision,
        "compile": args.compile,
        "progress": sys.stderr.isatty(),
    }
    if data is not None:
        options.update(sampling=data.eval_sampling, fps=data.fps)
    return EncodeOptions(**{**options, **fields})


def check_encoding(options: EncodeOptions, local_rank: int = 0) -> EncodeOptions:
    """Refuse, before any work, a decoder, device or precision this machine cannot run; resolve the device."""
    from vidclip.video import check_decoder

    try:
        check_decoder(options.decoder)
    except DecoderUnavailableError as err:
        raise DecoderUnavailableError(f"--decoder {options.decoder}: {err}") from None
    try:
        device = resolve_device(options.device, local_rank)
    except ValueError as err:
        raise ValueError(f"--{err}") from None
    check_precision(options.precision, device)
    return EncodeOptions.of(options, device=device)


def model_from_args(args: argparse.Namespace, defaults: Any | None, device: torch.device) -> VideoCLIP:
    """The model the command line names: ``--checkpoint``, else ``--model ...``, else ``defaults`` (a config's
    ``model`` section), in eval mode on ``device``. Raises ValueError when none names one."""
    from vidclip.checkpoint import load_checkpoint
    from vidclip.model import create_model

    if args.checkpoint:
        given = [f"--{flag}" for flag in ("model", "pretrained", "head") if getattr(args, flag)]
        if given:
            raise ValueError(
                f"--checkpoint rebuilds the model it holds (name, weights, head, frames); drop {', '.join(given)}"
            )
        return load_checkpoint(args.checkpoint, device=device).eval()
    if args.model is None and defaults is None:
        raise ValueError(
            "say which model: --checkpoint RUN_DIR, or --model NAME [--pretrained TAG] [--head H]"
        )
    return create_model(**model_choice(args, defaults), device=device).eval()


def model_choice(args: argparse.Namespace, defaults: Any | None) -> dict[str, Any]:
    """``create_model`` arguments: ``--model`` flags, else the config's model section with flags on top. The
    config's head options go only with the config's own head."""
    if args.model:
        name, pretrained, head = args.model, args.pretrained, args.head or "mean"
    else:
        name, pretrained, head = (
            defaults.name,
            args.pretrained or defaults.pretrained,
            args.head or defaults.head,
        )
    options = dict(defaults.head_options) if defaults is not None and head == defaults.head else {}
    frames = args.num_frames or (defaults.num_frames if defaults is not None else 12)
    return {"model_name": name, "pretrained": pretrained, "head": head, "num_frames": frames, **options}


def check_writable(path: str | os.PathLike, flag: str = "--output") -> None:
    """Refuse, before any work, an output file that cannot be written (a folder, a read-only place)."""
    target = os.fspath(path)
    if os.path.isdir(target):
        raise ValueError(f"{flag} {target} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(target))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise PermissionError(f"{flag} {target}: cannot write in {parent}")
    if os.path.exists(target) and not os.access(target, os.W_OK):
        raise PermissionError(f"{flag} {target}: the file is read-only")


@dataclass(frozen=True)
class Shard:
    """This process's share of the inputs when a launcher (torchrun, accelerate launch) starts several: the
    inputs whose position is ``rank`` modulo ``world`` (shard samples: those of every ``world``-th shard);
    read from the launcher's environment."""

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
            raise ValueError(f"the launcher's RANK/WORLD_SIZE/LOCAL_RANK are not integers: {err}") from err
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
        return cls(rank, world, local_rank)

    def share(self, videos: list[str]) -> list[tuple[int, str]]:
        """(position, video) of the inputs this process takes (:func:`vidclip.data.shards.owned_by_process`)."""
        from vidclip.data.shards import owned_by_process

        return owned_by_process(videos, self.rank, self.world)

    def __str__(self) -> str:
        return f" (process {self.rank} of {self.world})" if self.world > 1 else ""


def run_resumable(command: str, work: Callable[[], str]) -> int:
    """Run a resumable command's ``work`` and print the line it returns: 0; a refusal is one line and 2; Ctrl-C
    says how to resume and gives 130 (what was done is kept: the command wrote it as it went)."""
    try:
        line = work()
    except COMMAND_ERRORS as err:
        return fail(command, err)
    except KeyboardInterrupt:
        print(f"vidclip {command}: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(line)
    return EXIT_OK


def fail(command: str, err: BaseException | str) -> int:
    """Report a refusal as one line on stderr and return the usage exit code."""
    print(f"vidclip {command}: error: {err}", file=sys.stderr)
    return EXIT_USAGE


def collect_inputs(sources: list[str]) -> list[str]:
    """Every video the sources name: files, folders and list files, or WebDataset shards (brace patterns,
    globs, ``pipe:`` and fsspec URLs, a shard index), whose samples are named ``url#key``. Refuses a missing
    source, sources that hold no video, and shards mixed with files."""
    from vidclip.data.shards import is_shard_spec, read_shard_set

    shards = [source for source in sources if is_shard_spec(source)]
    if shards and len(shards) < len(sources):
        files = [source for source in sources if not is_shard_spec(source)]
        raise ValueError(
            f"give either WebDataset shards or video files, not both (shards: {shards[0]}; files: {files[0]})"
        )
    if shards:
        refs = [ref for spec in shards for ref in read_shard_set(spec, where=spec).refs()]
        if not refs:
            raise ValueError(f"the shards {', '.join(shards)} hold no video samples")
        return refs
    try:
        videos = find_videos(sources)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; pass video files, folders, or a .txt list of video paths") from err
    if not videos:
        raise ValueError(
            f"no videos found in {', '.join(sources)} (folders are searched for "
            f"{' '.join(sorted(VIDEO_EXTENSIONS))}); pass video files, folders, or a .txt list of paths"
        )
    return videos
