"""The ``vidclip`` command: dispatches ``vidclip COMMAND ...`` to that command's ``main(argv) -> int``.

Commands live in their own modules and are imported only when called, so ``vidclip --help`` is instant.
Multi-GPU: ``accelerate launch -m vidclip COMMAND ...`` or ``torchrun -m vidclip COMMAND ...``.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv), one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vidclip.train", "train a model from a YAML config (retrieval or classification)"),
    "eval": (
        "vidclip.evaluate",
        "evaluate a checkpoint on a dataset config; prints a table, writes metrics JSON",
    ),
    "zeroshot": (
        "vidclip.zeroshot",
        "classify videos (or score a labelled dataset) zero-shot against text labels",
    ),
    "extract": (
        "vidclip.extract",
        "write video embeddings of files/folders/lists to Parquet parts (resumable)",
    ),
    "demo": ("vidclip.demo", "offline end-to-end demo on generated videos with the tiny model"),
}

USAGE = """usage: vidclip COMMAND [options]   (vidclip COMMAND --help for a command's options)

Video-language models from image CLIP (open_clip) with swappable temporal heads.

commands:
{commands}

example:
  vidclip extract videos/ --out embeddings/ --model ViT-B-32 --pretrained openai --num-frames 12
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = []
    for name, (_, summary) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {summary}")
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from vidclip import __version__

        print(f"vidclip {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vidclip: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, _ = COMMANDS[name]
    return importlib.import_module(module).main(rest)


if __name__ == "__main__":
    sys.exit(main())
