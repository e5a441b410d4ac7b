"""``vidclip zeroshot``: CLIP's template sets and prompt ensemble, per-video top-k CSV (broken videos keep an error
row), and dataset mode on UCF101 (three official splits, mean ± std) and Kinetics layouts."""

import json
import math
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from dataset_fixtures import COMBOS, broken_video, shape_video, touch, write_ucf101_lists

import vidclip
import vidclip.data.recognition  # noqa: F401  (registers ucf101, kinetics...)
from vidclip.commands import zeroshot as zeroshot_module
from vidclip.inference.classify import accuracy, label_embeddings, summarize_splits
from vidclip.templates import TEMPLATE_SETS, get_templates


def test_template_sets_are_clips_published_lists():
    kinetics, ucf = TEMPLATE_SETS["kinetics"], TEMPLATE_SETS["ucf101"]
    assert len(kinetics) == 28 and len(ucf) == 48 and len(set(ucf)) == 48
    assert kinetics[:3] == ("a photo of {}.", "a photo of a person {}.", "a photo of a person using {}.")
    assert kinetics[-1] == "a demonstration of a person practicing {}."
    assert ucf[:5] == (
        "a photo of a person {}.",
        "a video of a person {}.",
        "a example of a person {}.",
        "a demonstration of a person {}.",
        "a photo of the person {}.",
    )
    assert ucf[-1] == "a demonstration of the person practicing {}."
    assert TEMPLATE_SETS["vifi"] == ("a photo of a {}.",)


def test_get_templates_expands_names_keeps_sentences_and_rejects_the_rest():
    assert get_templates(["vifi", "a clip of {}.", "a photo of a {}."]) == [
        "a photo of a {}.",
        "a clip of {}.",
    ]
    assert len(get_templates(["kinetics", "ucf101"])) == 28 + 48 - 24  # "a ... of a person ..." in both
    with pytest.raises(ValueError, match="neither a named set"):
        get_templates(["a photo"])


def test_label_embedding_is_the_normalised_mean_of_normalised_template_embeddings():
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", num_frames=2).eval()
    templates = ["a photo of a {}.", "a video of {}.", "{}"]
    got = label_embeddings(model, ["cat", "dog"], templates)
    tokenizer = vidclip.get_tokenizer("tiny")
    with torch.no_grad():
        for row, label in zip(got, ["cat", "dog"], strict=True):
            each = F.normalize(model.encode_text(tokenizer([t.format(label) for t in templates])), dim=-1)
            torch.testing.assert_close(row, F.normalize(each.mean(0), dim=0), atol=1e-5, rtol=0)


def test_accuracy_and_split_summary():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1]])
    assert accuracy(logits, torch.tensor([0, 1, 1])) == {"top1": pytest.approx(200 / 3), "top5": 100.0}
    summary = summarize_splits({1: {"top1": 50.0, "top5": 90.0}, 2: {"top1": 60.0, "top5": 90.0}})
    assert summary["split2/top1"] == 60.0 and summary["top1"] == 55.0 and summary["top1_std"] == 5.0
    assert summary["top5_std"] == 0.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for colour, shape, direction in COMBOS[:3]:
        shape_video(root / f"{colour}_{shape}_{direction}.mp4", colour, shape, direction)
    broken_video(root / "zz_broken.mp4")
    return root


@pytest.mark.parametrize("head", ["mean", "query_scored"])
def test_files_mode_writes_top_k_per_video_and_an_error_row_for_a_broken_video(clips, tmp_path, head):
    labels = tmp_path / "labels.txt"
    labels.write_text("red square\ngreen thing\nblue\n")
    out = tmp_path / "preds.csv"
    args = [str(clips), "--labels-file", str(labels), "--model", "tiny", "--head", head, "--num-frames", "4"]
    assert zeroshot_module.main([*args, "--top-k", "2", "--num-workers", "0", "--output", str(out)]) == 0
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["video", "label", "score", "label_2", "score_2", "error"]
    assert list(preds["video"]) == [str(p) for p in sorted(clips.iterdir())]
    good, broken = preds.iloc[:3], preds.iloc[3]
    assert good["error"].isna().all() and (good["score"] >= good["score_2"]).all()
    assert (
        set(good["label"]) <= {"red square", "green thing", "blue"}
        and (good["label"] != good["label_2"]).all()
    )
    assert pd.isna(broken["label"]) and "truncated" in broken["error"]


