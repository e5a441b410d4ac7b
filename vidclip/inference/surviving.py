"""Batches that survive a DataLoader worker's death: the video that killed its worker (the kernel's OOM
killer, a decoder crash) gets a failed slot saying so, and the run goes on with the others."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from vidclip.data.dataset import VideoDataset, collate, init_worker, worker_death_reason

logger = logging.getLogger("vidclip.inference")

PREFETCH = (
    2  # batches each worker decodes ahead (DataLoader's default): a dead worker's batches are among them
)


class SurvivingBatches:
    """Collated batches of ``dataset`` in order, decoded by ``workers`` DataLoader worker processes, that
    survive a worker's death: the video that killed it gets a failed slot naming why, the others their results.

    A DataLoader whose worker dies (the kernel's OOM killer, a decoder crash) stops with "DataLoader worker
    exited unexpectedly", and the batches in flight are lost. Here the videos that can have been in flight
    (the next ``workers x PREFETCH`` batches not yet yielded) are decoded again, one at a time, by a single
    fresh worker: the one that kills it again is the video it was decoding, and gets
    :func:`worker_death_reason` as its error; then a fresh loader goes on with the rest. The batches are those
    of an undisturbed run. A worker that died for another reason (the OOM killer chose it for someone else's
    memory) costs no video: all of them decode the second time.
    """

    def __init__(self, dataset: VideoDataset, batch_size: int, workers: int, pin_memory: bool = False):
        self.dataset, self.batch_size, self.workers, self.pin_memory = (
            dataset,
            batch_size,
            workers,
            pin_memory,
        )

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start, total = 0, len(self.dataset)
        while start < total:
            death = _Death()
            for batch in self._run(range(start, total), death):
                start += len(batch["index"])
                yield batch
            if death.exitcode is _ALIVE:
                return
            window = range(start, min(total, start + self.workers * PREFETCH * self.batch_size))
            logger.warning(
                f"{worker_death_reason(death.exitcode)}: decoding the {len(window)} videos it may have held "
                "again, one at a time, to find the one that killed it"
            )
            yield from self._isolate(window)
            start = window.stop

    def _isolate(self, window: range) -> Iterator[dict[str, Any]]:
        """The items of ``window`` decoded one at a time by one worker (restarted after each death), in batches."""
        items: list[dict[str, Any]] = []
        position = window.start
        while position < window.stop:
            death = _Death()
            for item in self._run(range(position, window.stop), death, single=True):
                items.append(item)
                position += 1
                if len(items) == self.batch_size:
                    yield collate(items)
                    items = []
            if death.exitcode is not _ALIVE:  # one worker, one item at a time: it died on this one
                reason = worker_death_reason(death.exitcode)
                logger.warning(f"{self.dataset.paths[position]}: {reason}")
                items.append(self.dataset.failed_item(position, reason))
                position += 1
                if len(items) == self.batch_size:
                    yield collate(items)
                    items = []
        if items:
            yield collate(items)

    def _run(self, indices: range, death: _Death, single: bool = False) -> Iterator[dict[str, Any]]:
        """Batches (``single``: items, from one worker holding one at a time) of ``indices``; if a worker
        dies, sets ``death.exitcode`` and stops after the last batch received."""
        loader = DataLoader(
            self.dataset,
            batch_size=None if single else self.batch_size,
            sampler=indices,
            num_workers=1 if single else self.workers,
            prefetch_factor=1 if single else PREFETCH,
            collate_fn=_item if single else collate,
            pin_memory=self.pin_memory and not single,
            worker_init_fn=init_worker,
        )
        iterator = iter(loader)
        _raise_deaths_in_next(iterator)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as err:
                if _is_worker_death(err):
                    death.exitcode = _dead_worker_exitcode(iterator)
                else:  # e.g. "received 0 items of ancdata": a batch in transit from a worker that died
                    exitcode = _wait_for_dead_worker(iterator)
                    if exitcode is _ALIVE:
                        raise
                    death.exitcode = exitcode
            except (OSError, EOFError):
                # A batch the worker queued before it died, whose tensors travel by file descriptor: the dead
                # worker can no longer hand them over (ConnectionResetError and the like). The batch is not
                # yielded, so its videos are in the window decoded again.
                exitcode = _wait_for_dead_worker(iterator)
                if exitcode is _ALIVE:
                    raise
                death.exitcode = exitcode
            if death.exitcode is not _ALIVE:
                _shutdown(iterator)  # outside the except block: the error's traceback holds the iterator
                return
            yield batch


_ALIVE = object()


class _Death:
    """Set by :meth:`SurvivingBatches._run` when a worker died: its exit code (None where unknown)."""

    exitcode: Any = _ALIVE


def _item(item: dict[str, Any]) -> dict[str, Any]:
    return item


def _is_worker_death(err: RuntimeError) -> bool:
    text = str(err)
    return "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text)


def _raise_deaths_in_next(iterator: Any) -> None:
    """torch's SIGCHLD handler raises a worker's death in the main thread at whatever line runs then (the
    model's forward, a part being written); without this iterator's workers in its table, the death is raised
    by ``next()`` instead, which checks the workers every 5 s while it waits (torch's MP_STATUS_CHECK_INTERVAL).
    """
    if getattr(iterator, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False


def _dead_worker_exitcode(iterator: Any) -> int | None:
    """The exit code of a worker of ``iterator`` that is no longer alive (negative: the signal), or None."""
    for worker in getattr(iterator, "_workers", []):
        if not worker.is_alive():
            return worker.exitcode
    return None


def _wait_for_dead_worker(iterator: Any, seconds: float = 2.0) -> Any:
    """The exit code of a worker of ``iterator`` that died, waiting up to ``seconds`` for the kernel to report
    it (the error that made us look can arrive first); ``_ALIVE`` when every worker still runs."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        workers = getattr(iterator, "_workers", [])
        if any(not worker.is_alive() for worker in workers):
            return _dead_worker_exitcode(iterator)
        if time.monotonic() > deadline:
            return _ALIVE
        time.sleep(0.05)


def _shutdown(iterator: Any) -> None:
    """Stop the surviving workers now, rather than when the iterator is collected."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
