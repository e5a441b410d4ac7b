"""The manifest of a prepared folder: ``OUT/manifest.parquet``, one row per source (``source, output, duration,
frames, fps, width, height, error``); a source that failed has its reason in ``error`` and no output.

Rows are written as the run goes, in small Parquet parts in the hidden folder ``OUT/.vidclip-prepare/`` (each
written atomically), and merged into ``manifest.parquet`` (atomically) when the run ends; a run killed before
then keeps its parts, and the next run reads them. A later row for an output replaces an earlier one. Every
file records the settings it was made with: a folder holds the outputs of one set of settings.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from vidclip.fileio import atomic_path
from vidclip.prepare.settings import PrepareSettings, other_settings

MANIFEST_NAME = "manifest.parquet"
PARTS_FOLDER = ".vidclip-prepare"  # hidden: find_videos, pyarrow's dataset reader and globbing pass it by
METADATA_KEY = b"vidclip.prepare"
COLUMNS = ("source", "output", "duration", "frames", "fps", "width", "height", "error")


class ManifestRow(NamedTuple):
    """One source's row: ``output`` is relative to the output folder (POSIX separators); the numbers describe
    the output and are None when ``error`` says why there is none."""

    source: str
    output: str
    duration: float | None
    frames: int | None
    fps: float | None
    width: int | None
    height: int | None
    error: str | None


def _schema(identity: dict[str, Any]):
    import pyarrow as pa

    types = [
        pa.string(),
        pa.string(),
        pa.float64(),
        pa.int64(),
        pa.float64(),
        pa.int32(),
        pa.int32(),
        pa.string(),
    ]
    return pa.schema(list(zip(COLUMNS, types, strict=True)), metadata={METADATA_KEY: json.dumps(identity)})


def _write(path: Path, rows: list[ManifestRow], identity: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(identity)
    table = pa.table({name: [getattr(row, name) for row in rows] for name in COLUMNS}, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _read(path: Path, settings: PrepareSettings) -> list[ManifestRow]:
    """The rows of one manifest file; refuses a file made with other settings, or not a manifest."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:
        raise ValueError(f"{path}: not a readable manifest ({' '.join(str(err).split())[:150]})") from None
    stored = (table.schema.metadata or {}).get(METADATA_KEY)
    if stored is None or set(COLUMNS) - set(table.column_names):
        raise ValueError(f"{path}: not a vidclip prepare manifest (columns {', '.join(table.column_names)})")
    if json.loads(stored) != settings.identity():
        raise ValueError(
            other_settings(
                f"{path.parent if path.name == MANIFEST_NAME else path.parent.parent}",
                json.loads(stored),
                settings,
            )
        )
    columns = [table.column(name).to_pylist() for name in COLUMNS]
    return [ManifestRow(*values) for values in zip(*columns, strict=True)]


class Manifest:
    """The rows of the output folder ``out`` (read when made), and the rows this run adds, kept on disk in
    parts every ``part_rows`` rows or ``part_seconds`` seconds (:meth:`flush`) and merged by :meth:`finish`.

    Raises ValueError when ``out`` holds a manifest made with other settings than ``settings``."""

    def __init__(
        self,
        out: str | os.PathLike,
        settings: PrepareSettings,
        part_rows: int = 32,
        part_seconds: float = 10.0,
    ) -> None:
        self.out, self.identity = Path(out), settings.identity()
        self.part_rows, self.part_seconds = part_rows, part_seconds
        self.rows: dict[str, ManifestRow] = {}  # output -> its latest row
        self._parts = sorted((self.out / PARTS_FOLDER).glob("part-*.parquet"))
        for path in [self.out / MANIFEST_NAME, *self._parts]:
            if path.exists():
                self.rows.update((row.output, row) for row in _read(path, settings))
        self._pending: list[ManifestRow] = []
        self._last_flush = time.monotonic()

    def add(self, row: ManifestRow) -> None:
        """Record ``row`` (replacing the output's earlier row); a part is written when enough have come."""
        self.rows[row.output] = row
        self._pending.append(row)
        if len(self._pending) >= self.part_rows or time.monotonic() - self._last_flush >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the rows added since the last part as a new part (atomically)."""
        if self._pending:
            name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"  # names sort by time
            path = self.out / PARTS_FOLDER / name
            _write(path, self._pending, self.identity)
            self._parts.append(path)
            self._pending = []
        self._last_flush = time.monotonic()

    def finish(self, order: list[str]) -> Path:
        """Write ``manifest.parquet`` with every row (outputs in ``order`` first, then the rest as they were),
        then remove the parts it holds; returns its path."""
        self.flush()
        ranked = {output: rank for rank, output in enumerate(order)}
        rows = sorted(self.rows.values(), key=lambda row: ranked.get(row.output, len(ranked)))
        path = self.out / MANIFEST_NAME
        _write(path, rows, self.identity)
        for part in self._parts:
            part.unlink(missing_ok=True)
        try:
            (self.out / PARTS_FOLDER).rmdir()
        except OSError:
            pass  # not empty (another file someone put there) or already gone
        self._parts = []
        return path


def read_manifest(out: str | os.PathLike):
    """The manifest of the prepared folder ``out`` as a pandas DataFrame, parts of an unfinished run included
    (a later row for an output replaces an earlier one)."""
    import pandas as pd
    import pyarrow.parquet as pq

    out = Path(out)
    paths = [out / MANIFEST_NAME] if (out / MANIFEST_NAME).exists() else []
    paths += sorted((out / PARTS_FOLDER).glob("part-*.parquet"))
    if not paths:
        raise FileNotFoundError(f"no manifest in {out} ({MANIFEST_NAME}): is it a vidclip prepare --out?")
    frame = pd.concat([pq.read_table(path).to_pandas() for path in paths], ignore_index=True)
    return frame.drop_duplicates("output", keep="last").reset_index(drop=True)[list(COLUMNS)]
