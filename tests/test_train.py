"""``vidclip train`` end to end on the tiny model and generated videos, and the optimisation pieces.

The issue's done-when tests: one step on 2 processes (torchrun, gloo) equals one step on 1 process for
retrieval and classification; an interrupted and resumed run ends with the weights of an uninterrupted one;
the loss falls and retrieval beats chance on generated data; bf16 autocast and gradient checkpointing run.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import vidclip
from vidclip.commands import train as train_module
from vidclip.config import load_config
from vidclip.losses import contrastive_loss
from vidclip.optim import (
    clamp_logit_scale,
    configure_logit_scale,
    create_param_groups,
    create_scheduler,
    no_weight_decay_names,
)
from vidclip.synthetic import write_video
from vidclip.synthetic.demo_data import draw_moving_shape
from vidclip.train import loop
from vidclip.train import trainer as command


def reset_accelerate():
    """Accelerate keeps process-wide singletons (precision included); each in-process run needs fresh ones."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 videos (4 colours x 2 shapes x left/right), captions and colour labels, plus variants with a file
    that is not a video inserted in the middle."""
    root = tmp_path_factory.mktemp("data")
    (root / "videos").mkdir()
    rows = []
    for i, (colour, shape, direction) in enumerate(
        (c, s, d)
        for c in ("red", "green", "blue", "yellow")
        for s in ("square", "disc")
        for d in ("left", "right")
    ):
        name = f"videos/{colour}_{shape}_{direction}.mp4"
        write_video(
            root / name, draw_moving_shape(colour, shape, direction, num_frames=8, size=64, seed=i), fps=8
        )
        rows.append({"video": name, "caption": f"a {colour} {shape} moving {direction}", "label": colour})
    (root / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 cut short")
    table = pd.DataFrame(rows)
    broken = pd.concat(
        [
            table.iloc[:5],
            pd.DataFrame([{"video": "videos/broken.mp4", "caption": "x", "label": "red"}]),
            table.iloc[5:],
        ]
    )
    for name, frame in {"captions": table, "captions_broken": broken}.items():
        frame[["video", "caption"]].to_csv(root / f"{name}.csv", index=False)
    for name, frame in {"labels": table, "labels_broken": broken}.items():
        frame[["video", "label"]].to_csv(root / f"{name}.csv", index=False)
    return root


def base_args(data, out, *extra):
    """Overrides for a small, fast run of the tiny model (``extra`` ones come last and win)."""
    return [
        f"output_dir={out}",
        "model.name=tiny",
        "model.pretrained=null",
        "model.num_frames=3",
        f"data.train={data / 'captions.csv'}",
        "data.num_workers=0",
        "train.batch_size=8",
        "train.max_steps=1",
        "train.lr=1e-4",
        "train.warmup=0",
        "train.log_every=1",
        "train.seed=0",
        "train.log_with=none",
        *extra,
    ]


def run_train(config, args, *flags):
    try:
        return train_module.main(["--config", str(config), *flags, *args])
    finally:
        reset_accelerate()


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "base.yaml"
    path.write_text("task: retrieval\nmodel: {head: mean}\n")
    return path


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def max_difference(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- optimisation pieces -----------------------------------------------------------------------------------
def test_weight_decay_skips_gains_biases_embeddings_and_the_logit_scale():
    model = vidclip.create_model("tiny", head="seq_transformer", num_frames=3)
    exempt = no_weight_decay_names(model)
    expected = {
        "clip.logit_scale",
        "clip.token_embedding.weight",  # nn.Embedding
        "clip.positional_embedding",  # declared by open_clip's no_weight_decay()
        "clip.visual.positional_embedding",
        "clip.visual.class_embedding",
        "head.position_embedding.weight",  # nn.Embedding of the seq_transformer head
    }
    assert expected <= exempt
    assert all(p.ndim < 2 for name, p in model.named_parameters() if name in exempt - expected)
    decayed = {name for name, _ in model.named_parameters()} - exempt
    assert {"clip.visual.conv1.weight", "clip.text_projection", "clip.visual.proj"} <= decayed
    assert all(p.ndim >= 2 for name, p in model.named_parameters() if name in decayed)


def test_param_groups_scale_the_backbone_lr_and_follow_freezing():
    model = vidclip.create_model("tiny", head="seq_transformer", num_frames=3)
    groups = {
        g["name"]: g for g in create_param_groups(model, lr=1e-4, backbone_lr_scale=1e-3, weight_decay=0.2)
    }
    assert set(groups) == {"backbone/decay", "backbone/no_decay", "new/decay", "new/no_decay"}
    assert math.isclose(groups["backbone/decay"]["lr"], 1e-7) and groups["new/decay"]["lr"] == 1e-4
    assert groups["new/no_decay"]["weight_decay"] == 0.0 and groups["new/decay"]["weight_decay"] == 0.2
    assert sum(len(g["params"]) for g in groups.values()) == sum(
        1 for p in model.parameters() if p.requires_grad
    )
    model.set_backbone_frozen(True)
    assert {g["name"] for g in create_param_groups(model, 1e-4, 1e-3, 0.2)} == {"new/decay", "new/no_decay"}


def test_schedule_warms_up_then_decays_to_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = create_scheduler(optimizer, total_steps=10, warmup=0.2)  # 2 warmup steps
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] < 0.05 and all(a >= b for a, b in pairwise(lrs[1:]))
    steps = create_scheduler(torch.optim.AdamW([param], lr=1.0), total_steps=10, warmup=4)  # 4 steps
    assert steps.get_last_lr()[0] == 0.25


def test_logit_scale_is_clamped_or_fixed():
    model = vidclip.create_model("tiny", num_frames=3)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    clamp_logit_scale(model, 100.0)
    assert math.isclose(model.logit_scale.exp().item(), 100.0, rel_tol=1e-5)
    configure_logit_scale(model, 30.0)
    assert not model.logit_scale.requires_grad and math.isclose(
        model.logit_scale.exp().item(), 30.0, rel_tol=1e-5
    )
    assert "clip.logit_scale" not in {n for g in model.parameter_groups().values() for n, _ in g}


def test_gradient_checkpointing_gives_the_same_gradients():
    config = load_config(
        [],
        ["model.name=tiny", "model.pretrained=null", "model.num_frames=3", "train.grad_checkpointing=true"],
    )
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = command.create_run_model(config)
        model.clip.set_grad_checkpointing(checkpointing)
        assert model.clip.transformer.grad_checkpointing == checkpointing
        video, tokens = torch.randn(2, 3, 3, 32, 32), torch.randint(1, 400, (2, 32))
        text, features = model(video, tokens)
        contrastive_loss(model.similarity, text, features, model.logit_scale.exp()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


# -- runs --------------------------------------------------------------------------------------------------
TASKS = {
    # retrieval through a text-conditioned head (the loss gathers frames and masks)
    "retrieval": [
        "task=retrieval",
        "model.head=query_scored",
        "data.train={data}/captions_broken.csv",
        "data.val={data}/captions_broken.csv",
    ],
    # classification with new modules (backbone_lr_scale matters)
    "classification": [
        "task=classification",
        "model.head=seq_transformer",
        "model.head_options.num_layers=1",
        "train.backbone_lr_scale=0.1",
        "data.train={data}/labels_broken.csv",
        "data.val={data}/labels_broken.csv",
        "data.templates=['a {} thing','a {} video']",
    ],
}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("task", TASKS)
def test_one_step_on_two_processes_equals_one_process(task, data, config_file, tmp_path):
    """Same global batch (8), same seed: 2 processes x 4 (gloo, torchrun) == 1 process x 8, with a broken
    video in the batch; and the same validation metrics on 17 videos (batches of 8: the last one is padded
    by Accelerate and trimmed by gather_for_metrics)."""
    extra = [arg.replace("{data}", str(data)) for arg in TASKS[task]] + ["train.max_steps=1"]
    single, double = tmp_path / "one", tmp_path / "two"
    assert run_train(config_file, base_args(data, single, *extra)) == 0
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "vidclip",
        "train",
        "--config",
        str(config_file),
        *base_args(data, double, *extra),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=240)
    if result.returncode != 0 and TEARDOWN_ABORT in result.stderr and (double / "model.safetensors").exists():
        # Rarely (about 1 run in 15 here) a gloo worker aborts in C++ teardown after the run has finished and
        # saved; that is torch's process-group shutdown, not the result under test. Run once more from scratch.
        shutil.rmtree(double)
        result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 processes" in result.stderr
    torch.manual_seed(0)  # the run's seed: the initial weights
    start = command.create_run_model(load_config([config_file], base_args(data, single, *extra))).state_dict()
    assert max_difference(weights(single), start) > 1e-5  # the step moved the weights...
    assert max_difference(weights(single), weights(double)) < 1e-6  # ...the same way on 1 and 2 processes
    for run in (single, double):
        assert "broken.mp4" in (run / "failed_videos.txt").read_text()
    val_single, val_double = (
        {k: v for k, v in read_metrics(run)[-1].items() if k.startswith("val/")} for run in (single, double)
    )
    assert val_single and val_double == pytest.approx(val_single)


TEARDOWN_ABORT = "terminate called without an active exception"


def run_interrupted(config_file, args, monkeypatch, step: int, stop_signal=signal.SIGINT) -> int:
    """Run training and send ``stop_signal`` to ourselves right after optimizer step ``step``."""
    original = loop.after_step

    def interrupt(run, meter, bar):
        original(run, meter, bar)
        if run.state.step == step:
            signal.raise_signal(stop_signal)  # the handler asks the loop to stop after this step

    monkeypatch.setattr(loop, "after_step", interrupt)
    try:
        return run_train(config_file, args)
    finally:
        monkeypatch.setattr(loop, "after_step", original)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_resumes_to_the_uninterrupted_weights(
    data, config_file, tmp_path, monkeypatch, stop_signal
):
    """Ctrl-C or a scheduler's SIGTERM after step 3 of 5 (mid-epoch, with gradient accumulation and random
    sampling/augmentation): exit code 130 and a checkpoint; --resume ends with the uninterrupted weights."""
    extra = ["train.max_steps=5", "train.grad_accumulation=2", "train.save_every=2", "train.lr=1e-3"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run_train(config_file, base_args(data, straight, *extra)) == 0
    args = base_args(data, interrupted, *extra)
    assert run_interrupted(config_file, args, monkeypatch, 3, stop_signal) == train_module.EXIT_INTERRUPTED
    assert (interrupted / "checkpoints" / "step_00000003").is_dir() and not (
        interrupted / "model.safetensors"
    ).exists()
    assert run_train(config_file, base_args(data, interrupted, *extra)) == 2  # refuses without --resume
    assert run_train(config_file, base_args(data, interrupted, *extra), "--resume") == 0
    assert max_difference(weights(straight), weights(interrupted)) <= 1e-6
    logged = read_metrics(interrupted)
    assert [m["step"] for m in logged] == [m["step"] for m in read_metrics(straight)] == [1, 2, 3, 4, 5]
    # one scheduler step per optimizer step (not per micro-batch): warmup 0, then cosine over 5 steps
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * step / 5)) for step in range(1, 6)]
    assert [m["train/lr"] for m in logged] == pytest.approx(expected)
    model = vidclip.load_checkpoint(interrupted)  # the run directory gives back the trained model
    assert max_difference(model.state_dict(), weights(straight)) <= 1e-6


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(data, config_file, tmp_path, monkeypatch):
    """A truncated model file in the newest step checkpoint: --resume warns, loads the previous step, and the
    run still ends with the weights of an uninterrupted run."""
    extra = ["train.max_steps=5", "train.save_every=2", "train.lr=1e-3"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run_train(config_file, base_args(data, straight, *extra)) == 0
    args = base_args(data, interrupted, *extra)
    assert run_interrupted(config_file, args, monkeypatch, 3) == train_module.EXIT_INTERRUPTED
    latest = interrupted / "checkpoints" / "step_00000003" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # torn write / disk corruption
    assert run_train(config_file, base_args(data, interrupted, *extra), "--resume") == 0
    assert max_difference(weights(straight), weights(interrupted)) <= 1e-6


def test_loss_falls_and_retrieval_beats_chance(data, config_file, tmp_path):
    out = tmp_path / "learn"
    extra = [
        "train.batch_size=16",
        "train.max_steps=30",
        "train.lr=1e-3",
        "train.weight_decay=0",
        "train.log_every=5",
        f"data.val={data / 'captions.csv'}",
        "train.eval_every=30",
    ]
    assert run_train(config_file, base_args(data, out, *extra)) == 0
    metrics = read_metrics(out)
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    final = [m for m in metrics if "val/t2v/R@1" in m][-1]
    assert losses[-1] < 0.7 * losses[0], losses
    assert final["val/t2v/R@1"] >= 3 * 100 / 16 and final["val/t2v/R@5"] >= 60, final  # chance: 6.25 / 31.25


def test_bf16_autocast_and_gradient_checkpointing_run(data, config_file, tmp_path, monkeypatch):
    seen = []
    original = loop.compute_loss

    def spy(run, batch):
        seen.append(
            (
                torch.is_autocast_enabled("cpu"),
                torch.get_autocast_dtype("cpu"),
                run.net.clip.transformer.grad_checkpointing,
            )
        )
        return original(run, batch)

    monkeypatch.setattr(loop, "compute_loss", spy)
    out = tmp_path / "bf16"
    extra = [
        "train.precision=bf16",
        "train.grad_checkpointing=true",
        "train.max_steps=2",
        "model.head=seq_transformer",
        "model.head_options.num_layers=1",
    ]
    assert run_train(config_file, base_args(data, out, *extra)) == 0
    assert seen and all(s == (True, torch.bfloat16, True) for s in seen)
    assert all(np.isfinite(m["train/loss"]) for m in read_metrics(out))
    assert all(torch.isfinite(t).all() for t in weights(out).values())


def test_stop_signal_ignores_a_forwarded_repeat_but_not_a_second_ctrl_c():
    with loop.StopSignal(grace=60) as stop:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # within the grace period: the launcher forwarding the same Ctrl-C
        assert stop.received
    with pytest.raises(KeyboardInterrupt), loop.StopSignal(grace=0) as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_cli_errors_are_plain_messages(data, config_file, tmp_path, capsys):
    from vidclip import cli

    assert cli.main(["train", "--config", str(config_file), "train.lrr=1"]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert run_train(config_file, base_args(data, tmp_path / "a", "data.format=msrvt")) == 2
    assert "data.format: unknown format 'msrvt'" in capsys.readouterr().err
    assert run_train(config_file, base_args(data, tmp_path / "b", f"data.train={data / 'nope.csv'}")) == 2
    assert "nope.csv" in capsys.readouterr().err
    assert run_train(config_file, base_args(data, tmp_path / "c", "train.max_steps=null")) == 2
    assert "train.max_steps or train.epochs" in capsys.readouterr().err


def test_trackers_are_optional(caplog):
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    from vidclip.config import ConfigError

    assert command.available_tracker("none") is None
    if not is_tensorboard_available():
        with caplog.at_level("INFO", logger="vidclip"):
            assert command.available_tracker("tensorboard") is None
        assert "tensorboard is not installed" in caplog.text
    if not is_wandb_available():
        with pytest.raises(ConfigError, match="pip install wandb"):
            command.available_tracker("wandb")


def test_bf16_on_a_gpu_without_it_stops_before_training_with_what_to_use(data, config_file, tmp_path, capsys,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert run_train(config_file, base_args(data, tmp_path / "run", "train.precision=bf16")) == 2
    err = capsys.readouterr().err
    assert "Tesla V100" in err and "train.precision=fp16" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("override", ["train.lr=1e6", "train.eps=0"])
def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    data, config_file, tmp_path, capsys, override
):
    out = tmp_path / "run"
    args = base_args(data, out, "train.max_steps=6", "train.save_every=1", "train.grad_clip=null", override)
    code = run_train(config_file, args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "finite (NaN or inf" in err and "training stopped" in err, err
    step = int(err.split("error: step ")[1].split(":")[0])
    assert not (out / "model.safetensors").exists()  # no final weights from a diverged run
    saved = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert saved == [f"step_{s:08d}" for s in range(1, step)]  # every step before the bad one, none after
    for folder in (out / "checkpoints").glob("step_*"):
        vidclip.load_checkpoint(folder)  # every kept checkpoint holds finite weights (loading refuses others)
