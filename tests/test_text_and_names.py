"""Text written by other tools (byte-order marks, UTF-16, Windows-1252, CRLF) reads as the user sees it; one
video spelled several ways is one row; a file name that is not UTF-8 is a row with a printable name in every
command, and a re-run of extract recognises it."""

import json
import logging
import os
import unicodedata

import numpy as np
import pandas as pd
import pytest
import torch

import vidclip
from vidclip.commands import extract
from vidclip.commands import zeroshot as zeroshot_module
from vidclip.config import DataConfig
from vidclip.data import AnnotationError, read_annotations
from vidclip.data.base import first_undecodable, read_csv_file, read_lines, text_encoding
from vidclip.data.didemo import load_paragraphs
from vidclip.data.files import display_path, find_videos, read_video_list
from vidclip.data.msrvtt import load_sentences
from vidclip.inference.parts import Row, part_table
from vidclip.inference.pipeline import report_failures
from vidclip.synthetic import index_frames, write_video

RAW = os.fsdecode(b"clip_\xff.mp4")  # a name that is not UTF-8, as Python gives it (surrogate escape)
BROKEN_RAW = os.fsdecode(b"broken_\xe9.mp4")  # Latin-1 bytes, and not a video
LABELS = ["cooking", "dancing", "surfing"]
needs_byte_names = pytest.mark.skipif(os.name == "nt", reason="Windows file names are UTF-16, never bytes")


# -- text files ---------------------------------------------------------------------------------------------
def test_a_list_file_with_a_bom_crlf_and_trailing_spaces_gives_the_paths_alone(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbfa.mp4 \r\n# a comment\r\n\r\n\tsub/b.mp4\r\nc.mp4")
    assert read_video_list(str(listing)) == [str(tmp_path / name) for name in ("a.mp4", "sub/b.mp4", "c.mp4")]


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_a_utf16_or_utf32_list_file_with_its_bom_is_read(tmp_path, codec):
    listing = tmp_path / "list.txt"
    bom = {"utf-16-be": b"\xfe\xff"}.get(codec, b"")  # Python's "utf-16"/"utf-32" write their own mark
    listing.write_bytes(bom + "vidéo 日本.mp4\r\nb.mp4\r\n".encode(codec))
    assert read_video_list(str(listing)) == [str(tmp_path / "vidéo 日本.mp4"), str(tmp_path / "b.mp4")]


@needs_byte_names
def test_a_list_line_that_is_not_utf8_names_the_raw_file_or_is_read_as_cp1252(tmp_path, caplog):
    (tmp_path / RAW).write_bytes(b"")  # the raw name exists on disk: that is the file meant
    (tmp_path / "vidéo.mp4").write_bytes(b"")  # a list saved as Windows-1252 names this UTF-8 file
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"clip_\xff.mp4\nvid\xe9o.mp4\r\nplain.mp4\n")
    with caplog.at_level(logging.WARNING, logger="vidclip"):
        paths = read_video_list(str(listing))
    assert paths == [str(tmp_path / RAW), str(tmp_path / "vidéo.mp4"), str(tmp_path / "plain.mp4")]
    assert "list.txt: 2 line(s) not UTF-8 (first: line 1)" in caplog.text


@pytest.mark.parametrize(
    "data",
    [
        "\ufeffcooking\r\ndancing  \r\n\r\nsurfing\r\n".encode(),  # UTF-8 with a BOM (Excel, Notepad)
        "cooking\r\ndancing\r\nsurfing\r\n".encode("utf-16"),  # UTF-16 LE with its BOM (Windows "Unicode")
        b"\xfe\xff" + "cooking\ndancing\nsurfing".encode("utf-16-be"),
    ],
    ids=["utf8-bom", "utf16-le", "utf16-be"],
)
def test_label_files_from_windows_tools_read_as_written(tmp_path, data):
    path = tmp_path / "labels.txt"
    path.write_bytes(data)
    assert read_lines(path) == LABELS


def test_a_cp1252_label_file_is_read_as_cp1252_with_a_warning_naming_the_first_odd_byte(tmp_path, caplog):
    path = tmp_path / "labels.txt"
    path.write_bytes("café\nnaïve – “quoted”\n".encode("cp1252"))
    with caplog.at_level(logging.WARNING, logger="vidclip"):
        assert read_lines(path) == ["café", "naïve – “quoted”"]
    assert f"{path}: not UTF-8 (line 1, byte 3 of the file: 0xe9); read as Windows-1252" in caplog.text


def test_text_neither_utf8_nor_cp1252_is_refused_with_the_file_line_and_byte(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"one\ntwo\nth\x81ree\n")  # 0x81 is undefined in Windows-1252
    with pytest.raises(
        AnnotationError, match=r"labels.txt: line 3, byte 10 of the file: 0x81 is neither UTF-8"
    ):
        read_lines(path)


