"""``vidclip prepare --shards``: WebDataset tar shards and their Parquet index, end to end.

What is tested: a retrieval config packed into shards of 3 (a row per annotated video by position, the source
bytes byte for byte in ``{key}.{ext}`` beside ``{key}.json``, a corrupt and a missing video each a row with its
reason and in no shard); the shards read back with ``data.format: webdataset`` give the CSV's captions, and
evaluation from them scores exactly as from the files; a classification config's class names and labels; the
split ``videos`` without annotations; a re-run that skips what is done and rewrites a lost shard with the same
bytes; refusals (a foreign shard, another --shard-size, re-encoding asked of a set made without) as one line
before any work; re-encoded shards (``--fps``, ``--short-side``) packed from ``OUT/files``; a shard cut in half
whose lost samples are named during evaluation; a full disk (simulated, and a real tmpfs) that stops with one
line and keeps the shards done; and a SIGKILLed run whose re-run equals an uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

webdataset = pytest.importorskip("webdataset", reason="webdataset is not installed (pip install webdataset)")

import vidclip  # noqa: E402
from vidclip.commands import prepare as command  # noqa: E402
from vidclip.config import DataConfig  # noqa: E402
from vidclip.data import read_annotations  # noqa: E402
from vidclip.data.shards import read_shard_set  # noqa: E402
from vidclip.inference import encode_videos  # noqa: E402
from vidclip.inference.retrieval import score_retrieval  # noqa: E402
from vidclip.prepare.manifest import PARTS_FOLDER  # noqa: E402
from vidclip.synthetic import index_frames, write_video  # noqa: E402

# The retrieval CSV's videos in order: position i is sample key f"{i:08d}" in shard i // 3.
GOOD = ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4", "v4.mp4", "v5.mp4", "sub/v6.mkv"]
ANNOTATED = [
    "v0.mp4",
    "v1.mp4",
    "corrupt.mp4",
    "v2.mp4",
    "v3.mp4",
    "gone.mp4",
    "v4.mp4",
    "v5.mp4",
    "sub/v6.mkv",
]
FAILED = {"corrupt.mp4": "not a video", "gone.mp4": "no such file"}
SHARD_SIZE = 3
SHARDS = [f"test-{k:06d}.tar" for k in range(3)]


def run_prepare(sources, out, *options) -> int:
    try:
        return command.main([*map(str, sources), "--out", str(out), "--shards", *map(str, options)])
    except SystemExit as exit:  # argparse refuses a malformed flag value with exit status 2
        return exit.code


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and mtime: what a refusal must leave untouched."""
    return {
        name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns)
        for name in files_under(folder)
    }


def copy_tree(source: Path, target: Path) -> Path:
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


def index_of(out: Path, split: str = "test") -> list[SimpleNamespace]:
    """The rows of the split's index (None where a value is missing), by position as stored."""
    return [SimpleNamespace(**row) for row in pq.read_table(out / f"{split}-samples.parquet").to_pylist()]


def metadata_of(out: Path, split: str = "test") -> dict:
    return json.loads(pq.read_schema(out / f"{split}-samples.parquet").metadata[b"vidclip.shards"])


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def tar_bytes(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers()}


def write_config(path: Path, task: str, video_root: Path | None = None, **splits: Path) -> Path:
    lines = [f"task: {task}", "data:", "  format: csv"] + [
        f"  {split}: {csv}" for split, csv in splits.items()
    ]
    lines += [f"  video_root: {video_root}"] if video_root is not None else []
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """``videos/``: 7 videos of 8-14 frames at 10 fps (32x32; one is Matroska in a subfolder), a corrupt file;
    ``test.csv`` two captions each, the corrupt one and a missing ``gone.mp4`` among them; ``good.csv`` the
    same without those two; a classification split pair (labels cat/dog/owl); their configs."""
    root = tmp_path_factory.mktemp("shard_sources")
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    for i, name in enumerate(GOOD):
        write_video(videos / name, index_frames(8 + i, 32, 32), fps=10)
    (videos / "corrupt.mp4").write_text("this is not a video")
    rows = [
        {"video": name, "caption": f"{name} caption {c}"}
        for name in ANNOTATED
        for c in range(1 if name in FAILED else 2)
    ]
    pd.DataFrame(rows).to_csv(videos / "test.csv", index=False)
    pd.DataFrame([row for row in rows if row["video"] not in FAILED]).to_csv(videos / "good.csv", index=False)
    labels = ["cat", "dog", "owl", "dog", "cat", "owl", "dog"]
    pairs = list(zip(GOOD, labels, strict=True))
    pd.DataFrame(pairs[:4], columns=["video", "label"]).to_csv(videos / "cls_train.csv", index=False)
    pd.DataFrame(pairs[4:], columns=["video", "label"]).to_csv(videos / "cls_test.csv", index=False)
    write_config(root / "retrieval.yaml", "retrieval", test=videos / "test.csv")
    write_config(
        root / "classification.yaml",
        "classification",
        train=videos / "cls_train.csv",
        test=videos / "cls_test.csv",
    )
    return root


