"""Benchmark: vidclip's training step against a minimal plain-PyTorch loop, measured in the same run.

    python tools/bench_train_step.py [--model ViT-B-32] [--batch-size 8] [--num-frames 12] [--steps 10]
                                     [--warmup 2] [--precision fp32|bf16|fp16] [--device cpu|cuda]
                                     [--config configs/retrieval/msrvtt_seqtransf.yaml]

vidclip: ``vidclip.train.loop.train_step`` on a ``Run`` built as ``vidclip train`` builds it (the config's
Accelerator, precision, AdamW parameter groups, schedule and gradient clipping; ``accelerator.prepare``).
reference: the same model (same weights, random init: ``pretrained=None``, nothing is downloaded) and the same
batch in a loop written here: fp32, ``torch.optim.AdamW(model.parameters(), lr)`` in its default implementation,
forward -> symmetric InfoNCE -> backward -> step -> zero_grad; no clipping, no schedule, no Accelerate.

Each side runs in a fresh process (so peak memory is its own), times ``--steps`` steps after ``--warmup``
untimed ones, and reports the median step time and peak memory (CUDA: max_memory_allocated; CPU: peak RSS).
Prints vidclip / reference (goal <= 1.0x). With ``--precision bf16|fp16`` a third row runs the reference under
plain ``torch.autocast`` (and a GradScaler for fp16), so the overhead of vidclip's step is also visible apart
from the gain of mixed precision. The first-step losses of the fp32 runs must agree: both do the same work.

Defaults: on a GPU, ViT-B-32, batch 8 x 12 frames, 10 timed steps. On a CPU, ViT-B-32 at batch 8 x 12 frames
takes 1-2 minutes a step on 2 cores, so the CPU defaults are batch 2 x 4 frames, 3 timed steps after 1
warm-up (about 2-3 minutes in all); pass the sizes to override either.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import vidclip

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "retrieval" / "msrvtt_seqtransf.yaml"
PRECISIONS = ("fp32", "bf16", "fp16")  # the words train.precision and every --precision take
# (batch size, frames, timed steps, warm-up steps) when not given; the CPU's keep a ViT-B-32 run to minutes
DEFAULT_SIZES = {"cuda": (8, 12, 10, 2), "cpu": (2, 4, 3, 1)}


def make_batch(model_name: str, image_size: int, batch_size: int, num_frames: int, device: str) -> dict:
    """A training batch as the train loader yields it: normalised frames, caption tokens, all valid."""
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(batch_size, num_frames, 3, image_size, image_size, generator=generator)
    captions = [f"a video of thing number {i} doing something" for i in range(batch_size)]
    tokens = vidclip.get_tokenizer(model_name)(captions)
    return {
        "video": video.to(device),  # (B, T, 3, S, S)
        "tokens": tokens.to(device),  # (B, L)
        "mask": torch.ones(batch_size, num_frames, dtype=torch.bool, device=device),  # (B, T)
        "valid": torch.ones(batch_size, dtype=torch.bool, device=device),  # (B,)
        "errors": [],
    }


def load_bench_config(args: argparse.Namespace, output_dir: str):
    """The config file with the benchmark's model, sizes and precision; random weights, no tracker."""
    from vidclip.config import load_config

    overrides = [
        f"model.name={args.model}",
        "model.pretrained=null",
        f"model.num_frames={args.num_frames}",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.warmup + args.steps}",
        f"train.precision={args.precision}",
        "train.grad_accumulation=1",
        "train.log_with=none",
        f"output_dir={output_dir}",
    ]
    return load_config([args.config], overrides)


def build_vidclip_step(args: argparse.Namespace, output_dir: str) -> tuple[Callable[[], float], Any]:
    """A ``Run`` as ``vidclip train`` sets it up (without data loaders), and a closure doing one train_step."""
    from accelerate.utils import set_seed

    from vidclip.optim import create_optimizer, create_scheduler
    from vidclip.train.loop import train_step
    from vidclip.train.state import Run
    from vidclip.train.trainer import create_accelerator, create_run_model

    config = load_bench_config(args, output_dir)
    accelerator = create_accelerator(config)
    set_seed(config.train.seed)
    net = create_run_model(config)
    total = config.train.max_steps
    optimizer = create_optimizer(net, config.train)
    scheduler = create_scheduler(optimizer, total, config.train.warmup)
    model, optimizer, scheduler = accelerator.prepare(net, optimizer, scheduler)
    run = Run(config, accelerator, model, net, optimizer, scheduler, None, None, None, total, total)
    batch = make_batch(args.model, net.image_size, args.batch_size, args.num_frames, str(accelerator.device))
    return lambda: float(train_step(run, batch)), accelerator.device


