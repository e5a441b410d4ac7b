"""Benchmark: text-conditioned (query_scored) similarity, time and peak memory against the chunk size.

    python tools/bench_similarity.py [--texts 10000] [--videos 10000] [--frames 12] [--dim 512]
                                     [--chunks 64 256 1024] [--device cpu|cuda]

A 10k x 10k retrieval evaluation with a text-conditioned head scores every (text, video) pair over T frames.
The naive computation builds the per-text pooled videos, (N, B, D): 10k x 10k x 512 floats = 205 GB.
vidclip scores in blocks of ``chunk`` texts x ``video_chunk_size`` videos; this prints, per chunk size, the
wall time and the peak memory above the inputs (CUDA: max_memory_allocated; CPU: peak RSS of a fresh
process), and the ratio of that peak to the naive (N, B, D) tensor it avoids.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def run_one(texts: int, videos: int, frames: int, dim: int, chunk: int, device: str) -> dict[str, float]:
    """Score once with text and video chunks of ``chunk``; returns seconds and peak bytes above the inputs."""
    from vidclip.heads.query_scored import QueryScoredHead

    generator = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(texts, dim, generator=generator), dim=-1).to(device)
    feats = torch.randn(videos, frames, dim, generator=generator).to(device)
    mask = torch.ones(videos, frames, dtype=torch.bool, device=device)
    head = QueryScoredHead(video_chunk_size=chunk)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.no_grad():
        sim = torch.cat([head.score(part, feats, mask) for part in text.split(chunk)])
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    assert sim.shape == (texts, videos)
    return {"seconds": time.perf_counter() - start, "peak_bytes": float(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--one", type=int, default=None, help=argparse.SUPPRESS
    )  # child process: one chunk size
    args = parser.parse_args()
    sizes = (args.texts, args.videos, args.frames, args.dim)
    if args.one is not None:
        print(json.dumps(run_one(*sizes, args.one, args.device)))
        return
    naive = args.texts * args.videos * args.dim * 4
    print(
        f"# bench_similarity  query_scored, {args.texts} texts x {args.videos} videos x {args.frames} frames, D={args.dim}, {args.device}, torch {torch.__version__}"
    )
    print(f"naive (N, B, D) pooled tensor: {naive / 2**30:.1f} GiB (never built by vidclip)")
    print("| chunk | seconds | peak memory above inputs | peak / naive |")
    print("|---|---|---|---|")
    for chunk in args.chunks:
        # A fresh process per chunk size, so the CPU peak RSS of one does not hide the next.
        child = [sys.executable, __file__, *map(str, ["--texts", args.texts, "--videos", args.videos])]
        child += [
            *map(str, ["--frames", args.frames, "--dim", args.dim, "--device", args.device, "--one", chunk])
        ]
        result = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
        peak = result["peak_bytes"]
        print(f"| {chunk} | {result['seconds']:.2f} | {peak / 2**20:.0f} MiB | {peak / naive:.5f} |")


if __name__ == "__main__":
    main()