@pytest.fixture(scope="module")
def shards(dataset, tmp_path_factory) -> Path:
    """The retrieval config packed into shards of 3 by 2 worker processes (read-only: copy it to change it)."""
    out = tmp_path_factory.mktemp("shards") / "out"
    options = ["--shard-size", SHARD_SIZE, "--annotations", dataset / "retrieval.yaml", "--num-workers", "2"]
    assert run_prepare([dataset / "videos"], out, *options) == 0
    return out


def test_the_index_has_a_row_per_annotated_video_and_the_shards_hold_the_source_bytes(dataset, shards):
    assert files_under(shards) == sorted(
        [*SHARDS, "test-samples.parquet", *(f"{PARTS_FOLDER}/{name[:-4]}.parquet" for name in SHARDS)]
    )
    table = index_of(shards)
    assert pq.read_schema(shards / "test-samples.parquet").names == [
        "position",
        "key",
        "shard",
        "member",
        "video",
        "id",
        "captions",
        "label",
        "bytes",
        "duration",
        "frames",
        "fps",
        "width",
        "height",
        "error",
    ]
    assert [row.position for row in table] == list(range(len(ANNOTATED)))
    assert [row.video for row in table] == ANNOTATED
    assert [row.key for row in table] == [f"{i:08d}" for i in range(len(ANNOTATED))]
    for row in table:
        name = row.video
        if name in FAILED:
            assert FAILED[name] in row.error.lower(), (name, row.error)
            assert row.shard is None and row.member is None and row.bytes is None and row.frames is None
            continue
        assert row.error is None, (name, row.error)
        assert row.shard == f"test-{row.position // SHARD_SIZE:06d}.tar"
        ext = Path(name).suffix.lstrip(".")
        assert row.member == f"{row.key}.{ext}"
        source = dataset / "videos" / name
        assert row.bytes == source.stat().st_size
        assert (row.frames, row.fps, row.width, row.height) == (8 + GOOD.index(name), 10, 32, 32)
        assert row.duration == pytest.approx(row.frames / 10)
        assert list(row.captions) == [f"{name} caption 0", f"{name} caption 1"]

    for shard in SHARDS:
        rows = [row for row in table if row.shard == shard]
        members = tar_bytes(shards / shard)
        expected = sorted(name for row in rows for name in (f"{row.key}.json", row.member))
        assert sorted(members) == expected, shard  # the failed videos are in no shard
        assert all(member.mtime == 0 for member in tar_members(shards / shard))  # the same bytes every run
        for row in rows:
            assert members[row.member] == (dataset / "videos" / row.video).read_bytes()  # byte for byte
            meta = json.loads(members[f"{row.key}.json"])
            assert meta["video"] == meta["id"] == row.video and meta["key"] == row.key
            assert meta["captions"] == list(row.captions)
            assert (meta["frames"], meta["fps"], meta["width"], meta["height"]) == (row.frames, 10, 32, 32)

    metadata = metadata_of(shards)
    assert {
        key: metadata[key] for key in ("version", "split", "task", "class_names", "shard_size", "settings")
    } == {
        "version": 1,
        "split": "test",
        "task": "retrieval",
        "class_names": None,
        "shard_size": SHARD_SIZE,
        "settings": None,
    }
    assert metadata["shards"] == [
        {"name": name, "samples": samples, "bytes": (shards / name).stat().st_size}
        for name, samples in zip(SHARDS, [2, 2, 3], strict=True)
    ]


