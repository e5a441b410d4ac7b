"""Where a sample's video lies inside a local shard, so the search page can play it without unpacking.

A tar stores each member's bytes contiguously after its header, so in an uncompressed local shard a sample's
video is a byte range of the shard file: :func:`find_video_span` finds it from the tar's headers (Python's
``tarfile`` in random-access mode reads the 512-byte headers and seeks over the data) and caches each shard's
table by (path, size, mtime), so a page of results from one shard reads its headers once. Shards read through
``pipe:`` or fsspec, and compressed shards (``.tar.gz``), have no such byte range: they are refused with the
reason, as is a sample that is not in its shard or has no video member.
"""

from __future__ import annotations

import functools
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from vidclip.data.shards import VIDEO_MEMBERS, is_remote, split_member

MEDIA_TYPES = {
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
    "ogv": "video/ogg",
    "avi": "video/x-msvideo",
    "ts": "video/mp2t",
    "mpg": "video/mpeg",
    "mpeg": "video/mpeg",
    "flv": "video/x-flv",
    "3gp": "video/3gpp",
    "wmv": "video/x-ms-wmv",
}


class ShardMemberError(ValueError):
    """A sample whose video is not a byte range of a local shard file (the message says why)."""


@dataclass(frozen=True)
class VideoSpan:
    """The video of one sample: ``size`` bytes at ``offset`` in the shard file ``path``; ``member`` its name."""

    path: Path
    offset: int
    size: int
    member: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.member.rsplit(".", 1)[-1].lower(), "application/octet-stream")

    def read(self) -> bytes:
        """The video's bytes (refused when the shard changed size since it was located)."""
        with open(self.path, "rb") as stream:
            stream.seek(self.offset)
            data = stream.read(self.size)
        if len(data) != self.size:
            raise ShardMemberError(f"{self.path}: the shard is shorter than when it was read")
        return data


def local_shard_path(url: str) -> Path:
    """The file of a local shard URL (``file://`` removed); refuses ``pipe:`` and fsspec URLs."""
    if is_remote(url):
        raise ShardMemberError(
            f"{url} is read through a command or a remote store: the page plays samples of local shards only"
        )
    return Path(url.removeprefix("file://"))


def find_video_span(url: str, key: str) -> VideoSpan:
    """Where the video of sample ``key`` lies in the local, uncompressed shard ``url``. Raises
    FileNotFoundError for a missing shard and :class:`ShardMemberError` for any other reason it cannot be
    played from the shard (a sample past the point where a truncated shard ends among them)."""
    path = local_shard_path(url)
    stat = path.stat()  # FileNotFoundError: the shard moved since it was indexed
    videos, fault = _video_members(str(path), stat.st_size, stat.st_mtime_ns)
    if key in videos:
        return videos[key]
    if fault:
        raise ShardMemberError(f"{path}: {fault}, and sample {key!r} is not in what remains")
    raise ShardMemberError(
        f"{url} holds no video of sample {key!r} (the shard changed since it was indexed?)"
    )


@functools.lru_cache(maxsize=16)
def _video_members(path: str, size: int, mtime_ns: int) -> tuple[dict[str, VideoSpan], str | None]:
    """Each sample's video member in the shard at ``path`` that lies whole in the file, and what cut the
    listing short (None when nothing did); its size and mtime key the cache."""
    try:
        tar = tarfile.open(path, mode="r:")  # "r:": uncompressed only, which random access needs
    except tarfile.ReadError as err:
        raise ShardMemberError(
            f"{path}: not an uncompressed tar ({err}); the page plays samples of uncompressed shards only"
        ) from None
    videos: dict[str, VideoSpan] = {}
    fault = None
    with tar:
        try:
            for info in tar:
                key, ext = split_member(info.name)
                if not info.isreg() or key is None or ext not in VIDEO_MEMBERS or key in videos:
                    continue
                if info.offset_data + info.size > size:
                    fault = f"truncated tar (member {info.name} runs past the end)"
                    break
                videos[key] = VideoSpan(Path(path), info.offset_data, info.size, os.path.basename(info.name))
        except (tarfile.ReadError, EOFError) as err:  # a header cut or damaged after the first
            fault = f"truncated or corrupt tar ({err})"
        tar.members = []  # the table above is all that is kept
    return videos, fault
