"""Action-recognition readers on the layouts users have: Kinetics CSVs (flat or label folders), UCF101 and
HMDB51 split files with their three official splits, and one folder per class."""

import logging

import pytest
from dataset_fixtures import touch, write_hmdb51_splits, write_ucf101_lists

import vidclip.data.recognition  # noqa: F401  (registers kinetics, ucf101, hmdb51, folders)
from vidclip.config import DataConfig
from vidclip.data import read_annotations
from vidclip.data.recognition import humanize_class_name


def classify(split="test", **fields):
    return read_annotations(DataConfig(**fields), "classification", split)


KINETICS = """label,youtube_id,time_start,time_end,split
air drumming,abc,10,20,train
abseiling,def,0,10,train
air drumming,ghi,5,15,train
"""


@pytest.mark.parametrize("layout", ["label folders", "flat, another container"])
def test_kinetics_clips_are_found_flat_or_in_label_folders(tmp_path, layout):
    (tmp_path / "train.csv").write_text(KINETICS)
    names = ["abc_000010_000020", "def_000000_000010", "ghi_000005_000015"]
    labels = ["air drumming", "abseiling", "air drumming"]
    for name, label in zip(names, labels, strict=True):
        touch(tmp_path / "videos" / (f"{label}/{name}.mp4" if layout == "label folders" else f"{name}.mkv"))
    ann = classify(
        "train", format="kinetics", train=str(tmp_path / "train.csv"), video_root=str(tmp_path / "videos")
    )
    assert ann.class_names == ["abseiling", "air drumming"] and ann.labels == [1, 0, 1]
    assert [v.id for v in ann.videos] == names and not ann.missing
    suffix = ".mp4" if layout == "label folders" else ".mkv"
    assert ann.video_paths()[1].endswith(
        ("abseiling/" if suffix == ".mp4" else "") + f"def_000000_000010{suffix}"
    )


def test_kinetics_missing_clips_are_dropped_and_classes_come_from_the_train_csv(tmp_path, caplog):
    (tmp_path / "train.csv").write_text(KINETICS)
    (tmp_path / "val.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,zzz,3,13,val\nair drumming,abc,10,20,val\n"
    )
    touch(tmp_path / "videos" / "abc_000010_000020.mp4")
    with caplog.at_level(logging.WARNING, logger="vidclip"):
        ann = classify(
            "val",
            format="kinetics",
            train=str(tmp_path / "train.csv"),
            val=str(tmp_path / "val.csv"),
            video_root=str(tmp_path / "videos"),
        )
    assert ann.class_names == ["abseiling", "air drumming"] and ann.labels == [1]
    assert [v.id for v in ann.missing] == ["zzz_000003_000013"] and "zzz_000003_000013" in caplog.text
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end\nabc,10,20\n")
    with pytest.raises(ValueError, match=r"test.csv: missing column\(s\) \['label'\]"):
        classify(format="kinetics", test=str(tmp_path / "test.csv"))


@pytest.fixture
def ucf101(tmp_path):
    classes = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    videos = [f"{c}/v_{c}_g0{g}_c01.avi" for c in classes for g in (1, 2, 3)]
    folder = write_ucf101_lists(
        tmp_path, classes, train=videos[:2], tests={n: videos[n - 1 :: 3] for n in (1, 2, 3)}
    )
    for video in videos:
        touch(tmp_path / "UCF-101" / video)
    return folder, tmp_path / "UCF-101"


def test_ucf101_lists_give_prompt_ready_class_names_and_folder_labels(ucf101):
    folder, root = ucf101
    train = classify("train", format="ucf101", train=str(folder / "trainlist01.txt"), video_root=str(root))
    assert train.class_names == ["apply eye makeup", "handstand pushups", "yo yo"] and train.labels == [0, 0]
    test = classify(format="ucf101", test=str(folder / "testlist01.txt"), video_root=str(root))
    assert [v.id for v in test.videos] == [
        "v_ApplyEyeMakeup_g01_c01",
        "v_HandstandPushups_g01_c01",
        "v_YoYo_g01_c01",
    ]
    assert test.labels == [0, 1, 2] and test.video_paths()[0] == str(
        root / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
    )


