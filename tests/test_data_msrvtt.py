"""The ``msrvtt`` reader on MSR-VTT's own file layout: 1k-A JSFUSION test, 9k train expanded to every caption,
the full protocol from a video list, videos found by stem, missing videos dropped and named."""

import logging

import pytest
from dataset_fixtures import touch, write_msrvtt

import vidclip.data.msrvtt  # noqa: F401  (registers "msrvtt")
from vidclip.config import DataConfig
from vidclip.data import read_annotations
from vidclip.data.lookup import CheckedRetrievalAnnotations

VIDEOS = [(f"video{i}", [f"caption {i} a", f"caption {i} b", f"caption {i} c"]) for i in range(6)]


@pytest.fixture
def msrvtt(tmp_path):
    files = write_msrvtt(
        tmp_path / "msrvtt", VIDEOS, test_ids=["video4", "video5"], train_ids=["video0", "video1", "video2"]
    )
    for i in range(6):
        touch(tmp_path / "videos" / f"video{i}.mp4")
    return files, tmp_path / "videos"


def config(files, root, **overrides):
    fields = dict(
        annotations=files["annotations"], train=files["train"], test=files["test"], video_root=str(root)
    )
    return DataConfig(format="msrvtt", **{**fields, **overrides})


def test_jsfusion_test_csv_gives_one_listed_caption_per_video(msrvtt):
    files, root = msrvtt
    ann = read_annotations(config(files, root), "retrieval", "test")
    assert [v.id for v in ann.videos] == ["video4", "video5"]
    assert [v.path for v in ann.videos] == ["video4.mp4", "video5.mp4"]
    assert ann.captions == ["caption 4 a", "caption 5 a"] and ann.caption_video == [0, 1]
    assert ann.video_paths() == [str(root / "video4.mp4"), str(root / "video5.mp4")]


def test_train_split_expands_to_every_caption_in_json_order(msrvtt):
    files, root = msrvtt
    ann = read_annotations(config(files, root), "retrieval", "train")
    assert [v.id for v in ann.videos] == ["video0", "video1", "video2"]
    assert ann.captions[:4] == ["caption 0 a", "caption 0 b", "caption 0 c", "caption 1 a"]
    assert ann.caption_video == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_full_protocol_from_a_video_list_has_several_captions_per_video(msrvtt):
    files, root = msrvtt
    ann = read_annotations(config(files, root, val=files["full"]), "retrieval", "val")
    assert [v.id for v in ann.videos] == ["video4", "video5"]
    assert len(ann.captions) == 6 and ann.caption_video == [0, 0, 0, 1, 1, 1]


def test_missing_videos_are_named_dropped_with_their_captions_and_counted(msrvtt, caplog):
    files, root = msrvtt
    (root / "video1.mp4").unlink()
    with caplog.at_level(logging.INFO, logger="vidclip"):
        ann = read_annotations(config(files, root), "retrieval", "train")
    assert isinstance(ann, CheckedRetrievalAnnotations)
    assert [v.id for v in ann.missing] == ["video1"]
    assert [v.id for v in ann.videos] == ["video0", "video2"] and ann.caption_video == [0, 0, 0, 1, 1, 1]
    assert (
        "1 of 3 videos not found" in caplog.text and "video1" in caplog.text and "3 captions" in caplog.text
    )
    assert "using 2 videos and 6 captions" in caplog.text


def test_videos_in_another_container_are_found_by_stem(msrvtt):
    files, root = msrvtt
    (root / "video4.mp4").rename(root / "video4.webm")
    ann = read_annotations(config(files, root), "retrieval", "test")
    assert [v.path for v in ann.videos] == ["video4.webm", "video5.mp4"] and not ann.missing


def test_errors_name_the_file_and_the_problem(msrvtt, tmp_path):
    files, root = msrvtt
    with pytest.raises(ValueError, match="data.annotations is not set"):
        read_annotations(config(files, root, annotations=None), "retrieval", "train")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"sentences": [{"video_id": "video0"}]}')
    with pytest.raises(ValueError, match=r"bad.json: sentences\[0\] needs 'video_id' and 'caption'"):
        read_annotations(config(files, root, annotations=str(bad_json)), "retrieval", "train")
    no_column = tmp_path / "ids.csv"
    no_column.write_text("vid\nvideo0\n")
    with pytest.raises(ValueError, match=r"ids.csv: no 'video_id' column"):
        read_annotations(config(files, root, train=str(no_column)), "retrieval", "train")
    with pytest.raises(ValueError, match="none of the 2 videos exist"):
        read_annotations(config(files, tmp_path / "elsewhere"), "retrieval", "test")
