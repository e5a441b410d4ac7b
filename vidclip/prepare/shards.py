"""Pack a dataset into WebDataset tar shards (``vidclip prepare ... --shards``): per split ``OUT/{split}-NNNNNN.tar``
and the index ``OUT/{split}-samples.parquet``, one sample per video of the split's annotations (or per video the
sources name: the split ``videos``).

Sample i of a split has key ``f"{i:08d}"`` and goes to shard ``i // shard_size``, whatever failed; its members
are ``{key}.json`` (what the annotations say of the video, and its size, rate and length) and the video itself:
the source's bytes unchanged, or, when re-encoding settings are given, the output of :func:`prepare_dataset`
(run first into ``OUT/files``). A video that cannot be read costs its own row of the index, no more.

One forked process per shard. A shard is written to a hidden temporary name and renamed into place last, after
its index part ``OUT/.vidclip-prepare/{split}-NNNNNN.parquet``: a shard whose tar and part both exist is done,
and a re-run skips it. A shard tar with no part was not written here and is never overwritten. The index is
the parts concatenated, written when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from vidclip.config import Config, load_config
from vidclip.fileio import DiskFullError, atomic_path, exclusive_lock
from vidclip.prepare.manifest import PARTS_FOLDER, read_manifest
from vidclip.prepare.pool import TaskDied, run_each
from vidclip.prepare.run import LOCK_NAME, PrepareSummary, prepare_dataset
from vidclip.prepare.settings import PrepareSettings, other_settings
from vidclip.prepare.tree import Job, plan_outputs
from vidclip.video.workers import default_num_workers

logger = logging.getLogger(__name__)
DEFAULT_SHARD_SIZE = 1000
FILES_FOLDER = "files"  # OUT/files: the re-encoded videos the shards are packed from
METADATA_KEY = b"vidclip.shards"
SPLITS = ("train", "val", "test")
VIDEOS_SPLIT = "videos"  # the one split of a run without annotations
INDEX_COLUMNS = (
    "position",
    "key",
    "shard",
    "member",
    "video",
    "id",
    "captions",
    "label",
    "bytes",
    "duration",
    "frames",
    "fps",
    "width",
    "height",
    "error",
)
_TEMPORARY = re.compile(r"^\..+\.(tar|parquet)\.[0-9a-f]{8}\.tmp$")  # vidclip.fileio.atomic_path's names
_SHARD = re.compile(r"^(.+)-(\d{6})\.(tar|parquet)$")


class Entry(NamedTuple):
    """One video of a split: ``video`` and ``id`` as the annotations name them, ``file`` the path they give,
    ``path`` the file to pack (the source, or its re-encoded output); ``error`` says why there is none."""

    video: str
    id: str
    file: str
    path: str | None = None
    captions: list[str] | None = None
    label: int | None = None
    class_name: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class SplitPlan:
    name: str
    task: str | None  # retrieval, classification, or None (no annotations)
    class_names: list[str] | None
    entries: list[Entry]


@dataclass(frozen=True)
class ShardTask:
    """Shard ``stem`` (``train-000003``): ``entries`` from position ``start``; ``metadata`` is the split's."""

    stem: str
    start: int
    entries: tuple[Entry, ...]
    metadata: dict[str, Any]
    reencoded: bool

    @property
    def digest(self) -> str:
        """What the shard holds: a done shard whose plan changed (annotations, a source now prepared) is redone."""
        plan = json.dumps([self.start, [list(entry) for entry in self.entries], self.reencoded])
        return hashlib.sha256(plan.encode()).hexdigest()[:16]


