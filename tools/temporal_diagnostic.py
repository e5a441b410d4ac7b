"""Temporal diagnostic: can a head tell a video from the same frames played backwards?

    python tools/temporal_diagnostic.py [--heads mean seq_transformer vop:variant=F ...] [--steps 200]

A head is named as ``create_model`` takes it, options after a colon: ``vop:variant=F+C,num_prompts=4``.

Each head is trained (tiny model, CLIP backbone frozen, only the head's own parameters learn) to classify
generated videos of a shape crossing the frame as "forwards" or "backwards", by cross-entropy over its
similarity to the two class texts, exactly as zero-shot classification scores labels. Held-out videos are the
same frame sets in both orders, so only frame order separates the classes: an order-blind head (mean,
query_scored, x_pool) must sit at 50% — that is correct, not a bug — and an order-aware head should approach
100%. The default run covers every registered head (text-conditioned ones such as x_pool included).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import yaml

import vidclip
from vidclip.synthetic.demo_data import COLOURS, SHAPES, draw_moving_shape

CLASS_TEXTS = ("a video played forwards", "a video played backwards")


@dataclass
class DiagnosticResult:
    head: str
    declared_order_aware: bool
    trainable_parameters: int
    accuracy: float  # percent, on held-out videos


def make_videos(model: vidclip.VideoCLIP, count: int, num_frames: int, seed: int) -> torch.Tensor:
    """``count`` transformed videos (count, T, 3, S, S) of shapes moving right (played forwards)."""
    rng = np.random.default_rng(seed)
    transform = vidclip.get_video_transform(model, train=False)
    videos = []
    for i in range(count):
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        frames = draw_moving_shape(colour, shape, "right", num_frames, size=48, seed=seed * 7919 + i)
        videos.append(transform(torch.from_numpy(frames)))
    return torch.stack(videos)


def with_reversed(videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every video forwards (label 0) and backwards (label 1): (2V, T, 3, S, S), (2V,)."""
    labels = torch.cat([torch.zeros(len(videos)), torch.ones(len(videos))]).long()
    return torch.cat([videos, videos.flip(1)]), labels


def class_logits(model: vidclip.VideoCLIP, videos: torch.Tensor, class_tokens: torch.Tensor) -> torch.Tensor:
    """(V, 2) logits: 100 x cosine similarity of each video to each class text (CLIP's zero-shot scale)."""
    text = model.encode_text(class_tokens)
    return 100.0 * model.similarity(text, model.encode_video(videos)).T


def parse_head(spec: str) -> tuple[str, dict[str, object]]:
    """``"vop:variant=F,num_prompts=4,text_prompts=false"`` -> ``("vop", {"variant": "F", "num_prompts": 4,
    "text_prompts": False})``."""
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"head option {item!r} in {spec!r} is not key=value")
        options[key] = yaml.safe_load(value)  # 4 -> int, false -> bool, F+C -> str
    return name, options


def default_heads() -> list[str]:
    """Every registered head with its defaults, and VoP's variants beside its base."""
    heads = vidclip.list_heads()
    if "vop" in heads:
        heads += [f"vop:variant={variant}" for variant in ("P", "C", "F", "F+C")]
    return heads


def run_head(
    spec: str, steps: int, num_frames: int, batch_size: int, seed: int, lr: float = 1e-3
) -> DiagnosticResult:
    """Train the head named by ``spec`` on forwards/backwards videos, then score held-out ones in both orders."""
    torch.manual_seed(seed)
    name, options = parse_head(spec)
    model = vidclip.create_model("tiny", head=name, num_frames=num_frames, freeze_backbone=True, **options)
    tokens = vidclip.get_tokenizer("tiny")(list(CLASS_TEXTS))
    train_videos, train_labels = with_reversed(make_videos(model, 64, num_frames, seed))
    test_videos, test_labels = with_reversed(make_videos(model, 32, num_frames, seed + 1))
    train_head(model, tokens, train_videos, train_labels, steps, batch_size, seed, lr)
    with torch.no_grad():
        logits = class_logits(model, test_videos, tokens)
    # A tie (identical scores for both orders) is no decision: it counts as half right, i.e. chance.
    margin = logits[:, 1] - logits[:, 0]
    correct = torch.where(margin.abs() < 1e-4, 0.5, ((margin > 0).long() == test_labels).float())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    label = name + "".join(f" {key}={value}" for key, value in options.items())
    return DiagnosticResult(label, model.head.order_aware, trainable, 100 * correct.mean().item())


def train_head(
    model: vidclip.VideoCLIP,
    tokens: torch.Tensor,
    videos: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float,
) -> vidclip.VideoCLIP:
    """AdamW on the model's trainable parameters, cross-entropy over the two class texts; returns it in eval."""
    params = [p for p in model.parameters() if p.requires_grad]
    if params:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            batch = torch.randint(len(videos), (batch_size,), generator=generator)
            loss = F.cross_entropy(class_logits(model, videos[batch], tokens), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def format_table(results: list[DiagnosticResult]) -> str:
    lines = [
        "| head | order-aware (declared) | trainable parameters | forwards-vs-backwards accuracy |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `{r.head}` | {'yes' if r.declared_order_aware else 'no'} | {r.trainable_parameters:,} | {r.accuracy:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heads", nargs="+", default=default_heads())
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of every head (1e-3)")
    args = parser.parse_args(argv)
    results = []
    for name in args.heads:
        results.append(run_head(name, args.steps, args.num_frames, args.batch_size, args.seed, args.lr))
        print(f"{name}: {results[-1].accuracy:.1f}%", file=sys.stderr)
    print(format_table(results))
    print(
        f"\nchance = 50%; tiny model, backbone frozen, {args.steps} steps of batch {args.batch_size}, {args.num_frames} frames, seed {args.seed}, lr {args.lr:g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
