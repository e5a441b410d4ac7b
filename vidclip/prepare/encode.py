"""Re-encode one video with the FFmpeg that PyAV bundles: decode, retime to the target frame rate, resize,
encode with exact keyframes, optionally cut and keep the audio; written atomically (temp file, then rename).

Retiming is by timestamps: the output frame at time k/fps shows the latest source frame at or before it, so
frames are dropped or repeated as the rates differ, and a variable-frame-rate source comes out constant.
Every output carries a tag naming the settings it was made with (:func:`read_tag`): a file under the
output folder with that tag is complete (only a finished file is renamed into place) and was written by
``vidclip prepare``; any other file there is the user's.
"""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vidclip.fileio import atomic_path
from vidclip.prepare.settings import CODECS, PrepareSettings, keyframe_every, output_size
from vidclip.video.errors import VideoDecodeError, check_video_file, diagnose

TAG_KEY = "comment"  # MP4's ©cmt: kept by FFmpeg's muxer and demuxer
TAG_PREFIX = "vidclip prepare "
NO_PICTURE_TYPE = 0  # AV_PICTURE_TYPE_NONE: a decoded I-frame must not force an extra keyframe


class OutputInfo(NamedTuple):
    """What a prepared file holds: its frame count, frame rate, duration (frames / fps) and size."""

    frames: int
    fps: float
    duration: float
    width: int
    height: int


class Retimer:
    """Output slots to fill as source frames arrive: slot k (time k/fps) takes the latest source frame at or
    before k/fps; times are exact fractions of a second from the first frame, ``limit`` cuts the output."""

    def __init__(self, fps: Fraction, limit: Fraction | None = None) -> None:
        self.fps, self.filled = fps, 0
        self.cap = math.ceil(limit * fps) if limit is not None else None

    def until(self, time: Fraction) -> int:
        """How many more slots lie before ``time`` (the previous source frame fills them); marks them filled."""
        end = math.ceil(time * self.fps)  # slots k with k / fps < time
        if self.cap is not None:
            end = min(end, self.cap)
        count = max(0, end - self.filled)
        self.filled += count
        return count

    @property
    def done(self) -> bool:
        return self.cap is not None and self.filled >= self.cap


def encode_video(
    source: str | os.PathLike, output: str | os.PathLike, settings: PrepareSettings, *, threads: int = 1
) -> OutputInfo:
    """Re-encode ``source`` into the MP4 file ``output`` (written atomically) and describe the result.

    Raises VideoDecodeError naming the source and the reason when it cannot be decoded (the output is then
    not written), DiskFullError naming ``output`` when the disk fills (no partial file is left)."""
    source = os.fspath(source)
    check_video_file(source)  # before opening: a FIFO would block
    with atomic_path(output) as tmp:
        _encode(source, tmp, settings, threads)
    info = describe_output(output)
    if info is None or info.frames == 0:
        Path(output).unlink(missing_ok=True)
        raise VideoDecodeError(source, "no frame could be encoded")
    return info


def _open_source(source: str):
    import av  # lazy: `import vidclip` loads no decoder library

    try:
        container = av.open(source)
    except Exception as err:
        raise VideoDecodeError(source, diagnose(source, err)) from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(source, "no video stream (the file holds only audio, subtitles or data)")
    return container


def _encode(source: str, tmp: Path, settings: PrepareSettings, threads: int) -> None:
    """Write the re-encoded video into ``tmp``."""
    import av

    with _open_source(source) as src:
        video = src.streams.video[0]
        video.thread_type, video.thread_count = "AUTO", threads
        audio = src.streams.audio[0] if settings.keep_audio and src.streams.audio else None
        source_rate = video.average_rate or video.guessed_rate
        fps = settings.fps or (Fraction(source_rate).limit_denominator(1001) if source_rate else None)
        if not fps:
            raise VideoDecodeError(source, "the file does not say its frame rate: pass --fps")
        limit = Fraction(settings.max_seconds).limit_denominator(1000) if settings.max_seconds else None
        tag = TAG_PREFIX + json.dumps({"settings": settings.identity(), "fps": str(fps)}, sort_keys=True)
        with av.open(os.fspath(tmp), "w", format="mp4") as dst:
            dst.metadata[TAG_KEY] = tag
            writer = _Writer(dst, fps, settings, threads, audio)
            try:
                step = 1 / Fraction(source_rate) if source_rate else 1 / fps
                _transcode(src, video, audio, writer, Retimer(fps, limit), limit, step)
            except (VideoDecodeError, OSError):
                raise
            except av.FFmpegError as err:
                raise VideoDecodeError(source, diagnose(source, err)) from err
            writer.close()
        if writer.frames == 0:
            raise VideoDecodeError(source, "no frame could be decoded")


