"""What a hostile or unlucky user sees: every refusal of ``vidclip train``, ``eval``, ``zeroshot``,
``extract`` and ``demo`` is one line naming the file or key and the reason, with the documented exit code and
no traceback.

One table (case -> command line -> exit code and message fragment), run in-process, plus a few through a real
``python -m vidclip`` process; then a full disk (a real small tmpfs where the sandbox allows mounting one, and
the errors safetensors, pyarrow and torch raise, monkeypatched) and an unreadable folder.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import vidclip
from vidclip import cli, fileio
from vidclip.synthetic import index_frames, write_video

NUM_FRAMES = 2


# -- places that cannot be written ---------------------------------------------------------------------------
def run_quiet(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A real small file system at ``path`` (root only): what a full or read-only disk really does."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = run_quiet("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path))
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield path
    finally:
        run_quiet("umount", "-l", str(path))


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A folder nobody may write in: chmod for a normal user; root ignores modes, so a read-only mount."""
    if os.geteuid() != 0:
        path.mkdir(parents=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    with tmpfs(path, "64k", read_only=True):
        yield path


# -- data ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four tiny videos with captions, the same captions over four broken files, a config, a checkpoint."""
    root = tmp_path_factory.mktemp("messages")
    (root / "videos").mkdir()
    for i in range(4):
        write_video(root / "videos" / f"v{i}.mp4", index_frames(4, 32, 32))
        (root / "videos" / f"bad{i}.mp4").write_text("not a video\n")
    for name, prefix in {"captions": "v", "broken": "bad"}.items():
        rows = [{"video": f"videos/{prefix}{i}.mp4", "caption": f"caption {i}"} for i in range(4)]
        pd.DataFrame(rows).to_csv(root / f"{name}.csv", index=False)
    (root / "base.yaml").write_text("task: retrieval\nmodel: {head: mean}\n")
    (root / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01" * 8)
    (root / "a file").write_text("")
    torch.manual_seed(0)
    vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=NUM_FRAMES), root / "run")
    return root


def train_args(root: Path, out: Path | str, *extra: str) -> list[str]:
    """``vidclip train`` on the tiny model, one step of batch 4 (``extra`` overrides come last and win)."""
    return ["train", "--config", str(root / "base.yaml"), f"output_dir={out}", "model.name=tiny",
            "model.pretrained=null", f"model.num_frames={NUM_FRAMES}", f"data.train={root / 'captions.csv'}",
            "data.num_workers=0", "train.batch_size=4", "train.max_steps=1", "train.warmup=0",
            "train.log_with=none", *extra]  # fmt: skip


def refused_checkpoints(root: Path, out: Path) -> list[str]:
    """A run folder whose only step checkpoint is refused (its weights file is junk), then ``--resume``."""
    step = out / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"junk")
    return [*train_args(root, out), "--resume"]


def zeroshot_args(root: Path, output: Path | str) -> list[str]:
    return ["zeroshot", str(root / "videos" / "v0.mp4"), "--labels", "a,b", "--checkpoint", str(root / "run"),
            "--num-workers", "0", "--output", str(output)]  # fmt: skip


def eval_args(root: Path, output: Path | str, test: str = "captions.csv") -> list[str]:
    return ["eval", "--config", str(root / "base.yaml"), "--checkpoint", str(root / "run"), "--num-workers",
            "0", f"data.test={root / test}", "--output", str(output)]  # fmt: skip


def extract_args(root: Path, *extra: str) -> list[str]:
    return ["extract", str(root / "videos" / "v0.mp4"), "--num-workers", "0", *extra]