def test_the_first_bad_byte_is_found_across_read_blocks(tmp_path):
    path = tmp_path / "big.txt"
    prefix = b"a" + "é".encode() * 600_000  # > 1 MiB, so a block ends inside a two-byte character
    for tail, expected in [(b"\n\xff", (2, len(prefix) + 1, 0xFF)), (b"\xc3", (1, len(prefix), 0xC3))]:
        path.write_bytes(prefix + tail)
        assert first_undecodable(path, "utf-8") == expected
    path.write_bytes(prefix)
    assert first_undecodable(path, "utf-8") is None and text_encoding(path) == "utf-8"


def test_a_csv_with_a_bom_keeps_its_first_column_name(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_bytes(b"\xef\xbb\xbfvideo ,caption\r\na.mp4,a dog runs\r\n")
    table = read_csv_file(path)
    assert list(table.columns) == ["video", "caption"] and table["caption"].tolist() == ["a dog runs"]
    path.write_bytes("video,caption\r\na.mp4,a dog runs\r\n".encode("utf-16"))
    assert list(read_csv_file(path).columns) == ["video", "caption"]


def test_a_cp1252_csv_of_captions_with_spaced_cells_reads_through_the_csv_format(tmp_path, caplog):
    path = tmp_path / "captions.csv"
    path.write_bytes("video,caption\r\na.mp4 ,un café “noir”\r\nb.mp4,plain\r\n".encode("cp1252"))
    with caplog.at_level(logging.WARNING, logger="vidclip"):
        annotations = read_annotations(DataConfig(train=str(path)), "retrieval", "train")
    assert annotations.captions == ["un café “noir”", "plain"]
    assert [video.path for video in annotations.videos] == ["a.mp4", "b.mp4"]
    assert "read as Windows-1252" in caplog.text


def test_msrvtt_and_didemo_json_with_a_bom_or_in_utf16_is_read(tmp_path):
    msrvtt = tmp_path / "MSRVTT_data.json"
    msrvtt.write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"sentences": [{"video_id": "v1", "caption": "é"}]}).encode()
    )
    assert load_sentences(msrvtt) == {"v1": ["é"]}
    didemo = tmp_path / "test_data.json"
    didemo.write_bytes(json.dumps([{"video": "v.mp4", "description": "a cat"}]).encode("utf-16"))
    assert load_paragraphs(didemo) == {"v.mp4": "a cat"}


# -- one video, many spellings ------------------------------------------------------------------------------
def test_spellings_of_one_path_are_one_video_kept_first_as_first_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "videos" / "sub").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "videos" / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("videos/a.mp4\n./videos/b.mp4\n")
    spellings = ["./videos/a.mp4", "videos//a.mp4", "videos/sub/../a.mp4", str(tmp_path / "videos" / "a.mp4")]
    found = find_videos(["videos/a.mp4", *spellings, "list.txt", "videos", "videos/b.mp4"])
    assert found == ["videos/a.mp4", "./videos/b.mp4"]


def test_a_missing_video_spelled_twice_is_one_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text("gone.mp4\n./gone.mp4\n")
    assert find_videos(["list.txt"]) == ["gone.mp4"]


def test_nfc_and_nfd_spellings_are_one_video_unless_they_are_two_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nfc, nfd = unicodedata.normalize("NFC", "vidéo.mp4"), unicodedata.normalize("NFD", "vidéo.mp4")
    (tmp_path / nfc).write_bytes(b"")
    (tmp_path / "list.txt").write_text(f"{nfd}\n")  # macOS (and a list written there) spells it NFD
    assert find_videos([nfc, "list.txt"]) == [nfc]
    assert find_videos(["list.txt", nfc]) == [nfd]
    (tmp_path / nfd).write_bytes(b"other")
    if not os.path.samefile(nfc, nfd):  # Linux: two names, two files, two videos
        assert find_videos([nfc, nfd]) == [nfc, nfd]


def test_a_symlink_to_a_video_is_another_video_but_a_symlinked_folder_is_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")
    try:
        os.symlink("a.mp4", tmp_path / "videos" / "link.mp4")
        os.symlink("videos", tmp_path / "linked")
    except OSError:
        pytest.skip("no symlinks here")
    assert find_videos(["videos/a.mp4", "videos/link.mp4", "linked/a.mp4"]) == [
        "videos/a.mp4",
        "videos/link.mp4",
    ]