def _transcode(src, video, audio, writer: _Writer, retimer: Retimer, limit, step: Fraction) -> None:
    """Demux once: video frames retimed into ``writer`` up to the cut, audio frames (if kept) up to it too."""
    first = previous = None  # the first frame's time, the latest frame decoded
    elapsed, count = Fraction(0), 0
    video_done, audio_done = False, audio is None
    for packet in src.demux([video] + ([audio] if audio is not None else [])):
        if packet.stream is video and not video_done:
            for frame in packet.decode():  # the last, empty packet flushes the decoder
                time = _seconds(frame.pts, frame.time_base, count * step)
                count += 1
                first = time if first is None else first
                elapsed = time - first
                if previous is not None:
                    writer.video(previous, retimer.until(elapsed))
                previous = frame
                if retimer.done:
                    video_done = True
                    break
        elif packet.stream is audio and not audio_done:
            for frame in packet.decode():
                audio_done = audio_done or not writer.audio(frame, limit)
        if video_done and audio_done:
            break
    if previous is not None and not retimer.done:  # the last frame lasts its duration, or the usual step
        duration = max(step, _seconds(previous.duration or None, previous.time_base, step))
        writer.video(previous, retimer.until(elapsed + duration))


def _seconds(value, time_base, fallback: Fraction) -> Fraction:
    """``value`` in ``time_base`` units as exact seconds, else ``fallback`` (no timestamp)."""
    if value is None or time_base is None:
        return fallback
    return value * Fraction(time_base)


class _Writer:
    """The output container's streams, made when the first video frame shows the picture's size."""

    def __init__(self, container, fps: Fraction, settings: PrepareSettings, threads: int, audio) -> None:
        self.container, self.fps, self.settings, self.threads = container, fps, settings, threads
        self.source_audio = audio
        self.stream = self.audio_stream = None
        self.frames = 0
        self.samples = 0
        self.pending_audio: list = []  # audio decoded before the first video frame: muxed once streams exist

    def _open(self, width: int, height: int) -> None:
        encoder, params = CODECS[self.settings.codec]
        stream = self.container.add_stream(encoder, rate=self.fps)
        stream.width, stream.height = output_size(width, height, self.settings)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.fps
        every = keyframe_every(self.fps, self.settings)
        exact = f"keyint={every}:min-keyint={every}:scenecut=0"
        if self.settings.codec == "hevc":
            exact += ":open-gop=0:log-level=error"
        stream.options = {
            "crf": str(self.settings.crf),
            "preset": self.settings.preset,
            params: exact,
            "threads": str(self.threads),
        }
        self.stream = stream
        if self.source_audio is not None:
            context = self.source_audio.codec_context
            self.audio_stream = self.container.add_stream("aac", rate=context.sample_rate)
            self.audio_stream.layout = context.layout.name
        for frame in self.pending_audio:
            self._mux_audio(frame)
        self.pending_audio = []

    def video(self, frame, copies: int) -> None:
        """Encode ``frame`` into the next ``copies`` output slots."""
        if copies == 0:
            return
        turns = round(getattr(frame, "rotation", 0) or 0) // 90 % 4
        width, height = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
        if self.stream is None:
            self._open(width, height)
        if turns:  # phone videos: turned upright as a player shows them; the output has no rotation
            import av

            upright = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), k=turns))
            frame = av.VideoFrame.from_ndarray(upright, format="rgb24")
        out = frame.reformat(
            width=self.stream.width, height=self.stream.height, format="yuv420p", interpolation="BICUBIC"
        )
        out.pict_type = NO_PICTURE_TYPE
        out.time_base = self.stream.codec_context.time_base
        for _ in range(copies):
            out.pts = self.frames
            self.frames += 1
            mux(self.container, self.stream.encode(out))

    def audio(self, frame, limit: Fraction | None) -> bool:
        """Encode an audio frame unless it starts at or after ``limit``; False once past it."""
        if limit is not None and Fraction(self.samples, frame.sample_rate) >= limit:
            return False
        if self.stream is None:
            self.pending_audio.append(frame)
            self.samples += frame.samples
            return True
        self.samples += frame.samples
        self._mux_audio(frame)
        return True

    def _mux_audio(self, frame) -> None:
        if self.audio_stream is None:
            return
        frame.pts = None  # the encoder counts samples: audio starts with the video
        mux(self.container, self.audio_stream.encode(frame))

    def close(self) -> None:
        """Flush the encoders (the container's trailer is written when it closes)."""
        if self.stream is not None:
            mux(self.container, self.stream.encode(None))
        if self.audio_stream is not None:
            mux(self.container, self.audio_stream.encode(None))


def mux(container, packets) -> None:
    """Write encoded packets (one place for every write: a full disk fails here)."""
    for packet in packets:
        container.mux(packet)


def read_tag(path: str | os.PathLike) -> dict[str, Any] | None:
    """The settings and frame rate a ``vidclip prepare`` output was made with, or None for any other file
    (another program's video, not a video, unreadable)."""
    import av

    try:
        with av.open(os.fspath(path)) as container:
            text = container.metadata.get(TAG_KEY, "")
    except Exception:
        return None
    if not text.startswith(TAG_PREFIX):
        return None
    try:
        tag = json.loads(text[len(TAG_PREFIX) :])
    except ValueError:
        return None
    return tag if isinstance(tag, dict) and "settings" in tag and "fps" in tag else None


def describe_output(path: str | os.PathLike) -> OutputInfo | None:
    """The :class:`OutputInfo` of a prepared file, read from its tag and packet headers (no decoding); None
    when the file is not a ``vidclip prepare`` output."""
    import av

    tag = read_tag(path)
    if tag is None:
        return None
    fps = Fraction(tag["fps"])
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
    return OutputInfo(frames, float(fps), float(frames / fps), width, height)
