"""Action-recognition layouts as users have them on disk: Kinetics CSVs, UCF101 and HMDB51 split files, and
one folder per class. All are ``task: classification`` formats; class names come out as words for prompts
(UCF101's ``ApplyEyeMakeup`` -> ``apply eye makeup``, HMDB51's ``brush_hair`` -> ``brush hair``).

``kinetics``
    ``data.<split>``: the dataset's CSV (columns ``label, youtube_id, time_start, time_end[, split]``). A clip
    is ``{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>`` anywhere under ``data.video_root`` (flat, or in
    ``<label>/`` folders; found by stem). Classes: ``data.class_names`` if set, else the sorted labels of the
    train CSV (or of this split's when no train CSV is set).
``ucf101``
    ``data.<split>``: a list file (``trainlist01.txt`` lines ``ApplyEyeMakeup/v_..._c01.avi 1``,
    ``testlist01.txt`` lines without the label), or the ``ucfTrainTestlist`` folder with
    ``data.options.split_id`` (1, 2 or 3; default 1): ``train`` reads ``trainlist0N.txt``, ``val``/``test``
    read ``testlist0N.txt``. Classes: ``classInd.txt`` (``1 ApplyEyeMakeup``) beside the lists, or
    ``data.class_names``. A video's class is its folder. Videos under ``data.video_root/<Class>/``.
``hmdb51``
    ``data.<split>``: the folder of the 153 split files ``<class>_test_split{1,2,3}.txt`` (lines
    ``video.avi 0|1|2``; 1 = train, 2 = test, 0 = unused) and ``data.options.split_id`` (default 1): ``train``
    takes the 1s, ``val``/``test`` the 2s. Classes: the 51 names, sorted. Videos under
    ``data.video_root/<class>/``.
``folders``
    ``data.<split>``: a folder with one sub-folder per class holding that class's videos (searched
    recursively). Classes: ``data.class_names`` (folder names, one per line) if set, else the sorted
    sub-folders of the train folder (or of this split's). Videos are relative to the split folder.

A video listed but not on disk under its expected name is looked up by stem (``.avi`` re-encoded to
``.mp4``), then dropped with a warning if still missing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vidclip.data.base import (
    AnnotationError,
    AnnotationReader,
    ClassificationAnnotations,
    Split,
    VideoRecord,
    open_text,
    read_csv_file,
    read_lines,
    register_format,
)
from vidclip.data.files import VIDEO_EXTENSIONS
from vidclip.data.lookup import FileLookup, drop_missing
from vidclip.fileio import walk_files


def split_location(reader: AnnotationReader, split: Split) -> Path:
    """The file or folder ``data.<split>`` names; it must be set and exist."""
    value = getattr(reader.config, split)
    if value is None:
        raise AnnotationError(f"data.{split} is not set: the {split} split needs a split file or folder")
    path = Path(value)
    if not path.exists():
        raise AnnotationError(f"data.{split}: no such file or folder: {path}")
    return path


@dataclass(frozen=True)
class SplitOptions:
    split_id: int = 1  # which of the dataset's three official splits


def split_id(reader: AnnotationReader) -> int:
    """``data.options.split_id``: which of a dataset's official splits (1, 2 or 3)."""
    value = reader.options.split_id
    if value not in (1, 2, 3):
        raise AnnotationError(f"data.options.split_id must be 1, 2 or 3, got {value!r}")
    return int(value)


