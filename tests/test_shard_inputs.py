"""Shard URLs as the inputs of ``vidclip extract``, ``vidclip index`` (whole videos and ``--segment`` windows)
and ``vidclip zeroshot``: the same embeddings, windows and scores as from the files the shards were packed
from; several processes split the shards, not the samples; a truncated shard costs only its lost samples,
named; shards mixed with files are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("webdataset", reason="webdataset is not installed (pip install webdataset)")

import vidclip  # noqa: E402
from vidclip.commands import extract as extract_command  # noqa: E402
from vidclip.commands import index as index_command  # noqa: E402
from vidclip.commands import zeroshot as zeroshot_command  # noqa: E402
from vidclip.commands.common import collect_inputs  # noqa: E402
from vidclip.data.shards import iter_videos, owned_by_process, split_ref  # noqa: E402
from vidclip.index import VideoIndex  # noqa: E402
from vidclip.prepare import write_shards  # noqa: E402
from vidclip.synthetic import index_frames, write_video  # noqa: E402

NUM_VIDEOS = 7
PER_SHARD = 2  # 4 shards: 2, 2, 2, 1 samples


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """7 videos of 20-44 frames, the same packed unchanged into shards of 2 (with their index), a checkpoint."""
    root = tmp_path_factory.mktemp("shard-inputs")
    videos = root / "videos"
    videos.mkdir()
    for i in range(NUM_VIDEOS):
        write_video(videos / f"v{i}.mp4", index_frames(20 + 4 * i, 48, 48), fps=25)
    write_shards([str(videos)], root / "shards", shard_size=PER_SHARD, num_workers=1)
    torch.manual_seed(0)
    run = vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=4), root / "run").parent
    return root, videos, run


def spec(root: Path) -> str:
    return str(root / "shards" / "videos-{000000..000003}.tar")


def file_of(root: Path) -> dict[str, str]:
    """Each sample reference -> the file it was packed from (from the shard index)."""
    table = pd.read_parquet(root / "shards" / "videos-samples.parquet")
    return {
        f"{root / 'shards' / shard}#{key}": str(root / "videos" / video)
        for shard, key, video in zip(table["shard"], table["key"], table["video"], strict=True)
    }


def run_command(module, *args) -> int:
    try:
        return module.main([str(arg) for arg in args])
    except SystemExit as exit:
        return exit.code


def extracted(out: Path) -> dict[str, np.ndarray]:
    table = pd.read_parquet(out)
    assert table["error"].isna().all(), table["error"].dropna().tolist()
    return {
        video: np.asarray(embedding)
        for video, embedding in zip(table["video"], table["embedding"], strict=True)
    }


def test_inputs_name_every_sample_and_refuse_a_mix(packed):
    root, videos, _ = packed
    refs = collect_inputs([spec(root)])
    assert sorted(file_of(root)) == sorted(refs) and len(refs) == NUM_VIDEOS
    assert collect_inputs([str(root / "shards" / "videos-*.tar")]) == refs
    assert collect_inputs([str(root / "shards" / "videos-samples.parquet")]) == refs
    with pytest.raises(ValueError, match="either WebDataset shards or video files, not both"):
        collect_inputs([spec(root), str(videos / "v0.mp4")])
    with pytest.raises(ValueError, match="matches no file"):
        collect_inputs([str(root / "shards" / "train-*.tar")])


def test_processes_split_the_shards_not_the_samples():
    refs = [f"s-{k}.tar#{i:08d}" for k in range(5) for i in range(3)]
    shares = [owned_by_process(refs, rank, 2) for rank in range(2)]
    assert sorted(i for share in shares for i, _ in share) == list(range(15))  # each sample once
    for rank, share in enumerate(shares):
        assert {split_ref(ref)[0] for _, ref in share} == {f"s-{k}.tar" for k in range(rank, 5, 2)}
    files = [f"v{i}.mp4" for i in range(5)]
    assert [i for i, _ in owned_by_process(files, 1, 2)] == [1, 3]


@pytest.mark.parametrize("workers", [0, 2])
def test_extract_from_shards_equals_extract_from_the_files(packed, tmp_path, workers):
    root, videos, run = packed
    common = ("--checkpoint", run, "--num-workers", workers, "--batch-size", 3)
    assert run_command(extract_command, spec(root), "--out", tmp_path / "shards", *common) == 0
    assert run_command(extract_command, videos, "--out", tmp_path / "files", *common) == 0
    from_shards, from_files = extracted(tmp_path / "shards"), extracted(tmp_path / "files")
    assert len(from_shards) == NUM_VIDEOS
    for ref, path in file_of(root).items():
        np.testing.assert_array_equal(from_shards[ref], from_files[path])
    # a re-run finds every sample done
    assert run_command(extract_command, spec(root), "--out", tmp_path / "shards", *common) == 0


def test_one_process_of_two_reads_only_its_own_shards(packed, tmp_path, monkeypatch):
    root, _, run = packed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "out"
    assert (
        run_command(extract_command, spec(root), "--out", out, "--checkpoint", run, "--num-workers", 0) == 0
    )
    shards = {split_ref(video)[0] for video in pd.read_parquet(out)["video"]}
    assert shards == {str(root / "shards" / f"videos-{k:06d}.tar") for k in (1, 3)}


def test_a_truncated_shard_costs_only_its_lost_samples_named(packed, tmp_path):
    root, _, run = packed
    cut = tmp_path / "shards"
    cut.mkdir()
    for path in (root / "shards").iterdir():
        if path.is_file():
            (cut / path.name).write_bytes(path.read_bytes())
    second = cut / "videos-000001.tar"
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])  # the first sample whole, the second lost
    out = tmp_path / "out"
    shards = str(cut / "videos-{000000..000003}.tar")
    assert run_command(extract_command, shards, "--out", out, "--checkpoint", run, "--num-workers", 0) == 0
    table = pd.read_parquet(out).set_index("video")
    failed = table["error"].dropna()
    assert failed.index.tolist() == [f"{second}#00000003"]
    assert failed.iloc[0].startswith(f"lost: {second}: truncated or corrupt tar")
    assert table["embedding"].notna().sum() == NUM_VIDEOS - 1


def test_index_and_search_from_shards_rank_as_from_the_files(packed, tmp_path):
    root, videos, run = packed
    common = ("--checkpoint", run, "--num-workers", 0)
    assert run_command(index_command, spec(root), "--out", tmp_path / "shards", *common) == 0
    assert run_command(index_command, videos, "--out", tmp_path / "files", *common) == 0
    query = "a square moving left"
    a = VideoIndex.load(tmp_path / "shards").search(query, k=NUM_VIDEOS)
    b = VideoIndex.load(tmp_path / "files").search(query, k=NUM_VIDEOS)
    files = file_of(root)
    assert [files[ref] for ref in a["video"]] == b["video"].tolist()
    np.testing.assert_array_equal(a["score"], b["score"])
    assert a["end"].tolist() == b["end"].tolist()


def test_windows_of_shard_samples_equal_the_windows_of_the_files(packed, tmp_path):
    root, videos, run = packed
    common = ("--checkpoint", run, "--num-workers", 2, "--segment", 0.4, "--stride", 0.2)
    assert run_command(index_command, spec(root), "--out", tmp_path / "shards", *common) == 0
    assert run_command(index_command, videos, "--out", tmp_path / "files", *common) == 0
    rows = {
        name: pd.read_parquet(tmp_path / name / "rows").sort_values(["video", "start"]).reset_index(drop=True)
        for name in ("shards", "files")
    }
    files = file_of(root)
    shard_rows = rows["shards"].assign(video=[files[ref] for ref in rows["shards"]["video"]])
    shard_rows = shard_rows.sort_values(["video", "start"]).reset_index(drop=True)
    assert len(shard_rows) > NUM_VIDEOS  # several windows per video
    pd.testing.assert_frame_equal(
        shard_rows[["video", "start", "end"]], rows["files"][["video", "start", "end"]]
    )
    np.testing.assert_array_equal(np.stack(shard_rows["embedding"]), np.stack(rows["files"]["embedding"]))


def test_zeroshot_from_shards_scores_as_from_the_files(packed, tmp_path, monkeypatch):
    root, videos, run = packed
    common = ("--labels", "square,circle,triangle", "--checkpoint", run, "--num-workers", 2)
    assert run_command(zeroshot_command, spec(root), *common, "--output", tmp_path / "shards.csv") == 0
    assert run_command(zeroshot_command, videos, *common, "--output", tmp_path / "files.csv") == 0
    a, b = pd.read_csv(tmp_path / "shards.csv"), pd.read_csv(tmp_path / "files.csv")
    files = file_of(root)
    a = a.assign(video=[files[ref] for ref in a["video"]]).sort_values("video").reset_index(drop=True)
    b = b.sort_values("video").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    from vidclip import viz

    drawn: dict[str, dict[str, torch.Tensor]] = {}
    draw = viz.contact_sheet

    def recording(videos, titles, labels):  # each sheet's frames, by the file they came from
        for video, title in zip(videos, titles, strict=True):
            drawn.setdefault(source, {})[files.get(title, title)] = video
        return draw(videos, titles, labels)

    monkeypatch.setattr(viz, "contact_sheet", recording)
    for source, inputs in (("shards", spec(root)), ("files", videos)):
        assert run_command(zeroshot_command, inputs, *common, "--show", tmp_path / source) == 0
        assert [p.name for p in (tmp_path / source).iterdir()] == ["contact_sheet_001.png"]
    assert sorted(drawn["shards"]) == sorted(drawn["files"]) and len(drawn["files"]) == NUM_VIDEOS
    for name, frames in drawn["files"].items():
        assert torch.equal(drawn["shards"][name], frames), name  # the frames decoded from the shard's bytes


def test_shard_sets_prepared_apart_are_read_together_each_from_its_index(packed, tmp_path, caplog):
    """Two machines' outputs joined with '::': each part's samples from its own index, in order."""
    root, videos, _ = packed
    other = tmp_path / "other"
    write_shards([str(videos / "v0.mp4"), str(videos / "v1.mp4")], other, shard_size=1, num_workers=1)
    joined = collect_inputs([f"{spec(root)}::{other / 'videos-*.tar'}"])
    assert "no index beside the shards" not in caplog.text  # not listed: both indexes were found
    assert joined[:NUM_VIDEOS] == collect_inputs([spec(root)])
    assert joined[NUM_VIDEOS:] == [
        f"{other / 'videos-000000.tar'}#00000000",
        f"{other / 'videos-000001.tar'}#00000001",
    ]


def test_iter_videos_gives_each_samples_bytes_or_why_not(packed, tmp_path):
    """Each shard read once: the bytes of the files packed unchanged; a key not in its shard and a shard that
    is gone give their reasons, each at its position."""
    root, _, _ = packed
    files = file_of(root)
    refs = list(files)
    gone = f"{tmp_path / 'videos-000009.tar'}#00000018"
    asked = [refs[3], refs[0], f"{refs[0].split('#')[0]}#nokey", gone, refs[1]]
    got = dict(iter_videos(asked))
    assert sorted(got) == list(range(len(asked)))
    assert [got[0], got[1], got[4]] == [Path(files[ref]).read_bytes() for ref in (refs[3], refs[0], refs[1])]
    assert "not in its shard" in got[2]
    assert got[3].startswith("lost: ") and "no such shard" in got[3]


def test_contact_sheets_of_shard_samples_read_each_shard_once(packed, tmp_path, monkeypatch):
    """4 sheets of 2 over 7 samples in 4 shards: each shard opened once, and every sheet's frames those of the
    files the samples were packed from."""
    pytest.importorskip("matplotlib", reason="needs matplotlib: pip install 'vidclip[viz]'")
    import vidclip.data.shards as shards_module
    from vidclip import viz

    root, _, _ = packed
    files = file_of(root)
    refs = collect_inputs([spec(root)])
    opened, drawn = [], []
    open_shard, draw = shards_module.open_shard, viz.contact_sheet
    monkeypatch.setattr(shards_module, "open_shard", lambda url: opened.append(url) or open_shard(url))
    monkeypatch.setattr(
        viz, "contact_sheet", lambda videos, *rest: drawn.extend(videos) or draw(videos, *rest)
    )
    table = pd.DataFrame({"video": refs, "label": "square", "score": 1.0, "error": None})
    sheets = zeroshot_command.write_contact_sheets(table, tmp_path / "sheets", num_frames=4, per_sheet=2)
    assert len(sheets) == 4 and sorted(opened) == sorted(set(opened)) and len(opened) == 4
    for ref, frames in zip(refs, drawn, strict=True):
        assert torch.equal(frames, vidclip.load_video(files[ref], 4, "uniform")), ref