# case -> (command line from (data root, a fresh tmp folder), exit code, fragment of the one error line).
# A command line that needs a read-only folder names READ_ONLY; the harness makes it.
READ_ONLY = "READ_ONLY"
CASES = {
    # train: the config
    "train unknown head": (
        lambda r, t: train_args(r, t / "o", "model.head=meen"),
        2,
        "model.head: unknown head",
    ),
    "train bad head option": (
        lambda r, t: train_args(r, t / "o", "model.head=seq_transformer", "model.head_options.depht=2"),
        2,
        "model.head_options: bad options for head 'seq_transformer'",
    ),
    "train unknown model": (lambda r, t: train_args(r, t / "o", "model.name=tinny"), 2, "model.name"),
    "train max_logit_scale 0": (
        lambda r, t: train_args(r, t / "o", "train.max_logit_scale=0"),
        2,
        "train.max_logit_scale must be positive",
    ),
    "train max_logit_scale negative": (
        lambda r, t: train_args(r, t / "o", "train.max_logit_scale=-5"),
        2,
        "train.max_logit_scale must be positive",
    ),
    "train wrong type": (lambda r, t: train_args(r, t / "o", "train.batch_size=four"), 2, "train.batch_size"),
    "train misspelt precision": (
        lambda r, t: train_args(r, t / "o", "train.precision=bf61"),
        2,
        "train.precision must be one of",
    ),
    "train misspelt sampling": (
        lambda r, t: train_args(r, t / "o", "data.sampling=uniformm"),
        2,
        "data.sampling",
    ),
    "train unknown decoder": (lambda r, t: train_args(r, t / "o", "data.decoder=pyavv"), 2, "data.decoder"),
    "train binary config": (
        lambda r, t: ["train", "--config", str(r / "binary.yaml"), f"output_dir={t / 'o'}"],
        2,
        "binary.yaml is not a YAML config: not UTF-8 text",
    ),
    "train config is a folder": (
        lambda r, t: ["train", "--config", str(r / "videos")],
        2,
        "is not a regular file",
    ),
    # train: the output folder, refused before any work
    "train output_dir is a file": (
        lambda r, t: train_args(r, r / "a file"),
        2,
        "a file is a file, not a folder",
    ),
    "train output_dir under a file": (
        lambda r, t: train_args(r, r / "a file" / "run"),
        2,
        "a file is a file, so no folder can be made under it",
    ),
    "train output_dir read-only": (lambda r, t: train_args(r, READ_ONLY), 2, "cannot write in"),
    # train: the data and the run folder
    "train every video broken": (
        lambda r, t: train_args(r, t / "o", f"data.train={r / 'broken.csv'}"),
        2,
        "no video of the first batch could be decoded",
    ),
    "train resume every checkpoint refused": (
        lambda r, t: refused_checkpoints(r, t / "o"),
        2,
        "--resume: no readable checkpoint in",
    ),
    "train pretrained file missing": (
        lambda r, t: train_args(r, t / "o", f"model.pretrained={t / 'nope.pt'}"),
        2,
        "nope.pt",
    ),
    # demo
    "demo zero steps": (lambda r, t: ["demo", "--steps", "0"], 2, "must be a positive integer"),
    "demo unknown head": (lambda r, t: ["demo", "--head", "meen"], 2, "unknown head 'meen'"),
    "demo workdir is a file": (
        lambda r, t: ["demo", "--workdir", str(r / "a file"), "--steps", "1"],
        2,
        "a file is a file; give a folder",
    ),
    # eval and zeroshot: an unwritable --output is found before any work
    "eval output is a folder": (lambda r, t: eval_args(r, t), 2, "is a folder"),
    "eval output read-only": (lambda r, t: eval_args(r, f"{READ_ONLY}/m.json"), 2, "cannot write in"),
    "eval output under a file": (lambda r, t: eval_args(r, r / "a file" / "m.json"), 2, "cannot write in"),
    "eval every video broken": (
        lambda r, t: eval_args(r, t / "m.json", test="broken.csv"),
        2,
        "could be decoded",
    ),
    "zeroshot output is a folder": (lambda r, t: zeroshot_args(r, t), 2, "is a folder"),
    "zeroshot output read-only": (lambda r, t: zeroshot_args(r, f"{READ_ONLY}/p.csv"), 2, "cannot write in"),
    "zeroshot output under a file": (
        lambda r, t: zeroshot_args(r, r / "a file" / "p.csv"),
        2,
        "cannot write in",
    ),
    # extract
    "extract unknown head": (
        lambda r, t: extract_args(r, "--out", str(t / "o"), "--model", "tiny", "--head", "meen"),
        2,
        "unknown head 'meen'",
    ),
    "extract out is a file": (
        lambda r, t: extract_args(r, "--out", str(r / "a file"), "--model", "tiny"),
        2,
        "is a file",
    ),
    "extract misspelt decoder": (
        lambda r, t: extract_args(r, "--out", str(t / "o"), "--model", "tiny", "--decoder", "pyavv"),
        2,
        "invalid choice: 'pyavv'",
    ),
    "extract misspelt precision": (
        lambda r, t: extract_args(r, "--out", str(t / "o"), "--model", "tiny", "--precision", "fp61"),
        2,
        "--precision",
    ),
}
# Where work must not start: the case fails if a model is built or a checkpoint loaded.
BEFORE_ANY_WORK = {name for name in CASES if "output" in name or "binary" in name or "folder" in name}


