"""The ``didemo`` reader on DiDeMo's own json files: one paragraph per video in file order, CLIP4Clip's split
lists, video files found whatever container they were re-encoded to, missing videos dropped and named."""

import json
import logging

import pytest
from dataset_fixtures import COMBOS, shape_video, touch, write_didemo

import vidclip.data.didemo  # noqa: F401  (registers "didemo")
from vidclip.commands.eval import main as eval_main
from vidclip.config import DataConfig
from vidclip.data import read_annotations

MOMENTS = [
    ("1@N00_11_aa.mov", "a dog runs."),
    ("2@N01_22_bb.mp4", "a man waves"),
    ("1@N00_11_aa.mov", "the dog jumps into the lake."),
    ("3@N02_33_cc.avi", "kids play"),
    ("1@N00_11_aa.mov", "  it swims back. "),
]


def read(path, root, **options):
    return read_annotations(
        DataConfig(format="didemo", test=str(path), video_root=str(root), options=options),
        "retrieval",
        "test",
    )


def test_descriptions_of_a_video_join_into_one_paragraph_in_file_order(tmp_path):
    path = write_didemo(tmp_path / "ann", MOMENTS)
    for name in ("1@N00_11_aa.mov", "2@N01_22_bb.mp4", "3@N02_33_cc.avi"):
        touch(tmp_path / "videos" / name)
    ann = read(path, tmp_path / "videos")
    assert [v.id for v in ann.videos] == ["1@N00_11_aa.mov", "2@N01_22_bb.mp4", "3@N02_33_cc.avi"]
    assert ann.captions[0] == "a dog runs. the dog jumps into the lake. it swims back."
    assert ann.caption_video == [0, 1, 2]  # one paragraph per video, the whole video


def test_video_files_are_found_by_name_or_stem_in_any_container(tmp_path):
    """As users have them: the original name, AWS's ``x.mov.mp4``, a re-encoded ``x.mp4``, in sub-folders."""
    path = write_didemo(tmp_path / "ann", MOMENTS)
    touch(tmp_path / "videos" / "part1" / "1@N00_11_aa.mov.mp4")
    touch(tmp_path / "videos" / "2@N01_22_bb.mp4")
    touch(tmp_path / "videos" / "part2" / "3@N02_33_cc.mp4")
    ann = read(path, tmp_path / "videos")
    assert [v.path for v in ann.videos] == [
        "part1/1@N00_11_aa.mov.mp4",
        "2@N01_22_bb.mp4",
        "part2/3@N02_33_cc.mp4",
    ]
    assert not ann.missing


def test_split_list_beside_the_json_filters_videos_like_clip4clip(tmp_path):
    path = write_didemo(tmp_path / "ann", MOMENTS, listed=["2@N01_22_bb.mp4", "3@N02_33_cc.avi"])
    for name in ("1@N00_11_aa.mov", "2@N01_22_bb.mp4", "3@N02_33_cc.avi"):
        touch(tmp_path / "videos" / name)
    assert [v.id for v in read(path, tmp_path / "videos").videos] == ["2@N01_22_bb.mp4", "3@N02_33_cc.avi"]
    assert len(read(path, tmp_path / "videos", split_lists=False).videos) == 3
    other = tmp_path / "mine.txt"
    other.write_text("1@N00_11_aa.mov\n")
    assert [v.id for v in read(path, tmp_path / "videos", split_lists={"test": str(other)}).videos] == [
        "1@N00_11_aa.mov"
    ]


def test_missing_videos_are_dropped_with_a_warning_naming_them(tmp_path, caplog):
    path = write_didemo(tmp_path / "ann", MOMENTS)
    touch(tmp_path / "videos" / "1@N00_11_aa.mp4")
    with caplog.at_level(logging.WARNING, logger="vidclip"):
        ann = read(path, tmp_path / "videos")
    assert [v.id for v in ann.videos] == ["1@N00_11_aa.mov"] and ann.captions[0].startswith("a dog runs.")
    assert [v.id for v in ann.missing] == ["2@N01_22_bb.mp4", "3@N02_33_cc.avi"]
    assert "2 of 3 videos not found" in caplog.text and "3@N02_33_cc.avi" in caplog.text


def test_malformed_files_fail_naming_file_and_entry(tmp_path):
    bad = tmp_path / "test_data.json"
    bad.write_text('[{"video": "a.mp4", "description": "x"}, {"video": "b.mp4"}]')
    with pytest.raises(ValueError, match="test_data.json: entry 1 needs 'video' and 'description'"):
        read(bad, tmp_path)
    bad.write_text('{"video": "a.mp4"}')
    with pytest.raises(ValueError, match="expected a list of moments"):
        read(bad, tmp_path)


def test_eval_command_scores_paragraph_retrieval_on_didemo_files(tmp_path):
    moments = [
        (f"{i}@N0{i}_{i}{i}_x.mov", f"a {c} {s}. it moves {d}.") for i, (c, s, d) in enumerate(COMBOS[:4])
    ]
    path = write_didemo(tmp_path / "ann", moments + [("9@N09_99_gone.mp4", "a video nobody downloaded")])
    for i, (colour, shape, direction) in enumerate(COMBOS[:4]):
        shape_video(tmp_path / "videos" / f"{i}@N0{i}_{i}{i}_x.mp4", colour, shape, direction, seed=i)
    config = tmp_path / "didemo.yaml"
    config.write_text(f"data:\n  format: didemo\n  test: {path}\n  video_root: {tmp_path / 'videos'}\n")
    args = ["--config", str(config), "--model", "tiny", "--num-frames", "4", "--num-workers", "0"]
    assert eval_main([*args, "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["num_queries"], metrics["num_videos"], metrics["num_missing"]) == (4, 4, 1)
    assert 0 <= metrics["t2v/R@1"] <= 100 and metrics["t2v/R@10"] == 100.0
