"""One run at a time per output folder: two ``vidclip extract`` runs on one ``--out`` (or two trainings on one
``output_dir``) never both write there, whatever their number of processes; the processes of one launched
run share it; a lock held by a process killed with SIGKILL blocks nobody."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import test_train
from test_train import base_args, run_train

from vidclip.commands import extract
from vidclip.fileio import FolderInUseError, exclusive_lock
from vidclip.inference.parts import METADATA_KEY
from vidclip.synthetic import index_frames, write_video

data, config_file, fresh_accelerate_state = (
    test_train.data,
    test_train.config_file,
    test_train.fresh_accelerate_state,
)
HOLD = "import sys\nfrom vidclip.fileio import exclusive_lock\nwith exclusive_lock(sys.argv[1], 'test run', rank=int(sys.argv[2]), world=int(sys.argv[3])):\n    print('held', flush=True)\n    sys.stdin.read()\n"  # fmt: skip


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock_videos")
    for i in range(6):
        write_video(root / f"v{i}.mp4", index_frames(8 + i, 32, 32), fps=25)
    return root


def hold(path: Path, rank: int = 0, world: int = 1) -> subprocess.Popen:
    """Another process holding ``path``'s lock as process ``rank`` of ``world``, until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(rank), str(world)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "held"
    return process


def release(process: subprocess.Popen) -> None:
    process.stdin.close()
    process.wait(timeout=30)


def start_extract(inputs: Path, out: Path, *options) -> subprocess.Popen:
    command = [sys.executable, "-m", "vidclip", "extract", str(inputs), "--out", str(out), "--model", "tiny"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, "--num-workers", "0", "--part-size", "1", "--batch-size", "1", *map(str, options)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    results = [process.communicate(timeout=240) for process in processes]
    return [(process.returncode, err) for process, (_, err) in zip(processes, results, strict=True)]


def identities(out: Path) -> list[int]:
    """num_frames of the model of every part in ``out``."""
    return [
        json.loads(pq.read_schema(path).metadata[METADATA_KEY])["identity"]["num_frames"]
        for path in sorted(out.glob("part-*.parquet"))
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_extract_runs_started_together_give_one_row_per_video(videos, tmp_path):
    out = tmp_path / "out"
    results = finish([start_extract(videos, out, "--num-frames", 2) for _ in range(2)])
    for code, err in results:
        assert code == 0 or (code == 2 and "is in use by another vidclip extract run (process " in err), err
        assert code == 0 or str(out) in err and len(err.strip().splitlines()) == 1, err
    assert 0 in [code for code, _ in results]
    table = pd.read_parquet(out)
    assert sorted(table["video"]) == sorted(str(path) for path in videos.iterdir())  # once each
    assert table["error"].isna().all()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_extract_runs_of_different_models_never_mix(videos, tmp_path):
    out = tmp_path / "out"
    results = finish([start_extract(videos, out, "--num-frames", frames) for frames in (2, 3)])
    assert sorted(code for code, _ in results) == [0, 2], results
    [refusal] = [err for code, err in results if code == 2]
    assert (
        "is in use by another vidclip extract run" in refusal
        or "holds embeddings of another model" in refusal
    )
    assert len(set(identities(out))) == 1  # one model in the folder
    assert pd.read_parquet(out)["video"].is_unique and len(pd.read_parquet(out)) == 6


def test_a_second_run_is_refused_at_once_and_a_killed_holder_blocks_nobody(videos, tmp_path, capsys):
    out = tmp_path / "out"
    holder = hold(out / extract.LOCK_NAME)
    args = [str(videos), "--out", str(out), "--model", "tiny", "--num-frames", "2", "--num-workers", "0"]
    assert extract.main(args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"{out} is in use by another vidclip extract run (process {holder.pid} holds" in line, line
    assert list(out.glob("part-*")) == []
    holder.send_signal(signal.SIGKILL)  # no handler, no cleanup: the kernel drops its lock
    holder.wait(timeout=30)
    assert extract.main(args) == 0
    assert len(pd.read_parquet(out)) == 6 and pd.read_parquet(out)["error"].isna().all()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == []  # lock file removed


@pytest.mark.parametrize(
    "held, wanted, refused",
    [
        ((0, 1), (0, 1), True),  # the same command twice
        ((0, 1), (1, 2), True),  # a run with more processes: its process 1 too
        ((0, 2), (0, 1), True),  # fewer processes
        ((1, 4), (1, 2), True),
        ((3, 4), (1, 2), True),
        ((0, 2), (1, 2), False),  # two processes of one launched run
        ((2, 3), (1, 3), False),
    ],
)
def test_every_process_of_another_run_is_refused_and_peers_share(held, wanted, refused, tmp_path):
    path = tmp_path / "out" / ".test.lock"
    holder = hold(path, *held)
    try:
        if refused:
            with pytest.raises(FolderInUseError, match=f"process {holder.pid} holds .test.lock"):
                with exclusive_lock(path, "test run", rank=wanted[0], world=wanted[1]):
                    pass
        else:
            with exclusive_lock(path, "test run", rank=wanted[0], world=wanted[1]) as lock:
                with lock.turn():  # peers take turns at rewriting, and a turn blocks no one's process lock
                    pass
    finally:
        release(holder)
    with exclusive_lock(path, "test run", rank=wanted[0], world=wanted[1]):
        pass  # free again once the holder is gone
    assert not (tmp_path / "out").exists()  # the last one out removed the lock and the folder it made


def test_a_second_training_on_one_output_dir_is_refused_and_the_first_kept(
    data, config_file, tmp_path, capsys
):
    """A run in progress (its lock held by another process) and a second ``vidclip train`` on the same
    output_dir, with or without --resume: exit 2 at once with one line, nothing of the first touched."""
    out = tmp_path / "run"
    assert run_train(config_file, base_args(data, out, "train.max_steps=2", "train.save_every=1")) == 0
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert any(path.name == "metrics.jsonl" for path in before) and not (out / ".vidclip-train.lock").exists()
    holder = hold(out / ".vidclip-train.lock")
    try:
        for flags in ([], ["--resume"]):
            capsys.readouterr()
            args = base_args(data, out, "train.max_steps=3", "train.save_every=1")
            assert run_train(config_file, args, *flags) == 2
            [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
            assert f"{out} is in use by another vidclip train run (process {holder.pid} holds" in line, line
        assert {
            path: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name[0] != "."
        } == (before)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    args = base_args(data, out, "train.max_steps=3", "train.save_every=1")
    assert run_train(config_file, args, "--resume") == 0  # the killed holder blocks nobody
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the first run's lines, then the resumed run's: no refused run's among them
