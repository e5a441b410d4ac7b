"""Find the videos a command is pointed at: video files, folders (searched recursively) and list files.

A source on the command line is one of:

- a folder: every file under it whose extension is in :data:`VIDEO_EXTENSIONS`, in sorted order; hidden
  files and folders (names starting with ``.``, such as macOS ``._clip.mp4`` forks) are skipped;
- a list file (extension in :data:`LIST_EXTENSIONS`): one video path per line, blank lines and lines
  starting with ``#`` ignored; relative paths are relative to the list file's folder;
- any other file: a video (its decoder decides whether it is one).

Paths keep the form they were given in (``videos/a.mp4`` stays relative), so a table keyed by them joins
back to the user's own metadata. Videos named twice are kept once, at their first position, with the spelling
first given: ``videos/a.mp4``, ``./videos/a.mp4``, ``videos//a.mp4``, ``videos/sub/../a.mp4``, the absolute
path, a path through a symlinked folder and the NFC and NFD forms of a Unicode name (macOS writes NFD) are
one video. Two names of one file (a symlink or hard link to a video) stay two videos.

A file name that is not valid UTF-8 (old cameras, other systems) is kept as Python gives it (``str`` with
surrogate escapes), so it opens; tables and messages write it as :func:`display_path` does (``clip_\\xff.mp4``).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Iterator

from vidclip.data.base import AnnotationError, bom_encoding
from vidclip.fileio import walk_files

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv".split()
)
LIST_EXTENSIONS = frozenset({".txt", ".list", ".lst"})


def find_videos(sources: list[str]) -> list[str]:
    """The video paths that ``sources`` (files, folders, list files) name, in order, each once (see the module
    docstring for which spellings are one video).

    Raises FileNotFoundError for a source that does not exist; a missing path inside a list file is kept, so
    the command reports it as that video's failure.
    """
    found: list[str] = []
    seen: dict[str, list[str]] = {}  # spelling-blind key -> the paths kept with that key
    folders: dict[str, str] = {}  # folder as spelled -> resolved: one realpath per folder, not per video
    for source in sources:
        for path in _expand(source):
            kept = seen.setdefault(_spelling_key(path, folders), [])
            if not any(_same_file(path, other) for other in kept):
                kept.append(path)
                found.append(path)
    return found


def _spelling_key(path: str, folders: dict[str, str]) -> str:
    """``path`` absolute, its folder resolved (``.``, ``..``, ``//``, symlinked folders), NFC: the same for
    every spelling of one file. The name itself is not resolved: a symlink to a video is another video."""
    folder, name = os.path.split(path)
    if folder not in folders:
        folders[folder] = os.path.realpath(folder or ".")
    return unicodedata.normalize("NFC", os.path.join(folders[folder], name))


def _same_file(path: str, other: str) -> bool:
    """Two paths with one key are one video unless both exist and are different files: on Linux the NFC and
    NFD forms of a name can be two files."""
    try:
        return path == other or os.path.samefile(path, other)
    except OSError:  # one of them does not exist: the key alone decides
        return True


def display_path(path: str) -> str:
    """``path`` as printable text: the bytes of a name that is not valid UTF-8 (which Python keeps as surrogate
    escapes, and which no UTF-8 file can hold) written as ``\\xNN``, so ``clip_\\xff.mp4``; any other text
    unchanged. Parquet and CSV tables, and messages, store paths (and errors naming them) in this form, and
    ``vidclip extract`` compares it when it resumes."""
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return path.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


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

    Only whole-line comments: ``#`` is a legal character in file names. Line ends (LF, CRLF, CR), spaces
    around a path and a byte-order mark (UTF-8, UTF-16, UTF-32) are never part of a path. Without a mark,
    lines are UTF-8; a line that is not is the file whose name has those bytes when one exists (what
    ``ls > list.txt`` writes for such names), else it is read as Windows-1252, with one warning per file.
    """
    folder = os.path.dirname(path)
    with open(path, "rb") as f:
        data = f.read()
    codec = bom_encoding(data)
    if codec is not None and codec != "utf-8-sig":
        try:
            lines = data.decode(codec).splitlines()
        except UnicodeDecodeError as err:
            raise AnnotationError(f"{path}: not {codec} text ({err.reason} at byte {err.start})") from None
    else:
        odd: list[int] = []  # numbers of the lines that are not UTF-8
        lines = [_decode_line(raw, folder, odd, n) for n, raw in enumerate(data.splitlines(), start=1)]
        if odd:
            logger.warning(
                f"{path}: {len(odd)} line(s) not UTF-8 (first: line {odd[0]}); read as the raw bytes of a "
                "file name where such a file exists, else as Windows-1252 (cp1252)"
            )
    lines = [line.strip() for line in lines]
    return [os.path.join(folder, line) for line in lines if line and not line.startswith("#")]


def _decode_line(raw: bytes, folder: str, odd: list[int], number: int) -> str:
    raw = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw  # a UTF-8 byte-order mark
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        odd.append(number)
    name = raw.decode("utf-8", "surrogateescape")  # as os.fsdecode gives that file's name
    if os.path.lexists(os.path.join(folder, name.strip())):
        return name
    return raw.decode("cp1252", "surrogateescape")  # cp1252 leaves five bytes undefined: keep those escaped


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()
