"""What a training run holds, and how it is checkpointed and resumed without unpickling anything.

A step checkpoint ``checkpoints/step_XXXXXXXX/`` holds::

    model.safetensors        weights + model spec (vidclip.load_checkpoint reads it, no Accelerate needed)
    optimizer.safetensors    the optimizer's tensors; its param groups as JSON in the file's metadata
    scheduler.json           the LambdaLR's state without its lambdas (code: the config rebuilds them)
    train_state.json         the step, Accelerate's micro-batch counter, the videos that failed to decode
    rng_state_{rank}.json    each process's Python, NumPy, torch (and CUDA) random generator states
    scaler.json              the GradScaler's state (train.precision=fp16 only)
    config.yaml              the run's config

Accelerate's save_state/load_state are not used: they unpickle their files, and a crafted pickle in a run
folder would run code on ``--resume``. Everything here is read as JSON, safetensors or YAML (OmegaConf's safe
loader), checked against what this run would write, and refused naming the file and why; resume then falls
back to the checkpoint before. The folder is written under a hidden name and renamed once every process has
written its part. The data loader keeps no state: its position follows from the step (see TrainState).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vidclip.checkpoint import SPEC_METADATA_KEY as SPEC_KEY
from vidclip.checkpoint import WEIGHTS_NAME, list_step_checkpoints, save_checkpoint, step_checkpoint_dir
from vidclip.config import Config, ConfigError, diff_configs, flatten, load_config, save_config
from vidclip.fileio import atomic_path, write_text_atomic
from vidclip.model import VideoCLIP
from vidclip.train.checkpoint_files import (
    CheckpointFileError,
    conform,
    metadata_json,
    read_json,
    read_rng,
    read_safetensors,
    reading,
    rng_state,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

    from vidclip.data.loaders import EvalData, TrainData

STATE_NAME = "train_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
SCHEDULER_NAME = "scheduler.json"
SCALER_NAME = "scaler.json"
CONFIG_NAME = "config.yaml"


def rng_state_name(rank: int) -> str:
    return f"rng_state_{rank}.json"


@dataclass
class TrainState:
    """The loop's own state beyond model/optimizer/scheduler/RNG (``train_state.json``).

    The position inside an epoch is not stored: it follows from ``step`` and the steps per epoch, because the
    data order is a function of (seed, epoch).
    """

    step: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # video path -> why it could not be decoded


@dataclass
class Run:
    """Everything one training run holds, after ``accelerator.prepare``."""

    config: Config
    accelerator: Accelerator
    model: torch.nn.Module  # the prepared model (DDP-wrapped on several processes): call it for forward
    net: VideoCLIP  # the same model unwrapped: its similarity, logit_scale, encode_* and weights
    optimizer: torch.optim.Optimizer
    scheduler: Any  # Accelerate's AcceleratedScheduler around a LambdaLR
    train: TrainData
    val: EvalData | None
    class_tokens: torch.Tensor | None  # classification: tokens of every class x template prompt
    steps_per_epoch: int
    total_steps: int
    state: TrainState = field(default_factory=TrainState)
    saved_step: int = -1  # the step of the latest checkpoint written or loaded
    evaluated_step: int = -1
    skipped_steps: int = 0  # fp16: optimizer steps skipped in a row for non-finite gradients


class RunError(RuntimeError):
    """A run that cannot start or go on for a reason the user can act on (no video of the first batch decodes,
    no step checkpoint reads back); the message is one line that says what to check."""


def preflight(config: Config, resume: bool) -> None:
    """Checks that need no model or data, before anything slow is built: a train split, a length, a known
    annotation format, head and model name, an output_dir that can be written, and no run to overwrite by
    accident."""
    from vidclip.data import get_reader
    from vidclip.video import DecoderUnavailableError, check_decoder

    check_output_dir(config.output_dir)
    check_model_section(config)
    if config.data.train is None:
        raise ConfigError("data.train is not set: training needs a train split")
    if not (config.train.max_steps or config.train.epochs):
        raise ConfigError("set train.max_steps or train.epochs: the run has no length")
    get_reader(config.data)  # an unknown data.format fails here, naming the registered ones
    try:
        check_decoder(config.data.decoder)
    except (ValueError, DecoderUnavailableError) as err:
        raise ConfigError(f"data.decoder: {err}") from None
    if list_step_checkpoints(config.output_dir) and not resume:
        raise ConfigError(
            f"output_dir {config.output_dir} already holds a run: pass --resume to continue it, "
            "or choose another output_dir"
        )


def check_output_dir(output_dir: str | os.PathLike) -> None:
    """Refuse an ``output_dir`` that is a file, lies under a file, or sits where this user cannot write."""
    target = Path(output_dir)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"output_dir {target} is a file, not a folder: choose another output_dir")
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output_dir {target}: {existing} is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):  # also False on a read-only file system, even for root
        raise ConfigError(
            f"output_dir {target}: cannot write in {existing} (read-only or permission denied): choose "
            "another output_dir"
        )


def check_model_section(config: Config) -> None:
    """An unknown model name, head or head option fails here, naming the key, before the model is built."""
    import open_clip

    from vidclip.heads import create_head, list_heads
    from vidclip.model import register_model_configs

    model = config.model
    register_model_configs()
    if model.name not in open_clip.list_models() and not model.name.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(
            f"model.name: unknown open_clip model {model.name!r}; see open_clip.list_models() (vidclip adds "
            "'tiny')"
        )
    try:
        create_head(model.head, **model.head_options)  # a small module: cheap next to the model
    except ValueError as err:
        key = "model.head" if model.head not in list_heads() else "model.head_options"
        raise ConfigError(f"{key}: {err}") from None


def merge_failures(run: Run) -> None:
    """Every process learns every process's decoding failures (a collective: all processes call it)."""
    from accelerate.utils import gather_object

    if run.accelerator.num_processes > 1:
        for part in gather_object([run.state.failed]):
            run.state.failed.update(part)


