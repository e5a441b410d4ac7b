"""``vidclip eval`` and ``evaluate``: MSR-VTT-format files in, CLIP4Clip's metrics out, with missing and broken
videos counted; every video encoded once; and a tiny model fine-tuned on generated videos retrieves (and
classifies, through ``vidclip zeroshot``) held-out generated videos far above chance."""

import json
import logging
import shutil
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from dataset_fixtures import COMBOS, broken_video, caption_videos, colour_of, shape_video, write_msrvtt

import vidclip
import vidclip.data.msrvtt  # noqa: F401  (registers "msrvtt")
from vidclip import inference
from vidclip.commands import eval as evaluate_module
from vidclip.commands import zeroshot as zeroshot_module
from vidclip.config import DataConfig
from vidclip.data import read_annotations
from vidclip.inference.retrieval import evaluate_retrieval as evaluate


@pytest.fixture(scope="module")
def msrvtt(tmp_path_factory):
    """6 real videos with 2 captions each, one broken file and one video that is listed but absent."""
    root = tmp_path_factory.mktemp("msrvtt")
    videos = []
    for i, (colour, shape, direction) in enumerate(COMBOS[:6]):
        shape_video(root / "videos" / f"video{i}.mp4", colour, shape, direction, seed=i)
        videos.append(
            (f"video{i}", [f"a {colour} {shape} moving {direction}", f"{colour} {shape}, {direction}"])
        )
    broken_video(root / "videos" / "video6.mp4")
    videos += [("video6", ["a broken video", "still broken"]), ("video7", ["a video nobody downloaded"])]
    ids = [video for video, _ in videos]
    files = write_msrvtt(root, videos, test_ids=ids, train_ids=ids)
    return files, root / "videos"


def write_config(path, files, root, test_key="full"):
    path.write_text(
        "task: retrieval\ndata:\n  format: msrvtt\n"
        f"  annotations: {files['annotations']}\n  test: {files[test_key]}\n  video_root: {root}\n"
        "  num_workers: 0\n"
    )
    return str(path)


def test_eval_command_reports_metrics_and_counts_with_missing_and_broken_videos(
    msrvtt, tmp_path, capsys, caplog
):
    files, root = msrvtt
    config = write_config(tmp_path / "eval.yaml", files, root)
    args = ["--config", config, "--model", "tiny", "--head", "query_scored", "--num-frames", "4"]
    with caplog.at_level(logging.INFO, logger="vidclip"):
        code = evaluate_module.main(
            [*args, "--output", str(tmp_path / "m.json"), "--dsl", "--batch-size", "4"]
        )
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"t2v/R@1", "t2v/MdR", "v2t/MnR", "dsl/t2v/R@1", "dsl/v2t/R@10"} <= metrics.keys()
    # 8 listed: video7 absent (missing), video6 broken (failed, its 2 captions dropped): 6 videos, 12 captions
    assert (metrics["num_queries"], metrics["num_videos"], metrics["num_missing"], metrics["num_failed"]) == (
        12,
        6,
        1,
        1,
    )
    assert (
        "video7" in caplog.text
        and "video6.mp4" in caplog.text
        and "dropped with their 2 captions" in caplog.text
    )
    out = capsys.readouterr().out
    assert "msrvtt test (12 queries, 6 videos, 1 missing, 1 failed)" in out and "dsl/t2v" in out


def test_frame_features_are_computed_once_per_video_and_match_direct_scoring(msrvtt, monkeypatch):
    files, root = msrvtt
    config = DataConfig(
        format="msrvtt", annotations=files["annotations"], test=files["full"], video_root=str(root)
    )
    annotations = read_annotations(config, "retrieval", "test")
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head="query_scored", num_frames=4).eval()
    encoded = []
    original = model.encode_video
    monkeypatch.setattr(
        model, "encode_video", lambda video, mask=None: encoded.append(len(video)) or original(video, mask)
    )
    metrics = evaluate(model, annotations, batch_size=3, num_workers=0, chunk_size=5)
    assert sum(encoded) == 6  # the 6 good videos, each exactly once; the broken one never reaches the model
    # the same numbers from decoding, encoding and scoring by hand
    good = [v for v in annotations.videos if v.id != "video6"]
    clips = [vidclip.load_frames(root / v.path, 4) for v in good]
    transform = vidclip.get_video_transform(model)
    with torch.no_grad():
        video = original(
            torch.stack([transform(c.frames) for c in clips]), torch.stack([c.mask for c in clips])
        )
        captions = [c for c, v in zip(annotations.captions, annotations.caption_video, strict=True) if v != 6]
        text = model.encode_text(vidclip.get_tokenizer("tiny")(captions))
        expected = vidclip.retrieval_metrics(
            model.similarity(text, video), torch.arange(6).repeat_interleave(2)
        )
    assert {k: pytest.approx(v, abs=1e-6) for k, v in expected.items()} == {k: metrics[k] for k in expected}


