"""The ``csv`` format: one row per (video, caption) or (video, label), video paths relative to the root.

Retrieval: columns ``video``, ``caption``. Rows sharing a video path give one video with several captions,
in first-appearance order.

Classification: columns ``video``, ``label``. String labels become indices into the sorted label names of
the training split (so every split shares one index), or into ``data.class_names`` (one name per line) when
it is set. Integer labels index ``data.class_names``, which they then require.

Extra columns are ignored; an optional ``id`` column names the videos (default: the path).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vidclip.data.base import (
    AnnotationError,
    AnnotationReader,
    ClassificationAnnotations,
    RetrievalAnnotations,
    Split,
    VideoRecord,
    read_csv_file,
    read_lines,
    register_format,
)


@register_format("csv")
class CsvReader(AnnotationReader):
    """``video,caption`` or ``video,label`` CSV files, one per split."""

    def _table(self, path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
        table = read_csv_file(path, dtype={"video": str, "id": str}, keep_default_na=False)
        for column in ("video", "label"):  # spaces a spreadsheet left around a cell are no part of a name
            if column in table.columns and pd.api.types.is_string_dtype(table[column]):
                table[column] = table[column].str.strip()
        missing = [column for column in columns if column not in table.columns]
        if missing:
            raise AnnotationError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
        if table.empty:
            raise AnnotationError(f"{path}: no rows")
        return table

    def read_retrieval(self, split: Split) -> RetrievalAnnotations:
        path = self.split_file(split)
        table = self._table(path, ("video", "caption"))
        ids = table["id"] if "id" in table.columns else table["video"]
        index: dict[str, int] = {}
        videos: list[VideoRecord] = []
        caption_video: list[int] = []
        for video, video_id in zip(table["video"], ids, strict=True):
            if video not in index:
                index[video] = len(videos)
                videos.append(VideoRecord(video, str(video_id)))
            caption_video.append(index[video])
        captions = [str(caption) for caption in table["caption"]]
        return RetrievalAnnotations(videos, captions, caption_video, self.video_root(split))

    def read_classification(self, split: Split) -> ClassificationAnnotations:
        path = self.split_file(split)
        table = self._table(path, ("video", "label"))
        ids = table["id"] if "id" in table.columns else table["video"]
        videos = [
            VideoRecord(video, str(video_id)) for video, video_id in zip(table["video"], ids, strict=True)
        ]
        class_names = self._class_names(table)
        labels = self._label_indices(table["label"], class_names, path)
        return ClassificationAnnotations(videos, labels, class_names, self.video_root(split))

    def _class_names(self, table: pd.DataFrame) -> list[str]:
        if self.config.class_names is not None:
            return read_lines(self.config.class_names)
        if pd.api.types.is_integer_dtype(table["label"]):
            raise AnnotationError(
                "integer labels need data.class_names (a file with one class name per line)"
            )
        train = self._table(self.split_file("train"), ("video", "label"))
        return sorted({str(label) for label in train["label"]})

    @staticmethod
    def _label_indices(labels: pd.Series, class_names: list[str], path: Path) -> list[int]:
        if pd.api.types.is_integer_dtype(labels):
            values = [int(label) for label in labels]
            bad = [value for value in values if not 0 <= value < len(class_names)]
            if bad:
                raise AnnotationError(
                    f"{path}: labels {sorted(set(bad))[:5]} are outside the {len(class_names)} class names"
                )
            return values
        position = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({str(label) for label in labels} - position.keys())
        if unknown:
            raise AnnotationError(
                f"{path}: labels {unknown[:5]} are not among the class names (from the train split "
                "or data.class_names)"
            )
        return [position[str(label)] for label in labels]
