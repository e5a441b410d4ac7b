"""Files written whole or not at all, and folders walked safely: the two file-system helpers every part of
vidclip shares (checkpoints, configs, metrics, embedding parts; video folders and dataset roots)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Container, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; when the block succeeds, sync it and rename it to ``path``.

    A crash (or an exception in the block) never leaves a half-written file under the real name, and two
    writers never share a temporary name. The leading dot keeps readers of the folder (pyarrow's dataset
    reader, globbing for parts) from seeing the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def walk_files(folder: str | os.PathLike, extensions: Container[str] | None = None) -> Iterator[str]:
    """Paths of the files under ``folder``, sorted, hidden files and folders (``.name``) skipped, following
    symlinked folders but never into a loop; only names whose lower-cased extension is in ``extensions``
    when it is given. Paths start with ``folder`` as given (relative stays relative)."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlinked folder seen before
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if extensions is None or os.path.splitext(name)[1].lower() in extensions:
                yield os.path.join(root, name)
