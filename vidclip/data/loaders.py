"""DataLoaders for training and evaluation, built from the ``data`` config section and the model.

Batches are GLOBAL: a loader yields the batch of all processes, and Accelerate (``split_batches=True``)
hands process r the r-th contiguous slice. One process with batch B and N processes with B/N each therefore
see the same samples in the same global order, which the all-gather of the loss concatenates back in rank
order. Every loader owns a seeded ``torch.Generator``, so creating an iterator never draws from the global
RNG (that would shift dropout and any other global randomness between an interrupted and a resumed run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from vidclip.config import Config, ConfigError
from vidclip.data.base import ClassificationAnnotations, RetrievalAnnotations, Split, read_annotations
from vidclip.data.dataset import (
    EpochSampler,
    TextDataset,
    Tokenizer,
    VideoDataset,
    collate,
    create_caption_tokenizer,
    init_worker,
)
from vidclip.data.lookup import ensure_checked
from vidclip.data.shard_stream import (
    ShardEpochs,
    ShardPlan,
    ShardStream,
    ShardTrainLoader,
    create_stream_loader,
)
from vidclip.data.webdataset import ShardAnnotations, ShardRetrievalAnnotations, is_sharded
from vidclip.model import VideoCLIP
from vidclip.video import get_video_transform, loader_workers


@dataclass
class TrainData:
    """The training loader (yields global micro-batches) and the sampler that orders each epoch."""

    loader: DataLoader
    sampler: EpochSampler | ShardEpochs
    class_names: list[str] | None  # classification only
    num_items: int


@dataclass
class EvalData:
    """One split for evaluation: a loader of videos and, for retrieval, a loader of captions."""

    videos: DataLoader
    texts: DataLoader | None
    text_to_video: torch.Tensor | None  # retrieval: each caption's video index (N_text,)
    class_names: list[str] | None  # classification


def get_caption_tokenizer(config: Config, model: VideoCLIP) -> Tokenizer:
    """Tokenizer for ``model``'s text tower, captions cut at ``data.max_words`` tokens."""
    context = getattr(model.clip, "context_length", None) or model.clip.positional_embedding.shape[0]
    return create_caption_tokenizer(config.model.name, int(context), config.data.max_words)


def _loader(dataset, batch_size: int, num_workers: int, seed: int, sampler=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=sampler is not None,  # training: full global batches only (the sampler already cuts)
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=init_worker,
        persistent_workers=num_workers
        > 0,  # safe: items depend on (seed, epoch, index) only, no worker state
        generator=torch.Generator().manual_seed(seed),
    )


def create_train_data(config: Config, model: VideoCLIP, tokenizer: Tokenizer, micro_batch: int) -> TrainData:
    """Random frame sampling and training augmentation; epochs cut to whole optimizer steps."""
    annotations = ensure_checked(read_annotations(config.data, config.task, "train"), "training data")
    data, seed = config.data, config.train.seed
    if is_sharded(annotations):
        return _shard_train_data(config, model, tokenizer, micro_batch, annotations)
    common = dict(
        num_frames=config.model.num_frames,
        sampling=data.sampling,
        transform=get_video_transform(model, train=data.augment),
        image_size=model.image_size,
        seed=seed,
        fps=data.fps,
        decoder=data.decoder,
        timeout=data.timeout,
        max_pixels=data.max_pixels,
    )
    if isinstance(annotations, RetrievalAnnotations):  # one item per caption, with its video
        paths = annotations.video_paths()
        dataset = VideoDataset(
            [paths[v] for v in annotations.caption_video],
            texts=annotations.captions,
            tokenizer=tokenizer,
            **common,
        )
        class_names = None
    else:
        assert isinstance(annotations, ClassificationAnnotations)
        dataset = VideoDataset(annotations.video_paths(), labels=annotations.labels, **common)
        class_names = annotations.class_names
    sampler = EpochSampler(len(dataset), seed=seed, multiple=config.train.batch_size)
    loader = _loader(dataset, micro_batch, loader_workers(data.decoder, data.num_workers), seed, sampler)
    return TrainData(loader, sampler, class_names, len(dataset))


