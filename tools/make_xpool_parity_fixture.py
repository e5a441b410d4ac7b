"""Record X-Pool's own pooling and similarities on seeded random weights, for ``tests/test_head_x_pool.py``.

    git -C /path/to/xpool archive HEAD modules config | tar -x -C /tmp/xpool    # layer6ai-labs/xpool
    python tools/make_xpool_parity_fixture.py /tmp/xpool [--out tests/fixtures/xpool_parity.safetensors]

X-Pool's ``modules/transformer.py`` (its pooling) and ``modules/metrics.py`` (its similarity matrices) are
imported from the checkout; none of its code is copied into vidclip. For 1 and 4 attention heads the tool
builds X-Pool's ``Transformer``, overwrites every parameter with seeded random values (projections far from
their identity init, LayerNorm gains and biases away from 1 and 0, so a swapped or skipped layer shows), runs
it in eval mode on random raw text features (N, D) and frames (B, T, D) with CLIP-like norms and offsets (so
LayerNorm's centring and eps matter), and saves, in one small safetensors file:

    text (N, D), frames (B, T, D), video_ids (N,)                  the inputs; text n describes video_ids[n]
    heads_H.weights.<X-Pool's key>                                 the weights, under X-Pool's own names
    heads_H.pooled (B, N, D)                                       Transformer(text, frames)
    heads_H.sims_training (N, B)                                   sim_matrix_training(text, pooled)
    heads_H.sims_inference (B, N / B, B)                           sim_matrix_inference (texts by video)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import torch

SEED = 0
NUM_TEXTS, NUM_VIDEOS, NUM_FRAMES, WIDTH = 8, 4, 7, 32
TEXTS_PER_VIDEO = NUM_TEXTS // NUM_VIDEOS
HEAD_COUNTS = (1, 4)
DROPOUT = 0.3  # X-Pool's MSR-VTT 9k setting; eval mode switches it off


def import_xpool(checkout: Path) -> types.SimpleNamespace:
    """X-Pool's pooling and metrics modules from its source tree (they import ``config`` from it too)."""
    sys.path.insert(0, str(checkout))
    from modules import metrics, transformer

    return types.SimpleNamespace(transformer=transformer, metrics=metrics)


def make_inputs(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Raw features with norms ~15 and a shared offset, as CLIP's are, not unit vectors."""
    text = 2.5 * torch.randn(NUM_TEXTS, WIDTH, generator=generator) + 0.5
    frames = 2.0 * torch.randn(NUM_VIDEOS, NUM_FRAMES, WIDTH, generator=generator) - 0.3
    video_ids = torch.arange(NUM_VIDEOS).repeat_interleave(TEXTS_PER_VIDEO)  # (N,)
    return {"text": text, "frames": frames, "video_ids": video_ids}


@torch.no_grad()
def randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter off X-Pool's init: weights N(0, 1/D), biases N(0, 0.1), LN gains 1 + N(0, 0.2)."""
    for name, param in sorted(module.named_parameters()):
        noise = torch.randn(param.shape, generator=generator)
        if "layer_norm" in name and name.endswith("weight"):
            param.copy_(1.0 + 0.2 * noise)
        elif name.endswith("weight"):
            param.copy_(noise / param.shape[1] ** 0.5)
        else:
            param.copy_(0.1 * noise)


@torch.no_grad()
def run_xpool(xpool: types.SimpleNamespace, pool: torch.nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    """X-Pool's evaluation path: pool the frames per text, then its training and inference similarities."""
    text, frames = inputs["text"], inputs["frames"]
    pooled = pool(text, frames)  # (B, N, D)
    ids = inputs["video_ids"].tolist()
    text_per_video, pooled_per_video = xpool.metrics.generate_embeds_per_video_id(
        text, pooled, ids, "transformer"
    )
    return {
        "pooled": pooled,
        "sims_training": xpool.metrics.sim_matrix_training(text, pooled, "transformer"),
        "sims_inference": xpool.metrics.sim_matrix_inference(text_per_video, pooled_per_video, "transformer"),
    }


def source_commit(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown (not a git checkout)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkout", type=Path, help="an X-Pool source tree (layer6ai-labs/xpool)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parents[1] / "tests/fixtures/xpool_parity.safetensors"
    )
    parser.add_argument("--commit", help="the X-Pool commit the tree was exported from (recorded)")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    xpool = import_xpool(args.checkout)
    generator = torch.Generator().manual_seed(SEED)
    tensors = make_inputs(generator)
    for heads in HEAD_COUNTS:
        config = types.SimpleNamespace(embed_dim=WIDTH, num_mha_heads=heads, transformer_dropout=DROPOUT)
        pool = xpool.transformer.Transformer(config).eval()
        randomise(pool, generator)
        tensors.update({f"heads_{heads}.weights.{k}": v for k, v in pool.state_dict().items()})
        outputs = run_xpool(xpool, pool, tensors)
        tensors.update({f"heads_{heads}.{k}": v for k, v in outputs.items()})
        print(f"{heads} head(s): sims_training\n{outputs['sims_training']}")
    metadata = {
        "seed": str(SEED),
        "reference": "layer6ai-labs/xpool modules/transformer.py Transformer, modules/metrics.py",
        "commit": args.commit or source_commit(args.checkout),
        "head_counts": ",".join(map(str, HEAD_COUNTS)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