def test_the_shards_read_back_give_the_csv_annotations(dataset, shards):
    files = read_annotations(
        DataConfig(format="csv", test=str(dataset / "videos" / "good.csv")), "retrieval", "test"
    )
    for spec in (f"test-{{000000..{len(SHARDS) - 1:06d}}}.tar", "test-*.tar"):
        read = read_annotations(DataConfig(format="webdataset", test=str(shards / spec)), "retrieval", "test")
        assert read.captions == files.captions and read.caption_video == files.caption_video
        assert [v.id for v in read.videos] == [v.id for v in files.videos] == GOOD
        by_video = {row.video: row for row in index_of(shards)}
        assert read.video_paths() == [f"{shards / by_video[v].shard}#{by_video[v].key}" for v in GOOD]


def test_evaluation_from_the_shards_is_exactly_evaluation_from_the_files(dataset, shards):
    model = vidclip.create_model("tiny", head="mean", num_frames=4)
    files = read_annotations(
        DataConfig(format="csv", test=str(dataset / "videos" / "good.csv")), "retrieval", "test"
    )
    read = read_annotations(
        DataConfig(format="webdataset", test=str(shards / "test-*.tar")), "retrieval", "test"
    )
    a = score_retrieval(model, files, num_workers=0, batch_size=3)
    b = score_retrieval(model, read, num_workers=0, batch_size=3)
    assert a.similarity.shape == (2 * len(GOOD), len(GOOD))
    assert torch.equal(a.similarity, b.similarity)


