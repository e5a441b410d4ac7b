"""Where a sample's video lies inside a local shard, so the search page can play it without unpacking.

A tar stores each member's bytes contiguously after its header, so in an uncompressed local shard a sample's
video is a byte range of the shard file: :func:`find_video_span` finds it from the tar's headers (Python's
``tarfile`` in random-access mode reads the 512-byte headers and seeks over the data) and caches each shard's
table (its 128 most recently used, keyed by path, size, mtime, inode and ctime), so a page of results reads
each shard's headers once. Shards read through ``pipe:`` or fsspec, and compressed shards (``.tar.gz``), have
no such byte range: they are refused with the reason, as is a sample that is not in its shard or has no video
member. Media types come from a table of the video extensions the reader knows, not from the system's
mime.types (which names ``.ts`` a Qt translation on Debian)."""

from __future__ import annotations

import functools
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from vidclip.data.shards import VIDEO_MEMBERS, is_remote, is_skipped, split_member, video_member

CACHED_SHARDS = 128  # shards whose tables are kept: more than a page of results (k <= 100) can name

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
        """The video's bytes (refused when the shard is now too short to hold them)."""
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
    identity = (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
    videos, fault = _video_members(str(path), *identity)
    if key in videos:
        return videos[key]
    if fault:
        raise ShardMemberError(f"{path}: {fault}, and sample {key!r} is not in what remains")
    raise ShardMemberError(
        f"{url} holds no video of sample {key!r} (the shard changed since it was indexed?)"
    )


@functools.lru_cache(maxsize=CACHED_SHARDS)
def _video_members(path: str, *identity: int) -> tuple[dict[str, VideoSpan], str | None]:
    """Each sample's video member in the shard at ``path`` that lies whole in the file, chosen as the reader
    chooses it (webdataset's member names, the last copy of a duplicated name, the first of VIDEO_MEMBERS),
    and what cut the listing short (None when nothing did); ``identity`` (size, mtime, inode, ctime) keys the
    cache."""
    size = identity[0]
    try:
        tar = tarfile.open(path, mode="r:")  # "r:": uncompressed only, which random access needs
    except tarfile.ReadError as err:
        raise ShardMemberError(
            f"{path}: not an uncompressed tar ({err}); the page plays samples of uncompressed shards only"
        ) from None
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    fault = None
    with tar:
        try:
            for info in tar:
                key, ext = split_member(info.name)
                if info.isreg() and key is not None and ext in VIDEO_MEMBERS and not is_skipped(info.name):
                    members.setdefault(key, {})[ext] = info
        except (tarfile.ReadError, EOFError) as err:  # a header cut or damaged after the first
            fault = f"truncated or corrupt tar ({err})"
        tar.members = []  # the table below is all that is kept
    videos: dict[str, VideoSpan] = {}
    for key, by_ext in members.items():
        info = by_ext[video_member(by_ext)]
        if info.offset_data + info.size > size:
            fault = fault or f"truncated tar (member {info.name} runs past the end)"
            continue
        videos[key] = VideoSpan(Path(path), info.offset_data, info.size, os.path.basename(info.name))
    return videos, fault
