"""Prepare a dataset: every source re-encoded under the output folder at its mirrored path, several processes
at once, resumable, with the manifest kept as it goes (what ``vidclip prepare`` runs).

Resuming: an output with a row in the manifest is skipped, and so is one already on disk with the run's
settings in its tag (a run killed after the file was renamed into place, before its row was written: the row
is made from the file). A failed source has no output, so the next run tries it again. A file under ``--out``
that ``vidclip prepare`` did not write is never overwritten: the run refuses before any work, naming it.
A full disk stops the run with one line naming the file (nothing half-written is left, the rows of the files
done are kept); the hidden temporary files of a killed run are removed when the next one starts.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from vidclip.data.files import display_path
from vidclip.fileio import DiskFullError, exclusive_lock
from vidclip.prepare.encode import OutputInfo, describe_output, encode_video, read_tag
from vidclip.prepare.manifest import Manifest, ManifestRow
from vidclip.prepare.pool import TaskDied, run_each
from vidclip.prepare.settings import PrepareSettings, other_settings
from vidclip.prepare.tree import Job, plan_outputs
from vidclip.video.errors import VideoDecodeError
from vidclip.video.workers import available_cpus, default_num_workers

logger = logging.getLogger(__name__)
LOCK_NAME = ".vidclip-prepare.lock"
_TEMPORARY = re.compile(r"^\..+\.(mp4|parquet)\.[0-9a-f]{8}\.tmp$")  # vidclip.fileio.atomic_path's names


@dataclass
class PrepareSummary:
    """What one run did, for the closing line."""

    total: int
    skipped: int = 0  # already done: a row in the manifest, or a complete output found on disk
    ok: int = 0
    failed: int = 0
    manifest: Path | None = None

    def line(self, out: str | os.PathLike) -> str:
        return (
            f"prepare: {self.total} videos, {self.ok} encoded, {self.failed} failed, {self.skipped} skipped "
            f"(already done) -> {out} (manifest: {self.manifest})"
        )


def prepare_dataset(
    sources: list[str],
    out: str | os.PathLike,
    settings: PrepareSettings,
    *,
    num_workers: int | None = None,
    timeout: float | None = None,
    progress: bool = False,
) -> PrepareSummary:
    """Re-encode every video of ``sources`` (files, folders, lists) into ``out`` with ``settings``.

    ``num_workers`` processes encode at once (None: min(4, the CPUs available); 0: in this process, without
    protection from a crash); a source taking more than ``timeout`` seconds is stopped and gets its row. Raises
    ValueError (or FileNotFoundError) before any work for bad sources, a foreign file in the way, or an ``out``
    made with other settings; DiskFullError when the disk fills (what was done is kept)."""
    out = Path(out)
    jobs = plan_outputs(sources, out)
    workers = default_num_workers(num_workers)
    threads = max(1, available_cpus() // max(1, workers))
    with exclusive_lock(out / LOCK_NAME, "vidclip prepare run"):
        remove_temporaries(out)
        manifest = Manifest(out, settings)
        summary = PrepareSummary(len(jobs))
        todo = pending_jobs(jobs, out, settings, manifest, summary)
        work = partial(prepare_one, out=out, settings=settings, threads=threads)
        try:
            _encode_all(todo, work, workers, timeout, manifest, summary, progress)
        finally:
            manifest.flush()  # the rows of the files done are kept, whatever stopped the run
        summary.manifest = manifest.finish([job.output for job in jobs])
    return summary


def pending_jobs(
    jobs: list[Job], out: Path, settings: PrepareSettings, manifest: Manifest, summary: PrepareSummary
) -> list[Job]:
    """The jobs still to do; records a row for a complete output that has none. Refuses, before any work, a
    file in an output's place that this run may not overwrite."""
    identity, todo = settings.identity(), []
    for job in jobs:
        target = out / job.output
        row = manifest.rows.get(job.output)
        if not os.path.lexists(target):
            todo.append(job)
            continue
        if row is not None and row.error is None:
            if not _same_source(row.source, job.source):
                raise ValueError(
                    f"{target} was prepared from {row.source}, and {display_path(job.source)} would overwrite it: "
                    "prepare them into separate --out folders"
                )
            summary.skipped += 1
            continue
        tag = read_tag(target)
        if tag is None:
            raise ValueError(
                f"{target} exists and was not written by vidclip prepare: refusing to overwrite it (move it "
                "away, or choose another --out)"
            )
        if tag["settings"] != identity:
            raise ValueError(other_settings(str(target), tag["settings"], settings))
        manifest.add(make_row(job, describe_output(target), None))  # done by a run killed before its row
        summary.skipped += 1
    return todo


def _same_source(recorded: str, source: str) -> bool:
    try:
        return recorded == display_path(source) or os.path.samefile(recorded, source)
    except OSError:
        return False


def _encode_all(
    todo: list[Job],
    work,
    workers: int,
    timeout: float | None,
    manifest: Manifest,
    summary: PrepareSummary,
    progress: bool,
) -> None:
    from tqdm import tqdm

    bar = tqdm(
        total=summary.total, initial=summary.skipped, unit="video", desc="prepare", disable=not progress
    )
    results = run_each(todo, work, workers, timeout)
    try:
        for index, result in results:
            job = todo[index]
            if isinstance(result, TaskDied):
                result = ("failed", result.reason)
            if result[0] == "full":
                raise DiskFullError(result[2], result[1])
            info = OutputInfo(*result[1]) if result[0] == "ok" else None
            manifest.add(make_row(job, info, None if info is not None else result[1]))
            summary.ok, summary.failed = summary.ok + (info is not None), summary.failed + (info is None)
            bar.set_postfix(failed=summary.failed, refresh=False)
            bar.update()
    finally:
        results.close()  # stops the encodings still running (a full disk, Ctrl-C)
        bar.close()


def prepare_one(job: Job, *, out: Path, settings: PrepareSettings, threads: int = 1) -> tuple:
    """Encode one job (in a child process): ``("ok", OutputInfo fields)``, ``("failed", reason)`` or
    ``("full", message, path)`` for a full disk; plain tuples, which pickle."""
    try:
        info = encode_video(job.source, out / job.output, settings, threads=threads)
    except DiskFullError as err:
        return ("full", str(err), err.filename)
    except VideoDecodeError as err:
        return ("failed", err.reason)
    except FileNotFoundError:
        return ("failed", "no such file")
    except Exception as err:  # a failure of this one video: it costs its row, not the run
        return ("failed", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
    return ("ok", tuple(info))


def make_row(job: Job, info: OutputInfo | None, error: str | None) -> ManifestRow:
    """The manifest row of ``job``: the output's numbers, or the reason it has none."""
    if info is None:
        return ManifestRow(display_path(job.source), job.output, None, None, None, None, None, error)
    return ManifestRow(
        display_path(job.source),
        job.output,
        info.duration,
        info.frames,
        info.fps,
        info.width,
        info.height,
        None,
    )


def remove_temporaries(out: Path) -> None:
    """Remove the hidden temporary files a killed run left under ``out`` (only names ``atomic_path`` makes;
    called under the folder's lock, so no other run is writing them)."""
    if not out.is_dir():
        return
    for root, _, files in os.walk(out):
        for name in files:
            if _TEMPORARY.match(name):
                try:
                    os.unlink(os.path.join(root, name))
                except OSError as err:
                    logger.warning(
                        f"cannot remove {os.path.join(root, name)}, a killed run's temporary file: {err}"
                    )
