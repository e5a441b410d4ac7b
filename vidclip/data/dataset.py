"""Torch datasets that decode videos inside DataLoader workers, and the samplers and collate they need.

Reproducibility: a training sample is a pure function of (seed, epoch, index). :class:`EpochSampler` draws
the epoch's permutation from (seed, epoch) and yields ``(epoch, index)`` pairs, and :class:`VideoDataset`
seeds the frame sampling and the augmentation of each item from that triple. The result does not depend on
the number of workers or processes, nor on which worker decodes what, and needs no state shared with the
workers.

Broken videos: an item whose video cannot be decoded keeps its slot in the batch, with zero frames, an
all-False frame mask, ``valid=False`` and the reason in ``errors``. The losses and metrics ignore invalid
slots. Keeping the slot (rather than dropping the item in the collate) keeps every process's batch the same
size, which the cross-process gather of the contrastive loss needs, and makes N processes compute exactly
what one process computes over the same surviving samples.

A video that kills the worker decoding it (the kernel's OOM killer, a decoder crash) cannot report itself:
workers offer themselves to the OOM killer first (:func:`init_worker`), and the inference pipeline finds the
video and gives it its row with :func:`worker_death_reason` (``vidclip.inference.pipeline``). The pixel
budget (``max_pixels``) keeps a video that claims a huge frame from being decoded at all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vidclip.config import ConfigError
from vidclip.video import check_decoder, frames_device, load_frames
from vidclip.video.decoders import DEFAULT_MAX_PIXELS

Tokenizer = Callable[[list[str]], torch.Tensor]


def seeded_generator(*keys: int) -> torch.Generator:
    """A torch.Generator seeded from non-negative integer keys, e.g. (seed, epoch, index), through NumPy's
    SeedSequence: neighbouring keys give unrelated streams, unlike ``seed + epoch + index``."""
    state = np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: a permutation drawn from (seed, epoch) (or the identity without shuffle),
    cut to a multiple of ``multiple`` items so every optimizer step gets a full global batch."""

    def __init__(self, num_items: int, *, seed: int, shuffle: bool = True, multiple: int = 1) -> None:
        if num_items < multiple:
            raise ConfigError(
                f"the training split has {num_items} items, fewer than one optimizer step's batch "
                f"(train.batch_size = {multiple})"
            )
        self.num_items, self.seed, self.shuffle, self.multiple = num_items, seed, shuffle, multiple
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items - self.num_items % self.multiple

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.num_items, generator=seeded_generator(self.seed, self.epoch))
        else:
            order = torch.arange(self.num_items)
        for index in order[: len(self)].tolist():
            yield self.epoch, index


class VideoDataset(Dataset):
    """Item ``i`` (or ``(epoch, i)``): video ``paths[i]`` decoded, sampled and transformed, plus its caption
    tokens (``texts``) or integer label (``labels``) when given.

    An item is a dict: ``video`` float (T, 3, S, S), ``mask`` bool (T,) True = a real frame, ``valid`` bool,
    ``error`` None or (path, reason), ``index`` int, ``duration`` float seconds (0 when unknown), and ``tokens`` int (L,) / ``label`` int. ``max_pixels``
    is the pixel budget of a frame (None or 0: none), see :func:`vidclip.video.load_frames`.
    """

    def __init__(
        self,
        paths: list[str],
        *,
        num_frames: int,
        sampling: str,
        transform: Callable[..., torch.Tensor],
        image_size: int,
        seed: int = 0,
        fps: float | None = None,
        decoder: str = "auto",
        timeout: float = 0.0,
        texts: list[str] | None = None,
        tokenizer: Tokenizer | None = None,
        labels: list[int] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if texts is not None and (tokenizer is None or len(texts) != len(paths)):
            raise ValueError("texts need a tokenizer and one text per video path")
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(labels)} labels for {len(paths)} videos")
        check_decoder(decoder)  # a decoder this machine cannot run fails here, not once per video
        self.paths, self.texts, self.labels, self.tokenizer = paths, texts, labels, tokenizer
        self.num_frames, self.sampling, self.fps, self.decoder = num_frames, sampling, fps, decoder
        self.transform, self.image_size, self.seed, self.timeout = transform, image_size, seed, timeout
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self._with_targets({"index": index, **self._decode(epoch, index)})

    def decode_item(self, epoch: int, index: int, data: bytes | None = None) -> dict[str, Any]:
        """Item ``index`` at ``epoch``, decoded from ``data`` (the video's bytes, e.g. a shard's sample) when
        given, else from its file."""
        return self._with_targets({"index": index, **self._decode(epoch, index, data)})

    def failed_item(self, index: int, reason: str) -> dict[str, Any]:
        """Item ``index`` as a failure with ``reason``, made without decoding (for a video whose decoding
        killed its worker process)."""
        return self._with_targets({"index": index, **self._failure(self.paths[index], reason)})

    def _with_targets(self, item: dict[str, Any]) -> dict[str, Any]:
        index = item["index"]
        if self.texts is not None:
            item["tokens"] = self.tokenizer([self.texts[index]])[0]
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item

    def _decode(self, epoch: int, index: int, data: bytes | None = None) -> dict[str, Any]:
        path = self.paths[index]
        generator = seeded_generator(self.seed, epoch, index)
        try:
            with time_limit(self.timeout):
                clip = load_frames(
                    path,
                    self.num_frames,
                    self.sampling,
                    fps=self.fps,
                    generator=generator,
                    decoder=self.decoder,
                    max_pixels=self.max_pixels,
                    data=data,
                )
            video = self.transform(clip.frames, generator=generator)  # (T, 3, S, S)
        except Exception as err:  # any failure costs this sample only, and travels as its reason
            return self._failure(path, failure_reason(err, self.timeout))
        duration = clip.num_total_frames / clip.fps if clip.fps > 0 else 0.0  # seconds (vidclip index's end)
        return {"video": video, "mask": clip.mask, "valid": True, "error": None, "duration": duration}

    def _failure(self, path: str, reason: str) -> dict[str, Any]:
        size = self.image_size
        return {
            "video": torch.zeros(self.num_frames, 3, size, size, device=frames_device(self.decoder)),
            "mask": torch.zeros(self.num_frames, dtype=torch.bool),
            "valid": False,
            "error": (path, reason),
            "duration": 0.0,
        }


