"""The video package's errors, and readable reasons for videos that cannot be decoded.

:class:`VideoDecodeError`: one file cannot be decoded; :class:`DecoderUnavailableError`: a decoder this
machine cannot run; :class:`UnknownDecoderError`: a decoder name that nobody registered.

Decoders fail with FFmpeg's terse text ("moov atom not found", "Invalid data found when processing input").
:func:`diagnose` turns that into a reason a user can act on: empty, not a video, truncated, no video stream.
:func:`check_video_file` refuses, from ``os.stat`` alone, what is not a regular file (a FIFO, a device, a
symbolic link loop): opening a FIFO for reading would block until some writer comes, a device never ends.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

# Leading bytes of the containers users meet; a file that starts like one but fails to open was cut short.
_CONTAINER_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"OggS"),  # Ogg
    (0, b"FLV"),  # Flash video
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x47"),  # MPEG transport stream (sync byte)
)
_TRUNCATION_HINTS = ("moov atom not found", "end of file", "truncat", "partial file", "invalid nal")


class VideoDecodeError(ValueError):
    """A video file that cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path!r}: {reason}")


class DecoderUnavailableError(RuntimeError):
    """A decoder that this machine cannot run (library, system libraries or GPU missing); says what to install."""


class UnknownDecoderError(ValueError):
    """A decoder name that is neither ``auto`` nor registered; the message lists the registered ones."""


_NOT_REGULAR: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_video_file(path: str | os.PathLike) -> None:
    """Refuse ``path`` unless it is a regular file, without opening it: FileNotFoundError when nothing is
    there (a link to nothing included), VideoDecodeError naming what is there instead (a folder, a FIFO, a
    device, a socket, a symbolic link loop) or why it cannot be looked at."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode  # follows links: a link to /dev/null is a character device
    except FileNotFoundError:
        dangling = " (a symbolic link to a missing target)" if os.path.islink(path) else ""
        raise FileNotFoundError(f"no such video file: {path}{dangling}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise VideoDecodeError(path, "not a regular file: a symbolic link loop") from None
        raise VideoDecodeError(path, f"cannot read the file: {err.strerror or err}") from None
    if stat.S_ISDIR(mode):
        raise VideoDecodeError(path, "is a directory, not a video file")
    for test, kind in _NOT_REGULAR:
        if test(mode):
            raise VideoDecodeError(path, f"not a regular file: {kind}")
    if not stat.S_ISREG(mode):
        raise VideoDecodeError(path, f"not a regular file (mode {stat.filemode(mode)})")


def _looks_like_container(head: bytes) -> bool:
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _CONTAINER_SIGNATURES)


def diagnose(path: str, error: BaseException | None = None, num_frames: int | None = None) -> str:
    """A one-line reason why ``path`` failed to decode, probing it with PyAV where that helps."""
    try:
        check_video_file(path)  # before anything opens it: a FIFO would block
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return "no such file"
    except VideoDecodeError as err:
        return err.reason
    except OSError as err:
        return f"cannot read the file: {err.strerror or err}"
    if size == 0:
        return "empty file (0 bytes)"
    return _probe(path, head, error, num_frames)


def diagnose_bytes(data: bytes, error: BaseException | None = None, num_frames: int | None = None) -> str:
    """:func:`diagnose` for a video held in memory (a shard's sample)."""
    if not data:
        return "empty video (0 bytes)"
    import io

    return _probe(lambda: io.BytesIO(data), data[:16], error, num_frames)


def _probe(source, head: bytes, error: BaseException | None, num_frames: int | None) -> str:
    """Why a non-empty video failed: what PyAV makes of it (``source``: a path, or a callable opening it)."""
    detail = (
        f" ({str(error).strip().splitlines()[0][:200]})" if error is not None and str(error).strip() else ""
    )
    text = str(error).lower() if error is not None else ""
    try:
        import av

        with av.open(source() if callable(source) else source) as container:
            if not container.streams.video:
                return "no video stream (the file holds only audio, subtitles or data)"
            declared = container.streams.video[0].frames or num_frames
    except ImportError:
        declared = num_frames
    except Exception as probe_error:
        text += " " + str(probe_error).lower()
        if _looks_like_container(head) or any(hint in text for hint in _TRUNCATION_HINTS):
            return f"truncated or corrupt: it starts like a video container but cannot be read{detail}"
        return f"not a video: FFmpeg recognises no media container in it{detail}"
    if any(hint in text for hint in _TRUNCATION_HINTS) or declared:
        frames = f" the container lists {declared} frames but" if declared else ""
        return f"truncated or corrupt:{frames} decoding failed{detail}"
    return f"decoding failed{detail}"
