"""Files written whole or not at all, and folders walked safely: the two file-system helpers every part of
vidclip shares (checkpoints, configs, metrics, embedding parts; video folders and dataset roots)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid
from collections.abc import Container, Iterator
from pathlib import Path


class DiskFullError(OSError):
    """A write that failed because the file system holding it is full (or the user's quota is spent); the
    message is one line naming the file and the space left. ``errno`` is ENOSPC (or EDQUOT)."""

    def __init__(self, path: str | os.PathLike, message: str, code: int = errno.ENOSPC) -> None:
        super().__init__(message)
        self.errno, self.filename = code, os.fspath(path)

    def __str__(self) -> str:  # the message alone: OSError's own form is "[Errno 28] None: 'path'"
        return str(self.args[0])


# What ENOSPC looks like once a library has wrapped it: safetensors' Rust error ("I/O error: No space left on
# device (os error 28)"), pyarrow's ("[errno 28] No space left on device"), and the C runtime's own text.
_FULL_TEXTS = {errno.ENOSPC: ("no space left on device", "os error 28", "errno 28")}
_FULL_TEXTS[errno.EDQUOT] = ("disk quota exceeded", f"os error {errno.EDQUOT}", f"errno {errno.EDQUOT}")
_NEARLY_FULL = 1 << 20  # under 1 MiB free, any failed write counts as a full disk (torch's "unexpected pos")


def _free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``path`` (its nearest existing
    folder); None where that cannot be asked."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    return stats.f_bavail * stats.f_frsize


def disk_full_error(path: str | os.PathLike, error: BaseException) -> DiskFullError | None:
    """``error`` as a :class:`DiskFullError` naming ``path`` when the write failed for want of space: ENOSPC
    or EDQUOT, their text inside another library's error, or any error while the disk has under 1 MiB left.
    None when the disk is not the cause. Call it before the partial file is removed: that frees its space."""
    if isinstance(error, DiskFullError):
        return error
    path, text = Path(path), " ".join(str(error).split()).lower()
    code = getattr(error, "errno", None)
    if code not in _FULL_TEXTS:
        code = next((c for c, hints in _FULL_TEXTS.items() if any(hint in text for hint in hints)), None)
    free = _free_bytes(path)
    if code is None and (free is None or free >= _NEARLY_FULL):
        return None
    what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
    left = f"{free / 2**20:.1f} MiB left" if free is not None else "space left unknown"
    detail = "" if code is not None else f" ({type(error).__name__}: {' '.join(str(error).split())[:150]})"
    return DiskFullError(
        path,
        f"{what}: cannot write {path} ({left} in {path.parent}); free some space and run again (files "
        f"written before are kept){detail}",
        code or errno.ENOSPC,
    )


@contextlib.contextmanager
def reporting_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a failure of the writes in the block as :class:`DiskFullError` naming ``path`` when a full
    disk caused it (see :func:`disk_full_error`); other errors pass unchanged."""
    try:
        yield
    except Exception as err:
        full = disk_full_error(path, err)
        if full is None or full is err:
            raise
        raise full from err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; when the block succeeds, sync it and rename it to ``path``.

    A crash (or an exception in the block) never leaves a half-written file under the real name, and two
    writers never share a temporary name; a write that fails for a full disk raises :class:`DiskFullError`
    naming ``path`` (the file before, if any, is untouched). The leading dot keeps readers of the folder
    (pyarrow's dataset reader, globbing for parts) from seeing the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with reporting_full_disk(path):  # a full disk is one line naming ``path``, whoever wrote the bytes
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())  # a delayed allocation can fail here
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
    when it is given. Paths start with ``folder`` as given (relative stays relative). A folder that cannot be
    read is skipped with one warning naming it (its files are not in the result)."""
    seen: set[str] = set()
    reported: set[str] = set()

    def unreadable(err: OSError) -> None:
        name = err.filename if err.filename is not None else folder
        real = os.path.realpath(name)
        if real not in reported:  # once per folder, however many links lead to it
            reported.add(real)
            logging.getLogger(__name__).warning(
                f"cannot read folder {name} ({err.strerror or err}): the files under it are skipped"
            )

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
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


class FolderInUseError(ValueError):
    """Another run is writing in the folder: the user's setup, which commands report as one line (exit 2)."""


class FolderLock:
    """What :func:`exclusive_lock` yields; :meth:`turn` lets the processes of the run sharing the folder take
    turns at a brief read-modify-write (e.g. rewriting a part another process could rewrite too)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd  # None where the file system cannot lock: nothing to take turns at

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        import fcntl

        if self.fd is None:
            yield
            return
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, 0)  # byte 0; waits while a peer has its turn
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 0)


@contextlib.contextmanager
def exclusive_lock(
    path: str | os.PathLike, what: str, *, rank: int = 0, world: int = 1
) -> Iterator[FolderLock]:
    """Hold the lock file ``path`` for process ``rank`` of the ``world`` processes of one run (a launcher's
    RANK and WORLD_SIZE), or raise :class:`FolderInUseError` at once, naming the folder and the PID holding it.

    POSIX record locks on one file: process ``r`` locks byte ``1 + r``, the last one every byte from ``world``
    on. The processes of one run never overlap, and every process of another run, whatever its number of
    processes, overlaps one of them: two runs never share the folder. The kernel drops the locks of a process
    that dies (SIGKILL included) and does not pass them to forked workers. The last process out deletes the
    file, and the folder when this call created it and nothing else is in it. Where the file system cannot
    lock at all, one warning, and the block runs unlocked.
    """
    import fcntl

    path = Path(path)
    if not 0 <= rank < world:
        raise ValueError(f"process rank {rank} is not in [0, {world})")
    start, length = (1 + rank, 1) if rank < world - 1 else (world, 0)  # length 0: to the end, and beyond
    created = not path.parent.exists()
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileNotFoundError:  # the last holder removed the folder it had created: make it again
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
        except OSError as err:
            holder = _lock_holder(fd, start, length)
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                pid = f"process {holder}" if holder else "another process"
                raise FolderInUseError(
                    f"{path.parent} is in use by another {what} ({pid} holds {path.name}): wait for it to "
                    "finish, or choose another folder"
                ) from None
            logging.getLogger(__name__).warning(
                f"cannot lock {path} ({err.strerror or err}): another {what} writing in {path.parent} at the "
                "same time would not be refused"
            )
            yield FolderLock(None)
            return
        if _is_file_at(fd, path):
            break
        os.close(fd)  # the last holder deleted this file after we opened it: lock the one now there
    try:
        yield FolderLock(fd)
    finally:
        _release(fd, path, created)


def _lock_holder(fd: int, start: int, length: int) -> int | None:
    """The PID of a process holding a lock that overlaps the range (Linux's ``struct flock``), else None."""
    import fcntl
    import struct
    import sys

    if not sys.platform.startswith("linux"):
        return None
    layout = "hhqqi4x"  # l_type, l_whence, l_start, l_len, l_pid
    try:
        query = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    kind, _, _, _, pid = struct.unpack(layout, answer)
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None  # 0: a process in another PID namespace


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _release(fd: int, path: Path, created: bool) -> None:
    """Unlock by closing; the last process out (the whole file lockable) first deletes the file."""
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)
    except OSError:
        pass  # a peer of this run still holds its byte: it deletes the file when it ends
    else:
        path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):  # not empty: it holds the run's output
                path.parent.rmdir()
    finally:
        os.close(fd)
