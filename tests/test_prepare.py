"""``vidclip prepare``: retimed, resized, keyframed, cut outputs showing the right source frames; the tree
mirrored; a manifest where a broken source costs its row; resume after SIGKILL; refusals; a full disk."""

from __future__ import annotations

import errno
import faulthandler
import math
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from bad_corpus import CORPUS, write_corpus

import vidclip
from vidclip.commands import prepare as command
from vidclip.fileio import DiskFullError
from vidclip.prepare import PrepareSettings, encode, prepare_dataset, read_manifest
from vidclip.prepare.settings import output_size
from vidclip.synthetic import decode_all_frames, index_frames, read_frame_index, write_video


def run_prepare(sources, out, *options) -> int:
    try:
        return command.main([*map(str, sources), "--out", str(out), *map(str, options)])
    except SystemExit as exit:  # argparse refuses a malformed flag value with exit status 2
        return exit.code


def keyframe_flags(path) -> list[bool]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [packet.is_keyframe for packet in container.demux(stream) if packet.size > 0]


def stream_types(path) -> list[str]:
    with av.open(str(path)) as container:
        return [stream.type for stream in container.streams]


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def write_with_audio(path: Path, frames: np.ndarray, fps: int = 25, rate: int = 16000) -> Path:
    """H.264 with an AAC stream: a 440 Hz sine as long as the video."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for array in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        samples = len(frames) * rate // fps
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(audio.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A tree: 60 frames at 25 fps (2.4 s, 64x96), 24 at 30000/1001 fps, 20 at 15 fps in a subfolder (portrait,
    Matroska), one with audio, one broken file."""
    root = tmp_path_factory.mktemp("sources")
    (root / "sub").mkdir()
    write_video(root / "a.mp4", index_frames(60, 64, 96), fps=25)
    write_video(root / "ntsc.mp4", index_frames(24, 64, 64), fps=Fraction(30000, 1001))
    write_video(root / "sub" / "b.mkv", index_frames(20, 96, 64), fps=15)
    write_with_audio(root / "sound.mp4", index_frames(25, 64, 64))
    (root / "broken.mp4").write_text("this is not a video")
    return root


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory):
    """``sources`` prepared at 10 fps, short side 48, a keyframe every 0.5 s, by 2 worker processes."""
    out = tmp_path_factory.mktemp("prepared") / "out"
    argv = ["--fps", "10", "--short-side", "48", "--keyframe-interval", "0.5", "--num-workers", "2"]
    assert run_prepare([sources], out, *argv) == 0
    return out


def test_the_tree_is_mirrored_and_the_manifest_has_a_row_per_source(sources, prepared, capsys):
    assert files_under(prepared) == [
        "a.mp4",
        "manifest.parquet",
        "ntsc.mp4",
        "sound.mp4",
        "sub/b.mp4",
    ]  # nothing hidden
    table = pd.read_parquet(prepared / "manifest.parquet")
    assert list(table.columns) == [
        "source",
        "output",
        "duration",
        "frames",
        "fps",
        "width",
        "height",
        "error",
    ]
    rows = table.set_index("output")
    assert rows.loc["a.mp4", "source"] == str(sources / "a.mp4")
    assert rows.loc["sub/b.mp4", "source"] == str(sources / "sub" / "b.mkv")
    broken = rows.loc["broken.mp4"]
    assert "not a video" in broken["error"] and pd.isna(broken["frames"]) and pd.isna(broken["duration"])
    assert not (prepared / "broken.mp4").exists()
    good = rows.drop("broken.mp4")
    assert good["error"].isna().all() and (good["fps"] == 10).all()
    assert (good["duration"] == good["frames"] / 10).all()
    assert rows.loc["a.mp4", ["frames", "width", "height"]].tolist() == [24, 72, 48]  # 2.4 s at 10 fps
    assert rows.loc["sub/b.mp4", ["width", "height"]].tolist() == [48, 72]  # portrait stays portrait
    pd.testing.assert_frame_equal(read_manifest(prepared), table)