def test_evaluate_checks_other_formats_for_missing_videos_too(msrvtt, tmp_path):
    _, root = msrvtt
    captions = tmp_path / "captions.csv"
    captions.write_text("video,caption\nvideo0.mp4,a\nvideo1.mp4,b\nabsent.mp4,c\nvideo0.mp4,d\n")
    annotations = read_annotations(
        DataConfig(train=str(captions), video_root=str(root)), "retrieval", "train"
    )
    model = vidclip.create_model("tiny", num_frames=2)
    metrics = evaluate(model, annotations, num_workers=0)
    assert (metrics["num_queries"], metrics["num_videos"], metrics["num_missing"]) == (3, 2, 1)


def test_eval_command_errors_are_one_line_with_exit_code_2(msrvtt, tmp_path, capsys):
    files, root = msrvtt
    config = write_config(tmp_path / "eval.yaml", files, root)
    assert evaluate_module.main(["--config", config, "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert evaluate_module.main(["--config", config, "task=classification", "--model", "tiny"]) == 2
    assert "vidclip eval scores retrieval" in capsys.readouterr().err
    assert evaluate_module.main(["--config", config, "data.test=null", "--model", "tiny"]) == 2
    assert "data.test is not set" in capsys.readouterr().err
    assert evaluate_module.main(["--config", config, "data.max_words=64", "--model", "tiny"]) == 2
    assert "exceeds the model's text context length (32)" in capsys.readouterr().err


# -- fine-tune the tiny model on generated videos, then evaluate on held-out ones ---------------------------
COLOURS = ["red", "green", "blue", "yellow"]


def fine_tune(root, rows, steps=100, batch_size=32):
    """Symmetric InfoNCE on (video path under ``root``, caption) rows, frames decoded once; tiny mean model."""
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head="mean", num_frames=4)
    model.clip.token_embedding.requires_grad_(False)  # 49k rows the captions barely touch: spare Adam them
    transform = vidclip.get_video_transform(model)
    clips = [vidclip.load_frames(root / name, 4) for name, _ in rows]
    video = torch.stack([transform(clip.frames) for clip in clips])  # (64, 4, 3, 32, 32)
    tokens = vidclip.get_tokenizer("tiny")([caption for _, caption in rows])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(batch_size)
    for _ in range(steps):
        batch = torch.randperm(len(rows), generator=generator)[:batch_size]
        text, frames = model.encode_text(tokens[batch]), model.encode_video(video[batch])
        logits = model.logit_scale.exp() * model.similarity(text, frames)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory with the fine-tuned model, and held-out videos (another seed) in MSR-VTT's layout."""
    root = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine, 2 spinning threads run ~20x slower than 1
    try:
        model = fine_tune(root / "train", caption_videos(root / "train", seed=0, copies=2))
    finally:
        torch.set_num_threads(threads)
    vidclip.save_checkpoint(model, root / "run")
    videos = []
    for i, (name, caption) in enumerate(caption_videos(root / "held_out", seed=1)):
        (root / "msrvtt" / "videos").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "held_out" / name, root / "msrvtt" / "videos" / f"video{i}.mp4")
        videos.append((f"video{i}", [caption]))
    ids = [video for video, _ in videos]
    files = write_msrvtt(root / "msrvtt", videos, test_ids=ids, train_ids=ids)
    return root, files


