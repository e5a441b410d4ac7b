"""The ``vidclip`` commands: one module each, with ``main(argv) -> int``, sharing :mod:`.common`.

Commands use the library; the library never imports this package (``tests/test_layout.py`` checks it). A new
command is one module here with a ``main`` and a line in :data:`COMMANDS`.
"""

from __future__ import annotations

# name -> (module with main(argv), one-line summary); modules are imported only when their command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vidclip.commands.train", "train a model from a YAML config (retrieval or classification)"),
    "eval": (
        "vidclip.commands.eval",
        "evaluate a checkpoint on a dataset config; prints a table, writes metrics JSON",
    ),
    "zeroshot": (
        "vidclip.commands.zeroshot",
        "classify videos (or score a labelled dataset) zero-shot against text labels",
    ),
    "extract": (
        "vidclip.commands.extract",
        "write video embeddings of files/folders/lists to Parquet parts (resumable)",
    ),
    "index": (
        "vidclip.commands.index",
        "embed videos (or windows of long videos) into a searchable FAISS index (resumable)",
    ),
    "prepare": (
        "vidclip.commands.prepare",
        "re-encode a dataset for fast loading: fps, size, keyframes (resumable)",
    ),
    "search": ("vidclip.commands.search", "search an index with a sentence (or a video): videos or moments"),
    "serve": ("vidclip.commands.serve", "a web page to search an index"),
    "demo": ("vidclip.commands.demo", "offline end-to-end demo on generated videos with the tiny model"),
}
