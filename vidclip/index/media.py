"""What the search page plays for an indexed video: its file, or the byte range of its sample in a local shard.

:func:`locate_media` resolves a video id to a file (served whole, with Range requests, by Starlette) or a
:class:`~vidclip.data.shard_members.VideoSpan` (served by :func:`span_response`, which answers single Range
requests itself), and says why in :class:`MediaUnavailable` when there is neither: a file moved since, a
shard gone, a sample of a remote or compressed shard. Only ids reach here; no request text names a path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from vidclip.data.shard_members import ShardMemberError, VideoSpan, find_video_span, local_shard_path
from vidclip.data.shards import split_ref

CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)  # the range unit is case-insensitive (RFC 9110)


class MediaUnavailable(LookupError):
    """An indexed video the page cannot serve now; the message says why."""


class RangeNotSatisfiable(ValueError):
    """A Range request that starts past the end of the video (answered 416)."""


def locate_media(index: Any, video_id: int) -> Path | VideoSpan:
    """The file of indexed video ``video_id``, or where its shard sample's video lies; MediaUnavailable
    with the reason when it cannot be served."""
    name = index.videos[video_id]
    path = Path(index.video_file(video_id))
    if path.is_file():  # a file, even one whose name looks like a shard sample's
        return path
    ref = split_ref(name)
    if ref is None:
        raise MediaUnavailable(f"video {name!r} was indexed at {path} but is no longer there")
    try:  # a relative shard path is relative to where the index was built, as files are
        shard = Path(index.meta.root, local_shard_path(ref[0]))
        return find_video_span(str(shard), ref[1])
    except FileNotFoundError:
        raise MediaUnavailable(
            f"video {name!r} is a sample of the shard {shard}, which is no longer there"
        ) from None
    except (ShardMemberError, OSError) as err:
        raise MediaUnavailable(f"video {name!r} cannot be played from its shard: {err}") from None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range (first, last) of a single-range ``Range`` header over ``size`` bytes; None
    for no header or one this server answers with the whole body (several ranges, another unit, malformed:
    RFC 9110 lets a server ignore Range); RangeNotSatisfiable for a range that starts past the end."""
    match = _RANGE.fullmatch((header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if size == 0:  # no byte of an empty body can be asked for
        raise RangeNotSatisfiable(f"{header.strip()} of 0 bytes")
    if first == "":  # the last N bytes
        count = int(last)
        if count == 0:
            raise RangeNotSatisfiable(f"bytes=-0 of {size} bytes")
        return max(size - count, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(f"bytes={start}- of {size} bytes")
    if end < start:
        return None  # malformed (last before first): ignored
    return start, end


def span_response(span: VideoSpan, range_header: str | None, headers: dict[str, str]) -> Any:
    """The HTTP response for ``span``: 200 with the whole video, 206 with the asked range, 416 past its end;
    the bytes are read from the shard as they are sent. The shard is opened here, so one gone since it was
    located raises OSError (for a 404) before anything is sent."""
    from starlette.responses import Response, StreamingResponse

    common = {**headers, "Accept-Ranges": "bytes"}
    try:
        wanted = parse_range(range_header, span.size)
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={**common, "Content-Range": f"bytes */{span.size}"})
    first, last = wanted if wanted is not None else (0, span.size - 1)
    length = last - first + 1
    common["Content-Length"] = str(length)
    if wanted is not None:
        common["Content-Range"] = f"bytes {first}-{last}/{span.size}"
    stream = open(span.path, "rb")  # closed by the body once sent
    return StreamingResponse(
        _read(stream, span.offset + first, length),
        status_code=206 if wanted else 200,
        media_type=span.media_type,
        headers=common,
    )


def _read(stream: BinaryIO, offset: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``stream`` from ``offset``, in chunks; raises OSError (the connection is dropped,
    not ended early as if complete) when the shard shrank while being sent."""
    with stream:
        stream.seek(offset)
        while length > 0:
            chunk = stream.read(min(CHUNK, length))
            if not chunk:
                raise OSError(f"{stream.name}: the shard ended {length} bytes early while being sent")
            length -= len(chunk)
            yield chunk