# -- names that are not UTF-8 -------------------------------------------------------------------------------
def test_display_path_writes_undecodable_bytes_as_escapes_and_leaves_text_alone():
    assert display_path(RAW) == "clip_\\xff.mp4"
    assert display_path("videos/vidéo 日本.mp4") == "videos/vidéo 日本.mp4"
    assert display_path("lone \ud800") == "lone \\ud800"  # not an escaped byte, still printable
    assert display_path(display_path(RAW)) == display_path(RAW)
    display_path(RAW).encode("utf-8")  # storable anywhere


def test_part_table_and_failure_messages_store_a_raw_name_printably(caplog):
    rows = [Row(0, RAW, np.ones(2, np.float32), None), Row(1, BROKEN_RAW, None, f"{BROKEN_RAW}: not a video")]
    table = part_table(rows, {}).to_pydict()
    assert table["video"] == ["clip_\\xff.mp4", "broken_\\xe9.mp4"]
    assert table["error"] == [None, "broken_\\xe9.mp4: not a video"]
    with caplog.at_level(logging.WARNING, logger="vidclip"):
        report_failures([(BROKEN_RAW, f"{BROKEN_RAW}: not a video")], 2)
    assert "broken_\\xe9.mp4: broken_\\xe9.mp4: not a video" in caplog.text


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory):
    """A folder of videos, two of them with names that are not UTF-8 (one of those not a video), and a run."""
    root = tmp_path_factory.mktemp("odd names")
    videos = root / "videos"
    videos.mkdir()
    try:
        write_video(videos / RAW, index_frames(6, 32, 32))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system does not take names that are not UTF-8")
    write_video(videos / "good.mp4", index_frames(6, 32, 32))
    write_video(videos / "vidéo.mp4", index_frames(6, 32, 32))
    (videos / BROKEN_RAW).write_text("not a video\n" * 10)
    torch.manual_seed(0)
    run = vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=4), root / "run").parent
    return root, run


EXPECTED = {"broken_\\xe9.mp4": False, "clip_\\xff.mp4": True, "good.mp4": True, "vidéo.mp4": True}


@needs_byte_names
def test_extract_writes_every_odd_name_and_a_rerun_skips_it_as_done(odd_names, tmp_path, capsys):
    root, run = odd_names
    videos, out = root / "videos", tmp_path / "out"
    args = [
        str(videos),
        f"{videos}/./good.mp4",
        "--out",
        str(out),
        "--checkpoint",
        str(run),
        "--num-workers",
        "0",
    ]
    assert extract.main(args) == 0
    assert capsys.readouterr().out.startswith("extract: 4 videos, 3 ok, 1 failed, 0 skipped")
    assert extract.main(args) == 0
    assert capsys.readouterr().out.startswith("extract: 4 videos, 0 ok, 0 failed, 4 skipped")
    assert extract.main([*args, "--retry-failed"]) == 0  # the new row takes the old one's place
    assert capsys.readouterr().out.startswith("extract: 4 videos, 0 ok, 1 failed, 3 skipped")
    table = pd.read_parquet(out)
    assert sorted(table["video"]) == sorted(f"{videos}/{name}" for name in EXPECTED)  # once each
    for video, error in zip(table["video"], table["error"], strict=True):
        assert pd.isna(error) == EXPECTED[os.path.basename(video)], (video, error)


@needs_byte_names
def test_zeroshot_writes_every_odd_name_from_a_windows_list_and_a_utf16_label_file(
    odd_names, tmp_path, capsys
):
    root, run = odd_names
    listing = tmp_path / "videos.txt"  # a BOM, CRLF, a raw name as `ls` writes it, one video twice
    names = [b"clip_\xff.mp4", b"good.mp4", b"broken_\xe9.mp4", "vidéo.mp4".encode(), b"./good.mp4"]
    listing.write_bytes(
        b"\xef\xbb\xbf" + b"".join(b"%s/%s \r\n" % (os.fsencode(root / "videos"), n) for n in names)
    )
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\r\n".join(LABELS).encode("utf-16"))
    args = [str(listing), "--labels-file", str(labels), "--checkpoint", str(run), "--num-workers", "0"]
    assert zeroshot_module.main([*args, "--output", str(tmp_path / "preds.csv")]) == 0
    preds = pd.read_csv(tmp_path / "preds.csv", encoding="utf-8")
    assert [os.path.basename(video) for video in preds["video"]] == [
        "clip_\\xff.mp4", "good.mp4", "broken_\\xe9.mp4", "vidéo.mp4"
    ]  # fmt: skip
    assert preds["error"].isna().tolist() == [True, True, False, True]
    assert set(preds["label"].dropna()) <= set(LABELS)
    capsys.readouterr()
    assert zeroshot_module.main(args) == 0  # printed, not written: the terminal takes every row
    assert "clip_\\xff.mp4" in capsys.readouterr().out
