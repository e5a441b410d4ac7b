"""Where each source's output goes: the source tree's relative paths mirrored under the output folder, with
the extension ``.mp4``, so annotation files that name videos by relative path (or by stem) keep working.

A folder's videos keep their path relative to that folder (``videos/sub/a.avi`` -> ``sub/a.mp4``); a video
file given by itself keeps its name; a list file's videos keep their path relative to the list's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from vidclip.data.files import LIST_EXTENSIONS, VIDEO_EXTENSIONS, display_path, find_videos

OUTPUT_EXTENSION = ".mp4"


class Job(NamedTuple):
    """One video to prepare: its path as found, and its output's path relative to the output folder."""

    source: str
    output: str


def plan_outputs(sources: list[str], out: str | os.PathLike) -> list[Job]:
    """One :class:`Job` per video the sources name, in order; a video named twice is kept once.

    Raises FileNotFoundError for a missing source, ValueError when the sources hold no video, when ``out``
    lies inside a source folder (the next run would prepare its own outputs), when a listed video lies outside
    its list's folder, or when two videos would be written to one output (``a.avi`` and ``a.mp4``)."""
    out_real = os.path.realpath(out)
    jobs: dict[str, Job] = {}  # output -> job
    for source in sources:
        if os.path.isdir(source):
            if _inside(out_real, os.path.realpath(source)):
                raise ValueError(
                    f"--out {out} is inside the source folder {source}: its outputs would be sources of the next "
                    "run; choose an --out outside it"
                )
            base = source
        else:
            base = os.path.dirname(source)
        for video in _videos(source):
            relative = _relative(video, base, source)
            output = Path(relative).with_suffix(OUTPUT_EXTENSION).as_posix()
            other = jobs.get(output)
            if other is None:
                jobs[output] = Job(video, output)
            elif not _same_file(other.source, video):
                raise ValueError(
                    f"{display_path(other.source)} and {display_path(video)} would both be written to "
                    f"{Path(out) / output}: rename one, or prepare them into separate --out folders"
                )
    if not jobs:
        raise ValueError(
            f"no videos found in {', '.join(sources)} (folders are searched for "
            f"{' '.join(sorted(VIDEO_EXTENSIONS))}); pass video files, folders, or a .txt list of paths"
        )
    return list(jobs.values())


def _videos(source: str) -> list[str]:
    try:
        return find_videos([source])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; pass video files, folders, or a .txt list of video paths") from None


def _relative(video: str, base: str, source: str) -> str:
    """``video``'s path under ``base``; a listed video outside its list's folder is refused."""
    if not os.path.isdir(source) and os.path.splitext(source)[1].lower() not in LIST_EXTENSIONS:
        return os.path.basename(video)
    relative = os.path.relpath(video, base or ".")
    if relative == ".." or relative.startswith(".." + os.sep) or os.path.isabs(relative):
        raise ValueError(
            f"{source}: {display_path(video)} lies outside the list's folder, so it has no relative path to "
            "mirror; list only videos under that folder"
        )
    return relative


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _same_file(a: str, b: str) -> bool:
    try:
        return a == b or os.path.samefile(a, b)
    except OSError:
        return False
