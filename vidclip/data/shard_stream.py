"""Streaming a shard set through DataLoader workers: the samples decoded from the bytes in the tar, as the
same items :class:`vidclip.data.VideoDataset` makes (``index``, ``video``, ``mask``, ``valid``, ``error``...).

Evaluation (:class:`ShardPlan` with ``train=False``): process ``rank`` of ``world`` reads shards
``rank::world``, its worker ``w`` of ``W`` those ``w::W``; every wanted sample comes out once, as a decoded item
or as a failed one with its reason (a sample whose shard ended early is named: "lost: ..."), each carrying its
position in the input list as ``index``. Items of several workers interleave: consumers place them by index.
Over all processes every sample is seen exactly once, whatever the number of processes or workers.

Training (``train=True``): each epoch permutes the shards from (seed, epoch); process ``rank`` takes
``rank::world`` of them and its workers split those again. A worker streams its shards through a shuffle
buffer seeded from (seed, epoch, rank, worker role) and starts another pass (another permutation) when they
run out, so every process yields as many batches as the epoch has steps whatever the shard sizes; the workers
stream on into the next epoch (no restart per epoch), each batch the same as a fresh start would make. What holds:
the same (seed, epoch, processes, workers) give the same batches; a resume mid-epoch skips the batches
already trained without decoding them and continues exactly (the same processes and workers); with shards of
equal size and a shard count that the processes x workers divide, an epoch sees every sample once. Which
samples share a batch depends on the number of processes and workers (unlike file datasets, whose global
batches do not): each process reads only its own shards.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vidclip.data.dataset import Tokenizer, VideoDataset, collate, init_worker, seeded_generator
from vidclip.data.shards import group_refs, iter_wanted, split_ref


@dataclass(frozen=True)
class ShardPlan:
    """Which samples to stream: ``shards`` in order, each (url, [(position, key), ...]) of the wanted ones."""

    shards: list[tuple[str, list[tuple[int, str]]]]
    train: bool = False
    seed: int = 0
    rank: int = 0
    world: int = 1
    shuffle_buffer: int = 100

    @classmethod
    def of_refs(cls, refs: list[str], **options: Any) -> ShardPlan:
        """The plan that streams ``refs`` (``url#key`` sample references), position = place in the list."""
        return cls(group_refs(refs), **options)

    def num_samples(self) -> int:
        return sum(len(samples) for _, samples in self.shards)


def all_refs(paths: list[str]) -> bool:
    """Whether every path is a shard sample reference (the inputs then stream from their shards)."""
    return bool(paths) and all(split_ref(path) is not None for path in paths)


class ShardStream(IterableDataset):
    """Items of the plan's samples, decoded by ``videos`` (a VideoDataset over the same references, which holds
    the decoding settings, labels and seeds) from the shard's bytes. ``captions`` (training retrieval): each
    position's captions, one drawn per (seed, epoch, position)."""

    def __init__(
        self,
        videos: VideoDataset,
        plan: ShardPlan,
        *,
        captions: list[list[str]] | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.videos, self.plan, self.captions, self.tokenizer = videos, plan, captions, tokenizer
        self.epoch, self.skip_batches, self.batch_size = 0, 0, 1
        self.batches_per_epoch: int | None = (
            None  # training: set by ShardTrainLoader; None: one endless epoch
        )

    # -- which shards this worker reads ------------------------------------------------------------------------
    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def _eval_shards(self) -> list[tuple[str, list[tuple[int, str]]]]:
        worker, workers = self._worker()
        mine = self.plan.shards[self.plan.rank :: self.plan.world]
        return mine[worker::workers]

    def _train_shards(
        self, epoch: int, role: int, workers: int, rounds: int
    ) -> list[tuple[str, list[tuple[int, str]]]]:
        order = torch.randperm(
            len(self.plan.shards), generator=seeded_generator(self.plan.seed, epoch, rounds)
        )
        mine = [self.plan.shards[i] for i in order.tolist()][self.plan.rank :: self.plan.world]
        return mine[role::workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._train() if self.plan.train else self._eval()

    # -- evaluation: each wanted sample once --------------------------------------------------------------------
    def _eval(self) -> Iterator[dict[str, Any]]:
        for position, raw, reason in iter_wanted(self._eval_shards()):
            if raw is None:
                yield self.videos.failed_item(position, reason)
            else:
                yield self._item(raw, position, self.epoch)

    def _item(self, raw, position: int, epoch: int) -> dict[str, Any]:
        video = raw.video()
        if video is None:
            return self._targets(self.videos.failed_item(position, "the sample has no video member"), epoch)
        return self._targets(self.videos.decode_item(epoch, position, data=video[1]), epoch)

    def _targets(self, item: dict[str, Any], epoch: int) -> dict[str, Any]:
        if self.captions is not None:
            options = self.captions[item["index"]]
            generator = seeded_generator(self.plan.seed, epoch, item["index"], 1)
            pick = int(torch.randint(len(options), (1,), generator=generator))
            item["tokens"] = self.tokenizer([options[pick]])[0]
        return item

    # -- training: endless passes, a shuffle buffer, skipping what a resumed run already trained on --------------
    def _train(self) -> Iterator[dict[str, Any]]:
        """This worker's items, epoch after epoch: the DataLoader takes its n-th batch from worker n mod W, so
        in an epoch that starts at within-epoch batch ``start`` after ``fetched`` batches of this iterator,
        worker w makes the batches j = start, ... with j = w - fetched + start (mod W): the batches of role
        ``j mod W``, whose stream is a function of (seed, epoch, rank, role) only."""
        worker, workers = self._worker()
        epoch, start, fetched = self.epoch, self.skip_batches, 0
        while True:
            role = (worker - fetched + start) % workers
            if self.batches_per_epoch is None:  # one endless epoch
                yield from self._role_items(epoch, role, workers, self._skipped_items(role, workers, start))
                return
            skipped = len(range(role, start, workers))
            count = (len(range(role, self.batches_per_epoch, workers)) - skipped) * self.batch_size
            stream = self._role_items(epoch, role, workers, skipped * self.batch_size)
            yield from itertools.islice(stream, count)
            stream.close()
            fetched += self.batches_per_epoch - start
            epoch, start = epoch + 1, 0

    def _role_items(self, epoch: int, role: int, workers: int, skip: int) -> Iterator[dict[str, Any]]:
        """The endless items of worker role ``role`` in ``epoch``, the first ``skip`` passed over undecoded."""
        rng = random.Random(int(seeded_generator(self.plan.seed, epoch, self.plan.rank, role).initial_seed()))
        rounds = 0
        while True:
            shards = self._train_shards(epoch, role, workers, rounds)
            if not shards:
                raise RuntimeError(
                    f"{len(self.plan.shards)} shards cannot feed {self.plan.world} processes x {workers} workers"
                )
            for position, raw, reason in _shuffled(iter_wanted(shards), self.plan.shuffle_buffer, rng):
                if skip:
                    skip -= 1
                    continue
                if raw is None:
                    yield self._targets(self.videos.failed_item(position, reason), epoch)
                else:
                    yield self._item(raw, position, epoch)
            rounds += 1

    def _skipped_items(self, role: int, workers: int, start: int) -> int:
        """Items role ``role`` made in the batches below ``start`` (batches role, role + W, ...)."""
        return len(range(role, start, workers)) * self.batch_size


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Items through a shuffle buffer of ``size`` (0 or 1: in order), the draws from ``rng``."""
    if size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardTrainLoader:
    """The training loader over shards: exactly ``batches`` local micro-batches per epoch on every process,
    moved to ``device``; ``set_epoch`` and ``skip`` (a resume) take effect at the next iteration. Its workers
    live from one epoch to the next (they stream the next epoch on, as persistent workers would), and start
    again only after a resume, a jump in epochs, or an epoch left unfinished."""

    def __init__(self, stream: ShardStream, batch_size: int, num_workers: int, batches: int) -> None:
        self.stream, self.batch_size, self.num_workers, self.batches = (
            stream,
            batch_size,
            num_workers,
            batches,
        )
        stream.batch_size, stream.batches_per_epoch = batch_size, batches
        self.device: torch.device | None = None
        self._skip = 0
        self._batches: Iterator | None = None  # the running DataLoader iterator, at the start of _next_epoch
        self._next_epoch: int | None = None

    def __len__(self) -> int:
        return self.batches

    def set_epoch(self, epoch: int) -> None:
        self.stream.epoch = epoch

    def skip(self, batches: int) -> ShardTrainLoader:
        self._skip = batches
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skip, self._skip = self._skip, 0
        epoch = self.stream.epoch
        if self._batches is None or skip or epoch != self._next_epoch:
            self.close()
            self.stream.skip_batches = skip
            loader = DataLoader(
                self.stream,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                collate_fn=collate,
                worker_init_fn=init_worker,
            )
            self._batches = iter(loader)
        self._next_epoch = None
        finished = False
        try:
            for _ in range(self.batches - skip):
                yield _to(next(self._batches), self.device)
            finished = True
        finally:
            if finished:
                self._next_epoch = epoch + 1
            else:  # left mid-epoch (a stop, max_steps): the workers are ahead of anything a next call wants
                self.close()

    def close(self) -> None:
        """End the workers (they stream forever)."""
        self._batches, self._next_epoch = None, None


def _to(batch: dict[str, Any], device: torch.device | None) -> dict[str, Any]:
    if device is None:
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


class ShardEpochs:
    """What the trainer asks of a sampler: the samples one epoch trains on (``len``), and ``set_epoch``."""

    def __init__(self, loader: ShardTrainLoader, samples_per_epoch: int) -> None:
        self.loader, self.samples = loader, samples_per_epoch

    def __len__(self) -> int:
        return self.samples

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


def create_stream_loader(
    stream: ShardStream, batch_size: int, num_workers: int
) -> Callable[[], Iterator[dict[str, Any]]] | DataLoader:
    """An evaluation DataLoader over ``stream`` (items interleave across workers; each carries its index)."""
    return DataLoader(
        stream, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, worker_init_fn=init_worker
    )


def streams_by_itself(loader) -> bool:
    """Whether a loader streams shards split over the processes by itself (not for Accelerate to prepare)."""
    return isinstance(loader, ShardTrainLoader) or isinstance(getattr(loader, "dataset", None), ShardStream)