def failure_reason(err: BaseException, timeout: float = 0.0) -> str:
    """Why a video could not be used, in one line, the same words in every command."""
    if isinstance(err, DecodeTimeout):
        return f"timed out: decoding took longer than {timeout:g} s (--timeout)"
    if isinstance(err, FileNotFoundError):  # listed but absent: the row already names the path
        return "no such file"
    reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
    return " ".join(str(reason).split())


_DEATH_HINTS = {
    signal.SIGKILL: "out of memory?",  # what the kernel's OOM killer sends
    signal.SIGSEGV: "the decoder crashed",
    signal.SIGBUS: "the decoder crashed",
    signal.SIGABRT: "the decoder aborted",
}


def worker_death_reason(exitcode: int | None) -> str:
    """Why a video has no result when the worker process decoding it died: its signal or exit status, as
    ``multiprocessing`` reports it (negative: killed by that signal)."""
    if exitcode is None:
        return "the decoding process died"
    if exitcode < 0:
        number = -exitcode
        try:
            hint = _DEATH_HINTS.get(signal.Signals(number)) or signal.Signals(number).name
        except ValueError:
            hint = "unknown signal"
        return f"the decoding process died (killed by signal {number}: {hint})"
    return f"the decoding process died (it exited with status {exitcode})"


class DecodeTimeout(Exception):
    """Raised inside a decode that ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise DecodeTimeout in the block after ``seconds`` (0: no limit), by SIGALRM: DataLoader workers (and the
    main process with 0 workers) decode in their main thread. The signal is handled between Python steps, e.g.
    between the frames PyAV decodes; a single blocking C call is interrupted only when it returns. Elsewhere (a
    GPU decoder's read-ahead thread) no limit applies."""
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


class TextDataset(Dataset):
    """Item ``i``: ``{"index": i, "tokens": int (L,)}`` for retrieval evaluation's captions."""

    def __init__(self, texts: list[str], tokenizer: Tokenizer) -> None:
        self.texts, self.tokenizer = texts, tokenizer

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "tokens": self.tokenizer([self.texts[index]])[0]}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items into a batch: tensors (B, ...) per key, ``errors`` the (path, reason) failures."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "error":
            batch["errors"] = [value for value in values if value is not None]
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.tensor(values)
    return batch


def create_caption_tokenizer(model_name: str, context_length: int, max_words: int | None) -> Tokenizer:
    """open_clip's tokenizer cut at ``max_words`` tokens (start and end tokens included, as CLIP4Clip counts)
    and zero-padded to the model's ``context_length``. Under CLIP's causal text mask the padding does not
    change the features, so this equals encoding a ``max_words``-long sequence."""
    from vidclip.model import get_tokenizer

    words = context_length if max_words is None else max_words
    if words > context_length:
        raise ConfigError(
            f"data.max_words ({words}) exceeds the model's text context length ({context_length})"
        )
    return CaptionTokenizer(get_tokenizer(model_name), words, context_length)


class CaptionTokenizer:
    """Picklable callable: list of captions -> int tokens (N, context_length), cut at ``max_words``."""

    def __init__(self, tokenizer: Callable[..., torch.Tensor], max_words: int, context_length: int) -> None:
        self.tokenizer, self.max_words, self.context_length = tokenizer, max_words, context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, context_length=self.max_words)  # (N, max_words)
        return torch.nn.functional.pad(tokens, (0, self.context_length - tokens.shape[1]))


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` of every loader: Ctrl-C reaches the whole process group, and only the main
    process handles it (the trainer stops at a step boundary and saves, extract writes what it has), so workers
    must not die from it; a worker decodes one video at a time with one thread (the workers already run in
    parallel: more threads each only compete for the cores); and when memory runs out, the kernel's OOM
    killer takes a worker (one video, which the pipeline names) before the main process (the run)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    prefer_for_oom_killer()


def prefer_for_oom_killer() -> None:
    """Make this process the OOM killer's first choice (Linux; raising one's own score needs no privilege)."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{os.getpid()}/oom_score_adj", "w") as f:
            f.write("1000")
