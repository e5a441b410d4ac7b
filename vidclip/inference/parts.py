"""Embedding tables as Parquet part files in a folder: written atomically, read back whole, one model each.

A folder holds ``part-IIIIIIII-XXXXXXXXXXXX.parquet`` files (``IIIIIIII``: the input position of the part's
first row, ``X``: a random token, so no run ever overwrites another's part and separate processes can write
side by side). ``pandas.read_parquet(folder)`` reads them as one table, one row per video: a video retried
after a failure takes its failed row's place by an atomic rewrite of that row's part (:func:`replace_rows`),
never a second row. Every part's schema metadata records
the model it was made with (:func:`model_identity`), and rows of another model are refused: embeddings of two
models are not comparable. Used by ``vidclip extract`` (and readable by FAISS tooling such as autofaiss).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vidclip.fileio import atomic_path
from vidclip.model import VideoCLIP

PART_PATTERN = "part-*.parquet"
METADATA_KEY = b"vidclip.extract"


class PartsError(ValueError):
    """A parts folder that cannot take these rows (another model's, or not a parts folder); names the file."""


class Done(NamedTuple):
    """A video's row already on disk: its error (None: embedded) and the part that holds it."""

    error: str | None
    part: Path


class Row(NamedTuple):
    """One output row; ``index`` is the video's position in the input list."""

    index: int
    video: str
    embedding: np.ndarray | None  # float32 (D,)
    error: str | None


def model_identity(
    model: VideoCLIP, weights: str | os.PathLike | None, *, sampling: str, precision: str
) -> dict[str, Any]:
    """What makes two embeddings comparable: the model spec, its weights' digest (for a checkpoint), the frame
    sampling and the precision. Flat, and through JSON so it compares equal to what a part stored."""
    digest = weights_digest(Path(weights)) if weights is not None else None
    identity = {**asdict(model.spec), "weights_sha256": digest, "sampling": sampling, "precision": precision}
    return json.loads(json.dumps(identity))


def weights_digest(path: Path) -> str:
    """SHA-256 of a weights file: two checkpoints with the same spec differ only in their weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(identity: dict[str, Any]) -> str:
    """The identity as a user reads it: model, weights, head, frames, sampling."""
    sha = identity["weights_sha256"]
    return (
        f"{identity['model_name']} (pretrained {identity['pretrained'] or 'none'}), head {identity['head']}, "
        f"{identity['num_frames']} frames, {identity['sampling']} sampling, {identity.get('precision', 'fp32')}"
        + (f", checkpoint weights sha256 {sha[:12]}" if sha else "")
    )


def check_parts_folder(out: Path) -> None:
    """``out`` must be a folder holding only parts, so ``pandas.read_parquet(out)`` reads them alone."""
    if out.exists() and not out.is_dir():
        raise PartsError(f"{out} is a file; give a folder (new or one written by vidclip extract)")
    existing = next(parent for parent in (out, *out.absolute().parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):  # refused before any work
        raise PartsError(f"{out}: cannot write in {existing}")
    if not out.is_dir():
        return
    foreign = sorted(
        p.name for p in out.iterdir() if not p.name.startswith((".", "_")) and not p.match(PART_PATTERN)
    )
    if foreign:
        raise PartsError(
            f"{out} holds files that are not vidclip parts ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); pandas.read_parquet would read them too: "
            "choose a new or empty folder"
        )


def read_done(out: Path, identity: dict[str, Any]) -> dict[str, Done]:
    """The videos already in ``out``'s parts, with their row's error and part; refuses parts made with another
    model or frame sampling. A video with two rows (written by versions before the folder lock) counts as
    embedded when either row is."""
    import pyarrow.parquet as pq

    done: dict[str, Done] = {}
    for path in sorted(out.glob(PART_PATTERN)):
        part = pq.ParquetFile(path)
        stored = (part.schema_arrow.metadata or {}).get(METADATA_KEY)
        if stored is None:
            raise PartsError(f"{path} was not written by vidclip extract; choose a new or empty folder")
        check_same_model(path, json.loads(stored)["identity"], identity)
        table = part.read(columns=["video", "error"]).to_pydict()
        for video, error in zip(table["video"], table["error"], strict=True):
            if video not in done or (error is None and done[video].error is not None):
                done[video] = Done(error, path)
    return done


def check_same_model(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to add embeddings of one model to a folder holding another's: they are not comparable."""
    changed = [key for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    if changed:
        raise PartsError(
            f"{path.parent} holds embeddings of another model and cannot take these: {path.name} was "
            f"made with {describe(old)}; this run uses {describe(new)} (differs in {', '.join(changed)}). "
            "Choose another output folder, or run with the model that made it"
        )


class PartBuffer:
    """Rows waiting for their part; holds fewer than ``part_size + batch_size`` new rows, so memory stays flat.

    ``retried`` maps each video embedded again after a failure to the part holding its failed row: its new row
    replaces that one in place (:func:`replace_rows`, one part rewrite for all of a part's retried rows, or for
    what is buffered once ``part_size`` rows wait), so a crash at any moment leaves one row per video, the old
    or the new. ``turn`` serialises those rewrites with the other processes writing in ``out``.
    """

    def __init__(
        self,
        out: Path,
        part_size: int,
        metadata: dict[str, Any],
        retried: dict[str, Path] | None = None,
        turn: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.out, self.part_size, self.metadata, self.turn = out, part_size, metadata, turn
        self.rows: list[Row] = []
        self.retried = dict(retried or {})
        self.waiting = Counter(self.retried.values())  # retried rows each part still waits for
        self.replacing: dict[Path, dict[str, Row]] = {}

    # Rows leave the buffer before their part is written: if writing fails or is interrupted, a later flush
    # cannot write them twice, and the re-run recomputes them (it skips only what is on disk).
    def add(self, rows: list[Row]) -> None:
        for row in rows:
            if row.video in self.retried:
                self._replace(row)
            else:
                self.rows.append(row)
        while len(self.rows) >= self.part_size:
            part, self.rows = self.rows[: self.part_size], self.rows[self.part_size :]
            write_part(self.out, part, self.metadata)

    def flush(self) -> None:
        if self.rows:
            part, self.rows = self.rows, []
            write_part(self.out, part, self.metadata)
        for path in list(self.replacing):
            self._rewrite(path)

    def _replace(self, row: Row) -> None:
        path = self.retried.pop(row.video)
        self.replacing.setdefault(path, {})[row.video] = row
        self.waiting[path] -= 1
        if not self.waiting[path]:  # every retried row of this part is here
            self._rewrite(path)
        elif sum(map(len, self.replacing.values())) >= self.part_size:
            for held in list(self.replacing):
                self._rewrite(held)

    def _rewrite(self, path: Path) -> None:
        rows = self.replacing.pop(path)
        with self.turn():
            replace_rows(path, rows, self.metadata)


def write_part(out: Path, rows: list[Row], metadata: dict[str, Any]) -> Path:
    """Write ``rows`` as a new part, atomically (a hidden temporary file, synced, then renamed)."""
    import pyarrow.parquet as pq

    path = out / f"part-{rows[0].index:08d}-{uuid.uuid4().hex[:12]}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(part_table(rows, metadata), tmp)
    return path


def replace_rows(path: Path, rows: dict[str, Row], metadata: dict[str, Any]) -> Path:
    """Rewrite part ``path`` atomically with ``rows`` (by video) in place of that video's row, the other rows
    unchanged and in order (a second row of one video, which older versions could write, is dropped); a row
    whose video the part does not hold is added at its end, never lost."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vidclip.data.files import display_path

    new = part_table(list(rows.values()), metadata)
    old = pq.read_table(path).replace_schema_metadata(new.schema.metadata)
    videos = old.column("video").to_pylist()
    position = {display_path(video): len(videos) + i for i, video in enumerate(rows)}  # as stored
    order, placed = [], set()
    for i, video in enumerate(videos):
        if video not in position:
            order.append(i)
        elif video not in placed:  # a second row of the video (an older version's duplicate) goes
            order.append(position[video])
            placed.add(video)
    order += [position[display_path(video)] for video in rows if display_path(video) not in placed]
    table = pa.concat_tables([old, new], promote_options="default").take(order)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def part_table(rows: list[Row], metadata: dict[str, Any]):
    """``rows`` as a pyarrow Table (video, embedding, error), with ``metadata`` in its schema. Paths and errors
    are stored as :func:`~vidclip.data.files.display_path` writes them: a name that is not UTF-8 is one row
    (``clip_\\xff.mp4``), never a failed part."""
    import pyarrow as pa

    from vidclip.data.files import display_path

    schema = pa.schema(
        [("video", pa.string()), ("embedding", pa.list_(pa.float32())), ("error", pa.string())],
        metadata={METADATA_KEY: json.dumps(metadata).encode()},
    )
    videos = [display_path(row.video) for row in rows]
    errors = [None if row.error is None else display_path(row.error) for row in rows]
    columns = [videos, [row.embedding for row in rows], errors]
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )
