"""An index's rows as Parquet parts: one row per video or window, the searchable ones apart from the failures.

``INDEX/rows/part-*.parquet`` holds the embedded rows (``video, start, end, embedding`` [, ``frames``]) and
nothing else, so ``pandas.read_parquet(INDEX / "rows")`` is the searchable table and autofaiss can read the
folder as it is (``embedding_column_name="embedding"``). ``INDEX/failures/part-*.parquet`` holds one row per
video that could not be used (``video, error``). A part holds whole videos only and is written atomically,
so a killed run leaves each video with all its rows or none.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidclip.fileio import atomic_path

ROWS, FAILURES = "rows", "failures"
PART_PATTERN = "part-*.parquet"
METADATA_KEY = b"vidclip.index"


@dataclass
class RowBatch:
    """Rows of whole videos: ``video``/``start``/``end`` per row, ``embeddings`` (N, D) float32 unit vectors,
    ``frames`` (N, T, D) float32 or None."""

    video: list[str]
    start: list[float]
    end: list[float]
    embeddings: np.ndarray
    frames: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.video)

    @staticmethod
    def cat(batches: list[RowBatch]) -> RowBatch:
        frames = None
        if batches and batches[0].frames is not None:
            frames = np.concatenate([b.frames for b in batches])
        return RowBatch(
            [v for b in batches for v in b.video],
            [s for b in batches for s in b.start],
            [e for b in batches for e in b.end],
            np.concatenate([b.embeddings for b in batches]).astype(np.float32, copy=False),
            frames,
        )


def part_name(first: int) -> str:
    """A new part's name: its first row's input position (for reading order), and a token no run repeats."""
    return f"part-{first:08d}-{uuid.uuid4().hex[:12]}.parquet"


def write_rows(folder: Path, first: int, rows: RowBatch, metadata: dict[str, Any]) -> Path:
    """``rows`` as a new part in ``folder/rows``, atomically; returns its path."""
    import pyarrow as pa

    from vidclip.data.files import display_path

    columns = {
        "video": pa.array([display_path(v) for v in rows.video], pa.string()),
        "start": pa.array(rows.start, pa.float64()),
        "end": pa.array(rows.end, pa.float64()),
        "embedding": pa.array(list(rows.embeddings), pa.list_(pa.float32())),
    }
    if rows.frames is not None:  # (N, T, D) flattened per row; T and D are in the index's metadata
        columns["frames"] = pa.array(list(rows.frames.reshape(len(rows), -1)), pa.list_(pa.float32()))
    table = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    return _write(folder / ROWS, first, table)


def write_failures(
    folder: Path, first: int, failures: list[tuple[str, str]], metadata: dict[str, Any]
) -> Path:
    """One row (video, error) per failed video, as a new part in ``folder/failures``, atomically."""
    import pyarrow as pa

    from vidclip.data.files import display_path

    table = pa.table(
        {
            "video": pa.array([display_path(v) for v, _ in failures], pa.string()),
            "error": pa.array([display_path(e) for _, e in failures], pa.string()),
        }
    ).replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    return _write(folder / FAILURES, first, table)


def _write(folder: Path, first: int, table) -> Path:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / part_name(first)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def list_parts(folder: Path, kind: str = ROWS) -> list[str]:
    """Names of the parts in ``folder/kind``, sorted (the order a new index adds them in)."""
    return sorted(p.name for p in (folder / kind).glob(PART_PATTERN))


def read_part(path: Path, columns: list[str] | None = None):
    """A part as a pyarrow Table; a part that is not one (truncated, not Parquet) is a ValueError naming it."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{path}: not a readable Parquet part ({' '.join(str(err).split())[:160]})") from err


def part_metadata(path: Path) -> dict[str, Any]:
    """The metadata a part was written with (the model identity...), or a ValueError naming the part."""
    import pyarrow.parquet as pq

    try:
        stored = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable Parquet part ({' '.join(str(err).split())[:160]})") from err
    if stored is None:
        raise ValueError(f"{path} was not written by vidclip index")
    return json.loads(stored)


def read_vectors(path: Path, dim: int, frames_shape: tuple[int, int] | None) -> RowBatch:
    """A rows part's rows with their embeddings (and frame features when ``frames_shape`` = (T, D))."""
    columns = ["video", "start", "end", "embedding"] + (["frames"] if frames_shape else [])
    table = read_part(path, columns)
    embeddings = _matrix(table.column("embedding"), (dim,), path)
    frames = _matrix(table.column("frames"), frames_shape, path) if frames_shape else None
    return RowBatch(
        table.column("video").to_pylist(),
        table.column("start").to_pylist(),
        table.column("end").to_pylist(),
        embeddings,
        frames,
    )


def _matrix(column, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """A list<float32> column as an (N, *shape) float32 array; a missing vector or one of another length is a
    ValueError naming the part."""
    import pyarrow as pa

    chunked = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    size = int(np.prod(shape))
    lengths = chunked.value_lengths().to_numpy(zero_copy_only=False)
    if chunked.null_count or (len(lengths) and (lengths != size).any()):
        raise ValueError(f"{path}: a vector is missing or not of length {size} (the index's width)")
    values = chunked.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(chunked), *shape)
