"""Building an index: videos (whole, or in windows) through the shared pipeline into row parts, then FAISS.

One run at a time writes in an index folder (a lock); several processes of one launch (``accelerate launch``
/ ``torchrun``) split the videos by input position and write their own parts, and process 0 adds them all to
the FAISS index once every process is done. Re-running the same command skips the videos that have rows
(embedded or failed) and adds what a killed run wrote, so it ends with the index an uninterrupted run makes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidclip.data.files import display_path
from vidclip.data.shards import owned_by_process
from vidclip.fileio import exclusive_lock
from vidclip.index.rows import (
    FAILURES,
    PART_PATTERN,
    ROWS,
    RowBatch,
    part_metadata,
    read_part,
    write_failures,
    write_rows,
)
from vidclip.index.segments import encode_windows
from vidclip.index.store import LOCK_NAME, IndexFolderError, IndexMeta, read_meta, sync_index
from vidclip.inference.parts import describe, model_identity
from vidclip.inference.pipeline import EncodeOptions, iter_encoded
from vidclip.model import VideoCLIP

NON_FINITE = "the embedding is not finite (NaN or inf): the model's weights or this video's frames give NaN"


@dataclass(frozen=True)
class IndexSettings:
    """What rows a video gets: whole-video rows, or windows of ``segment`` seconds every ``stride`` (default
    half a window); ``frame_features`` keeps per-frame features for reranking."""

    segment: float | None = None
    stride: float | None = None
    frame_features: bool = False
    index_type: str = "auto"
    part_rows: int = 10_000

    def __post_init__(self) -> None:
        if self.segment is not None and not self.segment > 0:
            raise ValueError(f"--segment must be a positive number of seconds, got {self.segment}")
        if self.stride is not None and self.segment is None:
            raise ValueError("--stride needs --segment (the window length)")
        if self.segment is not None and self.stride is None:
            object.__setattr__(self, "stride", self.segment / 2)
        if self.stride is not None and not self.stride > 0:
            raise ValueError(f"--stride must be a positive number of seconds, got {self.stride}")


@dataclass
class BuildSummary:
    """What one run (one process's share under a launcher) did."""

    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    rows: int = 0
    added: int = 0
    ntotal: int = 0
    ann: str = ""


def model_source(
    *, checkpoint: str | None, model_name: str | None, pretrained: str | None, head: str, num_frames: int
) -> dict[str, Any]:
    """How to rebuild the index's model for queries: a checkpoint (absolute path) or open_clip name and tag."""
    if checkpoint:
        return {"checkpoint": str(Path(checkpoint).absolute())}
    return {"model_name": model_name, "pretrained": pretrained, "head": head, "num_frames": num_frames}


MODEL_FILE = "model.safetensors"  # a model no tag or checkpoint rebuilds (random weights), kept in the index


def load_source_model(
    source: dict[str, Any], device: Any = None, folder: Path | None = None
) -> tuple[VideoCLIP, str | None]:
    """The model ``source`` names, in eval mode, and its weights file (None for open_clip tags); a model kept
    in the index (``in_index``) is read from ``folder``."""
    from vidclip.checkpoint import find_weights, load_checkpoint
    from vidclip.model import create_model

    if source.get("checkpoint"):
        path = Path(folder, source["checkpoint"]) if source.get("in_index") else source["checkpoint"]
        return load_checkpoint(path, device=device).eval(), str(find_weights(path))
    model = create_model(
        source["model_name"], source["pretrained"], source["head"], source["num_frames"], device=device
    )
    return model.eval(), None


def source_weights(source: dict[str, Any], folder: Path) -> str | None:
    """The weights file of a model source (None for open_clip tags)."""
    from vidclip.checkpoint import find_weights

    if not source.get("checkpoint"):
        return None
    path = Path(folder, source["checkpoint"]) if source.get("in_index") else source["checkpoint"]
    return str(find_weights(path))


def index_identity(model: VideoCLIP, weights: str | None, precision: str) -> dict[str, Any]:
    """What makes two indexes' vectors comparable (the extract parts' identity, so they can be indexed)."""
    return model_identity(model, weights, sampling="uniform", precision=precision)


def check_same_model(where: Path, stored: dict[str, Any], identity: dict[str, Any]) -> None:
    changed = [key for key in sorted(stored.keys() | identity.keys()) if stored.get(key) != identity.get(key)]
    if changed:
        hint = (
            f" (it keeps its model: --checkpoint {where / MODEL_FILE})"
            if (where / MODEL_FILE).exists()
            else ""
        )
        raise IndexFolderError(
            f"{where} was built with {describe(stored)}; this uses {describe(identity)} (differs in "
            f"{', '.join(changed)}): embeddings of two models are not comparable. Use the index's own "
            f"model{hint}, or another --out"
        )


def new_meta(
    model: VideoCLIP, identity: dict, source: dict, settings: IndexSettings, frames: int
) -> IndexMeta:
    return IndexMeta(
        identity=identity,
        model=source,
        root=os.getcwd(),
        dim=int(model.clip.visual.output_dim),
        segment=settings.segment,
        stride=settings.stride,
        frames=frames if settings.frame_features else None,
    )


def check_settings(folder: Path, meta: IndexMeta, settings: IndexSettings) -> None:
    asked = {
        "segment": settings.segment,
        "stride": settings.stride,
        "frame_features": settings.frame_features,
    }
    if asked != meta.settings():
        have = meta.settings()
        raise IndexFolderError(
            f"{folder} was built with segment {have['segment']}, stride {have['stride']}, frame features "
            f"{have['frame_features']}; this run asks segment {asked['segment']}, stride {asked['stride']}, "
            f"frame features {asked['frame_features']}: rows of both kinds cannot be searched together"
        )


def indexed_videos(folder: Path) -> dict[str, str | None]:
    """Every video with rows in ``folder``: its error (None: embedded)."""
    videos: dict[str, str | None] = {}
    for path in sorted((folder / ROWS).glob(PART_PATTERN)):
        videos.update(dict.fromkeys(read_part(path, ["video"]).column("video").to_pylist()))
    for path in sorted((folder / FAILURES).glob(PART_PATTERN)):
        table = read_part(path, ["video", "error"]).to_pydict()
        for video, error in zip(table["video"], table["error"], strict=True):
            videos.setdefault(video, error)
    return videos


def forget_failures(folder: Path, videos: set[str]) -> None:
    """Drop the failure rows of ``videos`` (to be tried again): each part rewritten atomically without them."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from vidclip.fileio import atomic_path

    for path in sorted((folder / FAILURES).glob(PART_PATTERN)):
        table = read_part(path)
        keep = pc.invert(pc.is_in(table.column("video"), value_set=pa_array(sorted(videos))))
        if pc.all(keep).as_py():
            continue
        with atomic_path(path) as tmp:
            pq.write_table(table.filter(keep), tmp)


def pa_array(values: list[str]):
    import pyarrow as pa

    return pa.array(values, pa.string())


def build_index(
    folder: str | os.PathLike,
    videos: list[str],
    model: VideoCLIP,
    *,
    source: dict[str, Any],
    weights: str | None,
    options: EncodeOptions,
    settings: IndexSettings = IndexSettings(),
    retry_failed: bool = False,
    rank: int = 0,
    world: int = 1,
) -> BuildSummary:
    """Index ``videos`` into ``folder`` (new, or an index of the same model and settings: then only the videos
    it lacks are embedded) and bring its FAISS index up to date; this process takes the videos at positions
    ``rank`` mod ``world`` (shard samples: those of every ``world``-th shard)."""
    folder = Path(folder)
    if model.head.text_conditioned:
        raise ValueError(
            f"head {model.spec.head!r} is text-conditioned: it has no text-independent embedding to index; "
            "index with a pooling head (mean, seq_transformer...) and rerank with --rerank"
        )
    if folder.exists() and not folder.is_dir():
        raise IndexFolderError(f"{folder} is a file; give a folder for the index")
    identity = index_identity(model, weights, options.precision)
    with exclusive_lock(folder / LOCK_NAME, "vidclip index run", rank=rank, world=world):
        meta = read_meta(folder)
        if meta is None and source.get("checkpoint") is None and source.get("pretrained") is None:
            source, weights, model = _keep_model(folder, model)  # random weights: queries need these ones
            identity = index_identity(model, weights, options.precision)
        if meta is None:
            meta = new_meta(model, identity, source, settings, options.num_frames or model.num_frames)
            _check_orphan_parts(folder, identity)
        check_same_model(folder, meta.identity, identity)
        check_settings(folder, meta, settings)
        done = indexed_videos(folder)
        mine = owned_by_process(videos, rank, world)
        retry = {display_path(v) for _, v in mine if retry_failed and done.get(display_path(v), None)}
        if retry:
            forget_failures(folder, retry)
        pending = [(i, v) for i, v in mine if display_path(v) not in done or display_path(v) in retry]
        summary = BuildSummary(total=len(mine), skipped=len(mine) - len(pending))
        if pending:
            writer = _PartWriter(folder, settings.part_rows, {"identity": identity, "source": source})
            try:
                _embed(model, pending, options, settings, writer, summary)
            finally:
                writer.flush()
        _wait_for_other_processes(world)
        if rank == 0:
            meta, summary.added = sync_index(folder, meta, settings.index_type)
        summary.ntotal, summary.ann = meta.ntotal, (meta.ann or {}).get("kind", "none")
    return summary


def _keep_model(folder: Path, model: VideoCLIP) -> tuple[dict[str, Any], str, VideoCLIP]:
    """Save a model whose weights no tag rebuilds (random) into the index, as the index's model; where a
    killed first build saved one already, that one is the index's model and is used."""
    from vidclip.checkpoint import load_checkpoint, save_checkpoint

    path = folder / MODEL_FILE
    if path.exists():
        model = load_checkpoint(path, device=next(model.parameters()).device).eval()
    else:
        save_checkpoint(model, path)
    return {"checkpoint": MODEL_FILE, "in_index": True}, str(path), model


def _check_orphan_parts(folder: Path, identity: dict[str, Any]) -> None:
    """A folder with parts but no index.json (the first build was killed): its parts must be this model's."""
    for kind in (ROWS, FAILURES):
        parts = sorted((folder / kind).glob(PART_PATTERN))
        if parts:
            check_same_model(folder, part_metadata(parts[0])["identity"], identity)


class _PartWriter:
    """Rows of whole videos waiting for their part; written once ``part_rows`` wait, and at the end."""

    def __init__(self, folder: Path, part_rows: int, metadata: dict[str, Any]) -> None:
        self.folder, self.part_rows, self.metadata = folder, part_rows, metadata
        self.rows: list[tuple[int, RowBatch]] = []
        self.failures: list[tuple[int, str, str]] = []

    def add(self, position: int, rows: RowBatch) -> None:
        self.rows.append((position, rows))
        if sum(len(r) for _, r in self.rows) >= self.part_rows:
            self._write_rows()

    def fail(self, position: int, video: str, reason: str) -> None:
        self.failures.append((position, video, reason))
        if len(self.failures) >= 1000:
            self._write_failures()

    def flush(self) -> None:
        if self.rows:
            self._write_rows()
        if self.failures:
            self._write_failures()

    def _write_rows(self) -> None:
        rows, self.rows = sorted(self.rows, key=lambda r: r[0]), []
        write_rows(self.folder, rows[0][0], RowBatch.cat([r for _, r in rows]), self.metadata)

    def _write_failures(self) -> None:
        failures, self.failures = sorted(self.failures), []
        write_failures(self.folder, failures[0][0], [(v, e) for _, v, e in failures], self.metadata)


def _embed(
    model: VideoCLIP,
    pending: list[tuple[int, str]],
    options: EncodeOptions,
    settings: IndexSettings,
    writer: _PartWriter,
    summary: BuildSummary,
) -> None:
    paths = [video for _, video in pending]
    keep = settings.frame_features
    if settings.segment is None:
        for batch in iter_encoded(model, paths, options):
            _take_whole(batch, pending, writer, summary, keep)
        return
    for result in encode_windows(
        model, paths, options, segment=settings.segment, stride=settings.stride, keep_frames=keep
    ):
        position, video = pending[result.position]
        if result.error is not None:
            writer.fail(position, video, result.error)
            summary.failed += 1
            continue
        count = len(result.starts)
        writer.add(
            position, RowBatch([video] * count, result.starts, result.ends, result.embeddings, result.frames)
        )
        summary.ok, summary.rows = summary.ok + 1, summary.rows + count


def _take_whole(
    batch: Any, pending: list[tuple[int, str]], writer: _PartWriter, summary: BuildSummary, keep: bool
) -> None:
    errors = dict(batch.errors)
    pooled = batch.features.pooled.cpu().numpy()  # (B, D)
    frames = batch.features.frames.cpu().numpy() if keep else None  # (B, T, D)
    durations = batch.duration.tolist() if batch.duration is not None else [0.0] * len(pooled)
    for slot, (at, ok) in enumerate(zip(batch.index.tolist(), batch.valid.tolist(), strict=True)):
        position, video = pending[at]
        if ok and np.isfinite(pooled[slot]).all():
            rows = RowBatch(
                [video],
                [0.0],
                [float(durations[slot])],
                pooled[slot : slot + 1],
                None if frames is None else frames[slot : slot + 1],
            )
            writer.add(position, rows)
            summary.ok, summary.rows = summary.ok + 1, summary.rows + 1
        else:
            writer.fail(position, video, errors.get(video, "could not be decoded") if not ok else NON_FINITE)
            summary.failed += 1


def _wait_for_other_processes(world: int) -> None:
    """Under a launcher, wait until every process has written its parts (process 0 indexes them all)."""
    if world <= 1:
        return
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=24))  # the others may have long videos left
    dist.barrier()


