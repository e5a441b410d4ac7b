"""Find the videos a command is pointed at: video files, folders (searched recursively) and list files.

A source on the command line is one of:

- a folder: every file under it whose extension is in :data:`VIDEO_EXTENSIONS`, in sorted order; hidden
  files and folders (names starting with ``.``, such as macOS ``._clip.mp4`` forks) are skipped;
- a list file (extension in :data:`LIST_EXTENSIONS`): one video path per line, blank lines and lines
  starting with ``#`` ignored; relative paths are relative to the list file's folder;
- any other file: a video (its decoder decides whether it is one).

Paths keep the form they were given in (``videos/a.mp4`` stays relative), so a table keyed by them joins
back to the user's own metadata. Videos named twice are kept once, at their first position.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from vidclip.fileio import walk_files

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv".split()
)
LIST_EXTENSIONS = frozenset({".txt", ".list", ".lst"})


def find_videos(sources: list[str]) -> list[str]:
    """The video paths that ``sources`` (files, folders, list files) name, in order, each once.

    Raises FileNotFoundError for a source that does not exist; a missing path inside a list file is kept, so
    the command reports it as that video's failure.
    """
    found: dict[str, None] = {}  # an ordered set
    for source in sources:
        found.update(dict.fromkeys(_expand(source)))
    return list(found)


def _expand(source: str) -> Iterator[str]:
    if os.path.isdir(source):
        yield from walk_files(source, VIDEO_EXTENSIONS)
    elif not os.path.isfile(source):
        raise FileNotFoundError(f"no such file or folder: {source}")
    elif _extension(source) in LIST_EXTENSIONS:
        yield from read_video_list(source)
    else:
        yield source


def read_video_list(path: str) -> list[str]:
    """Video paths listed in a text file, one per line; blank lines and ``#`` comment lines are ignored.

    Only whole-line comments: ``#`` is a legal character in file names.
    """
    folder = os.path.dirname(path)
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [os.path.join(folder, line) for line in lines if line and not line.startswith("#")]


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()