def test_outputs_have_the_asked_rate_size_keyframes_and_show_the_source_frame_at_each_time(prepared):
    for name, source_fps, source_frames in [
        ("a.mp4", Fraction(25), 60),
        ("ntsc.mp4", Fraction(30000, 1001), 24),
        ("sub/b.mp4", Fraction(15), 20),
    ]:
        frames = decode_all_frames(prepared / name)
        duration = source_frames / source_fps
        assert len(frames) == math.ceil(duration * 10), name  # slots k/10 before the source's end
        assert min(frames.shape[1:3]) == 48
        # the frame at output time k/10 is the latest source frame at or before it: floor(t * source fps)
        shown = [read_frame_index(frame) for frame in frames]
        assert shown == [math.floor(Fraction(k, 10) * source_fps) for k in range(len(frames))], name
        flags = keyframe_flags(prepared / name)
        assert flags == [k % 5 == 0 for k in range(len(flags))], name  # exactly every 0.5 s at 10 fps
        with av.open(str(prepared / name)) as container:
            assert float(container.streams.video[0].average_rate) == pytest.approx(10)


def test_prepared_files_load_with_load_video(prepared):
    clip = vidclip.load_video(prepared / "a.mp4", num_frames=6)
    assert clip.shape == (6, 48, 72, 3)
    assert [read_frame_index(frame.numpy()) for frame in clip] == sorted(
        read_frame_index(frame.numpy()) for frame in clip
    )


def test_audio_is_dropped_unless_kept(sources, prepared, tmp_path):
    assert stream_types(prepared / "sound.mp4") == ["video"]
    out = tmp_path / "with_audio"
    assert run_prepare([sources / "sound.mp4"], out, "--keep-audio", "--num-workers", "0") == 0
    assert stream_types(out / "sound.mp4") == ["video", "audio"]
    with av.open(str(out / "sound.mp4")) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        seconds = sum(frame.samples for frame in container.decode(audio)) / audio.codec_context.sample_rate
    assert seconds == pytest.approx(1.0, abs=0.1)  # as long as the 25 frames at 25 fps


def test_max_seconds_cuts_and_the_source_rate_and_size_are_kept_by_default(sources, tmp_path):
    out = tmp_path / "cut"
    assert run_prepare([sources / "a.mp4"], out, "--max-seconds", "1", "--num-workers", "0") == 0
    frames = decode_all_frames(out / "a.mp4")
    assert frames.shape == (25, 64, 96, 3)  # 1 s at the source's 25 fps, its own size
    assert [read_frame_index(frame) for frame in frames] == list(range(25))
    assert keyframe_flags(out / "a.mp4") == [k % 25 == 0 for k in range(25)]  # the default: every 1 s


def test_output_size_keeps_the_aspect_with_even_sides_and_does_not_upscale_unless_asked():
    assert output_size(1280, 720, PrepareSettings(short_side=224)) == (398, 224)
    assert output_size(720, 1280, PrepareSettings(short_side=224)) == (224, 398)
    assert output_size(97, 63, PrepareSettings(short_side=224)) == (96, 62)  # smaller: kept, made even
    assert output_size(97, 63, PrepareSettings(short_side=224, upscale=True)) == (344, 224)
    with pytest.raises(ValueError, match="even"):
        PrepareSettings(short_side=225)


def test_unusual_videos_are_prepared_and_broken_ones_cost_their_row(tmp_path):
    root = tmp_path / "videos"
    write_corpus(root)
    out = tmp_path / "out"
    assert run_prepare([root], out, "--short-side", "32", "--num-workers", "2") == 0
    table = pd.read_parquet(out / "manifest.parquet").set_index("source")
    written = [name for name in CORPUS if name != "never downloaded.mp4"]
    assert sorted(table.index) == sorted(str(root / name) for name in written)
    for name in written:
        row, reason = table.loc[str(root / name)], CORPUS[name]
        if reason is None:
            assert pd.isna(row["error"]), (name, row["error"])
            upright = vidclip.load_video(root / name, num_frames=1)[0]  # as a player shows it
            frame = decode_all_frames(out / row["output"])[0]
            assert (frame.shape[0] > frame.shape[1]) == (upright.shape[0] > upright.shape[1]), name
        else:
            assert reason in row["error"].lower() and pd.isna(row["frames"]), (name, row["error"])


