"""The search page over an index built from WebDataset shards: a sample of a local, uncompressed shard plays
from its byte range in the tar (whole, and with Range requests), its thumbnails are the frames of the file
it was packed from, a relative shard path resolves where the index was built, and what cannot be played (a
``pipe:`` shard, a compressed or truncated shard, a shard gone since) is said, not served."""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("webdataset", reason="webdataset is not installed (pip install webdataset)")
pytest.importorskip("fastapi", reason="needs fastapi: pip install 'vidclip[serve]'")
pytest.importorskip("httpx", reason="needs httpx for TestClient: pip install -e '.[dev]'")
from fastapi.testclient import TestClient  # noqa: E402

import vidclip  # noqa: E402
from tests.test_shards import write_tar  # noqa: E402
from vidclip.commands import index as index_command  # noqa: E402
from vidclip.data.shard_members import ShardMemberError, find_video_span  # noqa: E402
from vidclip.index import VideoIndex  # noqa: E402
from vidclip.index.media import RangeNotSatisfiable, parse_range  # noqa: E402
from vidclip.index.web import create_app  # noqa: E402
from vidclip.prepare import write_shards  # noqa: E402
from vidclip.synthetic import index_frames, write_video  # noqa: E402

NUM_VIDEOS = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """5 videos packed unchanged into shards of 2; an index of the shards (built from their folder with a
    relative spec) and one of the files, with the same tiny model."""
    root = tmp_path_factory.mktemp("serve-shards")
    videos = root / "videos"
    videos.mkdir()
    for i in range(NUM_VIDEOS):
        write_video(videos / f"v{i}.mp4", index_frames(20 + 5 * i, 64, 96), fps=10)
    write_shards([str(videos)], root / "shards", shard_size=2, num_workers=1)
    torch.manual_seed(0)
    run = vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=4), root / "run").parent
    common = ["--checkpoint", str(run), "--num-workers", "0"]
    here = os.getcwd()
    os.chdir(root)  # the index names its samples shards/videos-00000N.tar#KEY, relative to root
    try:
        assert index_command.main(["shards/videos-*.tar", "--out", "shard-index", *common]) == 0
    finally:
        os.chdir(here)
    assert index_command.main([str(videos), "--out", str(root / "file-index"), *common]) == 0
    return root, run


def client_of(folder: Path) -> TestClient:
    return TestClient(create_app(VideoIndex.load(folder)), base_url="http://127.0.0.1")


def source_files(root: Path, index: VideoIndex) -> list[Path]:
    """The file each indexed sample was packed from, by video id (from the shards' own index)."""
    table = pd.read_parquet(root / "shards" / "videos-samples.parquet")
    packed = {
        f"shards/{s}#{k}": v for s, k, v in zip(table["shard"], table["key"], table["video"], strict=True)
    }
    return [root / "videos" / packed[name] for name in index.videos]