def test_a_classification_config_carries_its_class_names_and_labels(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_prepare([dataset / "videos"], out, "--annotations", dataset / "classification.yaml") == 0
    assert "prepare: 2 splits, 7 samples in 2 shards, 0 failed" in capsys.readouterr().out
    for split, csv in (("train", "cls_train.csv"), ("test", "cls_test.csv")):
        files = read_annotations(
            DataConfig(
                format="csv",
                train=str(dataset / "videos" / "cls_train.csv"),
                test=str(dataset / "videos" / csv),
            ),
            "classification",
            split,
        )
        metadata = metadata_of(out, split)
        assert metadata["task"] == "classification" and metadata["class_names"] == ["cat", "dog", "owl"]
        assert [row.label for row in index_of(out, split)] == files.labels
        spec = str(out / f"{split}-{{000000..000000}}.tar")
        read = read_annotations(DataConfig(format="webdataset", **{split: spec}), "classification", split)
        assert read.class_names == files.class_names == ["cat", "dog", "owl"]
        assert read.labels == files.labels and [v.id for v in read.videos] == [v.id for v in files.videos]
        members = tar_bytes(out / f"{split}-000000.tar")
        meta = json.loads(members["00000000.json"])
        assert meta["label"] == files.labels[0] and meta["class_name"] == files.class_names[files.labels[0]]
        assert "captions" not in meta


def test_without_annotations_every_source_video_is_a_sample_of_the_split_videos(dataset, tmp_path):
    out = tmp_path / "out"
    assert run_prepare([dataset / "videos"], out, "--shard-size", 4, "--num-workers", 0) == 0
    assert [p.name for p in sorted(out.glob("*.tar"))] == ["videos-000000.tar", "videos-000001.tar"]
    table = index_of(out, "videos")
    assert sorted(row.video for row in table) == sorted(["corrupt.mp4", *GOOD])  # every source, once
    assert [row.position for row in table] == list(range(len(GOOD) + 1))
    assert all(row.id == row.video and row.captions is None and row.label is None for row in table)
    [bad] = [row for row in table if row.video == "corrupt.mp4"]
    assert "not a video" in bad.error and bad.shard is None
    good = [row for row in table if row.error is None]
    assert len(good) == len(GOOD)
    for row in good:
        assert row.shard == f"videos-{row.position // 4:06d}.tar"
        assert tar_bytes(out / row.shard)[row.member] == (dataset / "videos" / row.video).read_bytes()
    metadata = metadata_of(out, "videos")
    assert metadata["split"] == "videos" and metadata["task"] is None
    listed = read_shard_set(str(out / "videos-*.tar"))  # from the index: the good samples, in order
    assert [sample.meta["video"] for sample in listed.samples] == [row.video for row in good]


def test_a_rerun_skips_the_shards_done_and_rewrites_a_lost_one_with_the_same_bytes(
    dataset, shards, tmp_path, capsys
):
    out = copy_tree(shards, tmp_path / "out")
    options = ["--shard-size", SHARD_SIZE, "--annotations", dataset / "retrieval.yaml", "--num-workers", 0]
    before = snapshot(out)
    assert run_prepare([dataset / "videos"], out, *options) == 0
    assert "7 samples in 3 shards, 2 failed, 3 shards skipped (already done)" in capsys.readouterr().out
    after = snapshot(out)
    assert {name: after[name] for name in SHARDS} == {name: before[name] for name in SHARDS}  # not rewritten
    assert index_of(out) == index_of(shards)

    (out / "test-000001.tar").unlink()
    assert run_prepare([dataset / "videos"], out, *options) == 0
    assert "7 samples in 3 shards, 2 failed, 2 shards skipped (already done)" in capsys.readouterr().out
    again = snapshot(out)
    assert again["test-000001.tar"][0] == before["test-000001.tar"][0]  # the same bytes: mtime 0, fixed order
    for name in ("test-000000.tar", "test-000002.tar"):
        assert again[name] == before[name], name  # untouched
    assert files_under(out) == files_under(shards)  # no temporary file left
    assert index_of(out) == index_of(shards)
    assert metadata_of(out) == metadata_of(shards)

    damaged = out / "test-000002.tar"  # cut since it was written (a bad copy back): not done any more
    damaged.write_bytes(damaged.read_bytes()[:1024])
    assert run_prepare([dataset / "videos"], out, *options) == 0
    assert "7 samples in 3 shards, 2 failed, 2 shards skipped (already done)" in capsys.readouterr().out
    assert snapshot(out)["test-000002.tar"][0] == before["test-000002.tar"][0]


def test_a_rerun_with_fewer_videos_removes_the_shards_past_the_end(dataset, shards, tmp_path, capsys):
    """The annotations now name the first 4 videos: shard 0 is kept, shard 1 redone with one sample, and
    shard 2 (with its part) removed, so a reader globbing the folder does not find it."""
    out = copy_tree(shards, tmp_path / "out")
    table = pd.read_csv(dataset / "videos" / "test.csv")
    table[table["video"].isin(ANNOTATED[:4])].to_csv(tmp_path / "fewer.csv", index=False)
    config = write_config(
        tmp_path / "fewer.yaml", "retrieval", video_root=dataset / "videos", test=tmp_path / "fewer.csv"
    )
    before = snapshot(out)
    options = ["--shard-size", SHARD_SIZE, "--annotations", config, "--num-workers", 0]
    assert run_prepare([dataset / "videos"], out, *options) == 0
    assert "3 samples in 2 shards, 1 failed, 1 shard skipped (already done)" in capsys.readouterr().out
    assert files_under(out) == sorted(
        [*SHARDS[:2], "test-samples.parquet", *(f"{PARTS_FOLDER}/{name[:-4]}.parquet" for name in SHARDS[:2])]
    )
    assert snapshot(out)["test-000000.tar"] == before["test-000000.tar"]
    assert [row.video for row in index_of(out)] == ANNOTATED[:4]
    assert sorted(tar_bytes(out / "test-000001.tar")) == ["00000003.json", "00000003.mp4"]
    read = read_annotations(
        DataConfig(format="webdataset", test=str(out / "test-*.tar")), "retrieval", "test"
    )
    assert [v.id for v in read.videos] == ["v0.mp4", "v1.mp4", "v2.mp4"]


def test_refusals_are_one_line_before_any_work(dataset, shards, tmp_path, capsys):
    sources = dataset / "videos"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "test-000000.tar").write_bytes(b"the user's own tar")
    assert run_prepare([sources], foreign, "--annotations", dataset / "retrieval.yaml") == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"{foreign / 'test-000000.tar'} exists and was not written by vidclip prepare --shards" in line
    assert files_under(foreign) == ["test-000000.tar"]
    assert (foreign / "test-000000.tar").read_bytes() == b"the user's own tar"

    out = copy_tree(shards, tmp_path / "out")
    before = snapshot(out)
    options = ["--annotations", dataset / "retrieval.yaml", "--num-workers", 0]
    assert run_prepare([sources], out, "--shard-size", 2, *options) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"{out} holds shards of 3 samples (--shard-size 3); this run asks for --shard-size 2" in line
    assert snapshot(out) == before

    assert run_prepare([sources], out, "--shard-size", SHARD_SIZE, "--fps", 3, *options) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"{out} holds shards of the source files unchanged; this run asks for re-encoding (3 fps" in line
    assert snapshot(out) == before and not (out / "files").exists()  # nothing was encoded

    assert run_prepare([sources], tmp_path / "o", "--shard-size", 0) == 2  # argparse: positive
    assert run_prepare([sources], tmp_path / "o", "--splits", "test") == 2  # --splits needs --annotations
    assert not (tmp_path / "o").exists()


