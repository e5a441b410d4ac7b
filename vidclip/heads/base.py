"""The temporal-head interface and its registry.

A head turns per-frame CLIP features into video-text similarity. It may have up to three parts:

1. modules installed into the image tower (adapters, video prompts) by :meth:`TemporalHead.attach`; they read
   the video layout (B, T, mask) of the current call from :attr:`TemporalHead.context`, because open_clip's
   visual tower sees frames as one flat batch of B*T images;
2. modules installed into the text tower (text prompts), also by :meth:`attach`;
3. the aggregation: text-independent :meth:`pool` (B,T,D)->(B,D), or text-conditioned :meth:`score`
   (N,D) x (B,T,D) -> (N,B).

Installed modules subclass :class:`InstalledModule`, so freezing and parameter groups find them by type, not
by name. ``VideoCLIP`` branches once on ``text_conditioned``, never on a head's name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vidclip.registry import Registry


class InstalledModule(nn.Module):
    """Marker base for modules a head puts inside the open_clip towers (trainable with the head)."""


@dataclass
class VideoLayout:
    """How the flat batch of frames going through the image tower splits into videos."""

    batch_size: int
    num_frames: int
    mask: torch.Tensor  # (B, T) bool, True = a real frame


class HeadContext:
    """Shared, per-call state between a head and the modules it installed (set by ``VideoCLIP.encode_video``)."""

    def __init__(self) -> None:
        self.layout: VideoLayout | None = None

    def require_layout(self, num_images: int) -> VideoLayout:
        """The current layout, checked against the ``num_images`` = B*T images the tower is processing."""
        layout = self.layout
        if layout is None or layout.batch_size * layout.num_frames != num_images:
            raise RuntimeError(
                "this head's image-tower modules need the video layout: encode frames through "
                "VideoCLIP.encode_video, not clip.encode_image directly"
            )
        return layout


class TemporalHead(nn.Module):
    """Base class of every head. Subclasses set the class flags and implement ``pool`` or ``score``."""

    text_conditioned: ClassVar[bool] = False  # similarity needs the text (score), else pool then cosine
    order_aware: ClassVar[bool] = False  # the result can change when frames are reordered
    parameter_efficient: ClassVar[bool] = False  # the backbone is frozen by default (prompts/adapters)
    raw_text: ClassVar[bool] = False  # score gets the text features as encoded, not L2-normalised

    def __init__(self) -> None:
        super().__init__()
        self.context = HeadContext()

    def attach(self, clip: nn.Module, *, num_frames: int) -> None:
        """Install this head's modules into ``clip``'s towers and initialise from its weights (default: none)."""

    @contextlib.contextmanager
    def video_context(self, layout: VideoLayout) -> Iterator[None]:
        """Make ``layout`` visible to installed modules for one image-tower call.

        The layout stays readable after the call: activation checkpointing re-runs the tower's blocks during
        backward, outside this context, and they need the layout of the forward pass they replay.
        """
        self.context.layout = layout
        yield

    def pool(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, D), mask: (B, T) -> L2-normalised video embeddings (B, D). Text-independent heads."""
        raise TypeError(f"{type(self).__name__} is text-conditioned: it has no text-independent embedding")

    def score(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """text: (N, D) unit (raw if ``raw_text``), frames: (B, T, D), mask: (B, T) -> cosines (N, B)."""
        return text @ self.pool(frames, mask).T


HEADS: Registry[type[TemporalHead]] = Registry("head")


def register_head(name: str) -> Callable[[type[TemporalHead]], type[TemporalHead]]:
    """Class decorator: make a head available as ``create_model(..., head=name)``."""
    return HEADS.register(name, attribute="head_name")


def list_heads() -> list[str]:
    """Names of the registered temporal heads."""
    return HEADS.names()


def create_head(name: str, **options) -> TemporalHead:
    """Build a registered head from its keyword options; unknown names and options fail with the valid ones."""
    if name not in HEADS:
        raise ValueError(HEADS.unknown(name))
    cls = HEADS[name]
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"bad options for head {name!r}: {err}") from err
