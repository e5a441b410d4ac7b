"""Benchmark: peak memory of ``vidclip extract`` and ``vidclip eval`` at N and 4N videos (streaming, not holding).

    python tools/bench_memory.py [--videos 200] [--factor 4] [--model tiny] [--head mean] [--num-frames 32]
                                 [--batch-size 16] [--num-workers 2] [--repeats 1] [--commands extract eval]

Generates (once, cached) ``factor x videos`` small captioned videos (coloured shapes moving, 64 px), then runs
each command on the first N and on all of them, each run in a fresh Python process, and reads that process's
peak resident set size (``getrusage``: RUSAGE_SELF for the command's main process, RUSAGE_CHILDREN for its
largest decoding worker). Random weights, nothing downloaded. With several ``--repeats`` the lowest peak counts.

Each run is made twice (``--allocators``): with glibc's malloc as it comes (``default``), and with
``MALLOC_MMAP_THRESHOLD_=131072`` (``fixed``). By default
glibc raises its mmap threshold as the program frees large blocks, after which freed forward-pass temporaries
stay in the process's heap: RSS then grows with the number of batches by an amount that changes from run to
run although nothing is held (counted: the live tensors after eval's encoding are the model and the features).
A fixed threshold returns freed blocks of 128 KiB and more to the system, so the ``fixed`` column tracks what the
command really holds.

extract streams: a batch is decoded, embedded and written out, so its peak should not grow with N (goal: ratio
close to 1.0). eval must keep every video's frame features (V, T, D) and the (N_text, V) similarity, which do
grow; the growth line puts the measured growth beside what those results take and beside what holding the
decoded frames (V, T, 3, S, S) would take, which streaming avoids.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

COMMANDS = ("extract", "eval")
# glibc's malloc as it comes, and with a fixed mmap threshold (freed blocks of 128 KiB and more go back)
ALLOCATORS = {"default": {}, "fixed": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def make_videos(root: Path, count: int, num_frames: int, size: int = 64) -> list[tuple[str, str]]:
    """``count`` captioned clips under ``root/videos`` (kept between runs); (path relative to root, caption)."""
    from vidclip.synthetic import write_video
    from vidclip.synthetic.demo_data import COLOURS, DIRECTIONS, SHAPES, draw_moving_shape

    combos = [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        colour, shape, direction = combos[i % len(combos)]
        name = f"videos/clip_{i:05d}_{num_frames}f_{size}px.mp4"
        if not (root / name).exists():
            frames = draw_moving_shape(colour, shape, direction, num_frames=num_frames, size=size, seed=i)
            tmp = root / f"{name}.tmp.mp4"
            write_video(tmp, frames, fps=8)
            os.replace(tmp, root / name)  # an interrupted generation leaves no half-written video behind
        rows.append((name, f"a {colour} {shape} moving {direction}"))
    return rows


def write_inputs(root: Path, rows: list[tuple[str, str]]) -> tuple[Path, Path]:
    """For ``rows``: a video list for extract (absolute paths) and an eval config over a captions CSV."""
    tag = f"{len(rows)}"
    listing = root / f"videos_{tag}.txt"
    listing.write_text("".join(f"{root / name}\n" for name, _ in rows))
    captions = root / f"captions_{tag}.csv"
    with open(captions, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption"])
        writer.writerows(rows)
    config = root / f"eval_{tag}.yaml"
    config.write_text(f"task: retrieval\ndata:\n  format: csv\n  test: {captions}\n  video_root: {root}\n")
    return listing, config


def command_args(command: str, listing: Path, config: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """The argv of ``vidclip extract`` or ``vidclip eval`` for one size."""
    model = ["--model", args.model, "--head", args.head, "--num-frames", str(args.num_frames)]
    running = [
        "--batch-size",
        str(args.batch_size),
        "--num-workers",
        str(args.num_workers),
        "--device",
        "cpu",
    ]
    if command == "extract":
        return [str(listing), "--out", str(out), *model, *running]
    return ["--config", str(config), *model, *running, "--output", str(out / "metrics.json")]


def run_child(command: str, argv: list[str]) -> dict[str, float]:
    """In the child process: run the command's ``main`` here and report this process's peaks."""
    from vidclip.commands.eval import main as eval_main
    from vidclip.commands.extract import main as extract_main

    start = time.perf_counter()
    code = {"extract": extract_main, "eval": eval_main}[command](argv)
    if code != 0:
        raise SystemExit(f"vidclip {command} exited with {code}")
    kib = 1024  # Linux reports ru_maxrss in KiB
    return {
        "main_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        "worker_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
        "seconds": time.perf_counter() - start,
    }


def spawn(command: str, argv: list[str], allocator: str) -> dict[str, float]:
    """Run one command in a fresh Python process (its own peak, untouched by earlier runs); its numbers."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **ALLOCATORS[allocator]}
    child = [sys.executable, __file__, "--child", command, "--", *argv]
    done = subprocess.run(child, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"vidclip {command} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def expected_bytes(model_info: dict[str, int], videos: int, texts: int, num_frames: int) -> dict[str, int]:
    """What eval must hold for ``videos`` (frame features and similarity, float32), and what holding the
    transformed frames (V, T, 3, S, S) float32 would add."""
    size, dim = model_info["image_size"], model_info["embed_dim"]
    return {
        "results": 4 * (videos * num_frames * dim + videos * dim + texts * videos),
        "frames": 4 * videos * num_frames * 3 * size * size,
    }


def describe_model(name: str, head: str, num_frames: int) -> dict[str, int]:
    """Image size S and embedding width D of the model the commands build."""
    import vidclip

    model = vidclip.create_model(name, None, head, num_frames)
    with torch.no_grad():
        dim = model.encode_text(vidclip.get_tokenizer(name)(["x"])).shape[-1]
    return {"image_size": model.image_size, "embed_dim": int(dim)}


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def growth_line(command: str, peaks: dict[int, float], info: dict, num_frames: int) -> str:
    """Peak at the larger size over the smaller; for eval, beside what its results and held frames would take."""
    small, large = sorted(peaks)
    low, high = peaks[small], peaks[large]
    line = f"{command}: peak {large} / {small} videos = {high / low:.2f}x (growth {mib(high - low)})"
    if command != "eval":
        return line + "   (goal: close to 1.0)"
    grown = {
        key: expected_bytes(info, large, large, num_frames)[key]
        - expected_bytes(info, small, small, num_frames)[key]
        for key in ("results", "frames")
    }
    return line + (
        f"; its results (frame features + similarity) grow by {mib(grown['results'])}, holding the decoded "
        f"frames would add {mib(grown['frames'])}"
    )


def report(results: dict[str, dict[str, dict[int, list[dict]]]], info: dict, num_frames: int) -> None:
    """The table of peaks (lowest of the repeats) under each allocator setting, then the growth lines."""
    names = list(results)
    print(
        "| command | videos | "
        + " | ".join(f"main process peak RSS, {name} malloc" for name in names)
        + " | largest worker peak RSS | seconds |"
    )
    print("|---|---|" + "---|" * len(names) + "---|---|")
    peaks = {name: {command: {} for command in results[name]} for name in names}
    first = results[names[0]]
    for command, by_size in first.items():
        for count, runs in by_size.items():
            for name in names:
                peaks[name][command][count] = min(run["main_bytes"] for run in results[name][command][count])
            cells = " | ".join(mib(peaks[name][command][count]) for name in names)
            worker = min(run["worker_bytes"] for run in runs)
            seconds = min(run["seconds"] for run in runs)
            print(f"| {command} | {count} | {cells} | {mib(worker)} | {seconds:.1f} |")
    for name in names:
        for command in first:
            print(f"{name} malloc: {growth_line(command, peaks[name][command], info, num_frames)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=200, help="N, the smaller set (default 200)")
    parser.add_argument("--factor", type=int, default=4, help="the larger set is factor x N (default 4)")
    parser.add_argument("--model", default="tiny", help="open_clip model name, random weights (default tiny)")
    parser.add_argument("--head", default="mean", help="a text-independent head (extract needs one)")
    parser.add_argument("--num-frames", type=int, default=32, help="frames sampled per video (default 32)")
    parser.add_argument("--video-frames", type=int, default=32, help="frames in each generated video")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per command and size; the lowest peak counts (default 1)"
    )
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    parser.add_argument(
        "--allocators", nargs="+", choices=list(ALLOCATORS), default=list(ALLOCATORS), help="malloc settings"
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vidclip-bench-memory")
    parser.add_argument("--child", choices=COMMANDS, help=argparse.SUPPRESS)  # child process: one command
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("videos", "num_frames", "video_frames", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.factor < 2:
        parser.error(f"--factor must be at least 2, got {args.factor}")
    if args.num_workers < 0:
        parser.error(f"--num-workers must be 0 or more, got {args.num_workers}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, [a for a in args.rest if a != "--"])))
        return
    sizes = [args.videos, args.videos * args.factor]
    rows = make_videos(args.cache, sizes[-1], args.video_frames)
    info = describe_model(args.model, args.head, args.num_frames)
    print(
        f"# bench_memory  {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{args.model} + {args.head} (random weights, S={info['image_size']}, D={info['embed_dim']}), "
        f"{args.num_frames} frames of 64 px {args.video_frames}-frame videos, batch {args.batch_size}, "
        f"{args.num_workers} workers, CPU",
        flush=True,
    )
    results = {
        name: {command: {count: [] for count in sizes} for command in args.commands}
        for name in args.allocators
    }
    inputs = {count: write_inputs(args.cache, rows[:count]) for count in sizes}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):  # sizes alternate, so a slow drift of the machine hits both
            for count in sizes:
                for command in args.commands:
                    for index, name in enumerate(args.allocators):
                        out = Path(scratch) / f"{command}_{count}_{repeat}_{index}"
                        out.mkdir()
                        argv = command_args(command, *inputs[count], out, args)
                        results[name][command][count].append(spawn(command, argv, name))
    report(results, info, args.num_frames)


if __name__ == "__main__":
    main()
