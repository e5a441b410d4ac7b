"""What ``vidclip prepare`` makes of every video: frame rate, size, keyframe interval, codec, quality, cut and
audio. One frozen value, checked once, stored in every output (so a resumed run can tell its own files)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

# codec name -> (PyAV encoder, the option that takes the encoder's own key=value parameters)
CODECS = {"h264": ("libx264", "x264-params"), "hevc": ("libx265", "x265-params")}
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True)
class PrepareSettings:
    """How to re-encode: ``fps`` (None: the source's), ``short_side`` in pixels (None: the source's size,
    rounded down to even), ``keyframe_interval`` in seconds, ``codec`` (h264 or hevc) at ``crf`` with x264/x265
    ``preset``, ``max_seconds`` (None: the whole video), ``keep_audio`` (re-encoded as AAC; else dropped) and
    ``upscale`` (False: a source smaller than ``short_side`` keeps its size)."""

    fps: Fraction | None = None
    short_side: int | None = None
    keyframe_interval: float = 1.0
    codec: str = "h264"
    crf: int = 23
    preset: str = "veryfast"
    max_seconds: float | None = None
    keep_audio: bool = False
    upscale: bool = False

    def __post_init__(self) -> None:
        if self.fps is not None:
            object.__setattr__(self, "fps", Fraction(self.fps).limit_denominator(1001))
            if not 0 < self.fps <= 1000:
                raise ValueError(f"fps must be in (0, 1000], got {float(self.fps):g}")
        if self.short_side is not None and (self.short_side < 2 or self.short_side % 2):
            raise ValueError(f"short_side must be an even number of pixels (yuv420p), got {self.short_side}")
        if not (math.isfinite(self.keyframe_interval) and self.keyframe_interval > 0):
            raise ValueError(
                f"keyframe_interval must be a positive number of seconds, got {self.keyframe_interval}"
            )
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be a positive number of seconds, got {self.max_seconds}")

    def identity(self) -> dict[str, Any]:
        """The settings as JSON values: equal for two runs exactly when their outputs are interchangeable."""
        return {
            "fps": str(self.fps) if self.fps is not None else None,
            "short_side": self.short_side,
            "keyframe_interval": self.keyframe_interval,
            "codec": self.codec,
            "crf": self.crf,
            "preset": self.preset,
            "max_seconds": self.max_seconds,
            "keep_audio": self.keep_audio,
            "upscale": self.upscale,
        }

    @classmethod
    def from_identity(cls, identity: dict[str, Any]) -> PrepareSettings:
        """The settings :meth:`identity` describes."""
        fields = dict(identity)
        fields["fps"] = Fraction(fields["fps"]) if fields.get("fps") is not None else None
        return cls(**fields)

    def describe(self) -> str:
        """The settings as a user reads them (in refusals)."""
        fps = f"{float(self.fps):g} fps" if self.fps is not None else "source fps"
        size = f"short side {self.short_side}" if self.short_side else "source size"
        cut = f", first {self.max_seconds:g} s" if self.max_seconds else ""
        audio = ", audio kept" if self.keep_audio else ""
        return (
            f"{fps}, {size}, keyframe every {self.keyframe_interval:g} s, {self.codec} crf {self.crf} "
            f"{self.preset}{cut}{audio}"
        )


def output_size(width: int, height: int, settings: PrepareSettings) -> tuple[int, int]:
    """The (width, height) of the output of a ``width`` x ``height`` (upright) source: short side
    ``settings.short_side`` (unless that would upscale and ``upscale`` is off), aspect kept, both even."""
    short, long_ = min(width, height), max(width, height)
    target = settings.short_side
    if target is None or (target > short and not settings.upscale):
        target = short - short % 2
    scaled_long = max(2, round(long_ * target / short / 2) * 2)
    target = max(2, target)
    return (target, scaled_long) if width <= height else (scaled_long, target)


def keyframe_every(fps: Fraction, settings: PrepareSettings) -> int:
    """Frames between keyframes: the interval in seconds at ``fps``, at least 1 (every frame a keyframe)."""
    return max(1, round(settings.keyframe_interval * fps))


def other_settings(what: str, stored: dict[str, Any], settings: PrepareSettings) -> str:
    """The refusal of a file or folder made with ``stored`` settings by a run asking for ``settings``."""
    try:
        before = PrepareSettings.from_identity(stored).describe()
    except (TypeError, ValueError, KeyError):
        before = "unreadable settings"
    return (
        f"{what} was prepared with other settings ({before}); this run asks for {settings.describe()}: run "
        "with the same settings, or choose another --out"
    )
