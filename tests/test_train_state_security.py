"""``vidclip train --resume`` reads a run folder without running code from it (issue 15).

Every file of a step checkpoint is JSON, safetensors or YAML, read by parsers that cannot execute anything and
checked against what the run would write; one that is not (a planted pickle, a wrong key, a torn file) is
refused with its name and the reason, and resume falls back to the checkpoint before. The files Accelerate's
save_state wrote (pickles) are never read. A checkpoint of another model is a config error, not "unreadable".
"""

import json
import os
import pickle
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import test_train
import torch
from safetensors import safe_open
from test_train import TEARDOWN_ABORT, base_args, max_difference, run_interrupted, run_train, weights

from vidclip.config import ConfigError, load_config
from vidclip.train import checkpoint_files, state

# test_train's fixtures: the generated videos, the base config, a fresh Accelerate state per test
data, config_file, fresh_accelerate_state = (
    test_train.data,
    test_train.config_file,
    test_train.fresh_accelerate_state,
)

STEP_FILES = {  # what a step checkpoint of a 1-process run without fp16 holds, and nothing else
    "model.safetensors",
    "optimizer.safetensors",
    "scheduler.json",
    "train_state.json",
    "rng_state_0.json",
    "config.yaml",
}
ACCELERATE_FILES = [  # what Accelerate's save_state wrote, all pickles (custom_checkpoint_0.pkl unpickled in full)
    "custom_checkpoint_0.pkl",
    "random_states_0.pkl",
    "optimizer.bin",
    "scheduler.bin",
    "scaler.pt",
    "sampler.bin",
    "pytorch_model.bin",
]
EXTRA = ["train.max_steps=5", "train.save_every=2", "train.lr=1e-3"]


