"""Decode ahead in a thread of the main process, for decoders that must stay there (``nvdec``).

DataLoader workers are forked processes, where CUDA cannot be used, so a GPU decoder decodes in the main
process. Iterated plainly, that loader would decode batch k+1 only after the model has finished batch k.
:class:`BackgroundBatches` iterates it in a daemon thread instead, a few batches ahead of the consumer, so
decoding overlaps the model. On a GPU the thread works on its own CUDA stream, and each batch is handed over
with an event the consumer's stream waits for, so the model never reads frames that are not written yet.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

_DONE = object()


class BackgroundBatches:
    """Iterate ``batches`` in a background thread, at most ``depth`` batches ahead; same items, same order.

    An exception raised while producing a batch is raised again in the consumer, at that batch. Closing (or
    leaving a ``with`` block, or dropping the iterator early) stops the thread after the batch it is on.
    """

    def __init__(self, batches: Iterable[Any], depth: int = 2, device: torch.device | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be 1 or more, got {depth}")
        self._batches = batches
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._cuda = device is not None and device.type == "cuda" and torch.cuda.is_available()
        self._stream = torch.cuda.Stream(_with_index(device)) if self._cuda else None
        self._thread = threading.Thread(target=self._produce, name="vidclip-decode-ahead", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            with self._on_device():
                for batch in self._batches:
                    ready = None
                    if self._cuda:
                        ready = torch.cuda.Event()
                        ready.record(self._stream)
                    if not self._put((batch, ready, None)):
                        return
        except BaseException as err:  # handed to the consumer, raised there
            self._put((None, None, err))
            return
        self._put((_DONE, None, None))

    def _on_device(self) -> contextlib.AbstractContextManager:
        """The consumer's GPU (a thread starts on GPU 0: the current device is per thread) and a side stream."""
        if not self._cuda:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(self._stream.device))
        stack.enter_context(torch.cuda.stream(self._stream))
        return stack

    def _put(self, item: tuple) -> bool:
        """Queue ``item``, waiting for room unless closed; False once closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                batch, ready, error = self._queue.get()
                if error is not None:
                    raise error
                if batch is _DONE:
                    return
                if ready is not None:
                    ready.wait()  # the consumer's stream waits for the decode to finish
                    _record_on_current_stream(batch)
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is producing) and drop what it queued."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_index(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:N`` for the current GPU N of the calling thread."""
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def decode_ahead(loader: Iterable[Any], decoder: str, device: torch.device | None) -> Iterable[Any]:
    """``loader`` itself, or, when ``decoder`` decodes in the main process (a GPU decoder), its batches
    produced in a background thread ahead of the consumer."""
    from vidclip.video import decodes_on_device

    return BackgroundBatches(loader, device=device) if decodes_on_device(decoder) else loader


def _record_on_current_stream(batch: Any) -> None:
    """Tell the caching allocator that the consumer's stream uses the batch's CUDA tensors (made on another)."""
    values = (
        batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    )
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_cuda:
            value.record_stream(torch.cuda.current_stream(value.device))