def create_eval_data(
    config: Config, model: VideoCLIP, tokenizer: Tokenizer, split: Split, batch_size: int
) -> EvalData:
    """Uniform frame sampling, no augmentation; every video once (and every caption once for retrieval)."""
    annotations = ensure_checked(read_annotations(config.data, config.task, split), f"{split} data")
    if is_sharded(annotations):
        return _shard_eval_data(config, model, tokenizer, batch_size, annotations)
    dataset = VideoDataset(
        annotations.video_paths(),
        num_frames=config.model.num_frames,
        sampling=config.data.eval_sampling,
        transform=get_video_transform(model, train=False),
        image_size=model.image_size,
        fps=config.data.fps,
        decoder=config.data.decoder,
        timeout=config.data.timeout,
        max_pixels=config.data.max_pixels,
        labels=annotations.labels if isinstance(annotations, ClassificationAnnotations) else None,
    )
    workers, seed = loader_workers(config.data.decoder, config.data.num_workers), config.train.seed
    videos = _loader(dataset, batch_size, workers, seed)
    if isinstance(annotations, ClassificationAnnotations):
        return EvalData(videos, None, None, annotations.class_names)
    texts = _loader(TextDataset(annotations.captions, tokenizer), batch_size, 0, seed)
    return EvalData(videos, texts, torch.tensor(annotations.caption_video), None)


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process under a launcher (torchrun, accelerate launch); (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _shard_videos(
    config: Config, model: VideoCLIP, annotations: ShardAnnotations, train: bool
) -> VideoDataset:
    data = config.data
    labels = None if isinstance(annotations, ShardRetrievalAnnotations) else annotations.labels
    return VideoDataset(
        annotations.video_paths(),
        num_frames=config.model.num_frames,
        sampling=data.sampling if train else data.eval_sampling,
        transform=get_video_transform(model, train=train and data.augment),
        image_size=model.image_size,
        seed=config.train.seed,
        fps=data.fps,
        decoder=data.decoder,
        timeout=data.timeout,
        max_pixels=data.max_pixels,
        labels=labels,
    )


def _shard_train_data(
    config: Config, model: VideoCLIP, tokenizer: Tokenizer, micro_batch: int, annotations: ShardAnnotations
) -> TrainData:
    """Training from shards: each process streams its shards (see :mod:`vidclip.data.shard_stream`), in local
    micro-batches of ``micro_batch / processes``; an epoch is the whole global batches the samples fill."""
    from vidclip.data.base import get_reader

    rank, world = process_rank()
    workers = loader_workers(config.data.decoder, config.data.num_workers)
    shards = len(annotations.shard_set.urls)
    if shards < world * max(workers, 1):
        raise ConfigError(
            f"data.train: {_count(shards, 'shard')} cannot feed {_count(world, 'process', 'processes')} x "
            f"{_count(max(workers, 1), 'loader worker')} "
            f"(each reads whole shards): write more, smaller shards (vidclip prepare --shard-size) or lower "
            f"data.num_workers"
        )
    batch = config.train.batch_size
    samples = len(annotations.videos) // batch * batch
    if samples == 0:
        raise ConfigError(f"data.train: {len(annotations.videos)} samples do not fill one batch of {batch}")
    plan = ShardPlan.of_refs(
        annotations.video_paths(),
        train=True,
        seed=config.train.seed,
        rank=rank,
        world=world,
        shuffle_buffer=get_reader(config.data).options.shuffle_buffer,
    )
    captions = annotations.video_captions if isinstance(annotations, ShardRetrievalAnnotations) else None
    stream = ShardStream(
        _shard_videos(config, model, annotations, True), plan, captions=captions, tokenizer=tokenizer
    )
    loader = ShardTrainLoader(stream, micro_batch // world, workers, samples // micro_batch)
    class_names = None if captions is not None else annotations.class_names
    return TrainData(loader, ShardEpochs(loader, samples), class_names, len(annotations.videos))  # type: ignore[arg-type]


def _count(number: int, word: str, plural: str | None = None) -> str:
    return f"{number} {word if number == 1 else plural or word + 's'}"


def _shard_eval_data(
    config: Config, model: VideoCLIP, tokenizer: Tokenizer, batch_size: int, annotations: ShardAnnotations
) -> EvalData:
    """Evaluation from shards: each process streams shards ``rank::world``, every sample once over all of
    them; batches carry each video's index, by which validation puts them back in order."""
    rank, world = process_rank()
    plan = ShardPlan.of_refs(annotations.video_paths(), rank=rank, world=world)
    stream = ShardStream(_shard_videos(config, model, annotations, False), plan)
    workers = loader_workers(config.data.decoder, config.data.num_workers)
    videos = create_stream_loader(stream, max(batch_size // world, 1), workers)
    if not isinstance(annotations, ShardRetrievalAnnotations):
        return EvalData(videos, None, None, annotations.class_names)
    texts = _loader(TextDataset(annotations.captions, tokenizer), batch_size, 0, config.train.seed)
    return EvalData(videos, texts, torch.tensor(annotations.caption_video), None)
