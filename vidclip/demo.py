"""``vidclip demo``: offline, end to end, on generated videos with the tiny random model.

It generates captioned videos, decodes and samples their frames, embeds videos and captions, and ranks
captions against videos, printing what it did at each step. No download is needed anywhere.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

EPILOG = """example:
  vidclip demo                 # generate 32 videos in a temporary folder and run everything on them
  vidclip demo --workdir demo  # keep the generated videos and results in ./demo
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vidclip demo",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="folder for generated data (default: a temp dir)"
    )
    parser.add_argument("--num-frames", type=int, default=8, help="frames sampled per video (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def embed_dataset(model, csv_path: Path, num_frames: int) -> tuple[torch.Tensor, list[str]]:
    """Decode, transform and embed every video of a captions csv: (pooled (V, D), captions)."""
    import vidclip

    table = pd.read_csv(csv_path)
    transform = vidclip.get_video_transform(model, train=False)
    clips = [vidclip.load_clip(csv_path.parent / name, num_frames) for name in table["video"]]
    video = torch.stack([transform(clip.frames) for clip in clips])  # (V, T, 3, S, S)
    mask = torch.stack([clip.mask for clip in clips])  # (V, T)
    with torch.no_grad():
        features = model.encode_video(video, mask)
    return features, list(table["caption"])


def main(argv: list[str] | None = None) -> int:
    import vidclip
    from vidclip.demo_data import make_caption_dataset

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        start = time.perf_counter()
        csv_path = make_caption_dataset(workdir / "data", seed=args.seed)
        num_videos = len(pd.read_csv(csv_path))
        print(
            f"1. generated {num_videos} captioned videos in {workdir / 'data'} ({time.perf_counter() - start:.1f} s)"
        )

        model = vidclip.create_model("tiny", head="mean", num_frames=args.num_frames).eval()
        print(
            f"2. built the tiny random CLIP + 'mean' head ({sum(p.numel() for p in model.parameters()):,} parameters)"
        )

        features, captions = embed_dataset(model, csv_path, args.num_frames)
        print(
            f"3. sampled {args.num_frames} frames per video and embedded them: {tuple(features.pooled.shape)}"
        )

        tokenizer = vidclip.get_tokenizer("tiny")
        with torch.no_grad():
            sim = model.similarity(model.encode_text(tokenizer(captions)), features)
        metrics = vidclip.retrieval_metrics(sim)
        print(f"4. ranked {len(captions)} captions against {num_videos} videos:")
        print(
            "   " + "  ".join(f"{key} {value:.1f}" for key, value in metrics.items() if key.startswith("t2v"))
        )
        print(
            f"   (chance R@1 is {100 / num_videos:.1f}: the tiny model is untrained, so this is chance level)"
        )
        best = sim[0].argmax().item()
        print(f'   query "{captions[0]}" -> best video: {pd.read_csv(csv_path)["video"][best]}')
    return 0