@pytest.mark.slow
def test_fine_tuned_model_retrieves_held_out_msrvtt_videos_far_above_chance(trained, tmp_path):
    root, files = trained
    config = write_config(tmp_path / "eval.yaml", files, root / "msrvtt" / "videos", test_key="test")
    args = ["--config", config, "--checkpoint", str(root / "run"), "--output", str(tmp_path / "m.json")]
    assert evaluate_module.main([*args, "--num-workers", "1", "--batch-size", "8"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_queries"] == metrics["num_videos"] == 32
    # chance: R@1 3.1, R@5 15.6, MnR 16.5. Left and right look alike to an order-blind mean head, so R@1 tops
    # out near 50; this run gets 21.9 / 96.9 / 2.8 (lossless videos, one thread: the same in every process).
    assert metrics["t2v/R@1"] >= 12.5 and metrics["t2v/R@5"] >= 60.0 and metrics["t2v/MnR"] <= 8.0


@pytest.mark.slow
def test_fine_tuned_model_labels_held_out_videos_zero_shot_far_above_chance(trained, tmp_path):
    root, _ = trained
    templates = [
        f"a {{}} {shape} moving {direction}" for shape in ("square", "disc") for direction in ("left", "up")
    ]
    args = [
        str(root / "held_out" / "videos"),
        "--labels",
        ",".join(COLOURS),
        "--checkpoint",
        str(root / "run"),
    ]
    args += ["--templates", *templates, "--num-workers", "0", "--output", str(tmp_path / "preds.csv")]
    assert zeroshot_module.main(args) == 0
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == 32 and preds["error"].isna().all()
    accuracy = (preds["label"] == preds["video"].map(colour_of)).mean()
    assert accuracy >= 0.75  # chance 0.25


# -- --plot, and the errors a user meets first --------------------------------------------------------------
def test_plot_writes_recall_curves_and_the_best_and_worst_queries_with_their_videos(msrvtt, tmp_path, capsys):
    from test_viz import check_png, has_colour

    files, root = msrvtt
    config = write_config(tmp_path / "eval.yaml", files, root)
    plots = tmp_path / "plots"
    args = ["--config", config, "--model", "tiny", "--num-frames", "4", "--num-workers", "0"]
    assert evaluate_module.main([*args, "--plot", str(plots), "--output", str(tmp_path / "m.json")]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["queries.png", "recall_at_k.png"]
    check_png(plots / "recall_at_k.png", min_size=(500, 300))
    queries = check_png(plots / "queries.png", min_size=(1000, 500))
    # the six decodable videos are red and green shapes: their frames are drawn in the query rows
    assert has_colour(queries, (220, 40, 40), tolerance=30, min_pixels=300)
    assert has_colour(queries, (40, 180, 60), tolerance=30, min_pixels=300)
    assert f"wrote {plots / 'recall_at_k.png'}, {plots / 'queries.png'}" in capsys.readouterr().out


def test_write_plots_decodes_only_the_videos_the_query_grid_shows(monkeypatch, tmp_path):
    import vidclip.video

    num = 60  # 6 rows of 5 show at most 36 of them
    torch.manual_seed(0)
    scores = evaluate_module.RetrievalScores(
        similarity=torch.rand(num, num) + torch.eye(num),
        text_to_video=torch.arange(num),
        captions=[f"caption {i}" for i in range(num)],
        videos=[f"video{i}.mp4" for i in range(num)],
        paths=[f"/data/video{i}.mp4" for i in range(num)],
        logit_scale=100.0,
        counts={},
    )
    decoded = []

    def fake_load_video(path, num_frames, sampling, **options):
        decoded.append((path, num_frames, sampling))
        return torch.full((num_frames, 8, 8, 3), 200, dtype=torch.uint8)

    monkeypatch.setattr(vidclip.video, "load_video", fake_load_video)
    evaluate_module.write_plots(scores, tmp_path, num_frames=3, sampling="tail")
    paths = [path for path, _, _ in decoded]
    assert len(paths) == len(set(paths)) < num and {(n, s) for _, n, s in decoded} == {(3, "tail")}


def test_plot_without_matplotlib_fails_before_any_work(msrvtt, tmp_path, capsys, monkeypatch):
    from vidclip import viz

    files, root = msrvtt
    config = write_config(tmp_path / "eval.yaml", files, root)
    viz._figure_class.cache_clear()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(evaluate_module, "score_retrieval", lambda *a, **k: pytest.fail("evaluated anyway"))
    try:
        assert evaluate_module.main(["--config", config, "--model", "tiny", "--plot", str(tmp_path)]) == 2
    finally:
        viz._figure_class.cache_clear()
    assert 'pip install "vidclip[viz]"' in capsys.readouterr().err


def fake_gpu(monkeypatch, native, emulated):
    """CUDA visible, a GPU named "Tesla T4" with (or without) native and emulated bf16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: emulated if including_emulation else native,
    )


def test_bf16_on_a_gpu_without_it_is_refused_with_what_to_use_instead(msrvtt, tmp_path, capsys, monkeypatch):
    files, root = msrvtt
    config = write_config(tmp_path / "eval.yaml", files, root)
    fake_gpu(monkeypatch, native=False, emulated=False)
    args = ["--config", config, "--model", "tiny", "--device", "cuda", "--precision", "bf16"]
    assert evaluate_module.main(args) == 2
    err = capsys.readouterr().err
    assert "bf16 needs a GPU with bfloat16 support" in err and "Tesla T4" in err
    assert "--precision fp16 (or fp32)" in err
    for precision in ("fp16", "fp32"):  # what the message suggests passes the check
        inference.check_precision(precision, torch.device("cuda"))
    inference.check_precision("bf16", torch.device("cpu"))  # CPU autocast has bf16


def test_bf16_only_emulated_warns_that_fp16_is_faster(monkeypatch, caplog):
    fake_gpu(monkeypatch, native=False, emulated=True)
    with caplog.at_level(logging.WARNING, logger="vidclip"):
        inference.check_precision("bf16", torch.device("cuda:0"), fix="train.precision=fp16")
    assert "Tesla T4 emulates bf16" in caplog.text and "train.precision=fp16 is faster" in caplog.text
    fake_gpu(monkeypatch, native=True, emulated=True)
    caplog.clear()
    inference.check_precision("bf16", torch.device("cuda"))
    assert not caplog.text


def test_a_misspelt_data_format_lists_the_registered_ones_and_suggests_the_closest(msrvtt, tmp_path, capsys):
    from vidclip.data import AnnotationError, get_reader

    files, root = msrvtt
    config = write_config(tmp_path / "eval.yaml", files, root)
    assert evaluate_module.main(["--config", config, "data.format=MSR-VTT", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "data.format: unknown format 'MSR-VTT' (did you mean 'msrvtt'?)" in err
    assert "registered formats: csv, didemo, folders, hmdb51, kinetics, msrvtt, ucf101, webdataset" in err
    with pytest.raises(AnnotationError) as raised:
        get_reader(DataConfig(format="parquet-shards"))  # nothing close: the list, no guess
    assert "did you mean" not in str(raised.value) and "kinetics" in str(raised.value)