# -- writing -----------------------------------------------------------------------------------------------
class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the weights stopped being finite: training stops, and nothing non-finite is
    saved, so the last checkpoint is the last good one."""


def check_weights_finite(run: Run) -> None:
    """Refuse to checkpoint weights that hold NaN or inf (e.g. Adam with train.eps=0 divides 0 by 0)."""
    bad = [name for name, p in run.net.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        kept = f"step {run.saved_step}" if run.saved_step >= 0 else "none was written"
        raise TrainingDiverged(
            f"step {run.state.step}: the weights are no longer finite (NaN or inf in {len(bad)} tensors, e.g. "
            f"{bad[0]}), so training stopped without saving them; the last good checkpoint: {kept}. The usual "
            f"causes: too high a learning rate (train.lr={run.config.train.lr:g}), train.eps="
            f"{run.config.train.eps:g}, or fp16 overflow (try bf16)"
        )


def save_state(run: Run) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` (all processes call it) and return the folder."""
    check_weights_finite(run)
    accelerator, step = run.accelerator, run.state.step
    merge_failures(run)
    final = step_checkpoint_dir(run.config.output_dir, step)
    partial = final.with_name(f".incomplete_{final.name}")
    if accelerator.is_main_process:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        write_json(partial / rng_state_name(accelerator.process_index), rng_state())  # every process its own
        if accelerator.is_main_process:
            write_main_files(run, partial)
    except BaseException:  # e.g. DiskFullError: the checkpoints before stay, and the space goes back
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    run.saved_step = step
    return final


def write_json(path: Path, value: Any) -> None:
    """``value`` as JSON in ``path``, written whole or not at all (a full disk names the file)."""
    write_text_atomic(path, json.dumps(value))


def write_main_files(run: Run, folder: Path) -> None:
    """The main process's part of a step checkpoint: everything but the other processes' RNG states. Every
    file goes through ``atomic_path``, so a full disk is one error naming the file."""
    from safetensors.torch import save_file

    save_checkpoint(run.net, folder)
    optimizer = run.optimizer.state_dict()
    tensors = {  # AdamW's state is all tensors
        f"{index}/{name}": value.detach().contiguous().cpu()
        for index, entries in optimizer["state"].items()
        for name, value in entries.items()
    }
    groups = json.dumps(optimizer["param_groups"])
    with atomic_path(folder / OPTIMIZER_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"param_groups": groups})
    write_json(folder / SCHEDULER_NAME, scheduler_state(run.scheduler))
    if run.accelerator.scaler is not None:
        write_json(folder / SCALER_NAME, run.accelerator.scaler.state_dict())
    state = {"step": run.state.step, "accelerator_step": run.accelerator.step, "failed": run.state.failed}
    write_json(folder / STATE_NAME, state)
    save_config(run.config, folder / CONFIG_NAME)


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The schedule's state without ``lr_lambdas`` (functions; the config rebuilds them)."""
    return {key: value for key, value in scheduler.state_dict().items() if key != "lr_lambdas"}