class Payload:
    """Unpickling this creates ``path``: what a crafted checkpoint file would do with a shell command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').close()",)


def payload(sentinel) -> bytes:
    return pickle.dumps(Payload(sentinel))


@pytest.fixture(scope="module")
def runs(data, config_file, tmp_path_factory):
    """An uninterrupted 5-step run, and the same run stopped after step 3 (checkpoints at steps 2 and 3)."""
    root = tmp_path_factory.mktemp("runs")
    straight, interrupted = root / "straight", root / "interrupted"
    assert run_train(config_file, base_args(data, straight, *EXTRA)) == 0
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert run_interrupted(config_file, base_args(data, interrupted, *EXTRA), monkeypatch, 3) == 130
    return straight, interrupted


@pytest.fixture
def run_copy(runs, tmp_path):
    """A fresh copy of the interrupted run to tamper with, and the sentinel a payload would create."""
    copy = tmp_path / "run"
    shutil.copytree(runs[1], copy)
    return copy, tmp_path / "SENTINEL"


def step_folder(run_dir, step=3):
    return run_dir / "checkpoints" / f"step_{step:08d}"


def resume(config_file, data, run_dir, *extra):
    return run_train(config_file, base_args(data, run_dir, *EXTRA, *extra), "--resume")


def resume_untouched(config_file, data, run_dir, sentinel):
    """Resume; whatever it returns or raises, no planted payload may have run."""
    try:
        return resume(config_file, data, run_dir)
    finally:
        assert not sentinel.exists(), "a pickle planted in the run folder was executed"


def test_the_payload_runs_when_unpickled(tmp_path):
    """The payload is live: anything that unpickled a planted file would create the sentinel."""
    pickle.loads(payload(tmp_path / "SENTINEL"))
    assert (tmp_path / "SENTINEL").exists()


def test_a_step_checkpoint_holds_no_pickle(runs):
    for folder in (step_folder(runs[1], 2), step_folder(runs[1], 3)):
        assert {path.name for path in folder.iterdir()} == STEP_FILES
        for path in folder.iterdir():
            head = path.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", f"{path.name} looks like a pickle or torch.save zip"
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):
                    pass
    saved = json.loads((step_folder(runs[1]) / "train_state.json").read_text())
    assert saved["step"] == 3 and saved["failed"] == {} and isinstance(saved["accelerator_step"], int)


@pytest.mark.parametrize("name", sorted(STEP_FILES))
def test_a_pickle_planted_in_a_checkpoint_never_runs(name, runs, run_copy, config_file, data, caplog):
    """A pickle under any checkpoint file's name is refused, named, never unpickled; the run resumes from the
    checkpoint before (config.yaml is only compared: a warning) and ends with the uninterrupted weights."""
    run_dir, sentinel = run_copy
    (step_folder(run_dir) / name).write_bytes(payload(sentinel))
    with caplog.at_level("INFO", logger="vidclip"):
        assert resume_untouched(config_file, data, run_dir, sentinel) == 0
    if name == "config.yaml":
        assert f"cannot compare with the saved config {step_folder(run_dir) / name}" in caplog.text
        assert f"resumed from {step_folder(run_dir)} at step 3" in caplog.text
    else:
        assert f"checkpoint {step_folder(run_dir)} is refused ({name}: " in caplog.text
        assert f"resumed from {step_folder(run_dir, 2)} at step 2" in caplog.text
    assert max_difference(weights(runs[0]), weights(run_dir)) <= 1e-6


@pytest.mark.parametrize("name", ACCELERATE_FILES)
def test_accelerates_pickles_are_never_read(name, runs, run_copy, config_file, data, caplog):
    """A pickle under a name of Accelerate's save_state files (its load_state unpickles them, and
    custom_checkpoint_0.pkl with weights_only=False) beside vidclip's files: resume never reads it and loads the
    latest checkpoint."""
    run_dir, sentinel = run_copy
    for step in (2, 3):
        (step_folder(run_dir, step) / name).write_bytes(payload(sentinel))
    with caplog.at_level("INFO", logger="vidclip"):
        assert resume_untouched(config_file, data, run_dir, sentinel) == 0
    assert f"resumed from {step_folder(run_dir)} at step 3" in caplog.text and "refused" not in caplog.text
    assert max_difference(weights(runs[0]), weights(run_dir)) <= 1e-6


def truncate(path):
    path.write_bytes(path.read_bytes()[:50])


def edit_json(change):
    def edit(path):
        value = json.loads(path.read_text())
        change(value)
        path.write_text(json.dumps(value))

    return edit


TAMPERED = {  # file, how it is spoilt, what the refusal says
    "train-state-extra-key": (
        "train_state.json",
        edit_json(lambda v: v.update(code="x")),
        "unexpected keys ['code']",
    ),
    "train-state-step-text": ("train_state.json", edit_json(lambda v: v.update(step="3")), "step"),
    "train-state-other-step": ("train_state.json", edit_json(lambda v: v.update(step=2)), "step 2"),
    "scheduler-torn": ("scheduler.json", truncate, "not JSON"),
    "scheduler-list": ("scheduler.json", lambda p: p.write_text("[1, 2]"), "expected an object"),
    "scheduler-lr-text": (
        "scheduler.json",
        edit_json(lambda v: v.update(_last_lr=["x"] * len(v["_last_lr"]))),
        "_last_lr[0]",
    ),
    "rng-short": ("rng_state_0.json", edit_json(lambda v: v.update(torch="00ff")), "torch"),
    "rng-words": ("rng_state_0.json", edit_json(lambda v: v["numpy"][0].__setitem__(0, -1)), "32-bit"),
    "optimizer-torn": ("optimizer.safetensors", truncate, "not a readable safetensors file"),
    "model-torn": ("model.safetensors", truncate, "not a readable safetensors file"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_file_is_refused_naming_it_and_why(case, run_copy, config_file, data, caplog):
    name, spoil, reason = TAMPERED[case]
    run_dir, _ = run_copy
    spoil(step_folder(run_dir) / name)
    with caplog.at_level("INFO", logger="vidclip"):
        assert resume(config_file, data, run_dir) == 0
    refusal = next(line for line in caplog.text.splitlines() if "is refused" in line)
    assert f"({name}: " in refusal and reason in refusal, refusal
    assert f"resumed from {step_folder(run_dir, 2)} at step 2" in caplog.text


def test_read_json_refuses_a_pickle_unread(tmp_path):
    path = tmp_path / "scheduler.json"
    path.write_bytes(payload(tmp_path / "SENTINEL"))
    with pytest.raises(checkpoint_files.CheckpointFileError, match=r"scheduler.json: not JSON \(a pickle"):
        checkpoint_files.read_json(path)
    assert not (tmp_path / "SENTINEL").exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        (["model.head=seq_transformer"], "model.head: 'mean' -> 'seq_transformer'"),
        (["model.num_frames=4"], "model.num_frames: 3 -> 4"),
    ],
    ids=["head", "num-frames"],
)
def test_resuming_another_model_says_what_changed(change, expected, run_copy, config_file, data, capsys):
    """Good checkpoints of another model are not "unreadable": one line says which keys changed and what to do,
    exit code 2, and the checkpoints stay."""
    run_dir, _ = run_copy
    assert resume(config_file, data, run_dir, *change) == 2
    err = capsys.readouterr().err
    assert expected in err and "resume with the saved config" in err and "another output_dir" in err, err
    assert "unreadable" not in err and "refused" not in err and "remove" not in err
    assert state.list_step_checkpoints(run_dir)[-1][0] == 3


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {s}']",
        "!!python/object/new:os.system ['touch {s}']",
        "!!python/name:os.system",
    ],
)
def test_config_files_refuse_yaml_object_tags(tag, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "config.yaml"
    path.write_text(f"output_dir: {tag.format(s=sentinel)}\n")
    with pytest.raises(ConfigError, match="config.yaml"):
        load_config([path])
    assert not sentinel.exists()


def test_a_yaml_object_tag_in_a_checkpoint_config_never_runs(run_copy, config_file, data, caplog):
    run_dir, sentinel = run_copy
    (step_folder(run_dir) / "config.yaml").write_text(
        f"output_dir: !!python/object/apply:os.system ['touch {sentinel}']\n"
    )
    with caplog.at_level("INFO", logger="vidclip"):
        assert resume(config_file, data, run_dir) == 0
    assert not sentinel.exists() and "cannot compare with the saved config" in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_processes_resume_from_their_own_rng_files(data, config_file, tmp_path):
    """2 processes (torchrun, gloo) save one RNG file each and resume from them: a run restarted from step 2
    of 4 ends with the weights it had when it ran straight through."""
    run_dir = tmp_path / "two"
    args = base_args(data, run_dir, "train.max_steps=4", "train.save_every=2", "train.lr=1e-3")
    torchrun(config_file, args)
    assert {p.name for p in step_folder(run_dir, 2).iterdir()} >= {"rng_state_0.json", "rng_state_1.json"}
    straight = weights(run_dir)
    shutil.rmtree(step_folder(run_dir, 4))
    os.remove(run_dir / "model.safetensors")
    assert "resumed from" in torchrun(config_file, args, "--resume")
    assert max_difference(straight, weights(run_dir)) <= 1e-6


def torchrun(config_file, args, *flags) -> str:
    """Run ``vidclip train`` on 2 CPU processes; its stderr."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launch += ["-m", "vidclip", "train", "--config", str(config_file), *flags, *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=180)
    # a rare gloo abort in torch's process-group teardown comes after the run has finished and saved
    done = result.returncode == 0 or TEARDOWN_ABORT in result.stderr and "done: " in result.stderr
    assert done, result.stderr[-3000:]
    return result.stderr


def test_rng_and_grad_scaler_states_round_trip_through_json(tmp_path):
    """What rng_state_{rank}.json and scaler.json hold gives back the same random streams and scaler."""
    state.write_json(tmp_path / "rng.json", checkpoint_files.rng_state())
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint_files.read_rng(tmp_path / "rng.json")()
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3)
    state.write_json(tmp_path / "scaler.json", scaler.state_dict())
    fresh = torch.amp.GradScaler("cpu")
    state.read_scaler(tmp_path / "scaler.json", fresh)()
    assert fresh.state_dict() == scaler.state_dict()
    (tmp_path / "scaler.json").write_text('{"scale": "8"}')
    with pytest.raises(checkpoint_files.CheckpointFileError, match="scaler.json: the file: missing keys"):
        state.read_scaler(tmp_path / "scaler.json", fresh)
