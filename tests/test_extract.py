"""``vidclip extract``: one row per video, broken files as rows, exact embeddings, resume, refusals."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import vidclip
from vidclip.commands import extract
from vidclip.commands.common import EXIT_INTERRUPTED
from vidclip.data.files import find_videos
from vidclip.heads import HEADS, TemporalHead, register_head
from vidclip.inference import parts
from vidclip.synthetic import index_frames, write_video

NUM_FRAMES = 4
GOOD = {"a.mp4": (12, 64, 64), "b.mkv": (3, 48, 64), "sub/c.mp4": (30, 64, 64)}  # (frames, H, W)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """Three decodable videos (one shorter than NUM_FRAMES, one in a subfolder), two broken, one non-video."""
    root = tmp_path_factory.mktemp("videos")
    for name, (frames, height, width) in GOOD.items():
        (root / name).parent.mkdir(exist_ok=True)
        write_video(root / name, index_frames(frames, height, width), fps=25, codec="libx264")
    (root / "broken.mp4").write_text("this is not a video")
    (root / "empty.mp4").touch()
    (root / "notes.md").write_text("not a video extension: not picked up from a folder")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", num_frames=NUM_FRAMES)
    return str(vidclip.save_checkpoint(model, tmp_path_factory.mktemp("run")).parent)


def run_extract(inputs, out, *options):
    try:
        return extract.main([*map(str, inputs), "--out", str(out), *map(str, options)])
    except SystemExit as exit:  # argparse refuses a malformed flag value with exit status 2
        return exit.code


def read_table(out) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("video").reset_index(drop=True)


def expected_embedding(checkpoint, path) -> np.ndarray:
    """The embedding computed directly through the library, as a user would."""
    model = vidclip.load_checkpoint(checkpoint).eval()
    clip = vidclip.load_frames(path, model.num_frames, "uniform")
    video = vidclip.get_video_transform(model)(clip.frames)  # (T, 3, S, S)
    with torch.no_grad():
        return model.encode_video(video[None], clip.mask[None]).pooled[0].numpy()


def test_folder_with_broken_files_gives_one_row_per_video(video_dir, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        run_extract([video_dir], out, "--checkpoint", checkpoint, "--batch-size", 2, "--num-workers", 0) == 0
    )
    assert capsys.readouterr().out.strip() == (
        f"extract: 5 videos, 3 ok, 2 failed, 0 skipped (already done) -> {out}"
    )
    table = read_table(out).set_index("video")
    assert sorted(table.index) == sorted(str(video_dir / name) for name in [*GOOD, "broken.mp4", "empty.mp4"])
    assert table.loc[str(video_dir / "empty.mp4"), "error"] == "empty file (0 bytes)"
    assert "not a video" in table.loc[str(video_dir / "broken.mp4"), "error"]
    for name in ("broken.mp4", "empty.mp4"):
        assert table.loc[str(video_dir / name), "embedding"] is None
    for name in GOOD:
        row = table.loc[str(video_dir / name)]
        assert pd.isna(row["error"]) and row["embedding"].dtype == np.float32
        np.testing.assert_allclose(
            row["embedding"], expected_embedding(checkpoint, video_dir / name), atol=1e-5
        )


def test_list_file_paths_are_relative_to_the_list(video_dir, checkpoint, tmp_path):
    listing = video_dir / "videos.txt"
    listing.write_text("# a comment\na.mp4\n\n  sub/c.mp4  \nmissing.mp4\na.mp4\n")
    out = tmp_path / "out"
    assert run_extract([listing], out, "--checkpoint", checkpoint, "--num-workers", 0) == 0
    table = pd.read_parquet(out)
    expected = [os.path.join(str(video_dir), name) for name in ("a.mp4", "sub/c.mp4", "missing.mp4")]
    assert table["video"].tolist() == expected  # once each, in list order
    assert table["error"].isna().tolist() == [True, True, False]
    assert table["error"].iloc[2] == "no such file"


def test_find_videos_searches_folders_recursively_and_skips_hidden_files(tmp_path):
    for name in ("b.mp4", "a.MOV", "sub/c.webm", "sub/readme.txt", ".hidden/d.mp4", "._b.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)  # a symlinked folder cycle must end
    assert find_videos([str(tmp_path)]) == [str(tmp_path / name) for name in ("a.MOV", "b.mp4", "sub/c.webm")]


def test_interrupted_run_resumes_without_duplicates_or_holes(
    video_dir, checkpoint, tmp_path, monkeypatch, capsys
):
    options = ("--checkpoint", checkpoint, "--part-size", 2, "--batch-size", 1, "--num-workers", 0)
    assert run_extract([video_dir], tmp_path / "whole", *options) == 0
    write_part, calls = parts.write_part, []

    def crash_on_second_part(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return write_part(*args)

    monkeypatch.setattr(parts, "write_part", crash_on_second_part)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_extract([video_dir], out, *options)
    assert [p.name.startswith("part-") for p in out.iterdir()] == [True]  # one part, no temp file left
    monkeypatch.setattr(parts, "write_part", write_part)
    capsys.readouterr()
    assert run_extract([video_dir], out, *options) == 0
    assert "1 ok, 2 failed, 2 skipped" in capsys.readouterr().out
    resumed, whole = read_table(out), read_table(tmp_path / "whole")
    assert resumed["video"].is_unique and resumed["video"].tolist() == whole["video"].tolist()
    pd.testing.assert_frame_equal(resumed, whole)


def test_ctrl_c_keeps_the_rows_already_embedded(video_dir, checkpoint, tmp_path, monkeypatch, capsys):
    batch_rows, calls = extract.batch_rows, []

    def interrupt_second_batch(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return batch_rows(*args)

    monkeypatch.setattr(extract, "batch_rows", interrupt_second_batch)
    out, options = tmp_path / "out", ("--checkpoint", checkpoint, "--batch-size", 2, "--num-workers", 0)
    assert run_extract([video_dir], out, *options) == EXIT_INTERRUPTED
    assert "run the same command again to resume" in capsys.readouterr().err
    assert len(pd.read_parquet(out)) == 2  # the first batch, though the part (1000 rows) was not full
    monkeypatch.setattr(extract, "batch_rows", batch_rows)
    assert run_extract([video_dir], out, *options) == 0
    assert pd.read_parquet(out)["video"].is_unique and len(pd.read_parquet(out)) == 5


def test_rerun_of_a_finished_run_writes_nothing(video_dir, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    options = ("--checkpoint", checkpoint, "--part-size", 2, "--num-workers", 0)
    assert run_extract([video_dir], out, *options) == 0
    parts = sorted(os.listdir(out))
    assert len(parts) == 3
    capsys.readouterr()
    assert run_extract([video_dir], out, *options) == 0
    assert "5 videos, 0 ok, 0 failed, 5 skipped (already done)" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == parts


def test_worker_processes_give_the_same_table(video_dir, checkpoint, tmp_path):
    for workers in (0, 2):
        assert run_extract([video_dir], tmp_path / f"w{workers}", "--checkpoint", checkpoint,
                           "--batch-size", 2, "--num-workers", workers) == 0  # fmt: skip
    pd.testing.assert_frame_equal(read_table(tmp_path / "w0"), read_table(tmp_path / "w2"))


def test_each_video_belongs_to_exactly_one_process(monkeypatch):
    for world in (1, 2, 3):
        shards = [extract.Shard(rank, world) for rank in range(world)]
        videos = [f"v{index}.mp4" for index in range(20)]
        owners = sorted(index for shard in shards for index, _ in shard.share(videos))
        assert owners == list(range(20))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 is not in"):
        extract.Shard.from_env()


def run_two_processes(inputs, out, *options) -> subprocess.CompletedProcess:
    """``vidclip extract`` under torchrun with 2 processes on the CPU (what ``accelerate launch`` starts too)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = ["-m", "vidclip", "extract", *map(str, inputs), "--out", str(out), *map(str, options)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(launch + command, capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_share_one_output_and_resume_what_one_process_began(video_dir, checkpoint, tmp_path):
    """One process embeds the first video; two processes then do the rest, each writing its own parts: the
    table equals a single-process run, with no video embedded twice."""
    videos = find_videos([str(video_dir)])
    options = ("--checkpoint", checkpoint, "--batch-size", 2, "--num-workers", 0, "--part-size", 1)
    assert run_extract(videos, tmp_path / "one", *options) == 0
    shared = tmp_path / "shared"
    assert run_extract(videos[:1], shared, *options) == 0
    result = run_two_processes(videos, shared, *options)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("extract"))
    assert lines == [
        f"extract (process 0 of 2): 3 videos, 1 ok, 1 failed, 1 skipped (already done) -> {shared}",
        f"extract (process 1 of 2): 2 videos, 1 ok, 1 failed, 0 skipped (already done) -> {shared}",
    ]
    assert len(list(shared.glob("part-*.parquet"))) == len(videos)  # one row per part: none written twice
    pd.testing.assert_frame_equal(
        read_table(shared), read_table(tmp_path / "one"), check_exact=False, atol=1e-6
    )


def test_a_decode_past_the_timeout_is_that_videos_row(video_dir, checkpoint, tmp_path, hang_decoding):
    import time

    hang_decoding("b.mkv")
    out, start = tmp_path / "out", time.monotonic()
    assert (
        run_extract([video_dir], out, "--checkpoint", checkpoint, "--num-workers", 0, "--timeout", 0.5) == 0
    )
    assert time.monotonic() - start < 30
    table = read_table(out).set_index("video")
    assert (
        table.loc[str(video_dir / "b.mkv"), "error"]
        == "timed out: decoding took longer than 0.5 s (--timeout)"
    )
    assert table["embedding"].notna().sum() == 2  # a.mp4 and sub/c.mp4 are unaffected


def test_bf16_embeddings_are_close_to_fp32_and_kept_apart_from_them(video_dir, checkpoint, tmp_path, capsys):
    options = ("--checkpoint", checkpoint, "--num-workers", 0)
    assert run_extract([video_dir], tmp_path / "fp32", *options) == 0
    assert run_extract([video_dir], tmp_path / "bf16", *options, "--precision", "bf16") == 0
    fp32, bf16 = read_table(tmp_path / "fp32"), read_table(tmp_path / "bf16")
    pd.testing.assert_series_equal(fp32["error"], bf16["error"])
    for a, b in zip(fp32["embedding"].dropna(), bf16["embedding"].dropna(), strict=True):
        assert not np.array_equal(a, b) and float(a @ b) > 0.99  # bf16 rounding, the same direction
    assert run_extract([video_dir], tmp_path / "fp32", *options, "--precision", "bf16") == 2
    assert "differs in precision" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_image_tower_gives_the_same_embeddings(video_dir, checkpoint, tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or real_compile(fn, **kw))
    options = ("--checkpoint", checkpoint, "--num-workers", 0, "--batch-size", 2)
    assert run_extract([video_dir], tmp_path / "eager", *options) == 0
    assert not compiled
    assert run_extract([video_dir], tmp_path / "compiled", *options, "--compile") == 0
    assert len(compiled) == 1 and compiled[0].__self__ is not None  # the image tower's bound forward
    eager, fast = read_table(tmp_path / "eager"), read_table(tmp_path / "compiled")
    pd.testing.assert_series_equal(eager["error"], fast["error"])
    for a, b in zip(eager["embedding"].dropna(), fast["embedding"].dropna(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_write_part_leaves_nothing_when_writing_fails(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def fail_midway(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        parts.write_part(tmp_path, [parts.Row(0, "a.mp4", None, "x")], {})
    assert os.listdir(tmp_path) == []


def test_refuses_an_out_made_with_another_model(video_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_extract([video_dir / "a.mp4"], out, "--model", "tiny", "--num-frames", 2) == 0
    assert run_extract([video_dir / "b.mkv"], out, "--model", "tiny", "--num-frames", 3) == 2
    err = capsys.readouterr().err
    assert "holds embeddings of another model" in err and "differs in num_frames)" in err
    assert len(pd.read_parquet(out)) == 1


class TextConditionedHead(TemporalHead):
    """Scores texts against frames directly: it has no text-independent embedding."""

    text_conditioned = True

    def score(self, text, frames, mask):
        return text @ frames.mean(dim=1).T


@pytest.fixture
def text_conditioned_head():
    register_head("test_text_conditioned")(TextConditionedHead)
    yield "test_text_conditioned"
    del HEADS["test_text_conditioned"]


def test_refuses_a_text_conditioned_head(video_dir, tmp_path, capsys, text_conditioned_head):
    out = tmp_path / "out"
    assert run_extract([video_dir], out, "--model", "tiny", "--head", text_conditioned_head) == 2
    assert "is text-conditioned" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("checkpoint_and_model", "drop --model"),
        ("no_model", "say which model"),
        ("missing_input", "no such file or folder"),
        ("no_videos", "no videos found"),
        ("out_is_a_file", "is a file"),
        ("out_holds_other_files", "not vidclip parts"),
        ("bad_device", "not a torch device"),
        ("negative_timeout", "--timeout must be 0"),
        ("infinite_timeout", "--timeout must be 0"),
        ("nan_timeout", "--timeout must be 0"),
        ("huge_timeout", "--timeout must be 0"),
    ],
)
def test_argument_errors_say_what_to_do(case, message, video_dir, checkpoint, tmp_path, capsys):
    video, out, model = video_dir / "a.mp4", tmp_path / "out", ("--model", "tiny")
    if case == "out_is_a_file":
        out.touch()
    if case == "out_holds_other_files":
        out.mkdir()
        (out / "notes.txt").touch()
    args = {
        "checkpoint_and_model": ([video], out, "--checkpoint", checkpoint, *model),
        "no_model": ([video], out),
        "missing_input": ([video, tmp_path / "nope.mp4"], out, *model),
        "no_videos": ([tmp_path], out, *model),
        "bad_device": ([video], out, *model, "--device", "potato"),
        "negative_timeout": ([video], out, *model, "--timeout", "-1"),
        "infinite_timeout": ([video], out, *model, "--timeout", "inf"),
        "nan_timeout": ([video], out, *model, "--timeout", "nan"),
        "huge_timeout": ([video], out, *model, "--timeout", "1e30"),
    }.get(case, ([video], out, *model))
    assert run_extract(*args) == 2
    assert message in capsys.readouterr().err


def test_help_through_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "vidclip", "extract", "--help"], capture_output=True, text=True, check=True
    )
    assert "--part-size" in result.stdout and "--checkpoint" in result.stdout


# -- failed videos are retried -----------------------------------------------------------------------------
def test_videos_that_timed_out_are_retried_in_place_as_ok_rows(
    video_dir, checkpoint, tmp_path, hang_decoding, monkeypatch, capsys
):
    """Two videos past --timeout (in one part); the next run, without the hang, retries exactly those two: one
    ok row each, in the rows' places (the part rewritten, no part added), the table of a clean run."""
    from vidclip.data import dataset

    real_load = vidclip.video.load_frames
    for name in ("b.mkv", "c.mp4"):
        hang_decoding(name)
    out, options = tmp_path / "out", ("--checkpoint", checkpoint, "--num-workers", 0, "--timeout", 0.5)
    assert run_extract([video_dir], out, *options) == 0
    assert read_table(out)["error"].str.startswith("timed out").sum() == 2
    parts_before = sorted(p.name for p in out.glob("part-*"))
    monkeypatch.setattr(dataset, "load_frames", real_load)  # the cause has passed
    capsys.readouterr()
    assert run_extract([video_dir], out, *options) == 0
    assert capsys.readouterr().out.strip() == (
        f"extract: 5 videos, 2 ok, 0 failed, 3 skipped (already done), 2 retried (failed before) -> {out}"
    )
    assert sorted(p.name for p in out.glob("part-*")) == parts_before
    assert pd.read_parquet(out)["video"].tolist() == find_videos([str(video_dir)])  # input order kept
    assert run_extract([video_dir], tmp_path / "clean", *options) == 0
    pd.testing.assert_frame_equal(read_table(out), read_table(tmp_path / "clean"))
    capsys.readouterr()
    assert run_extract([video_dir], out, *options) == 0  # the broken files are not tried on every run
    assert "0 ok, 0 failed, 5 skipped (already done) ->" in capsys.readouterr().out


def test_a_broken_file_is_retried_with_retry_failed_or_once_it_changed(
    video_dir, checkpoint, tmp_path, capsys
):
    folder = tmp_path / "videos"
    folder.mkdir()
    whole = (video_dir / "a.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    (folder / "ok.mp4").write_bytes(whole)
    out, options = tmp_path / "out", ("--checkpoint", checkpoint, "--num-workers", 0)

    def run(*extra) -> str:
        capsys.readouterr()
        assert run_extract([folder], out, *options, *extra) == 0
        table = pd.read_parquet(out)
        assert len(table) == 2 and table["video"].is_unique
        return capsys.readouterr().out

    assert "1 ok, 1 failed" in run()
    assert (
        pd.read_parquet(out).set_index("video").loc[str(folder / "cut.mp4"), "error"].startswith("truncated")
    )
    assert "0 ok, 0 failed, 2 skipped (already done) ->" in run()  # it would only fail again
    assert "0 ok, 1 failed, 1 skipped (already done), 1 retried (failed before)" in run("--retry-failed")
    (folder / "cut.mp4").write_bytes(whole)  # the download finished: the file changed after its row
    assert "1 ok, 0 failed, 1 skipped (already done), 1 retried (failed before)" in run()
    assert pd.read_parquet(out)["error"].isna().all()


def test_unchanged_broken_files_kept_are_named_with_the_flag_that_retries_them(
    video_dir, checkpoint, tmp_path, capsys
):
    out, options = tmp_path / "out", ("--checkpoint", checkpoint, "--num-workers", 0)
    assert run_extract([video_dir], out, *options) == 0
    capsys.readouterr()
    assert run_extract([video_dir], out, *options) == 0
    assert "2 videos that failed before (broken, unchanged since) not tried again; --retry-failed" in (
        capsys.readouterr().err
    )


def test_a_missing_file_that_appears_is_retried(video_dir, checkpoint, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("one.mp4\ntwo.mp4\n")
    (tmp_path / "one.mp4").write_bytes((video_dir / "a.mp4").read_bytes())
    out, options = tmp_path / "out", ("--checkpoint", checkpoint, "--num-workers", 0)
    assert run_extract([listing], out, *options) == 0
    assert pd.read_parquet(out)["error"].fillna("ok").tolist() == ["ok", "no such file"]
    (tmp_path / "two.mp4").write_bytes((video_dir / "sub/c.mp4").read_bytes())
    capsys.readouterr()
    assert run_extract([listing], out, *options) == 0
    assert "1 ok, 0 failed, 1 skipped (already done), 1 retried (failed before)" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert table["video"].tolist() == [str(tmp_path / "one.mp4"), str(tmp_path / "two.mp4")]
    assert table["error"].isna().all()


def test_a_crash_while_rewriting_a_part_leaves_one_row_per_video(
    video_dir, checkpoint, tmp_path, monkeypatch
):
    """The failed row and its replacement are never both on disk: killed before the rewrite, the failed row
    stays (and is retried by the next run); the rewrite itself is atomic."""
    import pyarrow.parquet as pq

    listing = tmp_path / "list.txt"
    listing.write_text("one.mp4\ntwo.mp4\n")
    out, options = tmp_path / "out", ("--checkpoint", checkpoint, "--num-workers", 0)
    assert run_extract([listing], out, *options) == 0
    for name in ("one.mp4", "two.mp4"):
        (tmp_path / name).write_bytes((video_dir / "a.mp4").read_bytes())
    before = pd.read_parquet(out)

    def disk_fails(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("simulated crash")

    monkeypatch.setattr(pq, "write_table", disk_fails)
    with pytest.raises(OSError, match="simulated crash"):
        run_extract([listing], out, *options)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(pd.read_parquet(out), before)  # the old rows, whole, once each
    assert run_extract([listing], out, *options) == 0
    assert pd.read_parquet(out)["error"].isna().tolist() == [True, True]


def test_replace_rows_keeps_the_order_and_one_row_per_video(tmp_path):
    embedding = np.ones(3, dtype=np.float32)
    rows = [parts.Row(i, name, None, "x") for i, name in enumerate(["a", "b", "a", "c"])]  # "a" twice: old
    path = parts.write_part(tmp_path, rows, {"identity": {}})
    new = {video: parts.Row(0, video, embedding, None) for video in ("c", "a", "d")}
    parts.replace_rows(path, new, {"identity": {}})
    table = pd.read_parquet(path)
    assert table["video"].tolist() == ["a", "b", "c", "d"]  # in place; d, absent, added rather than lost
    assert table["error"].fillna("ok").tolist() == ["ok", "x", "ok", "ok"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_retry_rows_of_one_part_without_losing_either(video_dir, checkpoint, tmp_path):
    """One process wrote four failed rows in one part; two processes retry two each: they take turns at
    rewriting that part, so neither rewrite undoes the other's."""
    listing = tmp_path / "list.txt"
    names = [f"v{i}.mp4" for i in range(4)]
    listing.write_text("".join(f"{name}\n" for name in names))
    out, options = tmp_path / "out", ("--checkpoint", checkpoint, "--num-workers", 0, "--batch-size", 1)
    assert run_extract([listing], out, *options) == 0
    assert len(list(out.glob("part-*"))) == 1
    for name in names:
        (tmp_path / name).write_bytes((video_dir / "a.mp4").read_bytes())
    result = run_two_processes([listing], out, *options, "--part-size", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_parquet(out)
    assert table["video"].tolist() == [str(tmp_path / name) for name in names]
    assert table["error"].isna().all(), table["error"].tolist()


def test_an_out_that_cannot_be_written_is_refused_before_any_work(video_dir, tmp_path, capsys, monkeypatch):
    import vidclip.inference.parts as parts_module

    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(  # root ignores modes: a read-only folder as os.access reports it
        parts_module.os,
        "access",
        lambda path, mode: False if Path(path) == readonly else real_access(path, mode),
    )
    built = []
    monkeypatch.setattr(extract, "load_extract_model", lambda *a: built.append(1))
    assert run_extract([video_dir / "a.mp4"], readonly / "out", "--model", "tiny") == 2
    assert f"cannot write in {readonly}" in capsys.readouterr().err and not built
