"""Benchmark: does ``vidclip search --moments`` find when an event happens in a long video?

    python tools/bench_moments.py [--videos 24] [--seconds 40 60] [--event-seconds 6 15] [--segment 4]
                                  [--steps 200] [--checkpoint RUN] [--json results.json]

Fine-tunes the tiny model on short clips of the demo's coloured shapes, labelled by colour and shape ("a red
square"; direction plays no part), then generates long videos (grey noise, 8 fps, 64 px) in which one or two
events happen at known times: a coloured shape crossing the frame from t0 to t1. They are indexed with
``vidclip index --segment S --stride S/2``, and every event is searched for by its words, ``a red square``.
Per event, two answers from the event's own video are scored by temporal IoU against the truth:
  moments:     the top moment (``VideoIndex.search(..., moments=True)``: neighbouring windows merged),
  best window: the top single window (``moments=False``), the baseline of the same run.
Prints the fraction of events found with IoU >= 0.5 and the mean IoU for both, their ratio (what merging
windows buys), and, over the whole index, each query's R-precision: of its top n results (n = its true
events, in any video), how many distinct true events they land in. The goal: most events (> 50%) at
IoU >= 0.5 with moments. ``--checkpoint`` skips the training (any run of a pooling head).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vidclip.synthetic import write_video
from vidclip.synthetic.demo_data import COLOURS, DIRECTIONS, SHAPES, draw_moving_shape, make_caption_dataset

FPS = 8


@dataclass
class Event:
    """A shape of one colour visible in ``video`` from ``start`` to ``end`` seconds."""

    video: str  # file name
    colour: str
    shape: str
    start: float
    end: float

    @property
    def query(self) -> str:
        return f"a {self.colour} {self.shape}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=24, help="long videos to generate (default 24)")
    parser.add_argument(
        "--seconds", type=float, nargs=2, default=[40.0, 60.0], metavar=("MIN", "MAX"), help="their length"
    )
    parser.add_argument(
        "--event-seconds", type=float, nargs=2, default=[6.0, 15.0], metavar=("MIN", "MAX"), help="events'"
    )
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels (default 64)")
    parser.add_argument("--segment", type=float, default=4.0, help="window length, seconds (default 4)")
    parser.add_argument("--stride", type=float, default=None, help="window step (default half a window)")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip and window (default 8)")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps (default 200)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="use this run instead of training")
    parser.add_argument("--num-workers", type=int, default=1, help="decoding workers for training/indexing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    low, high = args.event_seconds
    if args.videos < 1 or not 0 < low <= high:
        parser.error("--videos must be positive and --event-seconds MIN MAX with 0 < MIN <= MAX")
    if not 2 * high + 2 <= args.seconds[0] <= args.seconds[1]:
        parser.error("--seconds MIN MAX: MIN must leave room for two events (>= 2 x the longest + 2)")
    if args.stride is None:
        args.stride = args.segment / 2
    return args


def make_training_clips(root: Path, num_frames: int, seed: int) -> Path:
    """The demo's short clips (every colour x shape x direction, twice) labelled ``red square``: a labels csv
    for ``task=classification`` with the template ``a {}``."""
    captions = pd.read_csv(make_caption_dataset(root, copies=2, num_frames=2 * num_frames, seed=seed))
    labels = captions.assign(label=captions["caption"].str.split().str[1:3].str.join(" "))
    path = root / "labels.csv"
    labels[["video", "label"]].to_csv(path, index=False)
    return path


def fine_tune(workdir: Path, labels: Path, args: argparse.Namespace) -> Path:
    """``vidclip train`` (the demo's path): the tiny model, mean head, classifying clips as ``a red square``."""
    from vidclip.config import load_config
    from vidclip.train import train

    overrides = {
        "task": "classification",
        "output_dir": workdir / "run",
        "model.name": "tiny",
        "model.pretrained": "null",
        "model.head": "mean",
        "model.num_frames": args.num_frames,
        "data.format": "csv",
        "data.train": labels,
        "data.templates": "['a {}']",
        "data.num_workers": args.num_workers,
        "train.batch_size": 16,
        "train.max_steps": args.steps,
        "train.lr": 1e-3,
        "train.weight_decay": 0.0,
        "train.save_every": args.steps,
        "train.log_with": "none",
        "train.seed": args.seed,
    }
    code = train(load_config(overrides=[f"{key}={value}" for key, value in overrides.items()]))
    if code != 0:
        raise SystemExit(f"bench_moments: training failed with exit code {code}")
    return workdir / "run"


def make_long_videos(folder: Path, args: argparse.Namespace) -> list[Event]:
    """``args.videos`` noise videos, each with one or two non-overlapping events of distinct colour x shape."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed + 1)
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    events: list[Event] = []
    for v in range(args.videos):
        name = f"long_{v:03d}.mp4"
        total = int(rng.uniform(*args.seconds) * FPS)
        frames = np.clip(128 + rng.integers(-8, 9, size=(total, args.size, args.size, 1)), 0, 255)
        frames = frames.astype(np.uint8).repeat(3, axis=3)
        count = 1 + int(rng.integers(2))
        lengths = [int(rng.uniform(*args.event_seconds) * FPS) for _ in range(count)]
        gaps = rng.dirichlet(np.ones(count + 1)) * (total - sum(lengths))  # free time before/between/after
        at = 0.0
        for i, index in enumerate(rng.choice(len(kinds), size=count, replace=False)):
            colour, shape = kinds[index]
            at += gaps[i]
            first, length = int(at), lengths[i]
            direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
            seed = int(rng.integers(1 << 30))
            frames[first : first + length] = draw_moving_shape(
                colour, shape, direction, length, args.size, seed
            )
            events.append(Event(name, colour, shape, first / FPS, (first + length) / FPS))
            at += length
        write_video(folder / name, frames, fps=FPS, codec="libx264")
    return events


def build_index(videos: Path, out: Path, run: Path, args: argparse.Namespace) -> float:
    """``vidclip index VIDEOS --segment S --stride S/2 --checkpoint RUN``; its seconds."""
    from vidclip.commands.index import main as index_main

    argv = [str(videos), "--out", str(out), "--checkpoint", str(run), "--segment", str(args.segment)]
    argv += ["--stride", str(args.stride), "--num-workers", str(args.num_workers), "--device", "cpu"]
    start = time.perf_counter()
    if index_main(argv) != 0:
        raise SystemExit("bench_moments: vidclip index failed")
    return time.perf_counter() - start


def score_events(index, events: list[Event]) -> pd.DataFrame:
    """Per event: the temporal IoU of the top moment and of the top window in the event's own video."""
    from vidclip.index import temporal_iou

    rows = []
    everything = len(index)  # every window is a candidate: each video's best answer is in the table
    for event in events:
        row = {**asdict(event), "query": event.query}
        for method, moments in (("moment", True), ("window", False)):
            table = index.search(event.query, k=everything, moments=moments)
            own = table[table["video"].map(lambda v: Path(v).name) == event.video]
            found = (own["start"].iloc[0], own["end"].iloc[0]) if len(own) else (0.0, 0.0)
            row[f"iou_{method}"] = temporal_iou(found, (event.start, event.end))
        rows.append(row)
    return pd.DataFrame(rows)


def score_queries(index, events: list[Event]) -> pd.DataFrame:
    """Per distinct query, over the whole index: of its top ``n`` results (``n`` = the events it should find),
    how many distinct true events they land in (a result's midpoint inside one), for moments and windows:
    R-precision, where a window repeated across one event counts once."""
    rows = []
    for query in dict.fromkeys(e.query for e in events):
        truth = [e for e in events if e.query == query]
        row = {"query": query, "events": len(truth)}
        for method, moments in (("moment", True), ("window", False)):
            table = index.search(query, k=len(truth), moments=moments)
            hit = set()
            for video, start, end in zip(table["video"], table["start"], table["end"], strict=True):
                middle = (start + end) / 2
                hit |= {
                    i
                    for i, e in enumerate(truth)
                    if e.video == Path(video).name and e.start <= middle <= e.end
                }
            row[f"hits_{method}"] = len(hit)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(scores: pd.DataFrame, queries: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per method: the fraction at IoU >= 0.5 and the mean IoU in the event's video, and the R-precision over
    the whole index (true events found / events, summed over the queries)."""
    summary = {}
    for method, suffix in (("moments", "moment"), ("best window", "window")):
        iou = scores[f"iou_{suffix}"]
        summary[method] = {
            "iou_at_least_0.5": float((iou >= 0.5).mean()),
            "mean_iou": float(iou.mean()),
            "r_precision": float(queries[f"hits_{suffix}"].sum() / queries["events"].sum()),
        }
    return summary


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "inf (the baseline found none)"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from vidclip.index import VideoIndex

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        start = time.perf_counter()
        if args.checkpoint is None:
            labels = make_training_clips(workdir / "clips", args.num_frames, args.seed)
            run = fine_tune(workdir, labels, args)
        else:
            run = args.checkpoint
        train_seconds = time.perf_counter() - start
        events = make_long_videos(workdir / "long", args)
        index_seconds = build_index(workdir / "long", workdir / "index", run, args)
        index = VideoIndex.load(workdir / "index", device="cpu")
        scores, queries = score_events(index, events), score_queries(index, events)
    summary = summarise(scores, queries)
    durations = pd.Series([e.end - e.start for e in events])
    print(
        f"# bench_moments  {platform.machine()}, cpu, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{args.videos} videos of {args.seconds[0]:g}-{args.seconds[1]:g} s ({args.size} px, {FPS} fps), "
        f"{len(events)} events of {durations.min():.1f}-{durations.max():.1f} s; windows of {args.segment:g} s "
        f"every {args.stride:g} s ({len(index)} windows, indexed in {index_seconds:.0f} s); tiny model, "
        + (f"fine-tuned {args.steps} steps in {train_seconds:.0f} s" if args.checkpoint is None else str(run))
    )
    print(
        "| answer | event's video: top answer IoU >= 0.5 | its mean IoU | whole index: R-precision "
        f"({len(queries)} queries) |"
    )
    print("|---|---|---|---|")
    for method, values in summary.items():
        print(
            f"| {method} | {100 * values['iou_at_least_0.5']:.0f}% | {values['mean_iou']:.2f} | "
            f"{100 * values['r_precision']:.0f}% |"
        )
    moments, window = summary["moments"], summary["best window"]
    print(
        f"moments / best window: IoU >= 0.5 {ratio(moments['iou_at_least_0.5'], window['iou_at_least_0.5'])}, "
        f"mean IoU {ratio(moments['mean_iou'], window['mean_iou'])} (goal: moments IoU >= 0.5 for > 50%)"
    )
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary,
        "events": scores.to_dict(orient="records"),
        "queries": queries.to_dict(orient="records"),
        "train_seconds": train_seconds,
        "index_seconds": index_seconds,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
