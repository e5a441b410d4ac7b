"""The index folder: rows as Parquet parts, their vectors in FAISS id order, the FAISS index, and ``index.json``.

``index.json`` is the commit point, written atomically last: it lists the row parts the FAISS index holds (in
id order, with their counts), the FAISS file's SHA-256 and the model the vectors were made with. Everything
else is written before it, so a build killed at any moment leaves a folder whose ``index.json`` still
describes a whole index, or, on the very first build, none: parts written since are added by the next run
(:func:`sync_index`), and a FAISS file that does not match its checksum is rebuilt from the parts, which are
the source of truth. ``vectors.f32`` (and ``frames.f32`` with frame features) hold the embeddings as raw
float32 in id order (memory-mapped for exact rescoring, moments and reranking; never unpickled).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidclip.fileio import write_text_atomic
from vidclip.index.rows import ROWS, RowBatch, list_parts, read_vectors
from vidclip.version import __version__

INDEX_FILE, FAISS_FILE, VECTORS_FILE, FRAMES_FILE = "index.json", "index.faiss", "vectors.f32", "frames.f32"
FORMAT = "vidclip-index"
LOCK_NAME = ".vidclip-index.lock"


class IndexFolderError(ValueError):
    """An index folder that is missing, half-written, corrupted, or another model's; the message names the
    file and the reason."""


@dataclass
class IndexMeta:
    """What ``index.json`` holds. ``frames``: T when per-frame features are stored, else None; ``parts``:
    [name, rows] of the row parts in the FAISS index, in id order."""

    identity: dict[str, Any]
    model: dict[str, Any]
    root: str
    dim: int
    segment: float | None = None
    stride: float | None = None
    frames: int | None = None
    ann: dict[str, Any] | None = None
    faiss_sha256: str | None = None
    parts: list[list[Any]] = field(default_factory=list)
    ntotal: int = 0
    version: int = 1
    vidclip_version: str = __version__

    def settings(self) -> dict[str, Any]:
        """What decides which rows a video gets: a run with other settings cannot add to this index."""
        return {"segment": self.segment, "stride": self.stride, "frame_features": self.frames is not None}


def read_meta(folder: Path) -> IndexMeta | None:
    """``folder/index.json``, None where there is none yet; an IndexFolderError when it is not one."""
    path = folder / INDEX_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise ValueError("not a vidclip index file")
        meta = IndexMeta(**data)
        if not isinstance(meta.parts, list) or meta.ntotal != sum(int(count) for _, count in meta.parts):
            raise ValueError("its parts do not add up to its vector count")
    except (OSError, ValueError, TypeError) as err:
        raise IndexFolderError(f"{path}: corrupted or not a vidclip index ({err})") from err
    return meta


def write_meta(folder: Path, meta: IndexMeta) -> None:
    write_text_atomic(folder / INDEX_FILE, json.dumps({"format": FORMAT, **asdict(meta)}, indent=1))


def inconsistency(folder: Path, meta: IndexMeta, *, checksum: bool = True) -> str | None:
    """Why the files do not match ``index.json`` (a listed part gone, vectors short, a FAISS file that is not
    the one recorded), or None. Checked before FAISS reads anything: it may crash on a corrupted file
    (``checksum=False`` leaves the FAISS file's checksum to :meth:`AnnIndex.load`, which checks it anyway)."""
    from vidclip.index.ann import sha256_of

    for name, _ in meta.parts:
        if not (folder / ROWS / name).is_file():
            return f"{ROWS}/{name} is listed in {INDEX_FILE} but missing"
    files = [(VECTORS_FILE, meta.dim)] + ([(FRAMES_FILE, meta.dim * meta.frames)] if meta.frames else [])
    for name, width in files:
        path = folder / name
        if not path.is_file() or path.stat().st_size < meta.ntotal * width * 4:
            return f"{name} holds fewer vectors than the {meta.ntotal} {INDEX_FILE} lists"
    if meta.ntotal:
        path = folder / FAISS_FILE
        if not path.is_file():
            return f"{FAISS_FILE} is missing"
        if checksum and sha256_of(path) != meta.faiss_sha256:
            return f"{FAISS_FILE} is corrupted (its checksum is not the one {INDEX_FILE} records)"
    return None


def open_vectors(folder: Path, meta: IndexMeta, name: str = VECTORS_FILE) -> np.ndarray:
    """The stored vectors (ntotal, D) (``frames.f32``: (ntotal, T, D)), memory-mapped read-only."""
    shape = (meta.ntotal, meta.dim) if name == VECTORS_FILE else (meta.ntotal, meta.frames, meta.dim)
    if meta.ntotal == 0:
        return np.zeros(shape, np.float32)
    return np.memmap(folder / name, dtype=np.float32, mode="r", shape=shape)


def _append(path: Path, keep: int, array: np.ndarray) -> None:
    """Cut ``path`` to its first ``keep`` bytes (what a killed run appended beyond is dropped), then append."""
    with open(path, "ab") as f:
        f.truncate(keep)
        f.write(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        f.flush()
        os.fsync(f.fileno())


def sync_index(folder: Path, meta: IndexMeta, index_type: str = "auto") -> tuple[IndexMeta, int]:
    """Add the row parts ``index.json`` does not list yet to the vectors and the FAISS index, then commit
    ``index.json``; rebuild from every part when the files do not match it, when the collection outgrew its
    index type, or when ``index_type`` asks for another. Returns the new meta and the vectors added."""
    from vidclip.index.ann import AnnIndex, AnnSpec, choose_index, needs_rebuild, sha256_of

    reason = inconsistency(folder, meta)
    if reason is not None and meta.ntotal:
        logging.getLogger("vidclip.index").warning(f"{folder}: {reason}: rebuilding the index from its rows")
        meta.parts, meta.ntotal, meta.ann, meta.faiss_sha256 = [], 0, None, None
    listed = {name for name, _ in meta.parts}
    new_parts = [name for name in list_parts(folder) if name not in listed]
    spec = AnnSpec.from_json(meta.ann) if meta.ann else None
    if not new_parts and (meta.ntotal == 0 or spec is not None and index_type in ("auto", spec.kind)):
        write_meta(folder, meta)  # an index of no vectors yet (every video failed) is still an index
        return meta, 0
    frames_shape = (meta.frames, meta.dim) if meta.frames else None
    batches = [read_vectors(folder / ROWS / name, meta.dim, frames_shape) for name in new_parts]
    new = RowBatch.cat(batches) if batches else None
    added = len(new) if new is not None else 0
    total = meta.ntotal + added
    if new is not None:  # vectors first: beyond ntotal they are ignored until index.json says otherwise
        _append(folder / VECTORS_FILE, meta.ntotal * meta.dim * 4, new.embeddings)
        if frames_shape:
            _append(folder / FRAMES_FILE, meta.ntotal * meta.dim * meta.frames * 4, new.frames)
    rebuild = (
        spec is None
        or index_type not in ("auto", spec.kind)
        or (index_type == "auto" and needs_rebuild(spec, total, meta.dim))
    )
    if rebuild:
        spec = choose_index(total, meta.dim, index_type=index_type)
        ann = AnnIndex.create(spec, meta.dim)
        everything = np.memmap(folder / VECTORS_FILE, dtype=np.float32, mode="r", shape=(total, meta.dim))
        ann.train_if_needed(_sample(everything))
        for start in range(0, total, 100_000):
            ann.add(np.asarray(everything[start : start + 100_000]))
    else:
        ann = AnnIndex.load(folder / FAISS_FILE, spec, expected_sha256=meta.faiss_sha256)
        ann.add(new.embeddings)
    ann.save(folder / FAISS_FILE)
    meta.parts = meta.parts + [[name, len(batch)] for name, batch in zip(new_parts, batches, strict=True)]
    meta.ntotal, meta.ann, meta.faiss_sha256 = total, ann.spec.to_json(), sha256_of(folder / FAISS_FILE)
    write_meta(folder, meta)
    return meta, added


def _sample(vectors: np.ndarray, limit: int = 500_000) -> np.ndarray:
    """Up to ``limit`` rows spread evenly over ``vectors``, for training an IVF quantiser."""
    if len(vectors) <= limit:
        return np.asarray(vectors)
    step = math.ceil(len(vectors) / limit)
    return np.asarray(vectors[::step])
