"""Benchmark: ``vidclip extract`` end to end against the model-bound limit, measured in the same run.

    python tools/bench_extract.py [--videos 32] [--model ViT-B-32] [--num-frames 12] [--batch-size 8]
                                  [--num-workers 2] [--device cpu|cuda] [--precision fp32|bf16|fp16]
                                  [--decoders pyav nvdec] [--sweep 8 32 128] [--compile]

Generates (once, cached) short 480p H.264 videos, then measures:
  model-bound: the same model on frames decoded and transformed beforehand (only encode_video is timed),
  end to end:  ``vidclip extract`` on the files (decoding in DataLoader workers, or for ``nvdec`` on the GPU
               in a thread ahead of the model; Parquet parts written), once per decoder, side by side.
Prints videos/s for both and their ratio (goal on a GPU: end to end >= 90% of model-bound); the end-to-end
time also includes loading the checkpoint, measured separately and shown. Also prints how a worker's time per
video splits between decoding and the transform (what moving the transform to the GPU could save), and with
``--sweep`` model-bound at several batch sizes (where the GPU stops getting faster: the batch to use). Random weights (no download):
speed does not depend on their values. The same precision (autocast) on both sides. ``--compile`` also times model-bound with the image
tower compiled (``vidclip.inference.compile_image_tower``, what ``extract --compile`` does), compilation excluded
and shown separately, against the eager model-bound of the same run.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vidclip
from vidclip.commands.extract import main as extract_main
from vidclip.inference import autocast
from vidclip.synthetic import write_video


def make_videos(folder: Path, count: int, seconds: int = 10, height: int = 480, fps: int = 30) -> list[Path]:
    """``count`` 16:9 H.264 videos with a 1 s keyframe interval (as a prepared dataset would have)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"video_{seconds}s_{height}p_{i:04d}.mp4"
        if not path.exists():
            width = height * 16 // 9 // 2 * 2
            rng = np.random.default_rng(i)
            blocks = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
            base = blocks.repeat(8, 0).repeat(8, 1)[:height, :width]
            frames = (np.roll(base, 4 * t, axis=1) for t in range(seconds * fps))
            write_video(path, frames, fps=fps, options={"g": str(fps), "preset": "veryfast"})
        paths.append(path)
    return paths


def model_bound(
    model, paths, num_frames: int, batch_size: int, device: str, precision: str = "fp32", passes: int = 3
) -> float:
    """Videos/s of encode_video alone, on batches decoded and transformed before the clock starts (whole
    batches only, so a compiled model sees one shape); the median of ``passes`` passes over them."""
    transform = vidclip.get_video_transform(model)
    clips = [vidclip.load_frames(p, num_frames) for p in paths]
    batches = [
        (
            torch.stack([transform(c.frames) for c in clips[i : i + batch_size]]),
            torch.stack([c.mask for c in clips[i : i + batch_size]]),
        )
        for i in range(0, len(clips) - batch_size + 1, batch_size)
    ]
    with torch.no_grad(), autocast(torch.device(device), precision):
        model.encode_video(batches[0][0].to(device), batches[0][1].to(device))  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = []
        for _ in range(passes):
            start = time.perf_counter()
            for video, mask in batches:
                model.encode_video(video.to(device, non_blocking=True), mask.to(device))
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    return len(batches) * batch_size / statistics.median(seconds)