@dataclass
class ShardSummary:
    """What one run did, for the closing line."""

    splits: list[str]
    samples: int = 0  # in the shards of the set
    failed: int = 0  # rows of the index with an error
    shards: int = 0  # done, skipped ones included
    skipped: int = 0  # already done by an earlier run
    lost: int = 0  # not written: their process died (re-run to retry)
    prepared: PrepareSummary | None = None
    indexes: list[Path] = field(default_factory=list)

    def line(self, out: str | os.PathLike) -> str:
        lost = (
            f", {_count(self.lost, 'shard')} not written (see the warnings; run again)" if self.lost else ""
        )
        line = (
            f"prepare: {_count(len(self.splits), 'split')}, {self.samples} samples in "
            f"{_count(self.shards, 'shard')}, {self.failed} failed, {_count(self.skipped, 'shard')} skipped "
            f"(already done){lost} -> {out}"
        )
        if self.prepared is not None:
            p = self.prepared
            line += f" (re-encoded into {Path(out) / FILES_FOLDER}: {p.ok} encoded, {p.failed} failed, {p.skipped} skipped)"
        return line


def _count(number: int, word: str) -> str:
    return f"{number} {word}{'' if number == 1 else 's'}"


def write_shards(
    sources: list[str],
    out: str | os.PathLike,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    annotations: str | os.PathLike | Config | None = None,
    splits: Sequence[str] | None = None,
    settings: PrepareSettings | None = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    progress: bool = False,
) -> ShardSummary:
    """Pack the videos of ``sources`` into WebDataset shards of ``shard_size`` samples under ``out``.

    ``annotations`` (a config file or :class:`Config`) names the splits and their videos (``splits``: which of
    train/val/test; None: those the config sets); without it, one split ``videos`` of every source. With
    ``settings`` the sources are re-encoded first into ``out/files`` (``num_workers``, ``timeout``: as
    :func:`prepare_dataset`), else packed unchanged. Raises ValueError before any work for bad sources, a shard
    file this did not write, or an ``out`` made with another shard size or other settings; DiskFullError when
    the disk fills (the shards done are kept, and indexed)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    out = Path(out)
    files = out / FILES_FOLDER if settings is not None else None
    jobs = plan_outputs(sources, files if files is not None else out)
    plans = _plan_splits(jobs, annotations, splits)
    identity = settings.identity() if settings is not None else None
    summary = ShardSummary([plan.name for plan in plans])
    with exclusive_lock(out / LOCK_NAME, "vidclip prepare run"):
        remove_temporaries(out)
        check_shard_set(out, summary.splits, shard_size, settings)
        errors = None
        if settings is not None:
            summary.prepared = prepare_dataset(
                sources, files, settings, num_workers=num_workers, timeout=timeout, progress=progress
            )
            errors = _manifest_errors(files)
        plans = [_resolve(plan, jobs, files, errors) for plan in plans]
        tasks = [_shard_tasks(plan, shard_size, identity, files is not None) for plan in plans]
        for plan, split_tasks in zip(plans, tasks, strict=True):
            _remove_stale(out, plan.name, len(split_tasks))
        todo = [task for split_tasks in tasks for task in split_tasks if not _is_done(out, task)]
        summary.skipped = sum(len(split_tasks) for split_tasks in tasks) - len(todo)
        try:
            _pack_all(todo, out, default_num_workers(num_workers), summary, progress)
        finally:  # the shards done are indexed, whatever stopped the run
            for plan, split_tasks in zip(plans, tasks, strict=True):
                _write_index(out, plan, split_tasks, summary)
    return summary


# -- what each split holds ------------------------------------------------------------------------------------
def _plan_splits(
    jobs: list[Job], annotations: str | os.PathLike | Config | None, splits: Sequence[str] | None
) -> list[SplitPlan]:
    if annotations is None:
        if splits:
            raise ValueError(
                "splits need annotations (--annotations CONFIG): without them the split is 'videos'"
            )
        entries = [Entry(_source_relative(job), _source_relative(job), job.source) for job in jobs]
        return [SplitPlan(VIDEOS_SPLIT, None, None, entries)]
    config = annotations if isinstance(annotations, Config) else load_config([annotations])
    if splits is None:
        splits = [split for split in SPLITS if getattr(config.data, split) is not None]
        if not splits:
            raise ValueError("the config sets none of data.train, data.val, data.test: nothing to shard")
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(unknown)}: choose among {', '.join(SPLITS)}")
    return [_annotated_split(config, split) for split in dict.fromkeys(splits)]


def _source_relative(job: Job) -> str:
    """The video's path relative to the source folder given, its own extension kept."""
    return Path(job.output).with_suffix(Path(job.source).suffix).as_posix()


