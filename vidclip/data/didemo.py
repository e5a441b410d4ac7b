"""The ``didemo`` format: DiDeMo's own ``{train,val,test}_data.json`` (LisaAnne/LocalizingMoments), as CLIP4Clip
uses them for video-paragraph retrieval.

A split file (``data.train`` / ``data.val`` / ``data.test``) is a json list of moments ``{"annotation_id",
"description", "video", "times", ...}``. The descriptions of a video are joined in file order into one
paragraph, and the query is the whole video (CLIP4Clip reads the first 31 s; annotators saw at most 30 s).

CLIP4Clip keeps only the videos named in ``{split}_list.txt`` (collaborative-experts' 8392 / 1065 / 1004
videos). When a file named like the json with ``_data.json`` replaced by ``_list.txt`` sits beside it, it is
used the same way; ``data.options.split_lists: {test: path}`` names the list explicitly, ``false`` turns
lists off.

Video files: the ``video`` field carries the original Flickr extension (``x.mov``, ``x.avi``, ``x.m4v``...)
while downloads differ (AWS mirror: ``x.mov.mp4``; re-encoded sets: ``x.mp4``), so each video is found under
``data.video_root`` (recursively) by exact name, else by stem. Missing videos are dropped with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidclip.data.base import (
    AnnotationError,
    AnnotationReader,
    RetrievalAnnotations,
    Split,
    VideoRecord,
    open_text,
    read_lines,
    register_format,
)
from vidclip.data.lookup import FileLookup, drop_missing


@register_format("didemo")
class DidemoReader(AnnotationReader):
    """DiDeMo moments joined into one paragraph per video; videos found by name or stem."""

    @dataclass(frozen=True)
    class Options:
        # true: the *_list.txt beside each *_data.json, if there; false: no list; {split: path}: these lists
        split_lists: Any = True

    def read_retrieval(self, split: Split) -> RetrievalAnnotations:
        path = self.split_file(split)
        paragraphs = load_paragraphs(path)
        allowed = self._split_list(split, path)
        if allowed is not None:
            paragraphs = {video: text for video, text in paragraphs.items() if video in allowed}
            if not paragraphs:
                raise AnnotationError(f"{path}: no video of it is in the split list ({len(allowed)} names)")
        root = self.video_root(split)
        index = FileLookup(root)
        records = [VideoRecord(index.find(video) or video, video) for video in paragraphs]
        annotations = RetrievalAnnotations(
            records, list(paragraphs.values()), list(range(len(records))), root
        )
        return drop_missing(annotations, f"didemo {split} ({path.name})")

    def _split_list(self, split: Split, path: Path) -> set[str] | None:
        """Names from the split list (explicit option, else ``*_list.txt`` beside the json), or None."""
        option = self.options.split_lists
        if option is False:
            return None
        if isinstance(option, dict) and option.get(split):
            list_path = Path(option[split])
            if not list_path.is_file():
                raise AnnotationError(f"data.options.split_lists.{split}: no such file: {list_path}")
        else:
            list_path = path.with_name(path.name.replace("_data.json", "_list.txt"))
            if list_path == path or not list_path.is_file():
                return None
        return set(read_lines(list_path))


def load_paragraphs(path: Path) -> dict[str, str]:
    """{video: its descriptions joined in file order} from a DiDeMo json; errors name the file and entry."""
    with open_text(path) as f:
        try:
            moments = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:  # Unicode: bad bytes after a BOM
            raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(moments, list):
        raise AnnotationError(f"{path}: expected a list of moments (DiDeMo's {{split}}_data.json)")
    texts: dict[str, list[str]] = {}
    for i, moment in enumerate(moments):
        if not isinstance(moment, dict) or "video" not in moment or "description" not in moment:
            raise AnnotationError(f"{path}: entry {i} needs 'video' and 'description', got {moment!r:.100}")
        texts.setdefault(str(moment["video"]), []).append(str(moment["description"]).strip())
    if not texts:
        raise AnnotationError(f"{path}: no moments")
    return {video: " ".join(parts) for video, parts in texts.items()}
