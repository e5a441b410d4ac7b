"""Run one task per child process, a few at a time, so that a task that crashes its process (a decoder's
segfault, the kernel's OOM killer) or runs past a time limit costs only itself.

A fresh process per task (forked where the platform can) costs milliseconds, against the seconds a video takes
to encode. Children end with the run: they die with it when it is killed (Linux's parent-death signal), and
are asked to stop (SIGTERM, which they turn into a clean exit that removes their temporary files) when it
stops early.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any, TypeVar

from vidclip.data.dataset import worker_death_reason

T = TypeVar("T")
STOP_GRACE = 10.0  # seconds a child asked to stop has to remove its temporary file before it is killed


def run_each(
    tasks: list[T], work: Callable[[T], Any], workers: int, timeout: float | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, work(tasks[index]))`` as tasks finish, running at most ``workers`` at once, each in its
    own process (0: one after another in this process, without that protection). A task whose process died
    yields ``(index, TaskDied(reason))``; one that ran more than ``timeout`` seconds (None or 0: no limit) is
    killed and yields ``(index, TaskDied("timed out after N s"))``. ``work``'s result must pickle. Closing
    the iterator early stops the tasks still running."""
    if workers <= 0:
        for index, task in enumerate(tasks):
            yield index, work(task)
        return
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    )
    running: dict[int, tuple[Any, Any, float]] = {}  # index -> (process, connection, deadline)
    started = 0
    try:
        while started < len(tasks) or running:
            while started < len(tasks) and len(running) < workers:
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child, args=(work, tasks[started], send, os.getpid()), daemon=True
                )
                process.start()
                send.close()  # the child holds the only writing end: its death is the reader's end of file
                deadline = time.monotonic() + timeout if timeout else float("inf")
                running[started] = (process, receive, deadline)
                started += 1
            soonest = min(deadline for _, _, deadline in running.values())
            ready = wait([conn for _, conn, _ in running.values()], timeout=_until(soonest))
            for index, (process, conn, deadline) in list(running.items()):
                if conn in ready:
                    result = _receive(process, conn)
                elif time.monotonic() >= deadline:
                    _stop([process])
                    conn.close()
                    result = TaskDied(f"timed out after {timeout:g} s: its process was stopped")
                else:
                    continue
                del running[index]
                yield index, result
    finally:
        _stop([process for process, _, _ in running.values()])
        for _, conn, _ in running.values():
            conn.close()


class TaskDied:
    """A task that gave no result: its process died, or ran out of time; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"TaskDied({self.reason!r})"


def _until(deadline: float) -> float | None:
    return None if deadline == float("inf") else max(0.0, deadline - time.monotonic())


def _receive(process, conn) -> Any:
    """The child's result, or :class:`TaskDied` when it died without sending one."""
    try:
        result = conn.recv()
    except (EOFError, OSError):
        process.join()
        result = TaskDied(worker_death_reason(process.exitcode))
    else:
        process.join()
    conn.close()
    return result


def _child(work: Callable[[Any], Any], task: Any, send, parent: int) -> None:
    """In the child: die with the parent, leave Ctrl-C to the parent (which stops the children), exit cleanly
    on SIGTERM (``finally`` blocks remove temporary files), run the task and send its result."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was set
        sys.exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    send.send(work(task))
    send.close()


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(processes: list) -> None:
    """Ask the children to stop, wait for them to clean up, kill the ones that do not."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