def test_files_mode_argument_errors_exit_2(clips, capsys, monkeypatch):
    assert zeroshot_module.main([str(clips), "--model", "tiny"]) == 2
    assert "--labels" in capsys.readouterr().err
    assert zeroshot_module.main([str(clips / "nope.mp4"), "--labels", "a,b", "--model", "tiny"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert zeroshot_module.main([str(clips), "--labels", "a,b"]) == 2
    assert "say which model" in capsys.readouterr().err
    assert zeroshot_module.main([str(clips), "--labels", "a,b", "--model", "tiny", "--device", "gpu0"]) == 2
    assert "'gpu0' is not a torch device" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    assert zeroshot_module.main([str(clips), "--labels", "a,b", "--model", "tiny", "--device", "cuda"]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ucf101(tmp_path_factory):
    """Three classes, three groups each; the split files list .avi, the files on disk are .mp4 (re-encoded);
    group 3 of RedSquare was never downloaded."""
    root = tmp_path_factory.mktemp("ucf101")
    classes = ["RedSquare", "GreenDisc", "BlueSquare"]
    videos = [f"{c}/v_{c}_g0{g}_c01.avi" for c in classes for g in (1, 2, 3)]
    lists = write_ucf101_lists(root, classes, train=videos, tests={n: videos[n - 1 :: 3] for n in (1, 2, 3)})
    for i, video in enumerate(videos):
        if video != "RedSquare/v_RedSquare_g03_c01.avi":
            colour, shape, direction = COMBOS[i % len(COMBOS)]
            shape_video(root / "UCF-101" / video.replace(".avi", ".mp4"), colour, shape, direction, seed=i)
    config = root / "ucf101.yaml"
    config.write_text(
        "task: classification\nmodel:\n  name: tiny\n  pretrained: null\n  num_frames: 4\n"
        f"data:\n  format: ucf101\n  test: {lists}\n  video_root: {root / 'UCF-101'}\n  num_workers: 0\n"
        '  templates: ["a photo of a {}."]\n'
    )
    return config


def test_dataset_mode_over_three_official_splits_reports_each_and_mean_std(ucf101, tmp_path, capsys):
    out = tmp_path / "ucf.json"
    assert (
        zeroshot_module.main(["--config", str(ucf101), "--split-ids", "1", "2", "3", "--output", str(out)])
        == 0
    )
    metrics = json.loads(out.read_text())
    per_split = [metrics[f"split{i}/top1"] for i in (1, 2, 3)]
    assert metrics["top1"] == pytest.approx(sum(per_split) / 3)
    assert metrics["top1_std"] == pytest.approx(
        math.sqrt(sum((v - metrics["top1"]) ** 2 for v in per_split) / 3)
    )
    assert [metrics[f"split{i}/num_videos"] for i in (1, 2, 3)] == [3, 3, 2]
    assert [metrics[f"split{i}/num_missing"] for i in (1, 2, 3)] == [0, 0, 1]
    assert metrics["split1/top5"] == 100.0  # 3 classes: the top 5 always hold the answer
    out_text = capsys.readouterr().out
    assert "ucf101 test split 3: top1" in out_text and "mean ± std over splits 1 2 3: top1" in out_text


def test_dataset_mode_on_a_kinetics_csv_with_overrides(tmp_path, clips):
    (tmp_path / "test.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    rows = [("red square", "aaa", 0, 10), ("green disc", "bbb", 5, 15), ("red square", "ccc", 1, 11)]
    with open(tmp_path / "test.csv", "a") as f:
        f.writelines(f"{label},{vid},{start},{end},test\n" for label, vid, start, end in rows)
    for (label, vid, start, end), source in zip(rows, sorted(clips.glob("*.mp4"))[:3], strict=True):
        touch(tmp_path / "k400" / label / f"{vid}_{start:06d}_{end:06d}.mp4").write_bytes(source.read_bytes())
    config = tmp_path / "k.yaml"
    config.write_text(f"task: classification\ndata:\n  format: kinetics\n  test: {tmp_path / 'test.csv'}\n")
    overrides = [f"data.video_root={tmp_path / 'k400'}", "data.num_workers=0"]
    out = tmp_path / "k.json"
    args = [
        "--config",
        str(config),
        *overrides,
        "--model",
        "tiny",
        "--num-frames",
        "2",
        "--templates",
        "video",
    ]
    assert zeroshot_module.main([*args, "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["num_videos"] == 3 and metrics["num_missing"] == 0 and metrics["top5"] == 100.0
    assert zeroshot_module.main(["--config", str(config), "clip.mp4", "--model", "tiny"]) == 2


# -- --show: contact sheets, and the errors a user meets first ---------------------------------------------
def test_show_draws_every_video_with_its_top_3_labels_and_the_broken_ones_error(clips, tmp_path, monkeypatch):
    from test_viz import check_png, has_colour

    from vidclip import viz

    drawn = []
    real_sheet = viz.contact_sheet
    monkeypatch.setattr(viz, "contact_sheet", lambda *a, **k: drawn.append(a) or real_sheet(*a, **k))
    out = tmp_path / "sheets"
    args = [str(clips), "--labels", "red,green,blue,yellow", "--model", "tiny", "--num-frames", "4"]
    assert zeroshot_module.main([*args, "--num-workers", "0", "--show", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet_001.png"]
    (videos, names, top_labels), *more = drawn
    assert not more and names == [str(p) for p in sorted(clips.iterdir())]
    assert all(tuple(v.shape) == (4, 64, 64, 3) for v in videos[:3]) and "truncated" in videos[3]
    assert [len(labels) for labels in top_labels] == [3, 3, 3, 0]
    assert all(labels[0][1] >= labels[1][1] >= labels[2][1] for labels in top_labels[:3])
    image = check_png(out / "contact_sheet_001.png", min_size=(800, 300))
    # the clips' red shapes, as lossy H.264 gives them back
    assert has_colour(image, (220, 40, 40), tolerance=30, min_pixels=500)


def test_contact_sheets_hold_16_videos_each_by_default_and_paginate(clips, tmp_path):
    good = [str(p) for p in sorted(clips.glob("*.mp4")) if "broken" not in p.name]
    table = pd.DataFrame(
        [{"video": good[i % 3], "label": "red", "score": 0.7, "error": None} for i in range(17)]
    )
    written = zeroshot_module.write_contact_sheets(table, tmp_path / "all", num_frames=2)
    assert [p.name for p in written] == ["contact_sheet_001.png", "contact_sheet_002.png"]
    written = zeroshot_module.write_contact_sheets(
        table.iloc[:5], tmp_path / "few", num_frames=2, per_sheet=2
    )
    assert len(written) == 3 and all(p.exists() for p in written)


def test_show_is_refused_in_dataset_mode_and_without_matplotlib(ucf101, clips, capsys, monkeypatch):
    assert zeroshot_module.main(["--config", str(ucf101), "--show", "sheets"]) == 2
    assert "--show draws the videos of files mode" in capsys.readouterr().err
    from vidclip import viz

    viz._figure_class.cache_clear()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    try:
        assert zeroshot_module.main([str(clips), "--labels", "a,b", "--model", "tiny", "--show", "s"]) == 2
    finally:
        viz._figure_class.cache_clear()
    assert 'pip install "vidclip[viz]"' in capsys.readouterr().err


def test_a_pretrained_tag_that_needs_a_download_while_offline_says_what_to_do(clips, capsys, monkeypatch):
    import open_clip.pretrained
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):  # what huggingface_hub raises with HF_HUB_OFFLINE=1 and nothing cached
        raise LocalEntryNotFoundError(
            "Cannot find the requested files in the disk cache and outgoing traffic has been disabled."
        )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", offline)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", offline)
    args = [str(clips), "--labels", "a,b", "--model", "ViT-B-32", "--pretrained", "openai"]
    assert zeroshot_module.main(args) == 2
    err = capsys.readouterr().err
    assert "'openai' of model 'ViT-B-32'" in err and "HF_HUB_OFFLINE=1" in err
    assert "once where the hub is reachable" in err and "--pretrained /path/to/weights" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
