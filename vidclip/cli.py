"""The ``vidclip`` command: dispatches ``vidclip COMMAND ...`` to that command's ``main(argv) -> int``.

Commands live in :mod:`vidclip.commands`, one module each, imported only when called, so ``vidclip --help`` is instant.
Multi-GPU: ``accelerate launch -m vidclip COMMAND ...`` or ``torchrun -m vidclip COMMAND ...``.
"""

from __future__ import annotations

import importlib
import sys

from vidclip.commands import COMMANDS

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
        from vidclip.version import __version__

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
