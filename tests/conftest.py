"""Shared fixtures: small generated videos (made once per session) for decoder, extract and dataset tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch

from vidclip.synthetic import index_frames, write_video

ASSETS = Path(__file__).parent / "assets"

# Tiny models gain nothing from intra-op threads, and on a 2-core machine running DataLoader workers too, two
# threads per process oversubscribe the cores (a training step was measured 20x slower).
torch.set_num_threads(1)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons (precision included); after an in-process run, fresh ones."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def sdpa_calls(monkeypatch) -> list:
    """The query shapes of every ``F.scaled_dot_product_attention`` call made during the test, in order."""
    import torch.nn.functional as F

    calls: list = []
    fused = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


@pytest.fixture
def hang_decoding(monkeypatch):
    """``hang_decoding(suffix)``: decoding any video whose path ends with ``suffix`` blocks for a minute, in the
    main process and in forked DataLoader workers alike (what a time limit must cut off)."""
    import time

    from vidclip.data import dataset

    real = dataset.load_frames
    suffixes: list[str] = []

    def load(path, *args, **kwargs):
        if str(path).endswith(tuple(suffixes)):
            time.sleep(60)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dataset, "load_frames", load)
    return suffixes.append


@pytest.fixture(scope="session")
def index_video(tmp_path_factory):
    """Factory: ``index_video(num_frames, height, width, codec, fps, suffix)`` -> path of a cached video whose
    frame i shows the number i (``vidclip.synthetic.read_frame_index``)."""
    folder = tmp_path_factory.mktemp("index_videos")
    made: dict[tuple, Path] = {}

    def make(num_frames=40, height=64, width=64, codec="libx264", fps=25, suffix=".mp4", options=None):
        key = (num_frames, height, width, codec, fps, suffix, tuple(sorted((options or {}).items())))
        if key not in made:
            name = f"{codec}_{num_frames}f_{height}x{width}_{float(fps):.3f}fps_{len(made)}{suffix}"
            path = folder / name
            write_video(path, index_frames(num_frames, height, width), fps=fps, codec=codec, options=options)
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """A folder of four short H.264 videos (20-40 frames, 64x64 and 48x80)."""
    folder = tmp_path_factory.mktemp("videos")
    for i, (frames, height, width) in enumerate([(20, 64, 64), (30, 64, 64), (40, 48, 80), (25, 64, 64)]):
        write_video(folder / f"clip_{i}.mp4", index_frames(frames, height, width), fps=Fraction(25))
    return folder