def test_reencoded_shards_hold_the_prepared_mp4s(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    options = ["--shard-size", SHARD_SIZE, "--annotations", dataset / "retrieval.yaml", "--num-workers", 2]
    assert run_prepare([dataset / "videos"], out, *options, "--fps", 5, "--short-side", 16) == 0
    line = capsys.readouterr().out
    assert (
        "7 samples in 3 shards, 2 failed" in line
        and f"re-encoded into {out / 'files'}: 7 encoded, 1 failed" in line
    )
    table = index_of(out)
    assert [row.video for row in table] == ANNOTATED
    for row in table:
        if row.video in FAILED:
            assert FAILED[row.video] in row.error.lower() and row.shard is None, (row.video, row.error)
            continue
        assert row.error is None and row.member == f"{row.key}.mp4", row
        prepared = out / "files" / Path(row.video).with_suffix(".mp4")
        assert tar_bytes(out / row.shard)[row.member] == prepared.read_bytes()
        source_frames = 8 + GOOD.index(row.video)
        assert (row.fps, row.width, row.height) == (5, 16, 16)
        assert row.frames == math.ceil(source_frames / 10 * 5)  # slots k/5 before the source's end
        meta = json.loads(tar_bytes(out / row.shard)[f"{row.key}.json"])
        assert (meta["frames"], meta["fps"]) == (row.frames, 5)
    settings = metadata_of(out)["settings"]
    assert settings is not None and settings["short_side"] == 16

    assert run_prepare([dataset / "videos"], out, *options, "--fps", 5, "--short-side", 16) == 0
    assert "3 shards skipped (already done)" in capsys.readouterr().out
    assert run_prepare([dataset / "videos"], out, *options) == 2  # no re-encoding: refused here
    [line] = capsys.readouterr().err.splitlines()
    assert f"{out} holds re-encoded shards" in line and "this run asks for the source files unchanged" in line


def cut_in_half(path: Path) -> list[str]:
    """Cut the shard in the middle of the member its middle byte falls in; the keys of the samples wholly
    before that member (what must still decode)."""
    members = tar_members(path)
    middle = max(m.offset_data + m.size for m in members) // 2
    cut = next(m for m in members if middle < m.offset_data + m.size)
    path.write_bytes(path.read_bytes()[: cut.offset_data + cut.size // 2])
    keys = [m.name.split(".")[0] for m in members]
    return sorted({key for key in keys if key < cut.name.split(".")[0]})


def test_a_truncated_shard_costs_only_the_samples_after_the_cut_each_named(dataset, shards, tmp_path, caplog):
    out = copy_tree(shards, tmp_path / "out")
    whole = cut_in_half(out / "test-000002.tar")  # after the index was written: the listing still names all
    annotations = read_annotations(
        DataConfig(format="webdataset", test=str(out / "test-*.tar")), "retrieval", "test"
    )
    refs = annotations.video_paths()
    assert len(refs) == len(GOOD)
    model = vidclip.create_model("tiny", head="mean", num_frames=2)
    encoded = encode_videos(model, refs, num_workers=0)
    in_cut = [ref.split("#")[0] == str(out / "test-000002.tar") for ref in refs]
    expected = [not cut or ref.split("#")[1] in whole for ref, cut in zip(refs, in_cut, strict=True)]
    assert 0 < expected.count(False) < sum(in_cut)  # the cut leaves some of the shard's samples, loses some
    assert encoded.valid.tolist() == expected
    lost = [ref for ref, ok in zip(refs, expected, strict=True) if not ok]
    assert [path for path, _ in encoded.errors] == lost
    for _, reason in encoded.errors:
        assert reason.startswith(f"lost: {out / 'test-000002.tar'}: truncated or corrupt tar"), reason

    with caplog.at_level(logging.WARNING):
        scores = score_retrieval(model, annotations, num_workers=0, batch_size=3)
    assert scores.similarity.shape[1] == len(GOOD) - len(lost) and scores.counts["num_failed"] == len(lost)
    assert f"{len(lost)} of {len(GOOD)} videos could not be decoded" in caplog.text
    assert all(f"{ref}: lost: " in caplog.text for ref in lost)


# The half-written tar must be closed at once: left to the garbage collector, it writes into its closed file
# and prints a traceback beside the one line.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_full_disk_stops_with_one_line_naming_the_shard_and_keeps_the_shards_done(
    dataset, shards, tmp_path, monkeypatch, capsys
):
    real = webdataset.TarWriter.write

    def write(self, sample):
        if sample["__key__"] == "00000004":  # in the second shard
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, sample)

    monkeypatch.setattr(webdataset.TarWriter, "write", write)
    out = tmp_path / "out"
    options = ["--shard-size", SHARD_SIZE, "--annotations", dataset / "retrieval.yaml", "--num-workers", 0]
    assert run_prepare([dataset / "videos"], out, *options) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"no space left on device: cannot write {out / 'test-000001.tar'}" in line, line
    assert files_under(out) == [
        f"{PARTS_FOLDER}/test-000000.parquet",
        "test-000000.tar",
        "test-samples.parquet",
    ]
    assert (out / "test-000000.tar").read_bytes() == (shards / "test-000000.tar").read_bytes()
    assert [row.position for row in index_of(out)] == [0, 1, 2]  # the shard done is indexed
    assert [shard["name"] for shard in metadata_of(out)["shards"]] == ["test-000000.tar"]

    monkeypatch.setattr(webdataset.TarWriter, "write", real)  # space freed: the run finishes
    assert run_prepare([dataset / "videos"], out, *options) == 0
    assert "1 shard skipped (already done)" in capsys.readouterr().out
    assert files_under(out) == files_under(shards)
    assert all((out / name).read_bytes() == (shards / name).read_bytes() for name in SHARDS)
    assert index_of(out) == index_of(shards)


def test_a_full_disk_on_a_real_file_system(tmp_path):
    """A 1 MiB tmpfs with 256 KiB left: the small video's shard fits, the large one's does not. The command
    (its own process, its real stderr) says so in one line, nothing else."""
    from test_messages import tmpfs

    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "a_small.mp4", index_frames(5, 32, 32))
    noise = np.random.default_rng(0).integers(0, 256, (30, 240, 320, 3), dtype=np.uint8)
    write_video(root / "b_large.mp4", noise, options={"crf": "0", "preset": "ultrafast"})
    assert (root / "b_large.mp4").stat().st_size > 1024 * 1024
    with tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "out"
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * (1024 * 1024 - 256 * 1024))
        argv = [sys.executable, "-m", "vidclip", "prepare", str(root), "--out", str(out), "--shards"]
        done = subprocess.run(
            [*argv, "--shard-size", "1", "--num-workers", "0"], capture_output=True, text=True
        )
        assert done.returncode == 2
        [line] = done.stderr.splitlines()
        assert f"no space left on device: cannot write {out / 'videos-000001.tar'}" in line, done.stderr
        assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
        assert sorted(p.name for p in out.glob("*.tar")) == ["videos-000000.tar"]
        assert [row.video for row in index_of(out, "videos")] == ["a_small.mp4"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for i in range(24):
        write_video(videos / ("sub" if i % 2 else ".") / f"v{i:02d}.mp4", index_frames(30, 96, 128), fps=30)
    (videos / "broken.mp4").write_text("not a video")
    reference = tmp_path / "reference"
    assert run_prepare([videos], reference, "--shard-size", 1, "--num-workers", 0) == 0

    killed = tmp_path / "killed"
    argv = [sys.executable, "-m", "vidclip", "prepare", str(videos), "--out", str(killed), "--shards"]
    argv += ["--shard-size", "1"]
    process = subprocess.Popen(
        [*argv, "--num-workers", "1"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.glob("videos-*.tar"))) < 3:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)  # no handler runs, no cleanup happens
    process.wait()
    done = len(list(killed.glob("videos-*.tar")))
    assert 3 <= done < 24, "the kill should land mid-run"
    assert not (killed / "videos-samples.parquet").exists()

    rerun = subprocess.run([*argv, "--num-workers", "2"], check=True, capture_output=True, text=True)
    assert "24 samples in 25 shards, 1 failed" in rerun.stdout  # the broken video's shard holds nothing
    assert int(re.search(r"(\d+) shards skipped", rerun.stdout)[1]) >= done  # the shards done are kept
    assert files_under(killed) == files_under(reference)  # nothing half-written, hidden or left over
    assert index_of(killed, "videos") == index_of(reference, "videos")
    assert metadata_of(killed, "videos") == metadata_of(reference, "videos")
    for path in sorted(reference.glob("*.tar")):
        assert (killed / path.name).read_bytes() == path.read_bytes(), path.name
