"""The ``pyav`` backend (FFmpeg through PyAV), the one ``auto`` picks: exact frames by timestamp, seeking
only where that saves decoding.

Opening demuxes the packet headers once (no decoding) into a frame table: every frame's presentation
timestamp (frame i has the i-th smallest), and which frames the container marks as seek points. Packets an
edit list discards (a cut made with ``ffmpeg -ss ... -c copy``) are left out, as the decoder drops their
frames too. ``get_frames`` seeks to the latest seek point before a wanted frame only when that skips
at least MIN_FRAMES_SKIPPED frames (else it decodes forward: dense sampling of short keyframe intervals),
decodes forward and keeps the frames whose timestamps are wanted, so a seek that lands early can never shift
the result by one. On the way it skips the frames that no other frame refers to (most B-frames) unless they
are wanted, which changes no decoded pixel and saves a third of the work on long keyframe intervals.
Containers mark some frames as seek points that a decoder cannot start from (H.264 I-frames that are not
IDR, in x264 streams without B-frames and lossless RGB x264): a seek that does not start on a decoded key
frame is distrusted and an earlier seek point used instead. Streams without timestamps, or with frames no
seek reaches, are decoded in order from the start, counting frames as the reference decode does.

The pixel budget (``max_pixels``) is FFmpeg's own ``max_pixels`` option, given to the decoders that probe the
streams while the file opens and to the one that decodes: FFmpeg refuses a larger picture before allocating
it, even one larger than the header says. The header's size is checked before any packet is read. Formats
that create their streams only while probing (MPEG program and transport streams) get no options there, so
their first frames may be decoded once at the size they claim (FFmpeg caps it at about 268 million pixels).
"""

from __future__ import annotations

import bisect
import io
import itertools
import logging
import re
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from vidclip.video.decoders.base import (
    DEFAULT_MAX_PIXELS,
    check_frame_size,
    in_worker_process,
    pixel_budget_reason,
    register_decoder,
)
from vidclip.video.errors import VideoDecodeError, diagnose, diagnose_bytes

log = logging.getLogger(__name__)
# A seek restarts the decoder at a key frame: worth it only when it skips a few frames. Seeking to skip one
# frame (dense sampling of a file with a key frame every 3) made 48 of 240 frames cost 1.6x what decoding
# forward through them does (median of 5 runs, 224p H.264, keyframe interval 3, CPU).
MIN_FRAMES_SKIPPED = 4