def run_cli(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit:  # argparse refuses a flag value this way
        return exit.code


@pytest.mark.parametrize("case", CASES)
def test_each_refusal_is_one_line_with_its_exit_code(case, data, tmp_path, capsys, caplog, monkeypatch,
                                                     fresh_accelerate_state):  # fmt: skip
    command, code, fragment = CASES[case]
    argv = [str(arg) for arg in command(data, tmp_path)]
    if case in BEFORE_ANY_WORK:
        from vidclip import checkpoint, model

        def no_work(*args, **kwargs):
            raise AssertionError("work started before the refusal")

        monkeypatch.setattr(model, "build_model", no_work)
        monkeypatch.setattr(checkpoint, "build_model", no_work)
    with contextlib.ExitStack() as stack:
        if any(READ_ONLY in arg for arg in argv):
            locked = stack.enter_context(read_only_dir(tmp_path / "locked"))
            argv = [arg.replace(READ_ONLY, str(locked)) for arg in argv]
        with caplog.at_level(logging.WARNING):
            assert run_cli(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Traceback" not in caplog.text, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0], err


@pytest.mark.slow
def test_the_real_command_prints_one_line_and_no_traceback(data, tmp_path):
    """Through ``python -m vidclip``: what a user's terminal shows, stderr whole."""
    for argv, fragment in [
        (train_args(data, tmp_path / "o", "model.head=meen"), "unknown head 'meen'"),
        (
            train_args(data, tmp_path / "o", f"data.train={data / 'broken.csv'}"),
            "no video of the first batch",
        ),
    ]:
        command = [sys.executable, "-m", "vidclip", *map(str, argv)]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and fragment in done.stderr, done.stderr
        assert sum("error:" in line for line in done.stderr.splitlines()) == 1, done.stderr


# -- a full disk -------------------------------------------------------------------------------------------
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
PYARROW_FULL = "Error writing bytes to file. Detail: [errno 28] No space left on device"
TORCH_FULL = "[enforce fail at inline_container.cc:603] . unexpected pos 4416 vs 4310"


def raising(error: BaseException):
    def write(*args, **kwargs):
        raise error

    return write


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        RuntimeError(SAFETENSORS_FULL),  # safetensors' SafetensorError carries no errno, only this text
        OSError(errno.ENOSPC, PYARROW_FULL),
    ],
    ids=["ENOSPC", "EDQUOT", "safetensors", "pyarrow"],
)
def test_a_write_that_fails_for_space_is_one_line_naming_the_file(error, tmp_path):
    path = tmp_path / "out" / "model.safetensors"
    path.parent.mkdir()
    path.write_text("the checkpoint before")
    with pytest.raises(fileio.DiskFullError) as caught, fileio.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise error
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and caught.value.filename == str(path)
    assert ("disk quota exceeded" if "quota" in str(error) else "no space left on device") in message
    assert path.read_text() == "the checkpoint before" and os.listdir(path.parent) == ["model.safetensors"]


def test_any_failed_write_on_a_full_disk_counts_as_a_full_disk_and_others_pass_unchanged(
    tmp_path, monkeypatch
):
    """torch's writer says only "unexpected pos": the folder's free space tells it apart from a real bug."""
    path = tmp_path / "model.pt"
    with pytest.raises(RuntimeError, match="unexpected pos") as caught, fileio.atomic_path(path):
        raise RuntimeError(TORCH_FULL)  # the disk has room: not a disk error
    assert not isinstance(caught.value, fileio.DiskFullError)
    monkeypatch.setattr(fileio, "_free_bytes", lambda path: 4096)
    with pytest.raises(
        fileio.DiskFullError, match=r"no space left on device: cannot write .*model\.pt .*unexpected"
    ):
        with fileio.atomic_path(path):
            raise RuntimeError(TORCH_FULL)


def test_save_checkpoint_with_safetensors_failing_for_space_keeps_the_file_before(tmp_path, monkeypatch):
    import safetensors.torch

    model = vidclip.create_model("tiny", num_frames=NUM_FRAMES)
    path = vidclip.save_checkpoint(model, tmp_path / "run")
    before = path.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", raising(RuntimeError(SAFETENSORS_FULL)))
    with pytest.raises(fileio.DiskFullError, match=f"no space left on device: cannot write {path}"):
        vidclip.save_checkpoint(model, tmp_path / "run")
    assert path.read_bytes() == before and os.listdir(path.parent) == ["model.safetensors"]


