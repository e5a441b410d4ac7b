"""The ``msrvtt`` format: MSR-VTT's own files, as CLIP4Clip's ``msrvtt_data.zip`` ships them.

``data.annotations``: ``MSRVTT_data.json``, ``{"videos": [{"video_id": "video0", ...}, ...], "sentences":
[{"sen_id": 0, "video_id": "video0", "caption": "..."}, ...]}`` with 20 captions per video.

A split file (``data.train`` / ``data.val`` / ``data.test``) is one of

- a CSV with ``video_id`` and ``sentence`` columns: one query per row, exactly as listed. This is the 1k-A
  test set, ``MSRVTT_JSFUSION_test.csv`` (columns key, vid_key, video_id, sentence; 1000 videos, one caption
  each); the json is not needed;
- a CSV with a ``video_id`` column only, such as ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv``: every
  caption of those videos, from the json, in the json's order (CLIP4Clip's ``--expand_msrvtt_sentences``:
  about 180k pairs for 9k). A list of the 2990 test videos gives the "full" test protocol the same way (all
  20 captions of every test video, several per video in the metrics);
- a ``.txt`` file with one video id per line, read like the previous.

Videos are ``data.video_root/{video_id}.mp4`` (``data.options.extension`` changes the suffix); a video in
another container (``.webm``, ``.avi``) is found by its stem. Missing videos are dropped with a warning.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vidclip.data.base import (
    AnnotationError,
    AnnotationReader,
    RetrievalAnnotations,
    Split,
    VideoRecord,
    open_text,
    read_csv_file,
    read_lines,
    register_format,
)
from vidclip.data.lookup import FileLookup, drop_missing, logger


@register_format("msrvtt")
class MsrvttReader(AnnotationReader):
    """MSR-VTT's ``MSRVTT_data.json`` plus a split CSV (9k / 7k train, 1k-A test) or a list of video ids."""

    @dataclass(frozen=True)
    class Options:
        extension: str = ".mp4"  # the suffix of the video files, {video_id}{extension}

    def read_retrieval(self, split: Split) -> RetrievalAnnotations:
        path = self.split_file(split)
        table = read_split_table(path)
        if "sentence" in table.columns:
            pairs = list(zip(table["video_id"], table["sentence"], strict=True))
        else:
            pairs = self._expand(list(table["video_id"]), path)
        videos, captions, caption_video = _group_by_video(pairs)
        root = self.video_root(split)
        records = self._locate(videos, root)
        annotations = RetrievalAnnotations(records, captions, caption_video, root)
        return drop_missing(annotations, f"msrvtt {split} ({path.name})")

    def _expand(self, video_ids: list[str], split_path: Path) -> list[tuple[str, str]]:
        """(video id, caption) for every caption of every listed video, from ``data.annotations``."""
        if self.config.annotations is None:
            raise AnnotationError(
                f"data.annotations is not set: {split_path.name} lists video ids only, and their captions "
                "come from MSR-VTT's MSRVTT_data.json"
            )
        sentences = load_sentences(Path(self.config.annotations))
        without = [video for video in video_ids if video not in sentences]
        if without:
            logger.warning(
                f"msrvtt: {len(without)} video ids of {split_path.name} have no sentence in "
                f"{self.config.annotations}; skipped: {', '.join(without[:5])}"
            )
        return [(video, caption) for video in video_ids for caption in sentences.get(video, [])]

    def _locate(self, video_ids: list[str], root: Path) -> list[VideoRecord]:
        """``{id}{extension}`` under the root, else a file with that stem, else the default (then missing)."""
        extension = self.options.extension
        index: FileLookup | None = None
        records = []
        for video in video_ids:
            name = f"{video}{extension}"
            if not (root / name).is_file():
                index = index or FileLookup(root)
                name = index.find(video) or name
            records.append(VideoRecord(name, video))
        return records


def read_split_table(path: Path) -> pd.DataFrame:
    """A split CSV (needs a ``video_id`` column) or a ``.txt`` with one video id per line, as a table."""
    if path.suffix.lower() == ".txt":
        table = pd.DataFrame({"video_id": read_lines(path)})
    else:
        table = read_csv_file(path, dtype=str, keep_default_na=False)
        table.columns = [str(column).strip() for column in table.columns]
        if "video_id" not in table.columns:
            raise AnnotationError(f"{path}: no 'video_id' column; found {list(table.columns)}")
    if table.empty:
        raise AnnotationError(f"{path}: no rows")
    return table


def load_sentences(path: Path) -> dict[str, list[str]]:
    """MSRVTT_data.json -> {video_id: [captions in file order]}; errors name the file and the entry."""
    if not path.is_file():
        raise AnnotationError(f"data.annotations: no such file: {path}")
    with open_text(path) as f:
        try:
            data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:  # Unicode: bad bytes after a BOM
            raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise AnnotationError(f"{path}: expected an object with a 'sentences' list (MSRVTT_data.json)")
    sentences: dict[str, list[str]] = defaultdict(list)
    for i, item in enumerate(data["sentences"]):
        if not isinstance(item, dict) or "video_id" not in item or "caption" not in item:
            raise AnnotationError(f"{path}: sentences[{i}] needs 'video_id' and 'caption', got {item!r:.100}")
        sentences[str(item["video_id"])].append(str(item["caption"]))
    return dict(sentences)


def _group_by_video(pairs: list[tuple[str, str]]) -> tuple[list[str], list[str], list[int]]:
    """(video id, caption) pairs -> (video ids in first-appearance order, captions, caption -> video index)."""
    index: dict[str, int] = {}
    captions, caption_video = [], []
    for video, caption in pairs:
        caption_video.append(index.setdefault(str(video), len(index)))
        captions.append(str(caption))
    return list(index), captions, caption_video