def test_a_shard_sample_plays_from_its_byte_range_with_range_requests(built, tmp_path, monkeypatch):
    root, _ = built
    monkeypatch.chdir(tmp_path)  # served from elsewhere: the relative shard paths resolve where it was built
    index = VideoIndex.load(root / "shard-index")
    client = TestClient(create_app(index), base_url="http://127.0.0.1")
    files = source_files(root, index)
    assert len(files) == NUM_VIDEOS
    for video_id, file in enumerate(files):
        data = file.read_bytes()  # shards made without re-encoding hold the source bytes
        whole = client.get(f"/media/{video_id}")
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-length"] == str(len(data))
    data = files[1].read_bytes()
    part = client.get("/media/1", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == data[:100]
    assert (
        part.headers["content-range"] == f"bytes 0-99/{len(data)}" and part.headers["content-length"] == "100"
    )
    middle = client.get("/media/1", headers={"Range": f"bytes=300-{len(data) + 50}"})  # clamped to the end
    assert middle.status_code == 206 and middle.content == data[300:]
    tail = client.get("/media/1", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    past = client.get("/media/1", headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    several = client.get("/media/1", headers={"Range": "bytes=0-1,5-9"})  # not answered in parts: whole
    assert several.status_code == 200 and several.content == data


def test_thumbnails_of_shard_samples_are_the_frames_of_their_files(built):
    root, _ = built
    shard_index, file_index = VideoIndex.load(root / "shard-index"), VideoIndex.load(root / "file-index")
    shards, files = client_of(root / "shard-index"), client_of(root / "file-index")
    for video_id, file in enumerate(source_files(root, shard_index)):
        file_id = file_index.video_id(str(file))
        for ms in (0, 1500, 999999):
            a, b = shards.get(f"/thumb/{video_id}/{ms}.jpg"), files.get(f"/thumb/{file_id}/{ms}.jpg")
            assert a.status_code == 200 and a.headers["content-type"] == "image/jpeg"
            assert a.content == b.content, (video_id, ms)


def test_the_page_links_every_playable_shard_sample(built):
    root, _ = built
    client = client_of(root / "shard-index")
    results = client.get("/api/search", params={"q": "a moving square", "k": NUM_VIDEOS}).json()["results"]
    assert len(results) == NUM_VIDEOS and all(result["available"] for result in results)
    page = client.get("/", params={"q": "a moving square", "k": NUM_VIDEOS}).text
    assert page.count('data-src="/media/') == NUM_VIDEOS and "cannot play" not in page


def test_what_cannot_be_played_from_its_shard_is_said(built, tmp_path):
    """A shard gone since indexing, one rewritten compressed, one cut inside its second sample's video: 404s
    with the reason on the media and thumbnail routes and 'cannot play' cards on the page; the first sample
    of the cut shard still plays."""
    root, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(root / "shards", copy / "shards")
    shutil.copytree(root / "shard-index", copy / "index")
    index = VideoIndex.load(copy / "index")
    index.meta.root = str(copy)  # as if built in the copy
    client = TestClient(create_app(index), base_url="http://127.0.0.1")
    (copy / "shards" / "videos-000000.tar").unlink()
    cut = copy / "shards" / "videos-000001.tar"
    with tarfile.open(cut) as tar:
        first, last = [member for member in tar.getmembers() if member.name.endswith(".mp4")]
    cut.write_bytes(cut.read_bytes()[: last.offset_data + last.size // 2])
    packed = copy / "shards" / "videos-000002.tar"
    packed.write_bytes(gzip.compress(packed.read_bytes()))  # same name, now gzip: no byte range to serve
    first_of_cut = index.video_id(f"shards/videos-000001.tar#{first.name.removesuffix('.mp4')}")
    reasons = {}
    for video_id, name in enumerate(index.videos):
        if name.startswith("shards/videos-000000.tar"):
            reasons[video_id] = "which is no longer there"
        elif name.startswith("shards/videos-000002.tar"):
            reasons[video_id] = "not an uncompressed tar"
        elif video_id != first_of_cut:
            reasons[video_id] = "truncated"
    assert len(reasons) == NUM_VIDEOS - 1
    for video_id, reason in reasons.items():
        for url in (f"/media/{video_id}", f"/thumb/{video_id}/0.jpg"):
            answer = client.get(url)
            assert answer.status_code == 404 and reason in answer.json()["error"], (url, answer.text)
    assert (
        client.get(f"/media/{first_of_cut}").content == source_files(root, index)[first_of_cut].read_bytes()
    )
    page = client.get("/", params={"q": "a moving square", "k": NUM_VIDEOS}).text
    assert page.count("cannot play:") == NUM_VIDEOS - 1 and page.count('data-src="/media/') == 1
    results = client.get("/api/search", params={"q": "square", "k": NUM_VIDEOS}).json()["results"]
    assert [result["video_id"] for result in results if result["available"]] == [first_of_cut]


def test_samples_of_pipe_shards_are_refused_with_the_reason(built, tmp_path):
    root, run = built
    spec = f"pipe:cat {root / 'shards' / 'videos-000000.tar'}"
    common = ["--checkpoint", str(run), "--num-workers", "0"]
    assert index_command.main([spec, "--out", str(tmp_path / "index"), *common]) == 0
    client = client_of(tmp_path / "index")
    answer = client.get("/media/0")
    assert answer.status_code == 404
    assert (
        "read through a command or a remote store: the page plays samples of local shards only"
        in (answer.json()["error"])
    )
    page = client.get("/", params={"q": "square", "k": 2}).text
    assert page.count("cannot play:") == 2


def test_find_video_span_reads_the_video_member_from_the_tar_headers(built, tmp_path):
    root, _ = built
    shard = root / "shards" / "videos-000001.tar"
    table = pd.read_parquet(root / "shards" / "videos-samples.parquet")
    row = table[table["shard"] == shard.name].iloc[0]
    span = find_video_span(str(shard), row["key"])
    assert span.read() == (root / "videos" / row["video"]).read_bytes() and span.size == row["bytes"]
    assert span.member == f"{row['key']}.mp4" and span.media_type == "video/mp4"
    with pytest.raises(ShardMemberError, match="holds no video of sample 'nope'"):
        find_video_span(str(shard), "nope")
    with pytest.raises(FileNotFoundError):
        find_video_span(str(tmp_path / "gone.tar"), row["key"])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=0-0", (0, 0)),
        (" bytes=5-9 ", (5, 9)),
        ("bytes=0-1,5-9", None),  # several ranges: the whole body
        ("items=0-9", None),
        ("bytes=9-5", None),
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("bytes=1000-", RangeNotSatisfiable),
        ("bytes=5000-6000", RangeNotSatisfiable),
        ("bytes=-0", RangeNotSatisfiable),
        ("Bytes=0-9", (0, 9)),  # the unit is case-insensitive
    ],
)
def test_parse_range(header, expected):
    if expected is RangeNotSatisfiable:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 1000)
    else:
        assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=-5", "bytes=0-0"])
def test_no_range_of_an_empty_body_is_satisfiable(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 0)
    assert parse_range(None, 0) is None


def test_the_page_plays_the_member_the_reader_decodes(tmp_path):
    """A sample with a .webm before its .mp4, one whose .mp4 is stored twice, one under a __meta__ folder:
    the span found is the member the streaming reader gives the decoder (the .mp4, the last copy, none)."""
    from vidclip.data.shards import iter_shard

    shard = tmp_path / "odd-000000.tar"
    write_tar(
        shard,
        [
            ("a.webm", b"webm of a"),
            ("a.mp4", b"mp4 of a"),
            ("b.mp4", b"first copy of b"),
            ("b.mp4", b"second copy of b"),
            ("__meta__/c.mp4", b"not a sample"),
        ],
    )
    read = {raw.key: raw.video()[1] for raw in iter_shard(str(shard)) if raw.video() is not None}
    assert read == {"a": b"mp4 of a", "b": b"second copy of b"}
    for key, data in read.items():
        assert find_video_span(str(shard), key).read() == data
    with pytest.raises(ShardMemberError):
        find_video_span(str(shard), "__meta__/c")


def test_a_shard_rewritten_in_place_is_located_again(tmp_path):
    """The same path and size, other contents (as ``cp -p`` leaves it, mtime kept): its members found anew."""
    shard = tmp_path / "swap-000000.tar"
    write_tar(shard, [("a.mp4", b"1" * 700), ("b.mp4", b"2" * 1300)])
    stat = shard.stat()
    assert find_video_span(str(shard), "a").read() == b"1" * 700
    replacement = tmp_path / "new.tar"
    write_tar(replacement, [("a.mp4", b"3" * 1300), ("b.mp4", b"4" * 700)])
    assert replacement.stat().st_size == stat.st_size
    os.replace(replacement, shard)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert find_video_span(str(shard), "a").read() == b"3" * 1300


def test_a_shard_gone_or_shrunk_while_serving_is_not_sent_as_complete(tmp_path):
    from vidclip.data.shard_members import VideoSpan
    from vidclip.index.media import _read, span_response

    with pytest.raises(FileNotFoundError):  # gone between locating and answering: the route's 404
        span_response(VideoSpan(tmp_path / "gone.tar", 0, 10, "a.mp4"), None, {})
    short = tmp_path / "short.tar"
    short.write_bytes(b"x" * 100)
    body = _read(open(short, "rb"), 50, 80)  # 30 bytes short
    with pytest.raises(OSError, match="ended 30 bytes early"):
        list(body)