def _annotated_split(config: Config, split: str) -> SplitPlan:
    from vidclip.data import RetrievalAnnotations, read_annotations

    annotations = read_annotations(config.data, config.task, split)  # type: ignore[arg-type]
    videos, root = annotations.videos, annotations.root
    if isinstance(annotations, RetrievalAnnotations):
        captions: list[list[str]] = [[] for _ in videos]
        for caption, video in zip(annotations.captions, annotations.caption_video, strict=True):
            captions[video].append(caption)
        entries = [
            Entry(v.path, v.id, str(root / v.path), captions=c, error=None if c else "no caption")
            for v, c in zip(videos, captions, strict=True)
        ]
        return SplitPlan(split, "retrieval", None, entries)
    names = list(annotations.class_names)
    entries = [
        Entry(v.path, v.id, str(root / v.path), label=int(label), class_name=names[label])
        for v, label in zip(videos, annotations.labels, strict=True)
    ]
    return SplitPlan(split, "classification", names, entries)


def _manifest_errors(files: Path) -> dict[str, str | None]:
    table = read_manifest(files)
    return {
        output: error if isinstance(error, str) else None
        for output, error in zip(table["output"], table["error"], strict=True)
    }


def _resolve(plan: SplitPlan, jobs: list[Job], files: Path | None, errors: dict | None) -> SplitPlan:
    """Each entry's file to pack: the source (one of ``jobs``), or its output under ``files``."""
    by_source = {os.path.realpath(job.source): job for job in jobs}
    entries = []
    for entry in plan.entries:
        job = by_source.get(os.path.realpath(entry.file))
        if entry.error is not None:
            pass
        elif job is None:
            entry = entry._replace(
                error="no such file" if not os.path.lexists(entry.file) else "not among the SOURCES given"
            )
        elif files is None:
            entry = entry._replace(path=entry.file)
        elif errors.get(job.output, "not prepared"):
            entry = entry._replace(error=errors.get(job.output, "not prepared"))
        else:
            entry = entry._replace(path=str(files / job.output))
        entries.append(entry)
    return SplitPlan(plan.name, plan.task, plan.class_names, entries)


def _shard_tasks(plan: SplitPlan, size: int, identity: dict | None, reencoded: bool) -> list[ShardTask]:
    metadata = {
        "version": 1,
        "split": plan.name,
        "task": plan.task,
        "class_names": plan.class_names,
        "shard_size": size,
        "settings": identity,
    }
    return [
        ShardTask(
            f"{plan.name}-{k:06d}",
            k * size,
            tuple(plan.entries[k * size : (k + 1) * size]),
            metadata,
            reencoded,
        )
        for k in range(math.ceil(len(plan.entries) / size))
    ]


# -- the shard set on disk ------------------------------------------------------------------------------------
def _part(out: Path, stem: str) -> Path:
    return out / PARTS_FOLDER / f"{stem}.parquet"


def _read_metadata(path: Path) -> dict | None:
    import pyarrow.parquet as pq

    try:
        stored = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
        return json.loads(stored) if stored is not None else None
    except Exception:
        return None


def _is_done(out: Path, task: ShardTask) -> bool:
    """Whether the shard was written for this plan and is still whole: its part records the plan, and the tar
    has the size the part records (a shard cut or damaged since, a bad copy back, is written again)."""
    tar = out / f"{task.stem}.tar"
    if not tar.is_file():
        return False
    metadata = _read_metadata(_part(out, task.stem))
    if metadata is None or metadata.get("plan") != task.digest:
        return False
    return [shard.get("bytes") for shard in metadata.get("shards", [])] == [tar.stat().st_size]


