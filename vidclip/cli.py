"""The ``vidclip`` command: dispatches ``vidclip COMMAND ...`` to that command's ``main(argv) -> int``.

Commands live in their own modules and are imported only when called, so ``vidclip --help`` is instant.
Multi-GPU: ``accelerate launch -m vidclip COMMAND ...`` or ``torchrun -m vidclip COMMAND ...``.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv), one-line summary); module None = not built yet in this version.
COMMANDS: dict[str, tuple[str | None, str]] = {
    "train": ("vidclip.train", "train a model from a YAML config (retrieval or classification)"),
    "eval": (None, "evaluate a checkpoint on a dataset config; prints a table, writes metrics JSON"),
    "zeroshot": (None, "classify videos zero-shot against text labels"),
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
    for name, (module, summary) in COMMANDS.items():
        note = "" if module else "  [not available yet in this version]"
        lines.append(f"  {name:<{width}}  {summary}{note}")
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
    if module is None:
        print(
            f"vidclip {name}: not available yet in this version of vidclip (it is planned; "
            "see the README's roadmap). Available now: "
            + ", ".join(n for n, (m, _) in COMMANDS.items() if m),
            file=sys.stderr,
        )
        return 2
    return importlib.import_module(module).main(rest)


if __name__ == "__main__":
    sys.exit(main())
