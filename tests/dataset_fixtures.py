"""Small datasets in their real on-disk layouts (MSR-VTT, DiDeMo, Kinetics, UCF101, HMDB51) for the reader,
``vidclip eval`` and ``vidclip zeroshot`` tests. Videos are tiny generated clips (coloured shapes moving)."""

from __future__ import annotations

import json
from pathlib import Path

from vidclip.synthetic import write_video
from vidclip.synthetic.demo_data import COLOURS, DIRECTIONS, SHAPES, draw_moving_shape

COMBOS = [
    (c, s, d) for c in ("red", "green", "blue", "yellow") for s in ("square", "disc") for d in ("left", "up")
]


def shape_video(path: Path, colour: str, shape: str, direction: str, seed: int = 0, frames: int = 8) -> Path:
    """A 64 px clip (decord mis-reads narrower frames) of ``frames`` frames: a ``colour`` ``shape`` moving ``direction``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(
        path, draw_moving_shape(colour, shape, direction, num_frames=frames, size=64, seed=seed), fps=8
    )
    return path


def caption_videos(root: Path, seed: int, copies: int = 1) -> list[tuple[str, str]]:
    """Every colour x shape x direction clip ``copies`` times under ``root/videos``, with its caption "a red
    square moving left"; (path relative to ``root``, caption). Lossless, so every process decodes the same
    frames (libx264's lossy output differs from run to run)."""
    rows = []
    combos = [(k, c, s, d) for k in range(copies) for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    for i, (copy, colour, shape, direction) in enumerate(combos):
        name = f"videos/{colour}_{shape}_{direction}_{copy}.mp4"
        frames = draw_moving_shape(colour, shape, direction, num_frames=8, size=64, seed=seed * 1000 + i)
        (root / "videos").mkdir(parents=True, exist_ok=True)
        write_video(root / name, frames, fps=8, codec="libx264rgb")
        rows.append((name, f"a {colour} {shape} moving {direction}"))
    return rows


def broken_video(path: Path) -> Path:
    """A file that starts like an MP4 but is cut short: it exists, and cannot be decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 cut short")
    return path


def write_msrvtt(
    root: Path, videos: list[tuple[str, list[str]]], test_ids: list[str], train_ids: list[str]
) -> dict:
    """MSRVTT_data.json (all videos and captions), MSRVTT_train.9k.csv (video_id) and a JSFUSION-style 1k-A
    test CSV (key, vid_key, video_id, sentence: each test video's first caption)."""
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "videos": [
            {"video_id": vid, "category": 0, "split": "test" if vid in test_ids else "train"}
            for vid, _ in videos
        ],
        "sentences": [
            {"sen_id": i, "video_id": vid, "caption": caption}
            for i, (vid, caption) in enumerate((vid, c) for vid, captions in videos for c in captions)
        ],
    }
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{vid}\n" for vid in train_ids))
    captions = dict(videos)
    rows = [f"ret{i},msr{vid[5:]},{vid},{captions[vid][0]}\n" for i, vid in enumerate(test_ids)]
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + "".join(rows))
    (root / "test_videos.txt").write_text("".join(f"{vid}\n" for vid in test_ids))
    return {
        "annotations": str(root / "MSRVTT_data.json"),
        "train": str(root / "MSRVTT_train.9k.csv"),
        "test": str(root / "MSRVTT_JSFUSION_test.csv"),
        "full": str(root / "test_videos.txt"),
    }


def write_didemo(
    root: Path, moments: list[tuple[str, str]], split: str = "test", listed: list[str] | None = None
) -> Path:
    """``{split}_data.json`` with one entry per (video, description), and ``{split}_list.txt`` if ``listed``."""
    root.mkdir(parents=True, exist_ok=True)
    entries = [
        {
            "annotation_id": i,
            "description": text,
            "video": video,
            "times": [[0, 1], [0, 0]],
            "num_segments": 6,
        }
        for i, (video, text) in enumerate(moments)
    ]
    path = root / f"{split}_data.json"
    path.write_text(json.dumps(entries))
    if listed is not None:
        (root / f"{split}_list.txt").write_text("".join(f"{video}\n" for video in listed))
    return path


def write_ucf101_lists(root: Path, classes: list[str], train: list[str], tests: dict[int, list[str]]) -> Path:
    """``ucfTrainTestlist``: classInd.txt, trainlist01.txt (with the 1-based label) and testlist0N.txt."""
    folder = root / "ucfTrainTestlist"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classInd.txt").write_text("".join(f"{i + 1} {name}\n" for i, name in enumerate(classes)))
    label = {name: i + 1 for i, name in enumerate(classes)}
    (folder / "trainlist01.txt").write_text("".join(f"{e} {label[e.split('/')[0]]}\n" for e in train))
    for number, entries in tests.items():
        (folder / f"testlist0{number}.txt").write_text("".join(f"{e}\n" for e in entries))
    return folder


def write_hmdb51_splits(root: Path, assignments: dict[str, dict[str, tuple[int, int, int]]]) -> Path:
    """``testTrainMulti_7030_splits``: per class and split N, ``<class>_test_splitN.txt`` lines 'video 0|1|2'."""
    folder = root / "testTrainMulti_7030_splits"
    folder.mkdir(parents=True, exist_ok=True)
    for name, videos in assignments.items():
        for number in (1, 2, 3):
            lines = "".join(f"{video} {codes[number - 1]} \n" for video, codes in videos.items())
            (folder / f"{name}_test_split{number}.txt").write_text(lines)
    return folder


def touch(path: Path) -> Path:
    """An empty file (enough for readers, which only check that a video exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def colour_of(path: str) -> str:
    return next(colour for colour in ("red", "green", "blue", "yellow") if colour in Path(path).name)