def worker_split(model, paths, num_frames: int) -> tuple[float, float]:
    """Milliseconds per video of what a worker does, on one thread as in a worker: decode, then transform."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    transform = vidclip.get_video_transform(model)
    decode_s = transform_s = 0.0
    try:
        for path in paths:
            start = time.perf_counter()
            frames = vidclip.load_video(path, num_frames)
            decode_s += time.perf_counter() - start
            start = time.perf_counter()
            transform(frames)
            transform_s += time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return 1000 * decode_s / len(paths), 1000 * transform_s / len(paths)


def compile_seconds(model, num_frames: int, batch_size: int, device: str, precision: str) -> float:
    """Compile the image tower in place; the seconds its first batch takes (compilation included)."""
    from vidclip.inference import compile_image_tower

    compile_image_tower(model)
    video = torch.zeros(batch_size, num_frames, 3, model.image_size, model.image_size, device=device)
    start = time.perf_counter()
    with torch.no_grad(), autocast(torch.device(device), precision):
        model.encode_video(video)
    return time.perf_counter() - start


def end_to_end(run_dir: Path, paths: list[Path], out: Path, args: argparse.Namespace, decoder: str) -> float:
    """Videos/s of the ``vidclip extract`` command (checkpoint loading included)."""
    shutil.rmtree(out, ignore_errors=True)
    options = ["--checkpoint", str(run_dir), "--batch-size", str(args.batch_size), "--device", args.device]
    options += ["--num-workers", str(args.num_workers), "--part-size", "1000", "--decoder", decoder]
    options += ["--precision", args.precision]
    start = time.perf_counter()
    assert extract_main([*map(str, paths), "--out", str(out), *options]) == 0
    return len(paths) / (time.perf_counter() - start)


def default_decoders() -> list[str]:
    """pyav, and nvdec where this machine can run it."""
    from vidclip.video import DecoderUnavailableError, check_decoder

    try:
        check_decoder("nvdec")
    except DecoderUnavailableError:
        return ["pyav"]
    return ["pyav", "nvdec"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10, help="length of each generated video")
    parser.add_argument("--height", type=int, default=480, help="frame height of the generated videos")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument(
        "--decoders", nargs="+", default=None, help="default: pyav, and nvdec where it can run"
    )
    parser.add_argument(
        "--sweep", type=int, nargs="+", default=[], help="also time model-bound at these batch sizes (videos)"
    )
    parser.add_argument("--compile", action="store_true", help="also time model-bound with torch.compile")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vidclip-bench-extract")
    args = parser.parse_args()

    paths = make_videos(args.cache / "videos", args.videos, args.seconds, args.height)
    model = vidclip.create_model(args.model, num_frames=args.num_frames, device=args.device).eval()
    run_dir = vidclip.save_checkpoint(model, args.cache / "run").parent
    bound = model_bound(model, paths, args.num_frames, args.batch_size, args.device, args.precision)
    start = time.perf_counter()
    vidclip.load_checkpoint(run_dir, device=args.device)
    load_seconds = time.perf_counter() - start
    totals = {
        decoder: end_to_end(run_dir, paths, args.cache / "out", args, decoder)
        for decoder in args.decoders or default_decoders()
    }
    print(
        f"# bench_extract  {platform.machine()}, {args.device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{args.model} ({args.precision}), {args.num_frames} frames, batch {args.batch_size}, {args.num_workers} workers, {len(paths)} videos of {args.seconds} s {args.height}p"
    )
    print(f"model-bound (pre-decoded tensors)  {bound:8.2f} videos/s")
    print(f"(end to end includes {load_seconds:.1f} s of checkpoint loading)")
    decode_ms, transform_ms = worker_split(model, paths[:8], args.num_frames)
    print(
        f"a worker's time per video: decode {decode_ms:.0f} ms, transform (resize, crop, normalise) "
        f"{transform_ms:.0f} ms = {100 * transform_ms / (decode_ms + transform_ms):.0f}%"
    )
    for decoder, total in totals.items():
        print(
            f"vidclip extract, decoder {decoder:<8} {total:8.2f} videos/s  = {100 * total / bound:.0f}% of "
            "model-bound (goal on a GPU >= 90%)"
        )
    if args.sweep:
        print("| batch (videos) | model-bound videos/s |\n|---|---|")
        for size in args.sweep:
            rate = model_bound(model, paths, args.num_frames, size, args.device, args.precision)
            print(f"| {size} | {rate:.2f} |")
    if args.compile:
        seconds = compile_seconds(model, args.num_frames, args.batch_size, args.device, args.precision)
        compiled = model_bound(model, paths, args.num_frames, args.batch_size, args.device, args.precision)
        print(
            f"model-bound, image tower compiled  {compiled:8.2f} videos/s  (compiling took {seconds:.0f} s)"
        )
        print(f"compiled / eager model-bound = {compiled / bound:.2f}x")


if __name__ == "__main__":
    main()
