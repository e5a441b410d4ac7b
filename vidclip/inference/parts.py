"""Embedding tables as Parquet part files in a folder: written atomically, read back whole, one model each.

A folder holds ``part-IIIIIIII-XXXXXXXXXXXX.parquet`` files (``IIIIIIII``: the input position of the part's
first row, ``X``: a random token, so no run ever overwrites an earlier part and separate processes can write
side by side). ``pandas.read_parquet(folder)`` reads them as one table. Every part's schema metadata records
the model it was made with (:func:`model_identity`), and rows of another model are refused: embeddings of two
models are not comparable. Used by ``vidclip extract`` (and readable by FAISS tooling such as autofaiss).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
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


def read_done(out: Path, identity: dict[str, Any]) -> set[str]:
    """Videos already in ``out``'s parts; refuses parts made with another model or frame sampling."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for path in sorted(out.glob(PART_PATTERN)):
        part = pq.ParquetFile(path)
        stored = (part.schema_arrow.metadata or {}).get(METADATA_KEY)
        if stored is None:
            raise PartsError(f"{path} was not written by vidclip extract; choose a new or empty folder")
        check_same_model(path, json.loads(stored)["identity"], identity)
        done.update(part.read(columns=["video"]).column("video").to_pylist())
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
    """Rows waiting for their part; holds fewer than ``part_size + batch_size`` rows, so memory stays flat."""

    def __init__(self, out: Path, part_size: int, metadata: dict[str, Any]) -> None:
        self.out, self.part_size, self.metadata = out, part_size, metadata
        self.rows: list[Row] = []

    # Rows leave the buffer before their part is written: if writing fails or is interrupted, a later flush
    # cannot write them twice, and the re-run recomputes them (it skips only what is on disk).
    def add(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        while len(self.rows) >= self.part_size:
            part, self.rows = self.rows[: self.part_size], self.rows[self.part_size :]
            write_part(self.out, part, self.metadata)

    def flush(self) -> None:
        if self.rows:
            part, self.rows = self.rows, []
            write_part(self.out, part, self.metadata)


def write_part(out: Path, rows: list[Row], metadata: dict[str, Any]) -> Path:
    """Write ``rows`` as a new part, atomically (a hidden temporary file, synced, then renamed)."""
    import pyarrow.parquet as pq

    path = out / f"part-{rows[0].index:08d}-{uuid.uuid4().hex[:12]}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(part_table(rows, metadata), tmp)
    return path


def part_table(rows: list[Row], metadata: dict[str, Any]):
    """``rows`` as a pyarrow Table (video, embedding, error), with ``metadata`` in its schema."""
    import pyarrow as pa

    schema = pa.schema(
        [("video", pa.string()), ("embedding", pa.list_(pa.float32())), ("error", pa.string())],
        metadata={METADATA_KEY: json.dumps(metadata).encode()},
    )
    columns = [[row.video for row in rows], [row.embedding for row in rows], [row.error for row in rows]]
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )
