"""Benchmark: ``vidclip index --segment`` on one long video against the model-bound limit, in the same run.

    python tools/bench_index_video.py [--seconds 120] [--height 224] [--model ViT-B-32] [--num-frames 12]
                                      [--segment 4] [--stride 2] [--num-workers 1] [--device cpu|cuda]
                                      [--json results.json]

Generates (once, cached) one long 16:9 H.264 video at 30 fps, then measures in frames encoded per second:
  model-bound: the image tower alone on the very frames the index encodes (the windows' frame grid, each
               frame once: overlapping windows share frames), decoded and transformed before the clock starts,
               in the chunks the index encodes them in; the windows' pooling is included;
  end to end:  ``vidclip index VIDEO --segment S --stride S/2 --checkpoint RUN`` (streaming decode in a
               DataLoader worker, Parquet rows, FAISS index; checkpoint loading measured apart and shown).
Windows share frames, so frames encoded (not windows) is the unit of both. Also shown: decode-bound, the
decode and transform alone (one video is decoded by one worker, from the start, every frame: at 30 fps and
a frame every S/T seconds, ~10 frames decoded per frame encoded), which caps end to end on a fast model. Prints both rates and their ratio
(goal on a GPU: end to end >= 90% of model-bound). Random weights (no download): speed does not depend on
their values.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vidclip
from vidclip.inference import autocast
from vidclip.synthetic import write_video

FPS = 30


def make_video(folder: Path, seconds: int, height: int) -> Path:
    """A ``seconds`` long 16:9 video of moving random blocks, a keyframe every second."""
    path = folder / f"long_{seconds}s_{height}p.mp4"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        width = height * 16 // 9 // 2 * 2
        rng = np.random.default_rng(0)
        blocks = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        base = blocks.repeat(8, 0).repeat(8, 1)[:height, :width]
        frames = (np.roll(base, 2 * t, axis=1) for t in range(seconds * FPS))
        write_video(path, frames, fps=FPS, options={"g": str(FPS), "preset": "veryfast"})
    return path


def wanted_frames(model, path: Path, args: argparse.Namespace):
    """The index's window plan for ``path`` and its frames (each once), decoded and transformed: (N, 3, S, S)."""
    from vidclip.index.segments import CHUNK_FRAMES, plan_windows
    from vidclip.video import iter_frames, open_video

    reader = open_video(path)
    try:
        plan = plan_windows(
            reader.num_frames,
            reader.fps,
            segment=args.segment,
            stride=args.stride,
            frames_per_window=args.num_frames,
        )
        transform = vidclip.get_video_transform(model, train=False)
        frames = [frame for _, frame in iter_frames(reader, plan.wanted(), CHUNK_FRAMES)]
    finally:
        reader.close()
    pixels = torch.cat([transform(torch.stack(frames[i : i + 64])) for i in range(0, len(frames), 64)])
    return plan, pixels


def model_bound(model, plan, pixels: torch.Tensor, args: argparse.Namespace, passes: int = 3) -> float:
    """Frames/s of the image tower on ``pixels`` in the index's chunks, plus pooling every window from the
    features; the median of ``passes`` passes (after one warm-up chunk)."""
    from vidclip.index.segments import CHUNK_FRAMES

    device = torch.device(args.device)
    position = {index: i for i, index in enumerate(plan.wanted())}
    windows = torch.tensor([[position[i] for i in frames] for frames in plan.frames])  # (W, T) into pixels
    mask = torch.tensor(plan.mask, device=device)
    seconds = []
    with torch.inference_mode(), autocast(device, args.precision):
        model.clip.encode_image(pixels[:CHUNK_FRAMES].to(device))
        for _ in range(passes):
            _sync(device)
            start = time.perf_counter()
            features = torch.cat(
                [
                    model.clip.encode_image(
                        pixels[i : i + CHUNK_FRAMES].to(device, non_blocking=True)
                    ).float()
                    for i in range(0, len(pixels), CHUNK_FRAMES)
                ]
            )
            model.head.pool(features[windows.to(device)], mask)
            _sync(device)
            seconds.append(time.perf_counter() - start)
    return len(pixels) / statistics.median(seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def end_to_end(run_dir: Path, video: Path, out: Path, args: argparse.Namespace) -> float:
    """Seconds of the ``vidclip index --segment`` command (checkpoint loading included)."""
    from vidclip.commands.index import main as index_main

    shutil.rmtree(out, ignore_errors=True)
    argv = [str(video), "--out", str(out), "--checkpoint", str(run_dir), "--segment", str(args.segment)]
    argv += ["--stride", str(args.stride), "--num-workers", str(args.num_workers), "--device", args.device]
    argv += ["--precision", args.precision]
    start = time.perf_counter()
    if index_main(argv) != 0:
        raise SystemExit("bench_index_video: vidclip index failed")
    return time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=120, help="length of the generated video")
    parser.add_argument("--height", type=int, default=224, help="its frame height")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--num-frames", type=int, default=12, help="frames per window")
    parser.add_argument("--segment", type=float, default=4.0)
    parser.add_argument("--stride", type=float, default=None, help="default half a window")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vidclip-bench-index")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.stride is None:
        args.stride = args.segment / 2
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    video = make_video(args.cache / "videos", args.seconds, args.height)
    model = vidclip.create_model(args.model, num_frames=args.num_frames, device=args.device).eval()
    run_dir = vidclip.save_checkpoint(model, args.cache / "run").parent
    start = time.perf_counter()
    plan, pixels = wanted_frames(model, video, args)
    decode_seconds = time.perf_counter() - start
    bound = model_bound(model, plan, pixels, args)
    start = time.perf_counter()
    vidclip.load_checkpoint(run_dir, device=args.device)
    load_seconds = time.perf_counter() - start
    seconds = end_to_end(run_dir, video, args.cache / "index", args)
    encoded = len(pixels)
    total = encoded / seconds
    unloaded = encoded / max(seconds - load_seconds, 1e-9)
    print(
        f"# bench_index_video  {platform.machine()}, {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{args.model} ({args.precision}, random weights), one {args.seconds} s {args.height}p {FPS} fps video: "
        f"{len(plan.frames)} windows of {args.segment:g} s every {args.stride:g} s x {args.num_frames} frames "
        f"= {encoded} distinct frames encoded ({len(plan.frames) * args.num_frames} window frames)"
    )
    print(f"model-bound (transformed frames in memory)  {bound:8.1f} frames/s")
    print(
        f"decode-bound (one worker's streaming decode + transform alone) {encoded / decode_seconds:8.1f} frames/s "
        f"({args.seconds * FPS} frames decoded for {encoded} encoded)"
    )
    print(
        f"vidclip index --segment, end to end         {total:8.1f} frames/s  = {100 * total / bound:.0f}% of "
        f"model-bound (goal on a GPU >= 90%)  [{seconds:.1f} s, of which {load_seconds:.1f} s loading the checkpoint]"
    )
    print(
        f"the same without the checkpoint's loading   {unloaded:8.1f} frames/s  = {100 * unloaded / bound:.0f}% of "
        "model-bound"
    )
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "frames_encoded": encoded,
        "windows": len(plan.frames),
        "model_bound_frames_per_s": bound,
        "end_to_end_frames_per_s": total,
        "ratio": total / bound,
        "ratio_without_loading": unloaded / bound,
        "end_to_end_seconds": seconds,
        "checkpoint_load_seconds": load_seconds,
        "decode_bound_frames_per_s": encoded / decode_seconds,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