class _Locator:
    """Relative paths under a root: as listed when the file exists, else found by stem (index built once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: FileLookup | None = None

    def __call__(self, relative: str) -> str:
        if (self.root / relative).is_file():
            return relative
        self._index = self._index or FileLookup(self.root)
        return self._index.find(os.path.basename(relative)) or relative


def default_root(reader: AnnotationReader, source: Path) -> Path:
    """``data.video_root``, or the folder of the split file when it is not set."""
    video_root = reader.config.video_root
    return Path(video_root) if video_root is not None else (source if source.is_dir() else source.parent)


def _finish(
    reader: AnnotationReader,
    split: Split,
    source: Path,
    root: Path,
    videos: list[tuple[str, str]],
    labels: list[int],
    folders: list[str],
) -> ClassificationAnnotations:
    """``videos``: (path relative to ``root``, id). Humanised class names, files located, missing dropped."""
    locate = _Locator(root)
    records = [VideoRecord(locate(path), video_id) for path, video_id in videos]
    names = [humanize_class_name(name) for name in folders]
    annotations = ClassificationAnnotations(records, labels, names, root)
    return drop_missing(annotations, f"{reader.name} {split} ({source.name})")


@register_format("kinetics")
class KineticsReader(AnnotationReader):
    """Kinetics-400/600/700 CSVs; clips flat or in label folders, any container."""

    columns = ("label", "youtube_id", "time_start", "time_end")

    def read_classification(self, split: Split) -> ClassificationAnnotations:
        path = self.split_file(split)
        table = self._table(path)
        classes = self._classes(table)
        position = {name: i for i, name in enumerate(classes)}
        unknown = sorted(set(table["label"]) - position.keys())
        if unknown:
            raise AnnotationError(
                f"{path}: labels {unknown[:5]} are not among the {len(classes)} class names"
            )
        stems = [clip_stem(path, row) for row in table.itertuples(index=False)]
        videos = [(f"{label}/{stem}.mp4", stem) for label, stem in zip(table["label"], stems, strict=True)]
        labels = [position[label] for label in table["label"]]
        return _finish(self, split, path, default_root(self, path), videos, labels, classes)

    def _table(self, path: Path) -> pd.DataFrame:
        table = read_csv_file(path, dtype=str, keep_default_na=False)
        missing = [column for column in self.columns if column not in table.columns]
        if missing:
            raise AnnotationError(
                f"{path}: missing column(s) {missing}; found {list(table.columns)} (a Kinetics CSV has "
                "label, youtube_id, time_start, time_end; test CSVs without labels cannot be scored)"
            )
        if table.empty:
            raise AnnotationError(f"{path}: no rows")
        return table

    def _classes(self, table: pd.DataFrame) -> list[str]:
        if self.config.class_names is not None:
            return read_lines(self.config.class_names)
        if self.config.train is not None and Path(self.config.train).is_file():
            table = self._table(Path(self.config.train))
        return sorted(set(table["label"]))


def clip_stem(path: Path, row) -> str:
    """A Kinetics row's file stem, ``{youtube_id}_{time_start:06d}_{time_end:06d}``."""
    try:
        return f"{row.youtube_id}_{int(float(row.time_start)):06d}_{int(float(row.time_end)):06d}"
    except ValueError:
        raise AnnotationError(
            f"{path}: clip {row.youtube_id!r} has non-numeric time_start/time_end "
            f"({row.time_start!r}, {row.time_end!r})"
        ) from None


def read_class_index(path: Path) -> list[str]:
    """Class folder names from ``classInd.txt`` (``1 ApplyEyeMakeup``) or a plain one-name-per-line file."""
    names = []
    for line in read_lines(path):
        parts = line.split(maxsplit=1)
        names.append(parts[1].strip() if len(parts) == 2 and parts[0].isdigit() else line)
    return names


@register_format("ucf101")
class Ucf101Reader(AnnotationReader):
    """UCF101's ``ucfTrainTestlist``: ``classInd.txt`` and ``{train,test}list0N.txt``."""

    Options = SplitOptions

    def read_classification(self, split: Split) -> ClassificationAnnotations:
        path = self._list_file(split)
        class_file = Path(self.config.class_names or path.parent / "classInd.txt")
        if not class_file.is_file():
            raise AnnotationError(
                f"no class index: {class_file} (set data.class_names to UCF101's classInd.txt)"
            )
        folders = read_class_index(class_file)
        position = {name: i for i, name in enumerate(folders)}
        videos, labels = [], []
        with open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                entry = line.split()[0]
                folder = entry.replace("\\", "/").split("/")[0]
                if folder not in position:
                    raise AnnotationError(f"{path}:{number}: class folder {folder!r} is not in {class_file}")
                videos.append((entry, Path(entry).stem))
                labels.append(position[folder])
        return _finish(self, split, path, default_root(self, path), videos, labels, folders)

    def _list_file(self, split: Split) -> Path:
        location = split_location(self, split)
        if location.is_file():
            if "split_id" in self.config.options:
                raise AnnotationError(
                    f"data.options.split_id needs data.{split} to be the ucfTrainTestlist folder, not the file "
                    f"{location.name}"
                )
            return location
        name = f"{'trainlist' if split == 'train' else 'testlist'}{split_id(self):02d}.txt"
        if not (location / name).is_file():
            raise AnnotationError(f"data.{split}: {location} holds no {name}")
        return location / name