def check_shard_set(out: Path, splits: list[str], shard_size: int, settings: PrepareSettings | None) -> None:
    """Refuse, before any work, a shard tar of these splits that has no index part (not written here), and a
    shard set made with another shard size or other settings."""
    if not out.is_dir():
        return
    for path in sorted(out.iterdir()):
        match = _SHARD.match(path.name)
        if match and match[3] == "tar" and match[1] in splits and not _part(out, path.stem).is_file():
            raise ValueError(
                f"{path} exists and was not written by vidclip prepare --shards (it has no index part "
                f"{_part(out, path.stem)}): refusing to overwrite it (move it away, or choose another --out)"
            )
    parts = sorted(p for p in (out / PARTS_FOLDER).glob("*.parquet") if _SHARD.match(p.name))
    indexes = [out / f"{split}-samples.parquet" for split in splits]
    for path in parts + [p for p in indexes if p.exists()]:
        metadata = _read_metadata(path)
        if metadata is None:
            raise ValueError(
                f"{path} is not a vidclip shard index: refusing to overwrite it (choose another --out)"
            )
        if metadata.get("shard_size") != shard_size:
            raise ValueError(
                f"{out} holds shards of {metadata.get('shard_size')} samples (--shard-size "
                f"{metadata.get('shard_size')}); this run asks for --shard-size {shard_size}: run with the same "
                "--shard-size, or choose another --out"
            )
        stored, identity = metadata.get("settings"), settings.identity() if settings is not None else None
        if stored != identity:
            raise ValueError(_other_settings(out, stored, settings))


def _other_settings(out: Path, stored: dict | None, settings: PrepareSettings | None) -> str:
    if settings is None:
        return (
            f"{out} holds re-encoded shards ({PrepareSettings.from_identity(stored).describe()}); this run asks for "
            "the source files unchanged (no re-encoding option): run with the same settings, or choose another --out"
        )
    if stored is None:
        return (
            f"{out} holds shards of the source files unchanged; this run asks for re-encoding "
            f"({settings.describe()}): run without re-encoding options, or choose another --out"
        )
    return other_settings(str(out), stored, settings)


def _remove_stale(out: Path, split: str, count: int) -> None:
    """Remove this split's shards numbered ``count`` or more (an earlier run had more samples): ours, with
    their parts, so no reader globbing the folder finds them."""
    for path in sorted(out.glob(f"{split}-*.tar")):
        match = _SHARD.match(path.name)
        if match and match[1] == split and int(match[2]) >= count and _part(out, path.stem).is_file():
            path.unlink()
            _part(out, path.stem).unlink()


def remove_temporaries(out: Path) -> None:
    """Remove the hidden temporary shards and parts a killed run left (under the folder's lock)."""
    for folder in (out, out / PARTS_FOLDER):
        if folder.is_dir():
            for path in folder.iterdir():
                if _TEMPORARY.match(path.name):
                    path.unlink(missing_ok=True)


# -- writing --------------------------------------------------------------------------------------------------
def _pack_all(todo: list[ShardTask], out: Path, workers: int, summary: ShardSummary, progress: bool) -> None:
    from tqdm import tqdm

    total = len(todo) + summary.skipped
    bar = tqdm(total=total, initial=summary.skipped, unit="shard", desc="shards", disable=not progress)
    results = run_each(todo, partial(pack_shard, out=out), workers)
    try:
        for index, result in results:
            if isinstance(result, TaskDied):
                result = ("failed", result.reason)
            if result[0] == "full":
                raise DiskFullError(result[2], result[1])
            if result[0] == "failed":
                summary.lost += 1
                logger.warning(
                    f"{out / todo[index].stem}.tar: not written ({result[1]}); run again to retry it"
                )
            bar.update()
    finally:
        results.close()  # stops the shards still being written (a full disk, Ctrl-C)
        bar.close()