def index_embeddings(
    folder: str | os.PathLike, embeddings: str | os.PathLike, *, index_type: str = "auto"
) -> BuildSummary:
    """Index the Parquet parts ``vidclip extract`` wrote in ``embeddings`` (one row per whole video; the end
    time is unknown there: NaN). The model is the one the parts record; an index of another model refuses."""
    import pyarrow.parquet as pq

    from vidclip.inference.parts import METADATA_KEY as EXTRACT_KEY
    from vidclip.inference.parts import PART_PATTERN as EXTRACT_PATTERN

    folder, source_dir = Path(folder), Path(embeddings)
    parts = sorted(source_dir.glob(EXTRACT_PATTERN)) if source_dir.is_dir() else []
    if not parts:
        raise FileNotFoundError(f"{source_dir}: no vidclip extract parts (part-*.parquet) there")
    with exclusive_lock(folder / LOCK_NAME, "vidclip index run"):
        meta, done, summary = read_meta(folder), None, BuildSummary()
        for order, path in enumerate(parts):
            try:
                stored = (pq.read_schema(path).metadata or {}).get(EXTRACT_KEY)
            except (OSError, ValueError) as err:
                raise ValueError(f"{path}: not a readable Parquet part ({err})") from err
            if stored is None:
                raise ValueError(f"{path} was not written by vidclip extract")
            import json

            extract_meta = json.loads(stored)
            identity = extract_meta["identity"]
            if meta is None:
                source = _source_of(identity, extract_meta.get("checkpoint"))
                meta = IndexMeta(identity=identity, model=source, root=os.getcwd(), dim=0)
                _check_orphan_parts(folder, identity)
            check_same_model(folder, meta.identity, identity)
            if meta.segment is not None or meta.frames is not None:
                raise IndexFolderError(
                    f"{folder} holds windows or frame features; extract parts are whole videos"
                )
            done = indexed_videos(folder) if done is None else done
            table = read_part(path, ["video", "embedding", "error"]).to_pydict()
            rows, failures = [], []
            for video, embedding, error in zip(
                table["video"], table["embedding"], table["error"], strict=True
            ):
                if video in done:
                    summary.skipped += 1
                elif embedding is None:
                    failures.append((video, error or "no embedding"))
                else:
                    rows.append((video, embedding))
                done[video] = error
            metadata = {"identity": identity, "source": meta.model}
            if rows:
                vectors = np.asarray([e for _, e in rows], dtype=np.float32)
                meta.dim = meta.dim or vectors.shape[1]
                count = len(rows)
                write_rows(
                    folder,
                    order,
                    RowBatch([v for v, _ in rows], [0.0] * count, [float("nan")] * count, vectors),
                    metadata,
                )
            if failures:
                write_failures(folder, order, failures, metadata)
            summary.ok, summary.failed = summary.ok + len(rows), summary.failed + len(failures)
        if meta.dim == 0:
            raise ValueError(f"{source_dir}: no embedded video in its parts, nothing to index")
        meta, summary.added = sync_index(folder, meta, index_type)
        summary.ntotal, summary.ann = meta.ntotal, (meta.ann or {}).get("kind", "none")
    return summary


def _source_of(identity: dict[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """How to rebuild the model of extract parts: their checkpoint, or the open_clip name and tag."""
    if checkpoint:
        return {"checkpoint": str(Path(checkpoint).absolute())}
    return {
        "model_name": identity["model_name"],
        "pretrained": identity["pretrained"],
        "head": identity["head"],
        "num_frames": identity["num_frames"],
    }