def test_a_worker_that_crashes_or_hangs_costs_its_own_row(sources, tmp_path, monkeypatch):
    real = encode.encode_video

    def flaky(source, output, settings, **kwargs):
        if source.endswith("a.mp4"):
            faulthandler.disable()  # pytest's, inherited: no traceback dump on stderr
            os.kill(os.getpid(), signal.SIGSEGV)
        if source.endswith("b.mkv"):
            time.sleep(60)
        return real(source, output, settings, **kwargs)

    monkeypatch.setattr("vidclip.prepare.run.encode_video", flaky)  # forked workers inherit it
    out = tmp_path / "out"
    summary = prepare_dataset([str(sources)], out, PrepareSettings(fps=5), num_workers=2, timeout=3)
    assert (summary.ok, summary.failed) == (2, 3)
    errors = read_manifest(out).set_index("output")["error"]
    assert "the decoding process died (killed by signal 11" in errors["a.mp4"]
    assert "timed out after 3 s" in errors["sub/b.mp4"]
    assert pd.isna(errors["sound.mp4"])
    assert files_under(out) == [
        "manifest.parquet",
        "ntsc.mp4",
        "sound.mp4",
    ]  # the stopped one left no temporary file


def test_a_rerun_skips_what_is_done_and_rebuilds_rows_lost_with_a_killed_run(
    sources, prepared, tmp_path, capsys
):
    copy = tmp_path / "out"
    subprocess.run(["cp", "-a", str(prepared), str(copy)], check=True)
    before = pd.read_parquet(copy / "manifest.parquet")
    (copy / "manifest.parquet").unlink()  # as if killed after the files were renamed in, before any row
    argv = ["--fps", "10", "--short-side", "48", "--keyframe-interval", "0.5", "--num-workers", "0"]
    assert run_prepare([sources], copy, *argv) == 0
    assert "0 encoded, 1 failed, 4 skipped (already done)" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "manifest.parquet"), before)


def test_refusals_are_one_line_before_any_work(sources, prepared, tmp_path, capsys):
    foreign = tmp_path / "out"
    foreign.mkdir()
    (foreign / "a.mp4").write_text("the user's own file")
    assert run_prepare([sources], foreign, "--num-workers", "0") == 2
    err = capsys.readouterr().err
    assert f"{foreign / 'a.mp4'} exists and was not written by vidclip prepare" in err
    assert (foreign / "a.mp4").read_text() == "the user's own file" and files_under(foreign) == ["a.mp4"]

    assert run_prepare([sources], prepared, "--fps", "3", "--num-workers", "0") == 2  # other settings
    assert "was prepared with other settings (10 fps, short side 48" in capsys.readouterr().err

    assert run_prepare([sources], sources / "sub" / "out") == 2  # --out inside a source folder
    assert "is inside the source folder" in capsys.readouterr().err

    clash = tmp_path / "clash"
    clash.mkdir()
    write_video(clash / "x.mp4", index_frames(3, 32, 32))
    write_video(clash / "x.mkv", index_frames(3, 32, 32))
    assert run_prepare([clash], tmp_path / "clash_out") == 2
    assert "would both be written to" in capsys.readouterr().err
    assert run_prepare([sources], tmp_path / "o", "--short-side", "225") == 2  # argparse: even pixels


