"""Write the generated dataset that ``configs/demo.yaml`` trains on (no download).

    python tools/make_demo_data.py data/demo [--copies 1] [--frames 16]

``OUT/captions.csv`` (video, caption: "a red square moving left") for retrieval and ``OUT/labels.csv``
(video, label: the colour) for classification, both in vidclip's csv format, videos under ``OUT/videos``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from vidclip.synthetic.demo_data import make_caption_dataset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--copies", type=int, default=1, help="videos per colour x shape x direction")
    parser.add_argument("--frames", type=int, default=16, help="frames per video")
    args = parser.parse_args()
    captions = make_caption_dataset(args.out, copies=args.copies, num_frames=args.frames)
    table = pd.read_csv(captions)
    labels = table.assign(label=table["caption"].str.split().str[1])[["video", "label"]]
    labels.to_csv(args.out / "labels.csv", index=False)
    print(f"wrote {len(table)} videos, {captions} and {args.out / 'labels.csv'}")


if __name__ == "__main__":
    main()