def build_reference_step(args: argparse.Namespace, autocast: bool) -> tuple[Callable[[], float], Any]:
    """The plain loop: the same model and weights (same seed), default AdamW, symmetric InfoNCE."""
    config = load_bench_config(args, tempfile.gettempdir())
    spec = config.model
    torch.manual_seed(config.train.seed)  # what accelerate's set_seed does for the weights
    net = vidclip.create_model(
        spec.name, None, spec.head, spec.num_frames, device=args.device, **spec.head_options
    ).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.train.lr)
    batch = make_batch(args.model, net.image_size, args.batch_size, args.num_frames, args.device)
    targets = torch.arange(args.batch_size, device=args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(args.device, enabled=autocast and args.precision == "fp16")

    def step() -> float:
        with torch.autocast(args.device, dtype=dtype, enabled=autocast):
            text = F.normalize(net.encode_text(batch["tokens"]), dim=-1)  # (B, D)
            video = net.encode_video(batch["video"], batch["mask"]).pooled  # (B, D), normalised
            logits = net.logit_scale.exp() * text.float() @ video.float().T  # (B, B)
            loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        return float(loss.detach())

    return step, torch.device(args.device)


def time_steps(step: Callable[[], float], warmup: int, steps: int, device) -> dict[str, Any]:
    """Wall and CPU seconds of each of ``steps`` steps after ``warmup`` untimed ones; the first step's loss.

    CPU time (all threads of this process) is what a step costs on a shared machine where other work
    takes turns on the cores; wall time is what a user waits.
    """
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first_loss = step()
    for _ in range(warmup - 1):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu, "first_loss": first_loss}


def peak_memory(device) -> float:
    """Peak bytes of this process: CUDA max_memory_allocated, or the peak resident set size on a CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB


def run_side(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: build one side, time it, return its numbers."""
    with tempfile.TemporaryDirectory() as output_dir:
        if args.side == "vidclip":
            step, device = build_vidclip_step(args, output_dir)
        else:
            step, device = build_reference_step(args, autocast=args.side == "reference-amp")
        result = time_steps(step, args.warmup, args.steps, device)
    return {**result, "peak_bytes": peak_memory(device)}


def spawn_side(side: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one side in a fresh Python process (own memory peak, own Accelerate state); its JSON result."""
    command = [sys.executable, __file__, "--side", side, "--config", str(args.config), "--model", args.model]
    command += ["--batch-size", str(args.batch_size), "--num-frames", str(args.num_frames)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--precision", args.precision, "--device", args.device]
    command += ["--threads", str(args.threads)] if args.threads else []
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # Accelerate would otherwise pick a GPU for the vidclip side
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the {side} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (random weights), or tiny")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the training config to take")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on a GPU, 2 on a CPU")
    parser.add_argument("--num-frames", type=int, default=None, help="default: 12 on a GPU, 4 on a CPU")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps; default 10 on a GPU, 3 on a CPU"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first; default 2 / 1")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (torch.set_num_threads); default: torch's"
    )
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)  # child process: one side
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    defaults = DEFAULT_SIZES[args.device]
    for name, default in zip(("batch_size", "num_frames", "steps", "warmup"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    return args


def describe_machine(device: str, threads: int) -> str:
    """Machine, device, versions and date, for the header line."""
    where = torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()} cores, {threads} threads"
    return f"{platform.machine()}, {device} ({where}), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    """The table and the ratio lines (wall time; on a CPU also CPU time)."""
    cpu = args.device == "cpu"
    memory = "peak RSS" if cpu else "CUDA max allocated"
    print(f"| side | median step (wall) |{' median CPU time |' if cpu else ''} {memory} | first-step loss |")
    print(f"|---|---|{'---|' if cpu else ''}---|---|")
    for side, result in results.items():
        cpu_cell = f" {1000 * statistics.median(result['cpu']):.0f} ms |" if cpu else ""
        print(
            f"| {side} | {1000 * statistics.median(result['wall']):.0f} ms |{cpu_cell} "
            f"{result['peak_bytes'] / 2**20:.0f} MiB | {result['first_loss']:.4f} |"
        )
    for baseline in [side for side in results if side != "vidclip"]:
        ratios = [("wall", "")] + ([("cpu", ", CPU time")] if cpu else [])
        for key, label in ratios:
            ratio = statistics.median(results["vidclip"][key]) / statistics.median(results[baseline][key])
            print(f"vidclip / {baseline}{label} = {ratio:.2f}x   (goal <= 1.0x)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.side is not None:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_side(args)))
        return
    sides = ["reference", "vidclip"] + (["reference-amp"] if args.precision != "fp32" else [])
    print(
        f"# bench_train_step  {describe_machine(args.device, args.threads or torch.get_num_threads())}",
        flush=True,
    )
    print(
        f"{args.model} (random weights) + {args.config.stem}, batch {args.batch_size} x {args.num_frames} frames, "
        f"vidclip {args.precision}, reference fp32; median of {args.steps} steps after {args.warmup} warm-up",
        flush=True,
    )
    report(args, {side: spawn_side(side, args) for side in sides})


if __name__ == "__main__":
    main()
