"""Benchmark: the training loader's throughput from the original videos, the prepared ones, and their shards.

    python tools/bench_loader.py [--videos 24] [--seconds 10] [--height 720] [--num-frames 12]
                                 [--batch-size 4] [--num-workers 2] [--shards 2 4 8 24] [--epochs 2]

Generates (once, cached under ``--cache``) ``--videos`` synthetic H.264 videos of ``--seconds`` at 30 fps and
``--height`` pixels with x264's default keyframe interval (250 frames: what downloaded datasets hold), prepares
them with ``vidclip prepare``'s library (``--prepare-fps`` 3 and ``--prepare-short-side`` 224, a keyframe each
second: CLIP4Clip's settings) and packs the prepared files into WebDataset shards, one set per count in
``--shards``. Then, each in a fresh process, times the real training loader (``vidclip.data.create_train_data``:
random sampling of ``--num-frames`` frames, ViT-B/32's 224 px training transform, ``--num-workers`` loader
workers) over ``--epochs`` epochs after a warm-up epoch, from:
  A. the original files, B. the prepared files, C. the prepared shards (``data.format: webdataset``),
and samples the memory of the process and its workers (the sum of their PSS, psutil, every 20 ms); each
source ``--repeats`` times, interleaved, the median rate and the largest peak kept. Prints videos/s, the
ratios B/A (goal >= 3) and C/B (goal >= 1), the peak memory for each shard count (goal: flat), whether
evaluation from the shards gives exactly the similarity matrix of evaluation from the files (tiny model), and
the time to decode a prepared video from its file and from its bytes in memory (as from a shard).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4, 8, 24], help="shard counts to time")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each source, interleaved")
    parser.add_argument("--prepare-fps", type=float, default=3.0)
    parser.add_argument("--prepare-short-side", type=int, default=224)
    parser.add_argument(
        "--model", default="ViT-B-32", help="whose training transform (no weights are loaded)"
    )
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "vidclip-bench-loader"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child mode: one loader, JSON on stdout
    return parser.parse_args(argv)


# -- the data -------------------------------------------------------------------------------------------------
def make_sources(folder: Path, count: int, seconds: int, height: int, fps: int = 30) -> list[Path]:
    """``count`` moving-gradient H.264 videos with x264's default keyframe interval (cached)."""
    from vidclip.synthetic import write_video

    folder.mkdir(parents=True, exist_ok=True)
    width = (height * 16 // 9) // 2 * 2
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    paths = []
    for k in range(count):
        path = folder / f"clip{k:04d}.mp4"
        paths.append(path)
        if path.exists():
            continue

        def frames(k=k):
            for i in range(seconds * fps):
                frame = np.empty((height, width, 3), dtype=np.uint8)
                frame[...] = ((ramp + 3 * i + 17 * k) % 256).astype(np.uint8)
                frame[:, :, 1] = (np.arange(height)[:, None] + i + k) % 256
                yield frame

        write_video(
            path.with_suffix(".part.mp4"), frames(), fps=fps, codec="libx264", options={"preset": "veryfast"}
        )
        path.with_suffix(".part.mp4").rename(path)
    return paths


def write_captions(folder: Path, videos: list[Path]) -> Path:
    """One caption per video (so a retrieval epoch is one item per video, from files as from shards)."""
    import pandas as pd

    rows = [{"video": video.name, "caption": f"clip number {i}"} for i, video in enumerate(videos)]
    path = folder / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def prepare_all(args: argparse.Namespace) -> dict[str, str]:
    """Sources, prepared files and shard sets (all cached); the data.train spec of each loader to time."""
    from vidclip.prepare import PrepareSettings, prepare_dataset, write_shards

    cache = Path(args.cache) / f"{args.videos}x{args.seconds}s-{args.height}p"
    sources = make_sources(cache / "original", args.videos, args.seconds, args.height)
    write_captions(cache / "original", sources)
    settings = PrepareSettings(
        fps=args.prepare_fps, short_side=args.prepare_short_side, keyframe_interval=1.0
    )
    prepared = cache / f"prepared-{args.prepare_fps:g}fps-{args.prepare_short_side}"
    start = time.perf_counter()
    summary = prepare_dataset([str(cache / "original")], prepared, settings, num_workers=args.num_workers)
    if summary.ok:  # timed only when this run did the work (else it was cached)
        elapsed = time.perf_counter() - start
        print(
            f"prepare: {summary.ok} videos re-encoded in {elapsed:.1f} s with {args.num_workers} processes "
            f"({summary.ok * args.seconds / elapsed:.1f} s of video per second)",
            file=sys.stderr,
        )
    if summary.failed:
        raise SystemExit(f"bench_loader: {summary.failed} videos failed to prepare: see {prepared}")
    write_captions(prepared, sorted(prepared.glob("clip*.mp4")))
    specs = {"original": str(cache / "original" / "train.csv"), "prepared": str(prepared / "train.csv")}
    config = prepared / "annotations.yaml"
    config.write_text(f"task: retrieval\ndata:\n  format: csv\n  train: {prepared / 'train.csv'}\n")
    for count in args.shards:
        size = -(-args.videos // count)
        out = prepared.parent / f"{prepared.name}-shards-{size}"
        start = time.perf_counter()
        shards = write_shards(
            [str(prepared)], out, shard_size=size, annotations=config, num_workers=args.num_workers
        )
        if shards.skipped < shards.shards:
            print(
                f"shards: {shards.samples} samples packed into {shards.shards} shards in "
                f"{time.perf_counter() - start:.2f} s",
                file=sys.stderr,
            )
        specs[f"shards:{count}"] = str(out / "train-*.tar")
    return specs


# -- one loader, in a fresh process ---------------------------------------------------------------------------
class PeakMemory:
    """The peak memory (MiB) of this process and its loader workers, sampled every 20 ms in a thread: the sum of
    their proportional set sizes (pages shared after the fork counted once, not once per worker)."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for process in [self.process, *self.process.children(recursive=True)]:
                try:
                    total += process.memory_full_info().pss
                except Exception:  # a worker that just exited
                    pass
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(args: argparse.Namespace, kind: str, spec: str) -> dict[str, float]:
    """Videos per second of ``--epochs`` epochs of the training loader (after a warm-up one), peak memory."""
    import torch

    from vidclip.config import load_config
    from vidclip.data.loaders import create_train_data, get_caption_tokenizer
    from vidclip.model import create_model

    torch.set_num_threads(1)
    overrides = [
        "task=retrieval",
        f"model.name={args.model}",
        "model.pretrained=null",
        f"model.num_frames={args.num_frames}",
        f"data.format={'webdataset' if kind.startswith('shards') else 'csv'}",
        f"data.train={spec}",
        f"data.num_workers={args.num_workers}",
        f"train.batch_size={args.batch_size}",
        "data.sampling=random",
    ]
    config = load_config([], overrides)
    model = create_model(args.model, None, "mean", args.num_frames)
    data = create_train_data(config, model, get_caption_tokenizer(config, model), args.batch_size)
    failed = videos = 0
    with PeakMemory() as memory:
        for epoch in range(args.epochs + 1):
            if epoch == 1:
                start, videos = time.perf_counter(), 0
            data.sampler.set_epoch(epoch)
            for batch in data.loader:
                videos += len(batch["valid"])
                failed += int((~batch["valid"]).sum())
        elapsed = time.perf_counter() - start
    return {"videos_per_s": videos / elapsed, "peak_mib": memory.peak, "failed": failed, "videos": videos}


def run_child(args: argparse.Namespace, argv: list[str], kind: str, spec: str) -> dict[str, float]:
    command = [sys.executable, str(HERE), *argv, "--measure", f"{kind}={spec}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench_loader: measuring {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- evaluation from shards == from files ------------------------------------------------------------------------
def evaluation_matches(specs: dict[str, str], num_frames: int) -> bool:
    """The tiny model's retrieval similarity from the prepared files and from their first shard set, bit for bit."""
    import torch

    import vidclip
    from vidclip.config import DataConfig
    from vidclip.data import read_annotations
    from vidclip.inference.retrieval import score_retrieval

    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head="mean", num_frames=num_frames)
    shards = next(spec for kind, spec in specs.items() if kind.startswith("shards"))
    files = read_annotations(DataConfig(format="csv", test=specs["prepared"]), "retrieval", "test")
    packed = read_annotations(DataConfig(format="webdataset", test=shards), "retrieval", "test")
    a = score_retrieval(model, files, num_workers=0, batch_size=4)
    b = score_retrieval(model, packed, num_workers=2, batch_size=4)
    return bool(torch.equal(a.similarity, b.similarity))


def decode_from_bytes(prepared: Path, num_frames: int, repeats: int = 3) -> tuple[float, float]:
    """Milliseconds per video of ``load_frames`` (uniform) on the prepared files, from the path and from the
    file's bytes in memory (what a shard gives), interleaved, the best of ``repeats`` passes each."""
    from vidclip.video import load_frames

    files = sorted(prepared.glob("clip*.mp4"))
    datas = [path.read_bytes() for path in files]
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for side in (0, 1):
            start = time.perf_counter()
            for path, data in zip(files, datas, strict=True):
                if side == 0:
                    load_frames(path, num_frames)
                else:
                    load_frames(f"{path}.tar#0", num_frames, data=data)
            best[side] = min(best[side], (time.perf_counter() - start) * 1000 / len(files))
    return best[0], best[1]


def median_run(measured: list[dict[str, float]]) -> dict[str, float]:
    """The median of each figure over the repeats (the peak memory: the largest)."""
    import statistics

    merged = {key: statistics.median(run[key] for run in measured) for key in measured[0]}
    merged["peak_mib"] = max(run["peak_mib"] for run in measured)
    return merged


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.measure:
        kind, spec = args.measure.split("=", 1)
        print(json.dumps(measure(args, kind, spec)))
        return
    import torch

    specs = prepare_all(args)
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in specs}
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine colours every source alike
        for kind, spec in specs.items():
            runs[kind].append(run_child(args, argv, kind, spec))
    results = {kind: median_run(measured) for kind, measured in runs.items()}
    print(
        f"## training loader: {args.videos} videos of {args.seconds} s at {args.height}p 30 fps (x264 default "
        f"keyframe interval), {args.num_frames} frames, {args.model} transform, {args.num_workers} workers, batch "
        f"{args.batch_size}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}\n"
    )
    print("| source | videos/s | peak memory | failed |")
    print("|---|---|---|---|")
    for kind, result in results.items():
        print(
            f"| {kind} | {result['videos_per_s']:.2f} | {result['peak_mib']:.0f} MiB | {result['failed']} |"
        )
    rate = {kind: result["videos_per_s"] for kind, result in results.items()}
    shard_kinds = [kind for kind in results if kind.startswith("shards")]
    best_shards = max(rate[kind] for kind in shard_kinds)
    memory = [results[kind]["peak_mib"] for kind in shard_kinds]
    print(f"\nprepared / original: {rate['prepared'] / rate['original']:.2f}x (goal >= 3)")
    print(
        f"shards / prepared: {best_shards / rate['prepared']:.2f}x at best, "
        f"{min(rate[k] for k in shard_kinds) / rate['prepared']:.2f}x at worst (goal >= 1)"
    )
    print(
        f"peak memory over {len(shard_kinds)} shard counts: {min(memory):.0f}-{max(memory):.0f} MiB "
        f"(max/min {max(memory) / min(memory):.2f}; goal: flat)"
    )
    print(f"evaluation from shards == from files: {evaluation_matches(specs, min(args.num_frames, 4))}")
    path_ms, bytes_ms = decode_from_bytes(Path(specs["prepared"]).parent, args.num_frames)
    print(
        f"decoding a prepared video ({args.num_frames} frames): {path_ms:.1f} ms from its file, {bytes_ms:.1f} ms "
        f"from its bytes in memory ({bytes_ms / path_ms:.2f}x)"
    )


if __name__ == "__main__":
    main()