def test_ucf101_folder_with_split_id_picks_that_official_split(ucf101):
    folder, root = ucf101
    for number in (1, 2, 3):
        ann = classify(format="ucf101", test=str(folder), video_root=str(root), options={"split_id": number})
        assert [v.id for v in ann.videos][0] == f"v_ApplyEyeMakeup_g0{number}_c01"
    with pytest.raises(ValueError, match="split_id needs data.test to be the ucfTrainTestlist folder"):
        classify(format="ucf101", test=str(folder / "testlist01.txt"), options={"split_id": 2})
    with pytest.raises(ValueError, match="split_id must be 1, 2 or 3"):
        classify(format="ucf101", test=str(folder), options={"split_id": 4})


def test_ucf101_videos_re_encoded_to_mp4_are_found_by_stem(ucf101):
    folder, root = ucf101
    avi = root / "YoYo" / "v_YoYo_g01_c01.avi"
    avi.rename(avi.with_suffix(".mp4"))
    ann = classify(format="ucf101", test=str(folder / "testlist01.txt"), video_root=str(root))
    assert ann.videos[2].path == "YoYo/v_YoYo_g01_c01.mp4" and not ann.missing


def test_hmdb51_split_files_mark_train_1_and_test_2(tmp_path):
    codes = {
        "brush_hair": {"a.avi": (1, 2, 1), "b.avi": (2, 1, 0)},
        "sword_exercise": {"c.avi": (2, 2, 2), "d.avi": (0, 1, 1)},
        "sword": {"e.avi": (1, 1, 2)},
    }
    folder = write_hmdb51_splits(tmp_path, codes)
    for name, videos in codes.items():
        for video in videos:
            touch(tmp_path / "hmdb51" / name / video)
    common = dict(format="hmdb51", train=str(folder), test=str(folder), video_root=str(tmp_path / "hmdb51"))
    test1 = classify(**common)
    assert test1.class_names == ["brush hair", "sword", "sword exercise"]
    assert [(v.path, label) for v, label in zip(test1.videos, test1.labels, strict=True)] == [
        ("brush_hair/b.avi", 0),
        ("sword_exercise/c.avi", 2),
    ]
    train3 = classify("train", **common, options={"split_id": 3})
    assert [v.path for v in train3.videos] == ["brush_hair/a.avi", "sword_exercise/d.avi"]
    (folder / "sword_test_split2.txt").write_text("e.avi 7\n")
    with pytest.raises(ValueError, match=r"sword_test_split2.txt:1: expected 'video.avi 0\|1\|2'"):
        classify(**common, options={"split_id": 2})


def test_class_per_folder_layout(tmp_path):
    for path in (
        "train/brush_hair/x.mp4",
        "train/ride_bike/y.avi",
        "train/ride_bike/deeper/z.mp4",
        "test/ride_bike/w.mp4",
        "test/ride_bike/notes.txt",
    ):
        touch(tmp_path / path)
    (tmp_path / "train" / "empty_class").mkdir()
    ann = classify(format="folders", train=str(tmp_path / "train"), test=str(tmp_path / "test"))
    assert ann.class_names == ["brush hair", "empty class", "ride bike"]
    assert [v.path for v in ann.videos] == ["ride_bike/w.mp4"] and ann.labels == [2]
    train = classify("train", format="folders", train=str(tmp_path / "train"))
    assert [v.path for v in train.videos] == ["brush_hair/x.mp4", "ride_bike/y.avi", "ride_bike/deeper/z.mp4"]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("ApplyEyeMakeup", "apply eye makeup"),
        ("YoYo", "yo yo"),
        ("brush_hair", "brush hair"),
        ("air drumming", "air drumming"),
        ("PlayingDaf", "playing daf"),
    ],
)
def test_class_names_become_words_for_prompts(name, words):
    assert humanize_class_name(name) == words
