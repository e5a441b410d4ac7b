"""One video-encoding pipeline: ``vidclip eval``, validation during training, ``vidclip zeroshot`` and
``vidclip extract`` decode, time out and drop failed videos the same way, so a split scores the same whichever
command scores it."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch

import vidclip
from vidclip.commands import eval as eval_command
from vidclip.commands import train as train_command
from vidclip.commands import zeroshot as zeroshot_command
from vidclip.inference import EncodeOptions, encode_videos
from vidclip.synthetic import write_video
from vidclip.synthetic.demo_data import draw_moving_shape

TIMEOUT = "0.5"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """8 good videos (two captions each), one broken file and one video whose decoding hangs."""
    root = tmp_path_factory.mktemp("split")
    (root / "videos").mkdir()
    rows = []
    combos = [(c, d) for c in ("red", "green", "blue", "yellow") for d in ("left", "right")]
    for i, (colour, direction) in enumerate(combos):
        name = f"videos/{colour}_{direction}.mp4"
        write_video(
            root / name, draw_moving_shape(colour, "square", direction, num_frames=8, size=48, seed=i)
        )
        rows += [
            {"video": name, "caption": f"a {colour} square moving {direction}"},
            {"video": name, "caption": f"a {colour} shape"},
        ]
    write_video(root / "videos/hang.mp4", draw_moving_shape("red", "disc", "up", num_frames=8, size=48))
    (root / "videos/broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 cut short")
    rows += [
        {"video": "videos/hang.mp4", "caption": "a red disc"},
        {"video": "videos/broken.mp4", "caption": "x"},
    ]
    pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
    return root


@pytest.fixture
def hanging(hang_decoding):
    hang_decoding("hang.mp4")


def config_args(split, out):
    return [
        f"output_dir={out}",
        "model.name=tiny",
        "model.pretrained=null",
        "model.num_frames=3",
        f"data.train={split / 'captions.csv'}",
        f"data.val={split / 'captions.csv'}",
        f"data.test={split / 'captions.csv'}",
        "data.num_workers=0",
        f"data.timeout={TIMEOUT}",
        "train.batch_size=4",
        "train.max_steps=2",
        "train.warmup=0",
        "train.log_with=none",
        "train.seed=0",
    ]


@pytest.mark.timeout(300)
def test_eval_and_validation_during_training_score_a_split_identically(
    split, hanging, tmp_path, fresh_accelerate_state, caplog
):
    config = tmp_path / "config.yaml"
    config.write_text("task: retrieval\n")
    run = tmp_path / "run"
    start = time.monotonic()
    assert train_command.main(["--config", str(config), *config_args(split, run)]) == 0
    validation = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validation = next(entry for entry in reversed(validation) if "val/t2v/R@1" in entry)
    out = tmp_path / "metrics.json"
    args = ["--config", str(config), *config_args(split, run), "--checkpoint", str(run), "--output", str(out)]
    assert eval_command.main(args) == 0
    assert time.monotonic() - start < 200  # the hanging video was cut off, twice
    metrics = json.loads(out.read_text())
    assert metrics["num_failed"] == 2 and metrics["num_videos"] == 8 and metrics["num_queries"] == 16
    for key, value in metrics.items():
        if key.startswith(("t2v/", "v2t/")):
            assert validation[f"val/{key}"] == pytest.approx(value, abs=1e-9), key
    assert "hang.mp4: timed out" in caplog.text and "broken.mp4: truncated" in caplog.text


@pytest.mark.parametrize("workers", [0, 2])
def test_zeroshot_cuts_off_a_hanging_video_and_keeps_the_others(split, hanging, tmp_path, workers):
    out = tmp_path / "preds.csv"
    videos = [str(split / "videos" / name) for name in ("red_left.mp4", "hang.mp4", "blue_right.mp4")]
    args = [*videos, "--labels", "red,blue", "--model", "tiny", "--num-frames", "2", "--output", str(out)]
    start = time.monotonic()
    assert zeroshot_command.main([*args, "--timeout", TIMEOUT, "--num-workers", str(workers)]) == 0
    assert time.monotonic() - start < 60
    table = pd.read_csv(out).set_index("video")
    assert table.loc[videos[1], "error"] == f"timed out: decoding took longer than {TIMEOUT} s (--timeout)"
    assert table.loc[[videos[0], videos[2]], "label"].notna().all()


def test_eval_timeout_flag_overrides_the_config(split, hanging, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("task: retrieval\n")
    out = tmp_path / "m.json"
    args = [*config_args(split, tmp_path / "run"), "data.timeout=0", "--model", "tiny", "--output", str(out)]
    start = time.monotonic()
    assert eval_command.main(["--config", str(config), *args, "--timeout", TIMEOUT]) == 0
    assert time.monotonic() - start < 60
    assert json.loads(out.read_text())["num_failed"] == 2


def test_every_command_takes_the_same_encoding_flags():
    from vidclip.commands import extract

    flags = (
        "--decoder",
        "--timeout",
        "--precision",
        "--compile",
        "--batch-size",
        "--num-workers",
        "--device",
    )
    for module in (eval_command, zeroshot_command, extract):
        with pytest.raises(SystemExit):
            module.parse_args(["--help"])
    for module, argv in (
        (eval_command, ["--config", "x.yaml"]),
        (zeroshot_command, ["a.mp4"]),
        (extract, ["a.mp4", "--out", "o"]),
    ):
        parsed = module.parse_args([*argv, "--decoder", "pyav", "--timeout", "3", "--precision", "bf16",
                                    "--compile", "--batch-size", "5", "--num-workers", "1", "--device", "cpu"])  # fmt: skip
        assert (parsed.decoder, parsed.timeout, parsed.precision, parsed.compile) == (
            "pyav",
            3.0,
            "bf16",
            True,
        )
        assert (parsed.batch_size, parsed.num_workers, parsed.device) == (5, 1, "cpu")
    assert all(flag.startswith("--") for flag in flags)


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e30"])
def test_nonsense_timeouts_are_refused_up_front(value):
    with pytest.raises(SystemExit):
        zeroshot_command.parse_args(["a.mp4", "--timeout", value])
    with pytest.raises(ValueError, match="timeout"):
        EncodeOptions(timeout=float(value))


def test_precision_has_one_vocabulary_and_old_spellings_map_with_a_hint(tmp_path):
    from vidclip.config import ConfigError, load_config

    with pytest.warns(FutureWarning, match="write fp32"):
        assert load_config([], ["train.precision=no"]).train.precision == "fp32"
    assert load_config([], ["train.precision=fp32"]).train.precision == "fp32"
    with pytest.raises(ConfigError, match="train.precision must be one of fp32, bf16, fp16"):
        load_config([], ["train.precision=fp64"])
    with pytest.warns(FutureWarning):
        assert zeroshot_command.parse_args(["a.mp4", "--precision", "no"]).precision == "fp32"


def test_a_batch_of_only_failed_videos_costs_no_forward_pass(split, monkeypatch):
    model = vidclip.create_model("tiny", num_frames=2).eval()
    calls = []
    original = model.encode_video
    monkeypatch.setattr(
        model, "encode_video", lambda video, mask=None: calls.append(len(video)) or original(video, mask)
    )
    paths = [str(split / "videos/broken.mp4"), str(split / "nope.mp4"), str(split / "videos/red_left.mp4")]
    encoded = encode_videos(model, paths, batch_size=2, num_workers=0)
    assert calls == [1]  # the second batch: only red_left decoded; the first batch never ran
    assert encoded.valid.tolist() == [False, False, True]
    assert [reason for _, reason in encoded.errors][1] == "no such file"
    assert torch.isfinite(encoded.features.frames).all()


def test_non_finite_embeddings_and_scores_become_error_rows_never_ok_ones():
    from vidclip.commands.extract import NON_FINITE, batch_rows
    from vidclip.inference import EncodedBatch, EncodedVideos
    from vidclip.inference.classify import prediction_table
    from vidclip.model import VideoFeatures

    pooled = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 0.0]])
    features = VideoFeatures(torch.zeros(3, 2, 2), torch.ones(3, 2, dtype=torch.bool), pooled)
    batch = EncodedBatch(
        torch.arange(3), torch.tensor([True, True, False]), features, [("c.mp4", "truncated")]
    )
    rows = batch_rows(batch, [(10, "a.mp4"), (11, "b.mp4"), (12, "c.mp4")])
    assert [(row.index, row.error) for row in rows] == [(10, None), (11, NON_FINITE), (12, "truncated")]
    assert rows[1].embedding is None and rows[0].embedding.tolist() == [1.0, 0.0]

    probs = torch.tensor([[0.9, 0.1], [float("nan"), float("nan")]])
    videos = EncodedVideos(features[torch.tensor([True, True, False])], torch.tensor([True, True]), [])
    table = prediction_table(["a.mp4", "b.mp4"], ["x", "y"], probs, videos, top_k=2)
    assert (
        table.loc[0, "label"] == "x"
        and pd.isna(table.loc[1, "label"])
        and "not finite" in table.loc[1, "error"]
    )


def test_a_checkpoint_with_non_finite_weights_is_refused_naming_it(tmp_path):
    model = vidclip.create_model("tiny", num_frames=2)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    path = vidclip.save_checkpoint(model, tmp_path / "run")
    with pytest.raises(ValueError, match=r"model.safetensors holds non-finite weights .*diverged"):
        vidclip.load_checkpoint(tmp_path / "run")
    assert path.exists()
