"""DataLoader workers: at most the CPUs this process may use (its affinity, not the machine's count), four when
unset, and none for a GPU decoder, which decodes in the main process."""

import logging
import os

import pytest

from vidclip.video import available_cpus, default_num_workers, loader_workers, workers


@pytest.fixture
def cpus(monkeypatch):
    """Set the CPUs this process may use: ``cpus(n)`` fakes an affinity mask of n CPUs on a larger machine."""
    monkeypatch.setattr(workers, "_capped", set())  # the once-only log starts afresh

    def set_affinity(n: int):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda: 64)

    return set_affinity


def test_available_cpus_is_the_affinity_mask_not_the_machine(cpus):
    cpus(2)
    assert available_cpus() == 2


def test_available_cpus_falls_back_to_the_cpu_count_without_affinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert available_cpus() == 3


@pytest.mark.parametrize(("affinity", "expected"), [(1, 1), (2, 2), (4, 4), (16, 4)])
def test_an_unset_worker_count_is_at_most_four_and_the_cpus(cpus, affinity, expected):
    cpus(affinity)
    assert default_num_workers() == expected == loader_workers("pyav") == loader_workers("auto", None)


def test_a_larger_request_is_capped_at_the_cpus_and_said_once(cpus, caplog):
    cpus(2)
    with caplog.at_level(logging.INFO, logger="vidclip.video.workers"):
        assert default_num_workers(8) == 2 and loader_workers("pyav", 8) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "8 DataLoader workers asked, 2 CPUs available to this process: using 2"
    ]
    assert default_num_workers(0) == 0 and default_num_workers(2) == 2  # within the CPUs: as asked
    with pytest.raises(ValueError, match="0 or more"):
        default_num_workers(-1)


def test_gpu_decoders_use_no_workers(cpus):
    cpus(8)
    assert loader_workers("nvdec", 4) == 0 and loader_workers("nvdec") == 0
