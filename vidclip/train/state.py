"""What a training run holds, and how it is checkpointed and resumed through Accelerate's save/load_state.

A step checkpoint ``checkpoints/step_XXXXXXXX/`` holds vidclip's own ``model.safetensors`` (weights + model
spec: ``vidclip.load_checkpoint`` reads it, no Accelerate needed) in place of Accelerate's copy of the model,
plus Accelerate's optimizer, scheduler, RNG states and the :class:`TrainState`, and the run's config.yaml.
It is written under a hidden name and renamed once every process has written its part.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vidclip.checkpoint import WEIGHTS_NAME, list_step_checkpoints, save_checkpoint, step_checkpoint_dir
from vidclip.config import Config, ConfigError, diff_configs, load_config, save_config
from vidclip.model import VideoCLIP

if TYPE_CHECKING:
    from accelerate import Accelerator

    from vidclip.data.loaders import EvalData, TrainData


@dataclass
class TrainState:
    """The loop's own state beyond model/optimizer/scheduler/RNG (registered with Accelerate for save_state).

    The position inside an epoch is not stored: it follows from ``step`` and the steps per epoch, because the
    data order is a function of (seed, epoch).
    """

    step: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # video path -> why it could not be decoded

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "failed": dict(self.failed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.failed = int(state["step"]), dict(state["failed"])


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


def preflight(config: Config, resume: bool) -> None:
    """Checks that need no model or data, before anything slow is built: a train split, a length, a known
    annotation format, and no run to overwrite by accident."""
    from vidclip.data import get_reader
    from vidclip.video import DecoderUnavailableError, check_decoder

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


def register_checkpoint_hooks(run: Run) -> None:
    """Make Accelerate's save_state/load_state write and read vidclip's weights file instead of its own."""
    from safetensors.torch import load_file

    accelerator = run.accelerator

    def save_model(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            save_checkpoint(run.net, output_dir)
        weights.clear()  # Accelerate then writes no second copy

    def load_model(models: list, input_dir: str) -> None:
        run.net.load_state_dict(load_file(os.path.join(input_dir, WEIGHTS_NAME)))
        models.clear()

    accelerator.register_save_state_pre_hook(save_model)
    accelerator.register_load_state_pre_hook(load_model)
    accelerator.register_for_checkpointing(run.state)


def merge_failures(run: Run) -> None:
    """Every process learns every process's decoding failures (a collective: all processes call it)."""
    from accelerate.utils import gather_object

    if run.accelerator.num_processes > 1:
        for part in gather_object([run.state.failed]):
            run.state.failed.update(part)


def save_state(run: Run) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` (all processes call it) and return the folder."""
    accelerator, step = run.accelerator, run.state.step
    merge_failures(run)
    final = step_checkpoint_dir(run.config.output_dir, step)
    partial = final.with_name(f".incomplete_{final.name}")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every process writes its RNG state
    if accelerator.is_main_process:
        save_config(run.config, partial / "config.yaml")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    run.saved_step = step
    return final


def resume_or_start(run: Run, resume: bool) -> None:
    """With ``resume``, load the latest step checkpoint if there is one; write the run's config.yaml."""
    from accelerate.logging import get_logger

    logger, output = get_logger(__name__), Path(run.config.output_dir)
    checkpoints = list_step_checkpoints(output)
    if resume and checkpoints:
        folder = load_latest_readable(run, checkpoints)
        changed = diff_configs(load_config([folder / "config.yaml"]), run.config)
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


def load_latest_readable(run: Run, checkpoints: list[tuple[int, Path]]) -> Path:
    """Load the newest step checkpoint that reads back whole; a corrupt one is reported and the one before used.

    Each load replaces the whole state (weights, optimizer, scheduler, RNG, loop position), so a checkpoint that
    failed half-way leaves nothing behind once an older one has loaded.
    """
    from accelerate.logging import get_logger

    logger = get_logger(__name__)
    for _, folder in reversed(checkpoints):
        try:
            run.accelerator.load_state(str(folder))
            return folder
        except Exception as err:  # truncated safetensors, a torn optimizer file, unreadable config ...
            reason = " ".join(str(err).split())[:200]
            logger.warning(
                f"checkpoint {folder} is unreadable ({type(err).__name__}: {reason}); trying the one before"
            )
    raise RuntimeError(
        f"no readable checkpoint in {Path(run.config.output_dir) / 'checkpoints'}: every step checkpoint failed to "
        "load (see the warnings above); remove them to start over"
    )


def write_failures(run: Run) -> None:
    """List the videos that could not be decoded in ``failed_videos.txt`` and say how many there were."""
    from accelerate.logging import get_logger

    merge_failures(run)
    if not run.state.failed:
        return
    path = Path(run.config.output_dir) / "failed_videos.txt"
    if run.accelerator.is_main_process:
        path.write_text("".join(f"{video}\t{reason}\n" for video, reason in sorted(run.state.failed.items())))
    get_logger(__name__).warning(
        f"{len(run.state.failed)} videos could not be decoded and were skipped ({path})"
    )
