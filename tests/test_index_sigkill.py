"""``vidclip index`` killed with SIGKILL mid-build and run again gives the index of an uninterrupted run; two
processes under a launcher build the index one process builds."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import vidclip
from vidclip.index import VideoIndex
from vidclip.synthetic import index_frames, write_video


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("index_sigkill")
    videos = root / "videos"
    videos.mkdir()
    for i in range(12):
        write_video(videos / f"v{i:02d}.mp4", index_frames(40 + 5 * i, 64, 64), fps=25)
    (videos / "broken.mp4").write_text("not a video")
    torch.manual_seed(0)
    run = vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=4), root / "run").parent
    return root, videos, run


def command(videos, run, out, *extra):
    return [
        sys.executable,
        "-m",
        "vidclip",
        "index",
        str(videos),
        "--out",
        str(out),
        "--checkpoint",
        str(run),
        "--segment",
        "1",
        "--stride",
        "0.5",
        "--part-rows",
        "1",
        "--batch-size",
        "1",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


def results(out) -> pd.DataFrame:
    index = VideoIndex.load(out)
    found = index.search("a square", k=len(index)).drop(columns=["row", "rank"])
    return found.sort_values(["video", "start"]).reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_then_rerun_equals_an_uninterrupted_run(setup):
    root, videos, run = setup
    reference_out, killed_out = root / "reference", root / "killed"
    subprocess.run(command(videos, run, reference_out), check=True, capture_output=True)
    reference = results(reference_out)

    process = subprocess.Popen(command(videos, run, killed_out), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed_out / "rows").glob("part-*.parquet"))) < 4:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 4 <= len(list((killed_out / "rows").glob("part-*.parquet"))) < 12, "the kill should land mid-run"
    assert not (killed_out / "index.json").exists()

    subprocess.run(command(videos, run, killed_out), check=True, capture_output=True)
    resumed = results(killed_out)
    pd.testing.assert_frame_equal(resumed, reference, check_exact=False, atol=1e-6)
    assert pd.read_parquet(killed_out / "failures")["video"].tolist() == [str(videos / "broken.mp4")]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_build_the_index_one_process_builds(setup):
    root, videos, run = setup
    one, two = root / "one", root / "two"
    subprocess.run(command(videos, run, one), check=True, capture_output=True)
    port = 29500 + os.getpid() % 1000
    launched = [
        subprocess.Popen(
            command(videos, run, two),
            env={
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=240) for p in launched]
    assert [p.returncode for p in launched] == [0, 0], outputs
    pd.testing.assert_frame_equal(results(two), results(one), check_exact=False, atol=1e-6)
