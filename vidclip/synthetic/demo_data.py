"""A generated captioned video set: coloured shapes moving in a direction, for the demo and tests.

Each video shows one shape of one colour moving one way on a grey background, captioned like
"a red square moving left". Colour and shape are visible in any frame; the direction needs frame order, so
the same set also tells order-aware heads from order-blind ones.
"""

from __future__ import annotations

import csv
import itertools
import os
from pathlib import Path

import numpy as np

from vidclip.synthetic.videos import write_video

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 210, 40),
}
SHAPES = ("square", "disc")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def draw_moving_shape(
    colour: str, shape: str, direction: str, num_frames: int = 16, size: int = 64, seed: int = 0
) -> np.ndarray:
    """uint8 (T, size, size, 3): the shape crossing the frame in ``direction``, with a little pixel noise."""
    rng = np.random.default_rng(seed)
    radius = size // 6
    dy, dx = DIRECTIONS[direction]
    yy, xx = np.mgrid[0:size, 0:size]
    start = rng.integers(size // 3, 2 * size // 3, size=2)  # the perpendicular position varies per video
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        travel = radius + (size - 2 * radius) * t / max(num_frames - 1, 1)  # from one edge to the other
        cy = travel if dy > 0 else size - travel if dy < 0 else start[0]
        cx = travel if dx > 0 else size - travel if dx < 0 else start[1]
        if shape == "square":
            inside = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
        else:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        noise = rng.integers(-8, 9, size=(size, size, 1))
        frame = np.clip(128 + noise, 0, 255).repeat(3, axis=2)
        frame[inside] = COLOURS[colour]
        frames[t] = frame
    return frames


def make_caption_dataset(
    root: str | os.PathLike, copies: int = 1, num_frames: int = 16, size: int = 64, seed: int = 0
) -> Path:
    """Write every colour x shape x direction video ``copies`` times under ``root/videos`` and a ``captions.csv``
    (columns video, caption; paths relative to ``root``) in vidclip's csv format; returns the csv path."""
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    combos = itertools.product(range(copies), COLOURS, SHAPES, DIRECTIONS)
    for index, (copy, colour, shape, direction) in enumerate(combos):
        name = f"videos/{colour}_{shape}_{direction}_{copy}.mp4"
        frames = draw_moving_shape(colour, shape, direction, num_frames, size, seed=seed * 100_003 + index)
        write_video(root / name, frames, fps=8, codec="libx264")
        rows.append({"video": name, "caption": f"a {colour} {shape} moving {direction}"})
    path = root / "captions.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["video", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path
