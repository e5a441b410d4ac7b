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

import codecs
import logging
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

logger = logging.getLogger(__name__)
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


# UTF-32 before UTF-16: the UTF-32-LE mark begins with the UTF-16-LE one.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def bom_encoding(head: bytes) -> str | None:
    """The codec a byte-order mark at the start of ``head`` names (it strips the mark), or None."""
    return next((codec for bom, codec in BOMS if head.startswith(bom)), None)


def text_encoding(path: str | os.PathLike) -> str:
    """The codec vidclip reads the text file ``path`` with: the one its byte-order mark names (UTF-8, UTF-16,
    UTF-32; the mark is never part of the text), else UTF-8; a file that is not UTF-8 is read as Windows-1252
    (what spreadsheets and editors on Windows write), with a warning naming the file and the first byte that
    is not UTF-8. A file that is neither is refused (AnnotationError) with its line and byte."""
    with open(path, "rb") as f:
        codec = bom_encoding(f.read(4))
    if codec is not None:
        return codec
    not_utf8 = first_undecodable(path, "utf-8")
    if not_utf8 is None:
        return "utf-8"
    not_cp1252 = first_undecodable(path, "cp1252")
    if not_cp1252 is not None:
        raise AnnotationError(
            f"{path}: line {_where(not_cp1252)} is neither UTF-8 nor Windows-1252 text; save it as UTF-8"
        )
    logger.warning(f"{path}: not UTF-8 (line {_where(not_utf8)}); read as Windows-1252 (cp1252)")
    return "cp1252"


def first_undecodable(path: str | os.PathLike, codec: str) -> tuple[int, int, int] | None:
    """(line, byte offset in the file, byte value) of the first byte of ``path`` that ``codec`` cannot decode,
    or None; reads 1 MiB at a time, so a large annotation file costs no memory."""
    decoder = codecs.getincrementaldecoder(codec)()
    offset = lines = 0  # bytes and newlines before ``data``
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            data = decoder.getstate()[0] + chunk  # the bytes an error position counts from
            offset -= len(data) - len(chunk)
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                return lines + data.count(b"\n", 0, err.start) + 1, offset + err.start, data[err.start]
            offset, lines = offset + len(data), lines + data.count(b"\n")
        data = decoder.getstate()[0]
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:  # the file ends inside a multi-byte character
            return lines + 1, offset - len(data) + err.start, data[err.start]
    return None


def _where(position: tuple[int, int, int]) -> str:
    line, offset, value = position
    return f"{line}, byte {offset} of the file: 0x{value:02x}"


def open_text(path: str | os.PathLike):
    """``path`` opened for reading as text in its :func:`text_encoding`, any line ending read as ``\\n``."""
    return open(path, encoding=text_encoding(path))


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty stripped lines of a text file (class-name lists, split lists): decoded as
    :func:`text_encoding` says, so a byte-order mark, CRLF line ends and trailing spaces are never part of a
    line."""
    try:
        with open_text(path) as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not {err.encoding} text ({err.reason} at byte {err.start})") from None


def read_csv_file(path: str | os.PathLike, **options: Any) -> pd.DataFrame:
    """``pandas.read_csv`` in the file's :func:`text_encoding` (a byte-order mark never joins the first column's
    name; column names are stripped) whose failures (empty file, broken quoting, ragged rows, bad bytes) name
    the file."""
    import pandas as pd

    options.setdefault("encoding", text_encoding(path))
    try:
        with warnings.catch_warnings():  # a row longer than the header would silently shift into an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, index_col=False, **options)
    except pd.errors.ParserWarning:
        raise AnnotationError(f"{path}: a row has more fields than the header (unquoted commas?)") from None
    except pd.errors.EmptyDataError:
        raise AnnotationError(f"{path}: empty file, expected a CSV with a header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise AnnotationError(f"{path}: not a readable CSV ({reason})") from None
    table.columns = [str(column).strip() for column in table.columns]
    return table