# -- reading -----------------------------------------------------------------------------------------------
def read_model(path: Path, net: VideoCLIP) -> Callable[[], None]:
    """Check ``model.safetensors`` fits ``net``: the same spec (else a ConfigError saying what changed),
    the same tensor names and shapes."""
    tensors, metadata = read_safetensors(path)
    saved = metadata_json(path, metadata, SPEC_KEY)
    if not isinstance(saved, dict):
        raise CheckpointFileError(path, f"{SPEC_KEY} in its metadata: expected an object")
    changed = spec_changes(saved, json.loads(json.dumps(asdict(net.spec))))  # tuples as JSON has them
    if changed:
        raise ConfigError(
            f"--resume: {path} was saved for another model than the config describes "
            f"({'; '.join(changed)}): resume with the saved config ({path.parent / CONFIG_NAME}) or choose "
            "another output_dir"
        )
    shapes = {name: list(tensor.shape) for name, tensor in net.state_dict().items()}
    conform(path, "tensors", {name: list(tensor.shape) for name, tensor in tensors.items()}, shapes)
    return lambda: net.load_state_dict(tensors)


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``model.key: old -> new`` for every field of the two model specs that differs."""
    a, b = flatten(old, keep_empty=False), flatten(new, keep_empty=False)
    name = {"model_name": "name"}
    return [
        f"model.{name.get(key, key)}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key)
    ]


def read_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """The optimizer state in ``optimizer.safetensors``, checked against this run's param groups."""
    tensors, metadata = read_safetensors(path)
    current = optimizer.state_dict()
    groups = conform(
        path, "param_groups", metadata_json(path, metadata, "param_groups"), current["param_groups"]
    )
    if [g["params"] for g in groups] != [g["params"] for g in current["param_groups"]]:
        raise CheckpointFileError(path, "its param groups hold other parameters than this run's")
    params = [param for group in optimizer.param_groups for param in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        index, _, name = key.partition("/")
        if not (index.isdigit() and int(index) < len(params) and name):
            raise CheckpointFileError(path, f"unexpected tensor {key!r}")
        shape = list(params[int(index)].shape)
        if tensor.ndim and list(tensor.shape) != shape:  # moments have their parameter's shape, the step none
            raise CheckpointFileError(path, f"{key} has shape {list(tensor.shape)}, its parameter {shape}")
        state.setdefault(int(index), {})[name] = tensor
    return lambda: optimizer.load_state_dict({"state": state, "param_groups": groups})


def read_scheduler(path: Path, scheduler: Any) -> Callable[[], None]:
    saved = conform(path, "", read_json(path), scheduler_state(scheduler))
    lambdas = scheduler.state_dict().get("lr_lambdas")  # None per plain function: nothing to restore
    return lambda: scheduler.load_state_dict(
        {**saved, **({} if lambdas is None else {"lr_lambdas": lambdas})}
    )


def read_train_state(path: Path, run: Run, step: int) -> Callable[[], None]:
    saved = read_json(path)
    failed = saved.get("failed") if isinstance(saved, dict) else None
    like = {
        "step": 0,
        "accelerator_step": 0,
        "failed": dict.fromkeys(failed, "") if isinstance(failed, dict) else {},
    }
    saved = conform(path, "", saved, like)
    if not all(isinstance(reason, str) for reason in saved["failed"].values()):
        raise CheckpointFileError(path, "failed: expected video -> reason strings")
    if saved["step"] != step:
        raise CheckpointFileError(path, f"step {saved['step']!r} in the checkpoint of step {step}")
    micro = saved["accelerator_step"]
    if not isinstance(micro, int) or micro < 0:
        raise CheckpointFileError(path, f"accelerator_step: expected a count, found {micro!r}")

    def apply() -> None:
        run.state.step, run.state.failed = step, dict(saved["failed"])
        run.accelerator.step = micro  # where gradient accumulation is in its cycle

    return apply


def read_scaler(path: Path, scaler: Any) -> Callable[[], None]:
    saved = conform(path, "", read_json(path), scaler.state_dict())
    return lambda: scaler.load_state_dict(saved)


def load_step_checkpoint(run: Run, folder: Path, step: int) -> None:
    """Read and check every file of ``folder`` this run needs, then apply them all (nothing is applied when a
    file is refused, except by a failure while applying: the caller then loads an older checkpoint whole)."""
    from accelerate.logging import get_logger

    rank, scaler = run.accelerator.process_index, run.accelerator.scaler
    readers: dict[str, Callable[[Path], Callable[[], None]]] = {
        WEIGHTS_NAME: lambda path: read_model(path, run.net),  # first: a changed model is a ConfigError
        OPTIMIZER_NAME: lambda path: read_optimizer(path, run.optimizer),
        SCHEDULER_NAME: lambda path: read_scheduler(path, run.scheduler),
        STATE_NAME: lambda path: read_train_state(path, run, step),
        rng_state_name(rank): read_rng,
    }
    if scaler is not None:
        readers[SCALER_NAME] = lambda path: read_scaler(path, scaler)
    optional = {rng_state_name(rank): "saved by fewer processes", SCALER_NAME: "saved without fp16"}
    appliers = []
    for name, read in readers.items():
        if name in optional and not (folder / name).exists():
            get_logger(__name__).warning(
                f"{folder} has no {name} ({optional[name]}?): that state starts fresh",
                main_process_only=False,
            )
            continue
        with reading(folder / name):
            appliers.append((name, read(folder / name)))
    for name, apply in appliers:
        with reading(folder / name):
            apply()


def load_latest_readable(run: Run, checkpoints: list[tuple[int, Path]]) -> Path:
    """Load the newest step checkpoint that reads back whole; a refused one is reported and the one before used.

    Each load replaces the whole state (weights, optimizer, scheduler, RNG, loop position), so a checkpoint that
    failed half-way leaves nothing behind once an older one has loaded. Every process loads the same one.
    """
    from accelerate.logging import get_logger

    logger = get_logger(__name__)
    for step, folder in reversed(checkpoints):
        try:
            load_step_checkpoint(run, folder, step)
            error = None
        except CheckpointFileError as err:
            error = str(err)
            logger.warning(
                f"checkpoint {folder} is refused ({error}); trying the one before", main_process_only=False
            )
        if not failed_anywhere(run.accelerator, error is not None):
            return folder
        if error is None:
            logger.warning(f"checkpoint {folder} is refused by another process; trying the one before")
    raise RunError(
        f"--resume: no readable checkpoint in {Path(run.config.output_dir) / 'checkpoints'}: every step "
        "checkpoint was refused (see the warnings above); remove them to start over"
    )


def failed_anywhere(accelerator: Accelerator, failed: bool) -> bool:
    """True on every process when ``failed`` is true on any (a collective on several processes)."""
    if accelerator.num_processes == 1:
        return failed
    return bool(accelerator.reduce(torch.tensor(float(failed), device=accelerator.device), "sum") > 0)


def resume_or_start(run: Run, resume: bool) -> None:
    """With ``resume``, load the latest step checkpoint if there is one; write the run's config.yaml."""
    from accelerate.logging import get_logger

    logger, output = get_logger(__name__), Path(run.config.output_dir)
    checkpoints = list_step_checkpoints(output)
    if resume and checkpoints:
        folder = load_latest_readable(run, checkpoints)
        try:
            changed = diff_configs(load_config([folder / CONFIG_NAME]), run.config)
        except (
            Exception
        ) as err:  # ConfigError, or a file that is not text at all: only the comparison is lost
            logger.warning(f"cannot compare with the saved config {folder / CONFIG_NAME}: {err}")
            changed = []
        if changed:
            logger.warning(
                "resuming with a config that differs from the saved one:\n  " + "\n  ".join(changed)
            )
        run.saved_step = run.state.step
        logger.info(f"resumed from {folder} at step {run.state.step} of {run.total_steps}")
    elif resume:
        logger.info(f"--resume: no checkpoint in {output} yet, starting from step 0")
    if run.accelerator.is_main_process:
        save_config(run.config, output / "config.yaml")


def write_failures(run: Run) -> None:
    """List the videos that could not be decoded in ``failed_videos.txt`` and say how many there were."""
    from accelerate.logging import get_logger

    merge_failures(run)
    if not run.state.failed:
        return
    path = Path(run.config.output_dir) / "failed_videos.txt"
    if run.accelerator.is_main_process:
        write_text_atomic(
            path, "".join(f"{video}\t{reason}\n" for video, reason in sorted(run.state.failed.items()))
        )
    get_logger(__name__).warning(
        f"{len(run.state.failed)} videos could not be decoded and were skipped ({path})"
    )
