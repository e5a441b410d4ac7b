"""Batched inference shared by ``vidclip eval`` and ``vidclip zeroshot``: the model a command names, every video
encoded once, texts encoded in batches.

Videos are decoded, sampled and transformed in DataLoader worker processes by :class:`vidclip.data.VideoDataset`,
the dataset training validates with, so both report the same numbers. A video that cannot be decoded keeps its
slot, marked invalid, with the reason: one broken file costs its own row, never the run. Frame features stay on
the device as one (V, T, D) tensor, computed once, so text-conditioned heads can score any number of texts
against them without re-encoding a video.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from vidclip.config import ConfigError
from vidclip.data.base import AnnotationError
from vidclip.data.dataset import VideoDataset, collate, create_caption_tokenizer
from vidclip.model import VideoCLIP, VideoFeatures, WeightsDownloadError
from vidclip.video.torchcodec_reader import DecoderUnavailableError

Precision = Literal["fp32", "bf16", "fp16"]
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What a command reports as one line and exit status 2: the user's input or setup, not a bug in vidclip.
COMMAND_ERRORS = (
    ConfigError,
    AnnotationError,
    ValueError,
    FileNotFoundError,
    WeightsDownloadError,
    DecoderUnavailableError,
)
logger = logging.getLogger("vidclip.inference")


@dataclass
class EncodedVideos:
    """``features``: every input slot on the device, frames (N, T, D); ``valid``: (N,) bool, False where the
    video failed to decode; ``errors``: (path, reason) of those failures, in input order."""

    features: VideoFeatures
    valid: torch.Tensor
    errors: list[tuple[str, str]]

    def decoded(self) -> VideoFeatures:
        """Features of the videos that decoded, in input order."""
        return self.features[self.valid]


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``device`` as given, else ``cuda`` where a GPU is visible, else ``cpu``; ``cuda`` without an index is
    GPU ``local_rank`` (this process's, under a launcher). ValueError for a name that is not a device or a
    GPU that is not here, before a model is built on it."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {str(device)!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available here; use cpu")
    if resolved.type == "cuda" and resolved.index is None and torch.cuda.device_count():
        resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
    return resolved


def check_precision(precision: str, device: torch.device, fix: str = "--precision fp16 (or fp32)") -> None:
    """Refuse bf16 on a CUDA GPU without bfloat16 (before any work), naming ``fix``; warn where it is only
    emulated (pre-Ampere GPUs under recent PyTorch: it runs, several times slower than fp16)."""
    if precision != "bf16" or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return
    if _bf16_supported(including_emulation=False):
        return
    name = _gpu_name(device)
    if _bf16_supported(including_emulation=True):
        logger.warning(f"{name} emulates bf16 (no native support): {fix} is faster")
        return
    raise ValueError(
        f"precision bf16 needs a GPU with bfloat16 support (Ampere or newer); {name} has none: use {fix}"
    )


def _bf16_supported(including_emulation: bool) -> bool:
    """torch.cuda.is_bf16_supported, on PyTorch versions with and without its ``including_emulation``."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=including_emulation))
    except TypeError:  # PyTorch < 2.3 knows no emulation
        return bool(torch.cuda.is_bf16_supported())


def _gpu_name(device: torch.device) -> str:
    """The GPU's name for messages ("this GPU" when the driver cannot say)."""
    try:
        return torch.cuda.get_device_name(device)
    except (AssertionError, RuntimeError):
        return "this GPU"


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """Mixed precision on ``device`` for bf16/fp16; nothing for fp32."""
    if precision == "fp32":
        yield
        return
    if precision not in _AUTOCAST:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    with torch.autocast(device_type=device.type, dtype=_AUTOCAST[precision]):
        yield


def compile_image_tower(model: VideoCLIP) -> VideoCLIP:
    """``torch.compile`` the image tower, where nearly all the compute of encoding a video is, in place.

    Only its ``forward`` is replaced, so parameters and state-dict keys stay as they were. The first batch pays
    for compilation (about a minute for ViT-B/32) and a different batch shape for a recompilation.
    """
    visual = model.clip.visual
    visual.forward = torch.compile(visual.forward)
    return model