def fill(path: Path) -> None:
    """Write ``path`` until its file system has no byte left."""
    with open(path, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def test_a_full_disk_on_a_real_file_system(tmp_path):
    """A 256 KiB tmpfs: a checkpoint, a config and a Parquet part each fail as one line naming the file."""
    from vidclip.config import Config, config_to_dict, load_config, save_config
    from vidclip.inference.parts import Row, write_part

    with tmpfs(tmp_path / "disk", "256k") as disk:
        save_config(Config(), disk / "config.yaml")  # small things still fit
        fill(disk / "filler")
        model = vidclip.create_model("tiny", num_frames=NUM_FRAMES)
        with pytest.raises(fileio.DiskFullError, match=f"cannot write {disk / 'run' / 'model.safetensors'}"):
            vidclip.save_checkpoint(model, disk / "run")
        rows = [Row(i, f"v{i}.mp4", torch.rand(512).numpy(), None) for i in range(64)]
        with pytest.raises(
            fileio.DiskFullError, match=r"no space left on device: cannot write .*part-00000000"
        ):
            write_part(disk / "parts", rows, {"identity": "x"})
        with pytest.raises(fileio.DiskFullError, match="config2.yaml"):
            save_config(Config(), disk / "config2.yaml")
        assert config_to_dict(load_config([disk / "config.yaml"])) == config_to_dict(Config())
        left = sorted(p.name for p in disk.rglob("*"))
        assert left == ["config.yaml", "filler", "parts", "run"], left  # no temporary file left behind


def test_training_on_a_disk_that_fills_keeps_the_checkpoint_before(
    data, tmp_path, capsys, fresh_accelerate_state
):
    """Step 1's checkpoint fits (model + optimizer: about 40 MB), step 2's does not: one line naming the file
    that did not fit, exit 2, and step 1 is whole and resumable."""
    from vidclip.checkpoint import list_step_checkpoints

    with tmpfs(tmp_path / "disk", "60m") as disk:
        argv = train_args(data, disk / "run", "train.max_steps=2", "train.save_every=1")
        assert run_cli(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        [line] = [line for line in err.splitlines() if "error:" in line]
        assert "no space left on device: cannot write" in line and "step_00000002" in line, line
        assert [step for step, _ in list_step_checkpoints(disk / "run")] == [1]
        assert sorted(p.name for p in (disk / "run" / "checkpoints").iterdir()) == ["step_00000001"]
        vidclip.load_checkpoint(disk / "run" / "checkpoints" / "step_00000001")


# -- an unreadable folder ----------------------------------------------------------------------------------
def test_an_unreadable_sub_folder_is_named_once_and_the_rest_found(tmp_path, monkeypatch, caplog):
    root = tmp_path / "videos"
    (root / "locked").mkdir(parents=True)
    (root / "open").mkdir()
    (root / "open" / "a.mp4").write_bytes(b"x")
    (root / "locked" / "b.mp4").write_bytes(b"x")
    (root / "again").symlink_to(root / "locked")  # a second way into the same folder: still one warning
    locked = {str(root / "locked"), str(root / "again")}
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) in locked:  # root reads any folder whatever its mode: refuse as a mode 000 would
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="vidclip"):
        assert list(fileio.walk_files(root, {".mp4"})) == [str(root / "open" / "a.mp4")]
    warnings = [
        record.getMessage() for record in caplog.records if "cannot read folder" in record.getMessage()
    ]
    assert len(warnings) == 1 and ("locked" in warnings[0] or "again" in warnings[0]), warnings
    assert "Permission denied" in warnings[0]


def test_an_unreadable_sub_folder_by_its_mode(tmp_path, caplog):
    if os.geteuid() == 0:
        pytest.skip("root reads a folder of mode 000: the monkeypatched test above covers root")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.mp4").write_bytes(b"x")
    (tmp_path / "locked").chmod(0)
    try:
        with caplog.at_level(logging.WARNING, logger="vidclip"):
            assert list(fileio.walk_files(tmp_path, {".mp4"})) == []
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert f"cannot read folder {tmp_path / 'locked'}" in caplog.text
