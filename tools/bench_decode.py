"""Benchmark: vidclip.load_video against the research-repo way and bare decord, measured in the same run.

    python tools/bench_decode.py [--seconds 60] [--height 480] [--num-frames 12] [--repeats 5] [--gops 250 30]

Generates (once, cached) synthetic H.264 videos of the given length at 30 fps, one per keyframe interval
(250 = x264's default; 30 = one second, typical of streaming encodes and of re-encoded training sets), then
times, per call:
  A. decode every frame to RGB and keep the sampled ones (what CLIP4Clip-style loaders do),
  B. bare ``decord.VideoReader(path).get_batch(indices)`` (the floor for a decord-based loader),
  C. ``vidclip.load_video(path, num_frames, "uniform")``.
Prints the medians and the ratios A/C (goal >= 10) and C/B (goal <= 1.25). Then dense sampling of a prepared
file (a key frame every 3 frames, ``--dense-frames`` of ``--dense-total`` frames wanted): C against the same
reader seeking before every wanted frame it can (``MIN_FRAMES_SKIPPED = 1``, what it did before) and against
decoding every frame. Where they can run, the torchcodec
backends are timed too, against C: ``torchcodec`` on the CPU, and ``nvdec`` on the GPU (frames left on the GPU,
timed to ``torch.cuda.synchronize()``).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vidclip
from vidclip.synthetic import write_video


def make_video(path: Path, seconds: int, height: int, gop: int, fps: int = 30) -> Path:
    """A moving-gradient H.264 video with a keyframe every ``gop`` frames."""
    if path.exists():
        return path
    width = (height * 16 // 9) // 2 * 2
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]

    def frames():
        for i in range(seconds * fps):
            frame = np.empty((height, width, 3), dtype=np.uint8)
            frame[...] = ((ramp + 3 * i) % 256).astype(np.uint8)
            frame[:, :, 1] = (np.arange(height)[:, None] + i) % 256
            yield frame

    write_video(
        path, frames(), fps=fps, codec="libx264", options={"preset": "veryfast", "crf": "23", "g": str(gop)}
    )
    return path


def decode_every_frame(path: Path, indices: list[int]) -> np.ndarray:
    """Baseline A: decode and convert every frame, keep the sampled ones."""
    import av

    wanted, kept = set(indices), []
    with av.open(str(path)) as container:
        container.streams.video[0].thread_type = "AUTO"  # the same frame threading vidclip uses
        for position, frame in enumerate(container.decode(video=0)):
            rgb = frame.to_ndarray(format="rgb24")
            if position in wanted:
                kept.append(rgb)
    return np.stack(kept)


def bare_decord(path: Path, indices: list[int]) -> np.ndarray:
    """Baseline B: decord's get_batch with the same indices, nothing else."""
    import decord

    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1).get_batch(indices).asnumpy()


def median_time(repeats: int, fn, *args) -> float:
    """Median wall time of ``fn(*args)`` over ``repeats`` calls (GPU work included: synchronised)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def other_backends() -> list[str]:
    """The torchcodec decoders this machine can run."""
    from vidclip.video import DecoderUnavailableError, check_decoder

    usable = []
    for name in ("torchcodec", "nvdec"):
        try:
            check_decoder(name)
            usable.append(name)
        except DecoderUnavailableError as err:
            print(f"({name} not measured: {err})")
    return usable


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gops", type=int, nargs="+", default=[250, 30])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vidclip-bench")
    parser.add_argument("--dense-total", type=int, default=240, help="frames of the prepared file (30 fps)")
    parser.add_argument("--dense-frames", type=int, nargs="+", default=[24, 48, 120])
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    num_total = args.seconds * 30
    indices = vidclip.sample_indices(num_total, args.num_frames, "uniform").tolist()
    print(
        f"# bench_decode  {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{args.seconds} s {args.height}p H.264 at 30 fps ({num_total} frames), {args.num_frames} frames sampled uniformly"
    )
    others = other_backends()
    print(
        "| keyframe interval | A: decode every frame | B: bare decord | C: vidclip.load_video | A/C (goal >= 10) | C/B (goal <= 1.25) |"
    )
    print("|---|---|---|---|---|---|")
    rows = []
    for gop in args.gops:
        path = make_video(
            args.cache / f"bench_{args.seconds}s_{args.height}p_g{gop}.mp4", args.seconds, args.height, gop
        )
        ours = vidclip.load_video(path, args.num_frames, "uniform")
        assert np.array_equal(ours.numpy(), decode_every_frame(path, indices)), "load_video is not exact"
        time_a = median_time(max(1, args.repeats // 2), decode_every_frame, path, indices)
        time_b = median_time(args.repeats, bare_decord, path, indices)
        time_c = median_time(args.repeats, vidclip.load_video, path, args.num_frames, "uniform")
        print(
            f"| {gop} | {1000 * time_a:.0f} ms | {1000 * time_b:.0f} ms | {1000 * time_c:.0f} ms "
            f"| {time_a / time_c:.1f}x | {time_c / time_b:.2f}x |"
        )
        for name in others:
            frames = vidclip.load_video(path, args.num_frames, "uniform", decoder=name).cpu().numpy()
            difference = np.abs(frames.astype(np.int16) - ours.numpy().astype(np.int16)).mean()
            decode = functools.partial(vidclip.load_video, decoder=name)
            seconds = median_time(args.repeats, decode, path, args.num_frames, "uniform")
            rows.append(
                f"| {gop} | {name} | {1000 * seconds:.0f} ms | {seconds / time_c:.2f}x | {difference:.3f} |"
            )
    if rows:
        print("\n| keyframe interval | backend | time | / C | mean abs difference from C (0-255) |")
        print("|---|---|---|---|---|")
        print("\n".join(rows))
    dense(args)


def dense(args: argparse.Namespace) -> None:
    """Dense sampling of a prepared file: decoding forward vs seeking before every wanted frame."""
    from vidclip.video.decoders import pyav

    seconds = max(1, args.dense_total // 30)
    path = make_video(args.cache / f"bench_dense_{seconds}s_{args.height}p_g3.mp4", seconds, args.height, 3)
    total = seconds * 30
    print(f"\ndense sampling: {seconds} s {args.height}p H.264, a key frame every 3 frames ({total} frames)")
    print(
        "| frames wanted | seek before each | vidclip.load_video | decode every frame | seek / load_video |"
    )
    print("|---|---|---|---|---|")
    for count in args.dense_frames:
        indices = vidclip.sample_indices(total, count, "uniform").tolist()
        ours = vidclip.load_video(path, count, "uniform")
        assert np.array_equal(ours.numpy(), decode_every_frame(path, indices)), "load_video is not exact"
        threshold, pyav.MIN_FRAMES_SKIPPED = pyav.MIN_FRAMES_SKIPPED, 1
        try:
            seeking = median_time(args.repeats, vidclip.load_video, path, count, "uniform")
        finally:
            pyav.MIN_FRAMES_SKIPPED = threshold
        forward = median_time(args.repeats, vidclip.load_video, path, count, "uniform")
        every = median_time(max(1, args.repeats // 2), decode_every_frame, path, indices)
        print(
            f"| {count} | {1000 * seeking:.0f} ms | {1000 * forward:.0f} ms | {1000 * every:.0f} ms "
            f"| {seeking / forward:.2f}x |"
        )


if __name__ == "__main__":
    main()