@register_format("hmdb51")
class Hmdb51Reader(AnnotationReader):
    """HMDB51's ``testTrainMulti_7030_splits``: ``<class>_test_split{1,2,3}.txt`` with 1 = train, 2 = test."""

    Options = SplitOptions

    def read_classification(self, split: Split) -> ClassificationAnnotations:
        folder = split_location(self, split)
        number = split_id(self)
        suffix = f"_test_split{number}.txt"
        files = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
        if not files:
            raise AnnotationError(f"data.{split}: {folder} is not a folder of HMDB51 split files (*{suffix})")
        wanted = "1" if split == "train" else "2"
        by_class = sorted(
            (file.name[: -len(suffix)], file) for file in files
        )  # by name: sword < sword_exercise
        classes, files = [name for name, _ in by_class], [file for _, file in by_class]
        videos, labels = [], []
        for label, (name, file) in enumerate(zip(classes, files, strict=True)):
            for video in self._videos(file, wanted):
                videos.append((f"{name}/{video}", Path(video).stem))
                labels.append(label)
        return _finish(self, split, folder, default_root(self, folder), videos, labels, classes)

    @staticmethod
    def _videos(file: Path, wanted: str) -> list[str]:
        found = []
        with open_text(file) as f:
            for number, line in enumerate(f, start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise AnnotationError(
                        f"{file}:{number}: expected 'video.avi 0|1|2', got {line.strip()!r}"
                    )
                if parts[1] == wanted:
                    found.append(parts[0])
        return found


@register_format("folders")
class FolderReader(AnnotationReader):
    """``<split folder>/<class>/<video>``: the class of a video is the folder it sits in."""

    def read_classification(self, split: Split) -> ClassificationAnnotations:
        folder = split_location(self, split)
        if not folder.is_dir():
            raise AnnotationError(f"data.{split}: {folder} is not a folder of class folders")
        classes = self._classes(folder)
        position = {name: i for i, name in enumerate(classes)}
        videos, labels = [], []
        for name in _subfolders(folder):
            if name not in position:
                raise AnnotationError(
                    f"{folder / name}: class folder not among the {len(classes)} class names"
                )
            for path in _video_files(folder / name):
                relative = os.path.relpath(path, folder)
                videos.append((relative, relative))
                labels.append(position[name])
        if not videos:
            raise AnnotationError(f"data.{split}: no video files in the class folders of {folder}")
        return _finish(self, split, folder, folder, videos, labels, classes)

    def _classes(self, folder: Path) -> list[str]:
        if self.config.class_names is not None:
            return read_lines(self.config.class_names)
        train = self.config.train
        source = Path(train) if train is not None and Path(train).is_dir() else folder
        return _subfolders(source)


def _subfolders(folder: Path) -> list[str]:
    return sorted(
        entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )


def _video_files(folder: Path) -> list[str]:
    return list(walk_files(folder, VIDEO_EXTENSIONS))


def humanize_class_name(name: str) -> str:
    """A folder-style class name as words for a prompt: UCF101's ``ApplyEyeMakeup`` -> ``apply eye makeup``,
    HMDB51's ``brush_hair`` -> ``brush hair``. Names already in words are only lower-cased."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.replace("_", " "))
    return " ".join(words.split()).lower()
