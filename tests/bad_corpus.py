"""Writers of unusual and broken videos, and a corpus of them for the bad-input tests of every command."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidclip.synthetic import index_frames, write_video


def write_audio_only(path: Path) -> Path:
    """An MP4 with an AAC stream and no video stream."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_variable_frame_rate(path: Path, frames: np.ndarray, gaps: list[int]) -> Path:
    """H.264 in MP4 whose frame i lasts gaps[i] ticks of 1/1000 s (a phone-style variable frame rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for array, gap in zip(frames, gaps, strict=True):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
            pts += gap
        container.mux(stream.encode())
    return path


def write_rotated(path: Path, frames: np.ndarray, degrees: int) -> Path:
    """H.264 in MP4 with a display matrix: a player shows the frames turned ``degrees`` counter-clockwise."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.set_display_rotation(degrees)
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path


# name -> the words its error must contain; None: a valid (if unusual) video that must decode.
CORPUS: dict[str, str | None] = {
    "empty.mp4": "empty file",
    "notes.mp4": "not a video",
    "cut.mp4": "truncated",
    "audio only.mp4": "no video stream",
    "never downloaded.mp4": "no such",
    "one frame.mp4": None,
    "odd 63x97.mkv": None,
    "rotated.mp4": None,
    "variable rate.mp4": None,
    "vidéo 日本語.mp4": None,
    "big 4K.mp4": None,
}


# Names that are not regular files -> the words of their reason. Opening a FIFO for reading blocks until a
# writer comes, so every command must look at it with os.stat first; a device never ends.
SPECIAL: dict[str, str] = {
    "named pipe.mp4": "not a regular file: a fifo (named pipe)",
    "null device.mp4": "not a regular file: a character device",  # a symlink to /dev/null
    "link loop.mp4": "not a regular file: a symbolic link loop",
    "folder.mp4": "is a directory",
}
MKNOD_NAME = "device node.mp4"  # a character device made with os.mknod, where that is permitted (root)


def write_special(root: Path) -> list[Path]:
    """Every name of ``SPECIAL`` under ``root`` (and ``MKNOD_NAME`` when os.mknod is permitted), in order."""
    import os
    import stat

    root.mkdir(parents=True, exist_ok=True)
    os.mkfifo(root / "named pipe.mp4")
    (root / "null device.mp4").symlink_to("/dev/null")
    (root / "link loop.mp4").symlink_to(root / "link loop 2.mp4")
    (root / "link loop 2.mp4").symlink_to(root / "link loop.mp4")
    (root / "folder.mp4").mkdir()
    paths = [root / name for name in SPECIAL]
    try:
        os.mknod(root / MKNOD_NAME, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # the numbers of /dev/null
    except (PermissionError, AttributeError):  # an unprivileged user; AttributeError: no mknod
        return paths
    return [*paths, root / MKNOD_NAME]


def write_corpus(root: Path) -> list[Path]:
    """Every video of ``CORPUS`` under ``root`` (the missing one is not written), in ``CORPUS`` order."""
    root.mkdir(parents=True, exist_ok=True)
    data = Path(write_video(root / "vidéo 日本語.mp4", index_frames(12, 64, 64))).read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) at the end is cut off
    write_audio_only(root / "audio only.mp4")
    write_video(root / "one frame.mp4", index_frames(1, 64, 64))
    write_video(root / "odd 63x97.mkv", index_frames(10, 63, 97), codec="libx264rgb")
    write_rotated(root / "rotated.mp4", index_frames(8, 48, 64), 90)
    write_variable_frame_rate(root / "variable rate.mp4", index_frames(6, 64, 64), [33, 100, 17, 250, 33, 66])
    write_video(root / "big 4K.mp4", index_frames(2, 2160, 3840), options={"preset": "ultrafast"})
    return [root / name for name in CORPUS]