@torch.no_grad()
def encode_videos(
    model: VideoCLIP,
    paths: list[str],
    *,
    num_frames: int | None = None,
    sampling: str = "uniform",
    fps: float | None = None,
    decoder: str = "auto",
    batch_size: int = 32,
    num_workers: int = 4,
    device: torch.device | None = None,
    precision: Precision = "fp32",
    progress: bool = False,
) -> EncodedVideos:
    """Decode (in ``num_workers`` processes), transform and encode every video of ``paths`` once."""
    from vidclip.prefetch import decode_ahead
    from vidclip.video import decodes_on_device, get_video_transform, loader_workers

    device = resolve_device(device)
    dataset = VideoDataset(
        list(paths),
        num_frames=num_frames or model.num_frames,
        sampling=sampling,
        transform=get_video_transform(model, train=False),
        image_size=model.image_size,
        fps=fps,
        decoder=decoder,
    )
    on_gpu = device.type == "cuda"
    workers = loader_workers(decoder, num_workers)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=on_gpu and not decodes_on_device(decoder),
        worker_init_fn=_one_thread if workers else None,
    )
    parts, valid, errors = [], [], []
    batches = _progress(decode_ahead(loader, decoder, device), progress, "videos", batch_size, len(loader))
    for batch in batches:
        video = batch["video"].to(device, non_blocking=on_gpu)  # (B, T, 3, S, S)
        with autocast(device, precision):
            features = model.encode_video(video, batch["mask"].to(device))
        pooled = None if features.pooled is None else features.pooled.float()
        parts.append(VideoFeatures(features.frames.float(), features.mask, pooled))
        valid.append(batch["valid"])
        errors += batch["errors"]
    return EncodedVideos(VideoFeatures.cat(parts), torch.cat(valid).to(device), errors)


@torch.no_grad()
def encode_texts(
    model: VideoCLIP,
    texts: list[str],
    tokenizer: Callable[[list[str]], torch.Tensor],
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """Text features (N, D), float32 on ``device``, unnormalised (``similarity`` normalises)."""
    device = resolve_device(device)
    parts = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start : start + batch_size]).to(device)
        with autocast(device, precision):
            parts.append(model.encode_text(tokens).float())
    return torch.cat(parts)


def caption_tokenizer(model: VideoCLIP, max_words: int | None = None) -> Callable[[list[str]], torch.Tensor]:
    """The model's tokenizer, captions cut at ``max_words`` tokens (start and end included; CLIP4Clip: 32)."""
    clip = model.clip
    context = getattr(clip, "context_length", None) or clip.positional_embedding.shape[0]
    return create_caption_tokenizer(model.spec.model_name, int(context), max_words)


def _one_thread(worker_id: int) -> None:
    """DataLoader workers decode and transform one video at a time: more threads each only oversubscribe."""
    torch.set_num_threads(1)


def _progress(batches: Iterable, enabled: bool, unit: str, batch_size: int, total: int) -> Iterable:
    if not enabled:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, unit=f" {unit}", unit_scale=batch_size, total=total, file=sys.stderr)


# -- command-line helpers -------------------------------------------------------------------------------------
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint RUN`` or ``--model/--pretrained/--head/--num-frames``, and where and how to run."""
    group = parser.add_argument_group("model (default: the config's model section)")
    group.add_argument("--checkpoint", help="a vidclip run directory or .safetensors checkpoint")
    group.add_argument("--model", help="open_clip model name, e.g. ViT-B-32 (instead of --checkpoint)")
    group.add_argument("--pretrained", help="open_clip pretrained tag or local weights file, e.g. openai")
    group.add_argument("--head", help="temporal head (vidclip.list_heads()); default mean")
    group.add_argument("--num-frames", type=int, help="frames sampled per video (default: the model's)")
    run = parser.add_argument_group("running")
    run.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    run.add_argument("--batch-size", type=int, default=32, help="videos per forward pass (default 32)")
    run.add_argument("--num-workers", type=int, help="decoding worker processes (default: config or 4)")


def load_model(args: argparse.Namespace, defaults: Any | None, device: torch.device) -> VideoCLIP:
    """The model the command line names: ``--checkpoint``, else ``--model ...``, else ``defaults`` (a config's
    ``model`` section), in eval mode on ``device``. Raises ValueError when none names one."""
    from vidclip.checkpoint import load_checkpoint
    from vidclip.model import create_model

    if args.checkpoint:
        given = [f"--{flag}" for flag in ("model", "pretrained", "head") if getattr(args, flag)]
        if given:
            raise ValueError(f"--checkpoint rebuilds the model it saved: drop {', '.join(given)}")
        return load_checkpoint(args.checkpoint, device=device).eval()
    if args.model is None and defaults is None:
        raise ValueError("name a model: --checkpoint RUN, or --model NAME [--pretrained TAG]")
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


def setup_logging() -> None:
    """Warnings from libraries, and vidclip's own info lines (what was read, what was dropped), on stderr."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        logging.getLogger("vidclip").setLevel(logging.INFO)
