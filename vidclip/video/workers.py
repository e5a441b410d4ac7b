"""How many DataLoader worker processes decode videos: at most the CPUs this process may use.

A container or a batch job often gets fewer cores than the machine has (``os.cpu_count()`` counts them all);
more decoding processes than cores only compete for them. GPU decoders decode in the main process.
"""

from __future__ import annotations

import logging
import os

from vidclip.video.decoders import decodes_on_device

log = logging.getLogger(__name__)

DEFAULT_MAX_WORKERS = 4  # an unset worker count: enough to keep a model fed, few enough to share a machine
_capped: set[tuple[int, int]] = set()  # (requested, available) already logged: say it once, not per loader


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (Linux: taskset, cgroup
    cpusets, Slurm), else every CPU of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_num_workers(requested: int | None = None) -> int:
    """DataLoader workers for CPU decoding: ``requested`` capped at :func:`available_cpus` (logged once), or
    ``min(4, available_cpus())`` when unset (None)."""
    cpus = available_cpus()
    if requested is None:
        return min(DEFAULT_MAX_WORKERS, cpus)
    if requested < 0:
        raise ValueError(f"num_workers must be 0 or more, got {requested}")
    if requested > cpus:
        if (requested, cpus) not in _capped:
            _capped.add((requested, cpus))
            log.info(
                "%d DataLoader workers asked, %d CPUs available to this process: using %d",
                requested,
                cpus,
                cpus,
            )
        return cpus
    return requested


def loader_workers(decoder: str, num_workers: int | None = None) -> int:
    """DataLoader worker processes for decoding with ``decoder``: :func:`default_num_workers` of
    ``num_workers``, or 0 for a GPU decoder, which decodes in the main process (NVDEC works asynchronously in
    hardware, and forked workers cannot use CUDA)."""
    if decodes_on_device(decoder):
        if num_workers:
            log.info(
                "decoder %r decodes on the GPU in the main process: %d workers not started",
                decoder,
                num_workers,
            )
        return 0
    return default_num_workers(num_workers)
