"""Annotation readers: one per dataset format, registered by name, all returning the same plain lists.

A reader turns a dataset's own annotation files into

- :class:`RetrievalAnnotations`: the videos (path relative to the video root, id) and the captions, each
  with the index of its video (several captions may share a video: MSR-VTT has 20, DiDeMo joins a video's
  sentences into one paragraph);
- :class:`ClassificationAnnotations`: the videos, one integer label each, and the class names the labels
  index (the class names become text prompts).

A new format (MSR-VTT, DiDeMo, Kinetics, UCF101 split files, class-per-folder...) is one file with a
``@register_format("name")`` subclass of :class:`AnnotationReader` that implements the task(s) it supports;
``data.format: name`` then selects it. Readers only read annotation files: decoding happens in
:mod:`vidclip.data.dataset`, in DataLoader workers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_type_hints

from vidclip.config import DataConfig
from vidclip.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

Split = Literal["train", "val", "test"]


class AnnotationError(ValueError):
    """Annotation files or ``data`` settings that cannot be read as the format expects; names the file/key."""


@dataclass(frozen=True)
class VideoRecord:
    """One video: ``path`` relative to the video root, ``id`` as the dataset names it."""

    path: str
    id: str


@dataclass
class RetrievalAnnotations:
    """Videos and captions; ``caption_video[i]`` is the index in ``videos`` of caption ``i``'s video."""

    videos: list[VideoRecord]
    captions: list[str]
    caption_video: list[int]
    root: Path  # the folder the video paths are relative to

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_video):
            raise AnnotationError(
                f"{len(self.captions)} captions but {len(self.caption_video)} caption->video indices"
            )
        if self.caption_video and not 0 <= min(self.caption_video) <= max(self.caption_video) < len(
            self.videos
        ):
            raise AnnotationError(f"caption->video indices must lie in [0, {len(self.videos)})")

    def video_paths(self) -> list[str]:
        return [str(self.root / video.path) for video in self.videos]


@dataclass
class ClassificationAnnotations:
    """Videos with one integer label each, indexing ``class_names``."""

    videos: list[VideoRecord]
    labels: list[int]
    class_names: list[str]
    root: Path

    def __post_init__(self) -> None:
        if len(self.videos) != len(self.labels):
            raise AnnotationError(f"{len(self.videos)} videos but {len(self.labels)} labels")
        if self.labels and not 0 <= min(self.labels) <= max(self.labels) < len(self.class_names):
            raise AnnotationError(
                f"labels must lie in [0, {len(self.class_names)}) (the number of class names)"
            )

    def video_paths(self) -> list[str]:
        return [str(self.root / video.path) for video in self.videos]


Annotations = RetrievalAnnotations | ClassificationAnnotations


class AnnotationReader:
    """Reads one format's files for a split. Subclasses implement the task(s) the format has labels for.

    ``self.config`` is the whole ``data`` section: the split files (``train``/``val``/``test``), a shared
    ``annotations`` file, ``class_names`` and format-specific ``options``.
    """

    name: str = ""
    Options: ClassVar[type] = None  # type: ignore[assignment]  # set below: NoOptions

    def __init__(self, config: DataConfig) -> None:
        self.config = config
        self.options = parse_options(self.Options, config.options, self.name)

    def read_retrieval(self, split: Split) -> RetrievalAnnotations:
        raise AnnotationError(
            f"data.format {self.name!r} has no captions: it cannot be used for task=retrieval"
        )

    def read_classification(self, split: Split) -> ClassificationAnnotations:
        raise AnnotationError(
            f"data.format {self.name!r} has no labels: it cannot be used for task=classification"
        )

    # -- helpers for subclasses ------------------------------------------------------------------------------
    def split_file(self, split: Split) -> Path:
        """The file ``data.<split>`` names; it must be set and exist."""
        value = getattr(self.config, split)
        if value is None:
            raise AnnotationError(f"data.{split} is not set: the {split} split needs an annotation file")
        path = Path(value)
        if not path.is_file():
            raise AnnotationError(f"data.{split}: no such file: {path}")
        return path

    def video_root(self, split: Split) -> Path:
        """``data.video_root``, or the split file's folder when it is not set."""
        if self.config.video_root is not None:
            return Path(self.config.video_root)
        return self.split_file(split).parent


@dataclass(frozen=True)
class NoOptions:
    """The format takes no ``data.options``."""


AnnotationReader.Options = NoOptions


def parse_options(schema: type, given: dict[str, Any], format_name: str) -> Any:
    """``data.options`` as the format's own typed options dataclass: an unknown key or a value of the wrong
    type is refused naming the key, the format and the options it does take."""
    known = {option.name: option for option in fields(schema)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        takes = ", ".join(f"{name} (default {option.default!r})" for name, option in known.items()) or "none"
        raise AnnotationError(
            f"data.options.{unknown[0]}: format {format_name!r} has no such option; its options: {takes}"
        )
    hints = get_type_hints(schema)
    for key, value in given.items():
        expected = hints[key]
        wrong_bool = expected in (int, float) and isinstance(value, bool)
        if expected in (int, float, str, bool) and (wrong_bool or not isinstance(value, expected)):
            raise AnnotationError(
                f"data.options.{key} must be {expected.__name__} for format {format_name!r}, got {value!r}"
            )
    return schema(**given)


FORMATS: Registry[type[AnnotationReader]] = Registry("format")


def register_format(name: str) -> Callable[[type[AnnotationReader]], type[AnnotationReader]]:
    """Class decorator: make an :class:`AnnotationReader` available as ``data.format: name``."""
    return FORMATS.register(name, attribute="name")


def list_formats() -> list[str]:
    """Names of the registered annotation formats."""
    return FORMATS.names()


def get_reader(config: DataConfig) -> AnnotationReader:
    """The reader ``data.format`` names; unknown formats fail with the closest name and the registered ones."""
    if config.format not in FORMATS:
        raise AnnotationError(f"data.format: {FORMATS.unknown(config.format)}")
    return FORMATS[config.format](config)


def read_annotations(config: DataConfig, task: str, split: Split) -> Annotations:
    """Read ``split`` of the dataset ``config`` describes, for ``task`` (retrieval or classification)."""
    reader = get_reader(config)
    if task == "retrieval":
        return reader.read_retrieval(split)
    if task == "classification":
        return reader.read_classification(split)
    raise AnnotationError(f"task must be 'retrieval' or 'classification', got {task!r}")


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty stripped lines of a text file (class-name lists, split lists)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None


def read_csv_file(path: str | os.PathLike, **options: Any) -> pd.DataFrame:
    """``pandas.read_csv`` whose failures (empty file, broken quoting, ragged rows, bad bytes) name the file."""
    import pandas as pd

    try:
        with warnings.catch_warnings():  # a row longer than the header would silently shift into an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, index_col=False, **options)
    except pd.errors.ParserWarning:
        raise AnnotationError(f"{path}: a row has more fields than the header (unquoted commas?)") from None
    except pd.errors.EmptyDataError:
        raise AnnotationError(f"{path}: empty file, expected a CSV with a header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise AnnotationError(f"{path}: not a readable CSV ({reason})") from None
