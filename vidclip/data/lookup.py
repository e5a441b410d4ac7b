"""Finding a dataset's videos on disk, and dropping (with a warning) the ones that are not there.

Annotation files name videos by id; users keep the files in whatever layout and container their download
gave them: MSR-VTT's ``video7020.mp4`` (or ``.webm``), DiDeMo ids that carry the original Flickr extension
(``x.mov``) while the files were often re-encoded (``x.mp4``, or ``x.mov.mp4`` from the AWS mirror), Kinetics
clips flat or in one folder per label, UCF101's ``.avi`` re-encoded to ``.mp4``. :class:`FileLookup` finds a
file by name or by stem anywhere under a root.

Readers end with :func:`drop_missing`: videos whose file does not exist are dropped (with their captions),
named in one warning (the first few and the count), and kept in the result's ``missing`` list, so evaluation
can report how many were left out.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from vidclip.data.base import (
    AnnotationError,
    Annotations,
    ClassificationAnnotations,
    RetrievalAnnotations,
    VideoRecord,
)
from vidclip.data.files import VIDEO_EXTENSIONS
from vidclip.fileio import walk_files

logger = logging.getLogger("vidclip.data")
SHOWN = 5  # missing ids named in a warning


@dataclass
class CheckedRetrievalAnnotations(RetrievalAnnotations):
    """Retrieval annotations whose videos all exist; ``missing``: the listed videos that were not found."""

    missing: list[VideoRecord] = field(default_factory=list)


@dataclass
class CheckedClassificationAnnotations(ClassificationAnnotations):
    """Classification annotations whose videos all exist; ``missing``: the listed videos not found."""

    missing: list[VideoRecord] = field(default_factory=list)


CheckedAnnotations = CheckedRetrievalAnnotations | CheckedClassificationAnnotations


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]


class FileLookup:
    """Every file under ``root`` (hidden ones skipped), looked up by file name or, for video files, by stem."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._by_name: dict[str, str] = {}
        self._by_stem: dict[str, str] = {}
        for path in walk_files(self.root):
            relative, name = os.path.relpath(path, self.root), os.path.basename(path)
            self._by_name.setdefault(name, relative)
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                self._by_stem.setdefault(_stem(name), relative)

    def __len__(self) -> int:
        return len(self._by_name)

    def find(self, name: str) -> str | None:
        """The path (relative to the root) of the file ``name``; else of a video whose stem is ``name``
        (``x.mov.mp4`` or ``x.mp4`` for ``x``/``x.mov``); else whose stem is ``name``'s stem (``x.mp4`` for
        ``x.mov``). None when nothing matches."""
        return self._by_name.get(name) or self._by_stem.get(name) or self._by_stem.get(_stem(name))


def drop_missing(annotations: Annotations, source: str) -> CheckedAnnotations:
    """``annotations`` without the videos whose file does not exist (and without their captions).

    ``source`` names the dataset and split in the warning, e.g. ``"msrvtt test (MSRVTT_JSFUSION_test.csv)"``.
    Videos already recorded as missing by an earlier check stay recorded.
    """
    found = [
        os.path.lexists(path) for path in annotations.video_paths()
    ]  # a FIFO or a loop: decoding says why
    missing = list(annotations.missing) if _is_checked(annotations) else []
    missing += [video for video, ok in zip(annotations.videos, found, strict=True) if not ok]
    if isinstance(annotations, RetrievalAnnotations):
        checked = _keep_retrieval(annotations, found, missing)
        dropped_texts = len(annotations.captions) - len(checked.captions)
        what = f"{len(checked.videos)} videos and {len(checked.captions)} captions"
    else:
        checked = _keep_classification(annotations, found, missing)
        dropped_texts, what = 0, f"{len(checked.videos)} videos"
    newly = len(found) - sum(found)
    if newly:
        captions = f" with their {dropped_texts} captions" if dropped_texts else ""
        logger.warning(
            f"{source}: {newly} of {len(found)} videos not found under {annotations.root}, dropped{captions}: "
            f"{_first_ids(missing[-newly:])}"
        )
    if not checked.videos:
        raise AnnotationError(
            f"{source}: none of the {len(found)} videos exist under {annotations.root} (check data.video_root)"
        )
    logger.info(f"{source}: using {what}")
    return checked


def ensure_checked(annotations: Annotations, source: str) -> CheckedAnnotations:
    """``annotations`` as they are when a reader already checked them, else :func:`drop_missing`'s result."""
    return annotations if _is_checked(annotations) else drop_missing(annotations, source)


def _is_checked(annotations: Annotations) -> bool:
    return isinstance(annotations, (CheckedRetrievalAnnotations, CheckedClassificationAnnotations))


def _first_ids(videos: list[VideoRecord]) -> str:
    shown = ", ".join(video.id for video in videos[:SHOWN])
    return shown + (f" and {len(videos) - SHOWN} more" if len(videos) > SHOWN else "")


def _keep_retrieval(
    annotations: RetrievalAnnotations, keep: list[bool], missing: list[VideoRecord]
) -> CheckedRetrievalAnnotations:
    """Keep the videos flagged in ``keep`` and the captions of those videos, re-indexed."""
    new_index: dict[int, int] = {}
    for old, ok in enumerate(keep):
        if ok:
            new_index[old] = len(new_index)
    pairs = [
        (caption, new_index[video])
        for caption, video in zip(annotations.captions, annotations.caption_video, strict=True)
        if video in new_index
    ]
    return CheckedRetrievalAnnotations(
        videos=[video for video, ok in zip(annotations.videos, keep, strict=True) if ok],
        captions=[caption for caption, _ in pairs],
        caption_video=[video for _, video in pairs],
        root=annotations.root,
        missing=missing,
    )


def _keep_classification(
    annotations: ClassificationAnnotations, keep: list[bool], missing: list[VideoRecord]
) -> CheckedClassificationAnnotations:
    rows = [
        (video, label)
        for video, label, ok in zip(annotations.videos, annotations.labels, keep, strict=True)
        if ok
    ]
    return CheckedClassificationAnnotations(
        videos=[video for video, _ in rows],
        labels=[label for _, label in rows],
        class_names=annotations.class_names,
        root=annotations.root,
        missing=missing,
    )