def test_a_full_disk_stops_with_one_line_naming_the_file_and_keeps_what_was_done(
    sources, tmp_path, monkeypatch
):
    real = encode.mux

    def mux(container, packets):
        if "b.mp4" in container.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(container, packets)

    monkeypatch.setattr(encode, "mux", mux)
    out = tmp_path / "out"
    with pytest.raises(DiskFullError, match=f"no space left on device: cannot write {out / 'sub' / 'b.mp4'}"):
        prepare_dataset([str(sources)], out, PrepareSettings(fps=5), num_workers=0)
    done = read_manifest(out).set_index("output")
    assert pd.isna(done.loc["a.mp4", "error"]) and "sub/b.mp4" not in done.index  # a.mp4 kept, with its row
    kept = ["a.mp4", "ntsc.mp4", "sound.mp4"]  # the sources before sub/b.mkv
    assert (
        files_under(out)
        == [".vidclip-prepare/" + p.name for p in (out / ".vidclip-prepare").iterdir()] + kept
    )
    assert not (out / "sub" / "b.mp4").exists()  # no half-written b.mp4, no temporary file
    monkeypatch.setattr(encode, "mux", real)  # space freed: the run finishes
    summary = prepare_dataset([str(sources)], out, PrepareSettings(fps=5), num_workers=0)
    assert (summary.skipped, summary.ok, summary.failed) == (3, 1, 1)  # the broken one is tried again
    assert files_under(out) == ["a.mp4", "manifest.parquet", "ntsc.mp4", "sound.mp4", "sub/b.mp4"]


def test_a_full_disk_on_a_real_file_system(tmp_path, capsys):
    """A 1 MiB tmpfs, nearly filled: a small video fits, a large one does not (one line naming it)."""
    from test_messages import fill, tmpfs

    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "a_small.mp4", index_frames(5, 32, 32))
    noise = np.random.default_rng(0).integers(0, 256, (30, 240, 320, 3), dtype=np.uint8)
    write_video(root / "b_large.mp4", noise, options={"crf": "0", "preset": "ultrafast"})
    with tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "out"
        out.mkdir()
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * (1024 * 1024 - 256 * 1024))  # 256 KiB left: enough for one small video
        argv = ["--crf", "0", "--preset", "ultrafast", "--num-workers", "1"]
        assert run_prepare([root], out, *argv) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert f"no space left on device: cannot write {out / 'b_large.mp4'}" in line, line
        assert [p.name for p in out.rglob("*.mp4")] == ["a_small.mp4"]
        assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
        assert read_manifest(out)["output"].tolist() == ["a_small.mp4"]
        fill(disk / "filler2")  # and when even the manifest cannot be written: still one line, exit 2
        assert run_prepare([root], out, *argv) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert "no space left on device: cannot write" in line, line


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for i in range(10):
        write_video(videos / ("sub" if i % 2 else ".") / f"v{i}.mp4", index_frames(90, 96, 128), fps=30)
    (videos / "broken.mp4").write_text("not a video")
    settings = ["--fps", "10", "--short-side", "64"]
    reference = tmp_path / "reference"
    assert run_prepare([videos], reference, *settings, "--num-workers", "0") == 0

    killed = tmp_path / "killed"
    argv = [sys.executable, "-m", "vidclip", "prepare", str(videos), "--out", str(killed), *settings]
    process = subprocess.Popen(
        [*argv, "--num-workers", "1"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.rglob("v*.mp4"))) < 3:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # no handler runs, no cleanup happens
    process.wait()
    assert 3 <= len(list(killed.rglob("v*.mp4"))) < 10, "the kill should land mid-run"
    assert not (killed / "manifest.parquet").exists()

    subprocess.run([*argv, "--num-workers", "2"], check=True, capture_output=True)
    assert files_under(killed) == files_under(reference)  # nothing half-written, hidden or left over
    pd.testing.assert_frame_equal(
        pd.read_parquet(killed / "manifest.parquet"), pd.read_parquet(reference / "manifest.parquet")
    )
    for path in sorted(reference.rglob("*.mp4")):
        got = decode_all_frames(killed / path.relative_to(reference))
        want = decode_all_frames(path)
        assert [read_frame_index(f) for f in got] == [read_frame_index(f) for f in want]