def pack_shard(task: ShardTask, *, out: Path) -> tuple:
    """Write one shard and its index part (in a child process): ``("ok",)``, ``("failed", reason)`` or
    ``("full", message, path)`` for a full disk; plain tuples, which pickle."""
    try:
        write_shard(task, out)
    except DiskFullError as err:
        return ("full", str(err), err.filename)
    except Exception as err:  # a failure of this shard: it costs its attempt, not the run
        return ("failed", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
    return ("ok",)


def write_shard(task: ShardTask, out: Path) -> None:
    """``out/{stem}.tar`` written under a hidden name, its part written, then the tar renamed into place."""
    import webdataset

    tar = out / f"{task.stem}.tar"
    with atomic_path(tar) as tmp:
        with open(tmp, "wb") as stream:
            writer = webdataset.TarWriter(stream, encoder=False, mtime=0)  # mtime 0: the same bytes every run
            try:
                rows = [_pack(task, task.start + i, entry, writer) for i, entry in enumerate(task.entries)]
            except BaseException:
                # Close the tar now (what it still writes may fail: the error raised is the first one), or its
                # buffer's __del__ later writes into the closed file and prints a traceback (a full disk).
                with contextlib.suppress(Exception):
                    writer.close()
                raise
            writer.close()
        done = {
            "name": tar.name,
            "samples": sum(row["error"] is None for row in rows),
            "bytes": tmp.stat().st_size,
        }
        _write_rows(_part(out, task.stem), rows, {**task.metadata, "shards": [done], "plan": task.digest})


def _pack(task: ShardTask, position: int, entry: Entry, writer) -> dict[str, Any]:
    """Add one sample to the shard; its index row (with the error instead, when it cannot be read)."""
    key = f"{position:08d}"
    row = dict.fromkeys(INDEX_COLUMNS)
    row.update(position=position, key=key, video=entry.video, id=entry.id, captions=entry.captions)
    row.update(label=entry.label, error=entry.error)
    if entry.error is not None:
        return row
    try:
        info = probe_video(entry.path)
        with open(entry.path, "rb") as f:
            data = f.read()
    except Exception as err:
        from vidclip.data.dataset import failure_reason

        row["error"] = failure_reason(err)
        return row
    ext = "mp4" if task.reencoded else Path(entry.path).suffix.lower().lstrip(".")
    sample = {"key": key, "video": entry.video, "id": entry.id, **info}
    if task.metadata["task"] == "retrieval":
        sample["captions"] = entry.captions
    elif task.metadata["task"] == "classification":
        sample.update(label=entry.label, class_name=entry.class_name)
    text = json.dumps(sample, ensure_ascii=False).encode("utf-8")
    writer.write({"__key__": key, "json": text, ext: data})
    row.update(shard=f"{task.stem}.tar", member=f"{key}.{ext}", bytes=len(data), **info)
    return row


def probe_video(path: str) -> dict[str, Any]:
    """duration (s), frames, fps, width, height of the video at ``path``, from its headers and packets (no
    frame is decoded); raises as :func:`vidclip.video.open_video` does for a file it cannot read."""
    from vidclip.video import open_video

    reader = open_video(path, "pyav")
    try:
        frames, fps = reader.num_frames, reader.fps
        return {
            "duration": frames / fps if fps else None,
            "frames": frames,
            "fps": fps or None,
            "width": reader.width or None,
            "height": reader.height or None,
        }
    finally:
        reader.close()


def _schema(metadata: dict[str, Any]):
    import pyarrow as pa

    string, integer, real = pa.string(), pa.int64(), pa.float64()
    types = [integer, string, string, string, string, string, pa.list_(string), integer, integer, real]
    types += [integer, real, integer, integer, string]
    fields = list(zip(INDEX_COLUMNS, types, strict=True))
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata)})


def _write_rows(path: Path, rows: list[dict[str, Any]], metadata: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(metadata)
    table = pa.table({name: [row[name] for row in rows] for name in INDEX_COLUMNS}, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_index(out: Path, plan: SplitPlan, tasks: list[ShardTask], summary: ShardSummary) -> None:
    """``out/{split}-samples.parquet``: the parts of the split's done shards, rows by position."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, shards = [], []
    for task in tasks:
        if _is_done(out, task):
            part = _part(out, task.stem)
            shards += _read_metadata(part)["shards"]
            tables.append(pq.read_table(part).replace_schema_metadata(None))
    if not tables:
        return
    rows = pa.concat_tables(tables).sort_by("position").to_pylist()
    metadata = {**tasks[0].metadata, "shards": shards}
    path = out / f"{plan.name}-samples.parquet"
    _write_rows(path, rows, metadata)
    summary.indexes.append(path)
    summary.shards += len(shards)
    summary.failed += sum(row["error"] is not None for row in rows)
    summary.samples += sum(row["error"] is None for row in rows)
