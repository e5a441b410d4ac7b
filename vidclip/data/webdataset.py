"""``data.format: webdataset``: a split is a set of WebDataset shards (``data.train: shards/train-{000000..000099}.tar``,
a ``pipe:`` command, fsspec URLs, ``::``-joined lists, or the ``{split}-samples.parquet`` index itself).

Retrieval takes each sample's captions (JSON ``captions``/``caption`` or a ``.txt`` member: all of them for
evaluation, one drawn per epoch for training); classification its ``label`` (JSON or ``.cls``), the class
names from the index (``vidclip prepare --shards``) or ``data.class_names``. A sample without a caption (or a
label) costs itself, named in a warning. Videos are named ``{shard URL}#{key}`` and decoded from the shard's
bytes as they stream (:mod:`vidclip.data.shard_stream`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vidclip.data.base import (
    AnnotationError,
    AnnotationReader,
    Split,
    VideoRecord,
    read_lines,
    register_format,
)
from vidclip.data.lookup import CheckedClassificationAnnotations, CheckedRetrievalAnnotations
from vidclip.data.shards import ShardError, ShardSet, captions_of, read_shard_set

logger = logging.getLogger("vidclip.data")


@dataclass
class ShardRetrievalAnnotations(CheckedRetrievalAnnotations):
    """Retrieval annotations whose videos are shard samples: ``video_paths()`` are their ``url#key`` names;
    ``video_captions``: each video's captions (training draws one per epoch)."""

    shard_set: ShardSet | None = None
    video_captions: list[list[str]] = field(default_factory=list)

    def video_paths(self) -> list[str]:
        return [video.path for video in self.videos]


@dataclass
class ShardClassificationAnnotations(CheckedClassificationAnnotations):
    """Classification annotations whose videos are shard samples (``url#key``)."""

    shard_set: ShardSet | None = None

    def video_paths(self) -> list[str]:
        return [video.path for video in self.videos]


ShardAnnotations = ShardRetrievalAnnotations | ShardClassificationAnnotations


@dataclass(frozen=True)
class WebDatasetOptions:
    """``data.options`` of the webdataset format."""

    shuffle_buffer: int = 100  # training: samples (undecoded bytes) each worker shuffles among


@register_format("webdataset")
class WebDatasetReader(AnnotationReader):
    Options = WebDatasetOptions

    def _shards(self, split: Split) -> ShardSet:
        spec = getattr(self.config, split)
        if spec is None:
            raise AnnotationError(f"data.{split} is not set: name the {split} split's shards")
        try:
            return read_shard_set(spec, where=f"data.{split}")
        except ShardError as err:
            raise AnnotationError(str(err)) from None

    def read_retrieval(self, split: Split) -> ShardRetrievalAnnotations:
        shards = self._shards(split)
        videos, captions, caption_video, per_video, missing = [], [], [], [], []
        for sample in shards.samples:
            texts = captions_of(sample.meta)
            if not texts:
                missing.append(sample.ref)
                continue
            for text in texts:
                captions.append(text)
                caption_video.append(len(videos))
            per_video.append(texts)
            videos.append(VideoRecord(sample.ref, str(sample.meta.get("id") or sample.key)))
        _left_out(f"data.{split}", missing, "no caption")
        if not videos:
            raise AnnotationError(
                f"data.{split}: none of the shards' {len(shards.samples)} samples has a caption"
            )
        return ShardRetrievalAnnotations(
            videos,
            captions,
            caption_video,
            root=None,
            shard_set=shards,
            video_captions=per_video,  # type: ignore[arg-type]
        )

    def read_classification(self, split: Split) -> ShardClassificationAnnotations:
        shards = self._shards(split)
        names = shards.metadata.get("class_names")
        if self.config.class_names is not None:
            names = read_lines(self.config.class_names)
        if not names:
            raise AnnotationError(
                f"data.{split}: the shards carry no class names (no vidclip index beside them): set data.class_names"
            )
        videos, labels, missing = [], [], []
        for sample in shards.samples:
            label = sample.meta.get("label")
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(names):
                missing.append(sample.ref)
                continue
            videos.append(VideoRecord(sample.ref, str(sample.meta.get("id") or sample.key)))
            labels.append(label)
        _left_out(f"data.{split}", missing, f"no label in [0, {len(names)})")
        if not videos:
            raise AnnotationError(
                f"data.{split}: none of the shards' {len(shards.samples)} samples has a label"
            )
        return ShardClassificationAnnotations(videos, labels, list(names), root=None, shard_set=shards)  # type: ignore[arg-type]


def _left_out(where: str, refs: list[str], reason: str) -> None:
    if refs:
        shown = ", ".join(refs[:5]) + (f" and {len(refs) - 5} more" if len(refs) > 5 else "")
        logger.warning(f"{where}: {len(refs)} samples left out ({reason}): {shown}")


def is_sharded(annotations) -> bool:
    """Whether annotations come from shards (their videos stream from tar files, not from paths)."""
    return isinstance(annotations, (ShardRetrievalAnnotations, ShardClassificationAnnotations))
