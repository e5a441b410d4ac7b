"""An extraction killed with SIGKILL at an arbitrary moment and run again gives the uninterrupted table."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import vidclip
from vidclip.synthetic import index_frames, write_video


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigkill")
    videos = root / "videos"
    videos.mkdir()
    for i in range(12):
        write_video(videos / f"v{i:02d}.mp4", index_frames(20 + i, 64, 64), fps=25)
    (videos / "broken.mp4").write_text("not a video")
    torch.manual_seed(0)
    run = vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=4), root / "run").parent
    return root, videos, run


def command(videos, run, out):
    return [
        sys.executable,
        "-m",
        "vidclip",
        "extract",
        str(videos),
        "--out",
        str(out),
        "--checkpoint",
        str(run),
    ]


def options():
    return ["--part-size", "1", "--batch-size", "1", "--num-workers", "0", "--device", "cpu"]


def table(out) -> pd.DataFrame:
    frame = pd.read_parquet(out).sort_values("video").reset_index(drop=True)
    assert not frame["video"].duplicated().any(), "a video appears twice"
    return frame


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_then_rerun_equals_an_uninterrupted_run(setup):
    root, videos, run = setup
    reference_out, killed_out = root / "reference", root / "killed"
    subprocess.run(command(videos, run, reference_out) + options(), check=True, capture_output=True)
    reference = table(reference_out)
    assert len(reference) == 13 and reference["error"].notna().sum() == 1

    # Start, wait until some parts exist, then SIGKILL: no handler runs, no cleanup happens.
    process = subprocess.Popen(command(videos, run, killed_out) + options(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed_out.glob("part-*.parquet"))) < 4:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = len(list(killed_out.glob("part-*.parquet")))
    assert 4 <= partial < 13, "the kill should land mid-run"

    subprocess.run(command(videos, run, killed_out) + options(), check=True, capture_output=True)
    resumed = table(killed_out)
    assert resumed["video"].tolist() == reference["video"].tolist()
    assert resumed["error"].isna().tolist() == reference["error"].isna().tolist()
    for got, want in zip(resumed["embedding"], reference["embedding"], strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
