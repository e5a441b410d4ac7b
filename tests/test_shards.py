"""Reading WebDataset shards (``data.format: webdataset``, shard URLs as inputs): frames decoded from the tar's
bytes equal the file's; evaluation from shards scores exactly as from the files; every sample once over any
number of processes and workers; the training stream's determinism, epoch coverage and exact resume;
brace patterns, ``pipe:`` and fsspec URLs; a truncated shard, a missing shard, a sample without a video or a
caption each cost only themselves, named."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch

webdataset = pytest.importorskip("webdataset", reason="webdataset is not installed (pip install webdataset)")

import vidclip  # noqa: E402
from vidclip.config import DataConfig  # noqa: E402
from vidclip.data import VideoDataset, read_annotations  # noqa: E402
from vidclip.data.shard_stream import ShardPlan, ShardStream, ShardTrainLoader  # noqa: E402
from vidclip.data.shards import (  # noqa: E402
    expand_shard_urls,
    is_shard_spec,
    iter_shard,
    read_shard_set,
    split_ref,
)
from vidclip.inference.retrieval import score_retrieval  # noqa: E402
from vidclip.synthetic import index_frames, read_frame_index, write_video  # noqa: E402
from vidclip.video import load_frames  # noqa: E402

NUM_VIDEOS = 10
PER_SHARD = 2


def write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> None:
    """A tar of these members in this order, byte for byte (``None``: a folder entry): names, order and
    duplicates that webdataset's writer would not make."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[dict]) -> None:
    with webdataset.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """10 videos of 8-17 frames (each frame shows its index), a CSV of two captions each, and the same data
    as 5 shards of 2 samples (the source bytes, keys 00000000...)."""
    root = tmp_path_factory.mktemp("shards")
    (root / "videos").mkdir()
    (root / "shards").mkdir()
    rows, samples = [], []
    for i in range(NUM_VIDEOS):
        name = f"v{i}.mp4"
        write_video(root / "videos" / name, index_frames(8 + i, 32, 32))
        captions = [f"video {i} first", f"video {i} second"]
        rows += [{"video": name, "caption": text} for text in captions]
        meta = {"video": name, "id": f"v{i}", "captions": captions, "label": i % 3}
        samples.append(
            {
                "__key__": f"{i:08d}",
                "mp4": (root / "videos" / name).read_bytes(),
                "json": json.dumps(meta).encode(),
            }
        )
    pd.DataFrame(rows).to_csv(root / "videos" / "test.csv", index=False)
    for k in range(NUM_VIDEOS // PER_SHARD):
        write_shard(root / "shards" / f"test-{k:06d}.tar", samples[k * PER_SHARD : (k + 1) * PER_SHARD])
    return root


def pattern(root: Path) -> str:
    return str(root / "shards" / "test-{000000..000004}.tar")


def shard_data(root: Path, **fields) -> DataConfig:
    return DataConfig(format="webdataset", test=pattern(root), **fields)


def test_frames_decoded_from_the_shard_bytes_equal_the_file_frames(dataset):
    path = dataset / "videos" / "v3.mp4"
    from_file = load_frames(path, 6)
    from_bytes = load_frames("shard.tar#00000003", 6, data=path.read_bytes())
    assert torch.equal(from_file.frames, from_bytes.frames)
    assert [read_frame_index(frame.numpy()) for frame in from_bytes.frames] == from_file.indices.tolist()


def test_shard_specs_and_references():
    assert is_shard_spec("a/train-{000000..000009}.tar") and is_shard_spec("pipe:cat a.tar")
    assert is_shard_spec("s3://bucket/x.tar.gz::b.tgz") and not is_shard_spec("clip.mp4")
    assert expand_shard_urls("d/t-{0..2}.tar::e.tar") == ["d/t-0.tar", "d/t-1.tar", "d/t-2.tar", "e.tar"]
    assert split_ref("d/t-1.tar#00000004") == ("d/t-1.tar", "00000004")
    assert split_ref("videos/clip#1.mp4") is None  # a file name with a '#' stays a file


def test_annotations_from_shards_match_the_files(dataset):
    shards = read_annotations(shard_data(dataset), "retrieval", "test")
    files = read_annotations(
        DataConfig(format="csv", test=str(dataset / "videos" / "test.csv")), "retrieval", "test"
    )
    assert shards.captions == files.captions and shards.caption_video == files.caption_video
    assert shards.video_paths()[3] == str(dataset / "shards" / "test-000001.tar") + "#00000003"
    assert [v.id for v in shards.videos] == [f"v{i}" for i in range(NUM_VIDEOS)]


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_from_shards_is_exactly_evaluation_from_the_files(dataset, workers):
    """The same similarity matrix (bit for bit) from the shard bytes as from the files, with 2 workers whose
    batches interleave."""
    model = vidclip.create_model("tiny", head="mean", num_frames=4)
    files = read_annotations(
        DataConfig(format="csv", test=str(dataset / "videos" / "test.csv")), "retrieval", "test"
    )
    shards = read_annotations(shard_data(dataset), "retrieval", "test")
    a = score_retrieval(model, files, num_workers=0, batch_size=3)
    b = score_retrieval(model, shards, num_workers=workers, batch_size=3)
    assert torch.equal(a.similarity, b.similarity)


def stream(dataset: Path, plan: ShardPlan, sampling: str = "uniform") -> ShardStream:
    refs = read_shard_set(pattern(dataset)).refs()
    videos = VideoDataset(
        refs,
        num_frames=2,
        sampling=sampling,
        transform=lambda x, generator=None: x,
        image_size=32,
        seed=plan.seed,
    )
    return ShardStream(videos, plan)


def indices(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch["index"]]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_sample_is_evaluated_once_on_any_number_of_processes(dataset, world):
    from torch.utils.data import DataLoader

    from vidclip.data.dataset import collate

    refs = read_shard_set(pattern(dataset)).refs()
    seen = []
    for rank in range(world):
        plan = ShardPlan.of_refs(refs, rank=rank, world=world)
        seen += indices(DataLoader(stream(dataset, plan), batch_size=3, num_workers=2, collate_fn=collate))
    assert sorted(seen) == list(range(NUM_VIDEOS))


def train_loader(
    dataset, *, seed=0, rank=0, world=1, workers=0, batch=2, batches=5, buffer=4
) -> ShardTrainLoader:
    refs = read_shard_set(pattern(dataset)).refs()
    plan = ShardPlan.of_refs(refs, train=True, seed=seed, rank=rank, world=world, shuffle_buffer=buffer)
    return ShardTrainLoader(stream(dataset, plan, sampling="random"), batch, workers, batches)


def test_training_stream_is_a_function_of_seed_and_epoch(dataset):
    first, again, other_seed = train_loader(dataset), train_loader(dataset), train_loader(dataset, seed=1)
    epoch0 = indices(first)
    assert epoch0 == indices(again)  # same seed, same epoch: the same order
    assert sorted(epoch0) == list(range(NUM_VIDEOS))  # 5 shards of 2, batches of 2: each sample once
    assert epoch0 != list(range(NUM_VIDEOS))  # shuffled
    first.set_epoch(1)
    assert sorted(indices(first)) == list(range(NUM_VIDEOS)) and indices(first) != epoch0
    assert indices(other_seed) != epoch0


@pytest.mark.parametrize("world, workers", [(1, 0), (5, 0), (1, 5)])
def test_an_epoch_split_over_processes_and_workers_covers_every_sample_once(dataset, world, workers):
    """5 shards of 2 over processes x workers that divide them: each process's epoch (10 / world batches
    of 1) streams only its own shards, and together they see every sample once."""
    seen = []
    for rank in range(world):
        loader = train_loader(dataset, rank=rank, world=world, workers=workers, batch=1, batches=10 // world)
        seen += indices(loader)
    assert sorted(seen) == list(range(NUM_VIDEOS))


def test_uneven_shards_keep_every_process_at_the_epoch_length(dataset):
    """5 shards over 2 workers (3 and 2): the worker with fewer samples starts its next pass, so the epoch
    still has its 10 batches (5 from each: one sample of the first waits, one of the second repeats)."""
    seen = indices(train_loader(dataset, workers=2, batch=1, batches=10))
    assert len(seen) == 10 and max(seen.count(i) for i in seen) == 2 and len(set(seen)) == 9


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resumed_stream_continues_exactly(dataset, workers):
    """Skipping k batches (a resume) yields exactly what the uninterrupted stream yields after k batches, the
    frames too (random sampling is seeded by sample, not position)."""
    whole = [batch for batch in train_loader(dataset, workers=workers, batches=5)]
    for skip in (1, 2, 4):
        rest = list(train_loader(dataset, workers=workers, batches=5).skip(skip))
        assert len(rest) == 5 - skip
        for a, b in zip(whole[skip:], rest, strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_workers_stream_on_into_the_next_epoch_as_a_fresh_start_would(dataset, workers):
    """Epochs of 5 batches over 2 or 3 workers (the next epoch starts on another worker): the same workers
    stream epochs 0, 1, 2 on, also after a resume mid-epoch 0, with the batches of a loader started at each."""

    def epochs(loader, skip=0):
        out, running = [], []
        for epoch in range(3):
            loader.set_epoch(epoch)
            out.append(list(loader.skip(skip) if epoch == 0 else loader))
            running.append(loader._batches)
        assert running[0] is running[1] is running[2]  # not restarted
        return out

    def fresh(epoch):
        loader = train_loader(dataset, workers=workers, batches=5)
        loader.set_epoch(epoch)
        return list(loader)

    expected = [fresh(epoch) for epoch in range(3)]
    for skip in (0, 2):
        got = epochs(train_loader(dataset, workers=workers, batches=5), skip)
        assert [len(batches) for batches in got] == [5 - skip, 5, 5]
        for a, b in zip(expected[0][skip:] + expected[1] + expected[2], sum(got, []), strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])


def test_pipe_and_fsspec_urls(dataset):
    fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed (pip install fsspec)")
    local = dataset / "shards" / "test-000002.tar"
    memory = fsspec.filesystem("memory")
    memory.pipe("/bucket/test-000002.tar", local.read_bytes())
    expected = [f"0000000{i}" for i in (4, 5)]
    for url in (f"pipe:cat {local}", "memory://bucket/test-000002.tar"):
        shard_set = read_shard_set(url)
        assert [s.key for s in shard_set.samples] == expected
        refs = shard_set.refs()
        model = vidclip.create_model("tiny", head="mean", num_frames=2)
        from vidclip.inference import encode_videos

        encoded = encode_videos(model, refs, num_workers=0)
        assert bool(encoded.valid.all()) and encoded.features.frames.shape[0] == 2


def truncated_copy(source: Path, target: Path, keep_members: int) -> None:
    """``source`` cut inside member ``keep_members`` (0-based): a shard whose copy or download broke off."""
    offsets = []
    with tarfile.open(source) as tar:
        offsets = [member.offset_data for member in tar.getmembers()]
    target.write_bytes(source.read_bytes()[: offsets[keep_members] + 100])


def test_truncated_missing_and_incomplete_shards_cost_only_themselves(dataset, tmp_path, caplog):
    shards = tmp_path / "s"
    shards.mkdir()
    for k in range(5):
        (shards / f"test-{k:06d}.tar").write_bytes((dataset / "shards" / f"test-{k:06d}.tar").read_bytes())
    truncated_copy(
        dataset / "shards" / "test-000001.tar", shards / "test-000001.tar", 2
    )  # cut inside its third member (a sample's first)
    (shards / "test-000003.tar").unlink()  # a missing URL
    video = (dataset / "videos" / "v0.mp4").read_bytes()
    write_shard(
        shards / "test-000004.tar",
        [
            {"__key__": "00000008", "json": json.dumps({"captions": ["no video here"]}).encode()},
            {"__key__": "00000009", "mp4": video, "json": json.dumps({"id": "no caption"}).encode()},
        ],
    )
    with caplog.at_level(logging.WARNING):
        annotations = read_annotations(
            DataConfig(format="webdataset", test=str(shards / "test-{000000..000004}.tar")),
            "retrieval",
            "test",
        )
    text = caplog.text
    assert (
        "test-000001.tar: truncated or corrupt tar" in text
        and "the samples after 00000002 are left out" in text
    )
    assert "test-000003.tar: no such shard; its samples are left out" in text
    assert "test-000004.tar#00000008: the sample has no video" in text
    assert "1 samples left out (no caption): " in text and "test-000004.tar#00000009" in text
    assert [v.id for v in annotations.videos] == ["v0", "v1", "v2", "v4", "v5"]


def test_a_shard_that_breaks_while_streaming_names_its_lost_samples(dataset, tmp_path):
    """The listing saw the whole shard; it is cut before evaluation reads it: the samples after the cut are
    failed slots saying why, the rest decode."""
    shards = tmp_path / "s"
    shards.mkdir()
    for k in range(2):
        (shards / f"test-{k:06d}.tar").write_bytes((dataset / "shards" / f"test-{k:06d}.tar").read_bytes())
    refs = read_shard_set(str(shards / "test-{000000..000001}.tar")).refs()
    truncated_copy(dataset / "shards" / "test-000001.tar", shards / "test-000001.tar", 2)
    model = vidclip.create_model("tiny", head="mean", num_frames=2)
    from vidclip.inference import encode_videos

    encoded = encode_videos(model, refs, num_workers=0)
    assert encoded.valid.tolist() == [True, True, True, False]
    [(path, reason)] = encoded.errors
    assert path == refs[3] and reason.startswith("lost: ") and "truncated or corrupt tar" in reason


def test_a_corrupt_video_in_a_shard_costs_its_sample(dataset, tmp_path):
    shard = tmp_path / "bad-000000.tar"
    good = (dataset / "videos" / "v1.mp4").read_bytes()
    write_shard(
        shard,
        [
            {"__key__": "a", "mp4": b"\x00\x00\x00\x18ftypmp42 cut short"},
            {"__key__": "b", "mp4": good},
        ],
    )
    model = vidclip.create_model("tiny", head="mean", num_frames=2)
    from vidclip.inference import encode_videos

    encoded = encode_videos(model, read_shard_set(str(shard)).refs(), num_workers=0)
    assert encoded.valid.tolist() == [False, True]
    assert "truncated or corrupt" in encoded.errors[0][1] and encoded.errors[0][0].endswith("#a")


def test_members_group_into_samples_as_webdataset_groups_them(tmp_path):
    """Keys with folders and dots in their folder names, an upper-case extension, a multi-dot extension, a
    ``__meta__.json`` member (a sample of its own, for webdataset too) and a folder entry: grouped as
    webdataset's own pipeline groups them, and a sample not wanted is passed over."""
    from webdataset import WebDataset

    shard = tmp_path / "odd-000000.tar"
    write_tar(
        shard,
        [
            ("clips.v1", None),  # a folder entry
            ("__meta__.json", b"{}"),
            ("clips.v1/a.MP4", b"video a"),
            ("clips.v1/a.json", b'{"caption": "a"}'),
            ("clips.v1/b.seg.mp4", b"video b"),
            ("c.mp4", b"video c"),
            ("c.txt", b"caption c"),
        ],
    )
    ours = [(raw.key, sorted(raw.members.items())) for raw in iter_shard(str(shard))]
    theirs = [
        (sample["__key__"], sorted((k, v) for k, v in sample.items() if not k.startswith("__")))
        for sample in WebDataset(str(shard), shardshuffle=False, empty_check=False)
    ]
    assert ours == theirs
    assert [key for key, _ in ours] == ["__meta__", "clips.v1/a", "clips.v1/b", "c"]
    assert dict(ours)["clips.v1/a"] == [("json", b'{"caption": "a"}'), ("mp4", b"video a")]
    assert [raw.key for raw in iter_shard(str(shard), wanted=lambda key: key != "clips.v1/b")] == [
        "__meta__",
        "clips.v1/a",
        "c",
    ]


@pytest.mark.parametrize("wanted", [None, {"a"}, {"a", "b"}])
def test_a_cut_in_the_next_samples_video_keeps_the_whole_sample_before_it(tmp_path, wanted):
    """Members a.mp4, a.json, b.mp4 (100 kB), b.json, cut 5 kB into b.mp4: sample a was read whole and is
    given out, with or without asking for b, and the fault names a as the last whole sample."""
    from vidclip.data.shards import ShardReadError

    shard = tmp_path / "cut-000000.tar"
    write_tar(
        shard, [("a.mp4", b"A" * 3000), ("a.json", b"{}"), ("b.mp4", b"B" * 100_000), ("b.json", b"{}")]
    )
    with tarfile.open(shard) as tar:
        video_b = tar.getmember("b.mp4")
    shard.write_bytes(shard.read_bytes()[: video_b.offset_data + 5000])
    got = []
    with pytest.raises(ShardReadError) as caught:
        for raw in iter_shard(str(shard), wanted=None if wanted is None else wanted.__contains__):
            got.append((raw.key, sorted(raw.members)))
    assert got == [("a", ["json", "mp4"])]
    assert caught.value.after == "a" and "truncated or corrupt tar" in caught.value.reason