@register_decoder("pyav", auto_preference=0)  # the only one auto picks: exact on every file tested
class PyAVReader:
    """CPU decoding with PyAV; ``get_frames`` returns uint8 (k, H, W, 3) RGB frames in the order asked, turned
    upright where the file stores a display rotation (phone videos). ``max_pixels`` (None or 0: none) is the
    pixel budget of a frame, enforced before decoding. ``data``: the video's bytes, decoded from memory (a
    shard's sample: no temporary file); ``path`` then only names it in errors."""

    def __init__(self, path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS, data: bytes | None = None):
        self.path, self.max_pixels, self.data = path, max_pixels, data
        self._container = self._open()
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(path, "no video stream (the file holds only audio, subtitles or data)")
        stream = self._container.streams.video[0]
        context = stream.codec_context
        self.width, self.height = context.width, context.height  # 0 where the header does not say
        try:
            check_frame_size(path, self.width, self.height, max_pixels)  # before reading a packet
        except VideoDecodeError:
            self._container.close()
            raise
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else 0.0
        self._pts, self._seek_points = self._frame_table(stream)
        self.num_frames = len(self._pts)
        self._position_of = {pts: i for i, pts in enumerate(self._pts)}
        self._timed = None not in self._position_of and len(self._position_of) == self.num_frames
        if not self._timed:
            self._seek_points = []  # missing or repeated timestamps cannot name frames: decode in order

    def _open(self):
        import av  # lazy: `import vidclip` loads no decoder library

        try:
            container = av.open(self._source(), options=budget_options(self.max_pixels))
        except Exception as err:
            raise VideoDecodeError(self.path, self._diagnose(err)) from err
        if container.streams.video:
            stream = container.streams.video[0]
            stream.codec_context.options = budget_options(self.max_pixels)
            if in_worker_process():
                stream.thread_count = 1  # workers decode several videos at once already: no threads on top
            else:
                stream.thread_type = "AUTO"
        return container

    def _source(self):
        """What FFmpeg reads: the file's path, or a fresh in-memory file over ``data``."""
        return self.path if self.data is None else io.BytesIO(self.data)

    def _diagnose(self, err: BaseException, num_frames: int | None = None) -> str:
        if self.data is None:
            return diagnose(self.path, err, num_frames=num_frames)
        return diagnose_bytes(self.data, err, num_frames=num_frames)

    @property
    def _stream(self):
        return self._container.streams.video[0]

    def _frame_table(self, stream) -> tuple[list, list[int]]:
        """Sorted presentation timestamps of the decodable frames, and the positions of the seek points."""
        try:
            packets = [p for p in self._container.demux(stream) if p.size > 0 and not p.is_discard]
        except Exception as err:
            raise VideoDecodeError(self.path, self._diagnose(err)) from err
        if any(p.pts is None for p in packets):
            return [None] * len(packets), []
        order = sorted(range(len(packets)), key=lambda k: packets[k].pts)
        return [packets[k].pts for k in order], [i for i, k in enumerate(order) if packets[k].is_keyframe]

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed, each in [0, num_frames)): uint8 (k, H, W, 3)."""
        wanted = sorted({int(i) for i in indices})
        if wanted and not 0 <= wanted[0] <= wanted[-1] < self.num_frames:
            raise ValueError(f"indices must lie in [0, {self.num_frames}), got {wanted[0]}..{wanted[-1]}")
        try:
            found = self._decode_seeking(wanted)
            missing = [i for i in wanted if i not in found]
            if missing:
                log.debug("%s: decoding %d frames in order from the start", self.path, len(missing))
                found.update(self._decode_in_order(missing))
        except VideoDecodeError:
            raise
        except Exception as err:
            size = size_beyond_budget(self._source(), self.max_pixels) if self.max_pixels else None
            if size is not None:  # before diagnose, which opens the file without a budget
                raise VideoDecodeError(self.path, pixel_budget_reason(*size, self.max_pixels)) from err
            raise VideoDecodeError(self.path, self._diagnose(err, num_frames=self.num_frames)) from err
        return torch.stack([found[int(i)] for i in indices])

    def _seek_point_before(self, position: int) -> int | None:
        """The latest trusted seek point at or before ``position``, or None."""
        k = bisect.bisect_right(self._seek_points, position)
        return self._seek_points[k - 1] if k else None

    def _decode_seeking(self, wanted: list[int]) -> dict[int, torch.Tensor]:
        """Decode forward from seek points; returns the wanted frames it reached (the rest go in order)."""
        found: dict[int, torch.Tensor] = {}
        pending = deque(wanted)
        frames: Iterator | None = None
        position = None  # the last frame decoded (start - 1 right after seeking to start); None: not decoding
        while pending:
            start = self._seek_point_before(pending[0])
            if start is None:
                break
            if position is None or start > position + MIN_FRAMES_SKIPPED:  # worth a seek (or must start)
                frames = self._seek(start, {self._pts[i] for i in pending})
                position = None if frames is None else start - 1
                continue
            frame = next(frames, None)
            if frame is None:
                break
            position = self._position_of.get(frame.pts, position)
            if position > pending[0]:
                break  # the decoder skipped a wanted frame
            if position == pending[0]:
                found[pending.popleft()] = upright_rgb(frame)
        return found

    def _seek(self, start: int, keep: set) -> Iterator | None:
        """Seek to seek point ``start`` and return the decoded frames from there; if decoding does not begin on
        a key frame at ``start`` (FFmpeg may land on an earlier one: an I-frame that is not a sync sample), drop
        ``start`` from the seek points and return None (the caller tries an earlier one)."""
        self._container.seek(self._pts[start], backward=True, any_frame=False, stream=self._stream)
        frames = self._decode_keeping(keep)
        first = next(frames, None)
        if first is None or self._position_of.get(first.pts) != start or not first.key_frame:
            self._seek_points.remove(start)
            return None
        return itertools.chain([first], frames)

    def _decode_keeping(self, keep: set) -> Iterator:
        """Decode from the demuxer's position, skipping the frames that are neither in ``keep`` (timestamps) nor
        referenced by others (FFmpeg's ``skip_frame="NONREF"``, set per packet): exact, since no frame depends on
        a skipped one, and about half the work on x264's default B-frames (tools/bench_decode.py)."""
        context = self._stream.codec_context
        for packet in self._container.demux(self._stream):
            context.skip_frame = "DEFAULT" if packet.pts in keep else "NONREF"
            yield from packet.decode()

    def _decode_in_order(self, wanted: list[int]) -> dict[int, torch.Tensor]:
        """Decode from the start, counting frames, up to the last wanted one (the reference behaviour)."""
        self._container.close()
        self._container = self._open()  # reopened rather than rewound: raw streams cannot seek
        found: dict[int, torch.Tensor] = {}
        remaining, decoded = set(wanted), 0
        for frame in self._container.decode(self._stream):
            if decoded in remaining:
                found[decoded] = upright_rgb(frame)
                remaining.discard(decoded)
            decoded += 1
            if not remaining:
                return found
        raise VideoDecodeError(
            self.path,
            f"truncated: the container lists {self.num_frames} frames but only {decoded} could be decoded "
            f"(frame {min(remaining)} is missing)",
        )

    def iter_frames(self, indices: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
        """Stream the frames at ``indices`` as (index, uint8 (H, W, 3)) in increasing order, each once, decoding
        the file once from the start and never seeking: for many frames of a long video (segment indexing),
        where holding them all would not fit in memory. The frames equal :meth:`get_frames`'s."""
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            return
        if not 0 <= wanted[0] <= wanted[-1] < self.num_frames:
            raise ValueError(f"indices must lie in [0, {self.num_frames}), got {wanted[0]}..{wanted[-1]}")
        self._container.close()
        self._container = self._open()  # the frame table read the demuxer to the end: start again
        remaining = deque(wanted)
        try:
            for position, frame in self._positioned_frames(wanted):
                if position is None or position < remaining[0]:
                    continue
                if position > remaining[0]:
                    raise VideoDecodeError(self.path, f"frame {remaining[0]} could not be decoded")
                yield remaining.popleft(), upright_rgb(frame)
                if not remaining:
                    return
        except VideoDecodeError:
            raise
        except Exception as err:
            raise VideoDecodeError(self.path, self._diagnose(err, num_frames=self.num_frames)) from err
        raise VideoDecodeError(
            self.path,
            f"truncated: the container lists {self.num_frames} frames but frame {remaining[0]} could not be "
            "decoded",
        )

    def _positioned_frames(self, wanted: list[int]) -> Iterator[tuple[int | None, object]]:
        """(frame index, frame) from the start: by timestamp (frames nobody refers to and nobody wants are
        skipped), or by count where timestamps cannot name frames (then nothing is skipped)."""
        if self._timed:
            for frame in self._decode_keeping({self._pts[i] for i in wanted}):
                yield self._position_of.get(frame.pts), frame
        else:
            yield from enumerate(self._container.decode(self._stream))

    def close(self) -> None:
        self._container.close()


def budget_options(max_pixels: int | None) -> dict[str, str]:
    """FFmpeg options that make its decoders refuse a picture above ``max_pixels`` before allocating it (FFmpeg
    takes at most INT_MAX, and refuses pictures of about 268 million pixels or more in any case)."""
    return {"max_pixels": str(min(int(max_pixels), 2**31 - 1))} if max_pixels else {}


_REFUSED_SIZE = re.compile(r"Picture size (\d+)x(\d+) exceeds")


def size_beyond_budget(path, max_pixels: int) -> tuple[int, int] | None:
    """The (width, height) FFmpeg refuses under ``max_pixels`` when it opens ``path`` and decodes its first
    frames, or None when it refuses none. FFmpeg says so only in its log, which PyAV drops unless asked: the
    log is captured (from this thread, not passed on) for this probe alone, on the failure path."""
    import av
    import av.logging

    previous, skipped = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # else the same refusal as the last file's is dropped as a repeat
    try:
        with av.logging.Capture(local=True) as logs:
            try:
                with av.open(path, options=budget_options(max_pixels)) as container:
                    stream = container.streams.video[0]
                    stream.codec_context.options = budget_options(max_pixels)
                    next(iter(container.decode(stream)), None)  # the first frame: where a probe fails
            except Exception:  # the failure is what is looked for; its words are in the log
                pass
    finally:
        av.logging.set_level(previous)
        av.logging.set_skip_repeated(skipped)
    for _, _, message in logs:
        found = _REFUSED_SIZE.search(message)
        if found:
            return int(found[1]), int(found[2])
    return None


def check_pixel_budget(path: str, max_pixels: int | None) -> None:
    """Refuse ``path`` (VideoDecodeError) if its frames are above ``max_pixels``, read with PyAV under that
    budget: the header's size, or, where the header has none, what FFmpeg refuses in the first frames. For
    backends whose own opening decodes (decord, torchcodec: FFmpeg's stream probe decodes frames) and for
    backends registered without a budget of their own. A file PyAV cannot open passes: its backend says why."""
    if not max_pixels:
        return
    import av  # lazy: `import vidclip` loads no decoder library

    try:
        with av.open(path, options=budget_options(max_pixels)) as container:
            if not container.streams.video:
                return
            context = container.streams.video[0].codec_context
            width, height = context.width, context.height
    except Exception:
        return
    if width and height:
        check_frame_size(path, width, height, max_pixels)
        return
    size = size_beyond_budget(path, max_pixels)
    if size is not None:
        raise VideoDecodeError(path, pixel_budget_reason(*size, max_pixels))


def upright_rgb(frame) -> torch.Tensor:
    """A PyAV frame as uint8 (H, W, 3) RGB, turned upright as a player shows it (phone videos store the sensor's
    orientation and a display rotation: ``frame.rotation`` degrees counter-clockwise, as FFmpeg's autorotate)."""
    array = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) or 0) // 90 % 4
    return torch.from_numpy(np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array)
