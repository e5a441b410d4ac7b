"""Training as a function of a config: build the run, prepare it once with Accelerate, run the loop, finish.

``vidclip train`` (:mod:`vidclip.commands.train`) parses the command line and calls :func:`train`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vidclip.checkpoint import WEIGHTS_NAME, save_checkpoint, step_checkpoint_dir
from vidclip.config import Config, ConfigError, config_to_dict, flatten
from vidclip.fileio import FolderInUseError, exclusive_lock
from vidclip.inference.runtime import check_precision
from vidclip.model import VideoCLIP, create_model
from vidclip.optim import configure_logit_scale, create_optimizer, create_scheduler
from vidclip.train.evaluation import log_metrics, validate
from vidclip.train.loop import StopSignal, fit
from vidclip.train.state import (
    Run,
    TrainingDiverged,
    check_output_dir,
    preflight,
    resume_or_start,
    save_state,
    write_failures,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

EXIT_INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C


def train(config: Config, resume: bool = False) -> int:
    """Run the training ``config`` describes; 0 when complete, 130 when a signal stopped it (state saved).

    Every process holds its rank's lock on ``output_dir`` (:func:`vidclip.fileio.exclusive_lock`) from before
    anything there is read or written to the end: another run on the same ``output_dir`` is refused at once,
    a ConfigError naming the folder and the PID holding it."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    check_output_dir(config.output_dir)  # a file, or unwritable: refused before the lock file is made in it
    lock = Path(config.output_dir) / ".vidclip-train.lock"
    try:
        with exclusive_lock(lock, "vidclip train run", rank=rank, world=world):
            return run_training(config, resume)
    except FolderInUseError as err:
        raise ConfigError(f"output_dir: {err}") from None


def run_training(config: Config, resume: bool) -> int:
    """:func:`train`, once the lock on ``output_dir`` is held."""
    from accelerate.logging import get_logger
    from accelerate.utils import set_seed

    preflight(config, resume)
    accelerator = create_accelerator(config)
    set_seed(config.train.seed)  # before building: the same initial weights on every process and every run
    run = setup(config, accelerator)
    resume_or_start(run, resume)
    accelerator.init_trackers(config.train.project_name, config=tracker_config(config))
    describe(run)
    try:
        with (
            StopSignal() as stop
        ):  # also while the last checkpoint is written: a repeat signal must not cut it
            completed = fit(run, stop)
            if completed:
                finish(run)
            else:
                step = run.state.step
                folder = (
                    save_state(run)
                    if run.saved_step != step
                    else step_checkpoint_dir(config.output_dir, step)
                )
                get_logger(__name__).warning(
                    f"interrupted at step {step}: state saved in {folder}; continue with --resume"
                )
    except TrainingDiverged:
        accelerator.end_training()  # nothing more is written: the last checkpoint stays the last good one
        raise
    accelerator.wait_for_everyone()  # no process tears the process group down while a peer still uses it
    accelerator.end_training()
    return 0 if completed else EXIT_INTERRUPTED


def create_accelerator(config: Config) -> Accelerator:
    """Split (global) batches, the config's precision and accumulation, a tracker if one is installed."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    output = Path(config.output_dir)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    try:  # before Accelerate: it would fail with a traceback deep in its setup
        check_precision(config.train.precision, torch.device("cuda"), fix="train.precision=fp16 (or fp32)")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    accelerator = Accelerator(
        cpu=launched > 1 and not torch.cuda.is_available(),  # else torchrun on CPU gives N lone processes
        mixed_precision={"fp32": "no"}.get(
            config.train.precision, config.train.precision
        ),  # Accelerate's word
        gradient_accumulation_steps=config.train.grad_accumulation,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=available_tracker(config.train.log_with),
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(
            f"launched as {launched} processes but Accelerate formed a group of "
            f"{accelerator.num_processes}: check the launcher and the devices"
        )
    return accelerator


def available_tracker(name: str) -> str | None:
    """The tracker to hand Accelerate: TensorBoard is skipped (with a log line) when not installed."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if name == "tensorboard" and not is_tensorboard_available():
        if int(os.environ.get("RANK", "0")) == 0:  # before the Accelerator exists: say it once
            logging.getLogger(__name__).info(
                "tensorboard is not installed: metrics go to the log and metrics.jsonl"
            )
        return None
    if name == "wandb" and not is_wandb_available():
        raise ConfigError("train.log_with=wandb but wandb is not installed (pip install wandb)")
    return None if name == "none" else name


def tracker_config(config: Config) -> dict[str, Any]:
    """The config flattened for trackers (TensorBoard's hparams take scalars and strings only)."""
    flat = flatten(config_to_dict(config))
    return {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in flat.items()
    }


def create_run_model(config: Config) -> VideoCLIP:
    """The model the config describes, with gradient checkpointing and the logit-scale rule applied."""
    spec = config.model
    try:
        model = create_model(
            spec.name,
            spec.pretrained,
            spec.head,
            spec.num_frames,
            freeze_backbone=spec.freeze_backbone,
            **spec.head_options,
        )
    except ValueError as err:  # an unknown model, tag, head or option: the config's fault, said in one line
        raise ConfigError(f"model: {err}") from None
    if config.train.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)
    configure_logit_scale(model, config.train.logit_scale)
    return model.train()


def setup(config: Config, accelerator: Accelerator) -> Run:
    """Build model, data, optimizer and schedule, then ``accelerator.prepare`` them all, once."""
    from vidclip.data.loaders import create_eval_data, create_train_data, get_caption_tokenizer
    from vidclip.data.shard_stream import streams_by_itself

    batch, processes = config.train.batch_size, accelerator.num_processes
    micro = batch // config.train.grad_accumulation  # the global batch of one forward pass
    if micro % processes:
        raise ConfigError(
            f"train.batch_size / train.grad_accumulation = {micro} must be a multiple of the "
            f"{processes} processes"
        )
    net = create_run_model(config)
    tokenizer = get_caption_tokenizer(config, net)
    train = create_train_data(config, net, tokenizer, micro)
    eval_batch = -(-(config.train.eval_batch_size or micro) // processes) * processes  # rounded up to N
    val = create_eval_data(config, net, tokenizer, "val", eval_batch) if config.data.val else None
    if val is not None and val.class_names != train.class_names:
        raise ConfigError(
            "data.val has other class names than data.train: their label indices would disagree"
        )
    steps_per_epoch = len(train.sampler) // batch
    total = config.train.max_steps or steps_per_epoch * config.train.epochs
    optimizer = create_optimizer(net, config.train)
    scheduler = create_scheduler(optimizer, total, config.train.warmup)
    loaders = [train.loader, *([val.videos, val.texts] if val else [])]
    # Shard streams split themselves over the processes (each reads its own shards): Accelerate must not
    # dispatch or shard them again; they only need the batches on this process's device.
    own = [streams_by_itself(loader) for loader in loaders]
    prepared = accelerator.prepare(
        net, optimizer, scheduler, *[ld for ld, o in zip(loaders, own, strict=True) if not o]
    )
    model, optimizer, scheduler, rest = prepared[0], prepared[1], prepared[2], iter(prepared[3:])
    loaders = [loader if o else next(rest) for loader, o in zip(loaders, own, strict=True)]
    train.loader = loaders[0]
    if own[0]:
        train.loader.device = accelerator.device
    if val is not None:
        val.videos, val.texts = loaders[1], loaders[2]
    tokens = class_prompt_tokens(config, train.class_names, tokenizer, accelerator.device)
    return Run(
        config, accelerator, model, net, optimizer, scheduler, train, val, tokens, steps_per_epoch, total
    )


def class_prompt_tokens(
    config: Config, class_names: list[str] | None, tokenizer, device
) -> torch.Tensor | None:
    """Tokens (C·K, L) of every class name in every template, class-major (``class_embeddings`` order)."""
    if class_names is None:
        return None
    prompts = [template.format(name) for name in class_names for template in config.data.templates]
    return tokenizer(prompts).to(device)


def describe(run: Run) -> None:
    """One log line: task, model, steps and batch, processes, trainable parameters."""
    from accelerate.logging import get_logger

    groups = run.net.parameter_groups()
    count = {part: sum(p.numel() for _, p in named) for part, named in groups.items()}
    cfg, processes = run.config, run.accelerator.num_processes
    get_logger(__name__).info(
        f"{cfg.task} | {cfg.model.name} + {cfg.model.head} | {run.total_steps} steps of global batch "
        f"{cfg.train.batch_size} on {processes} process{'es' if processes > 1 else ''}, "
        f"{run.steps_per_epoch} steps/epoch | trainable parameters {run.net.num_trainable_parameters():,} "
        f"(backbone {count['backbone']:,}, new {count['new']:,})"
    )


def finish(run: Run) -> None:
    """Final checkpoint, final weights, final validation, and the report of videos skipped."""
    from accelerate.logging import get_logger

    if run.saved_step != run.state.step:
        save_state(run)
    output = Path(run.config.output_dir)
    if run.accelerator.is_main_process:
        save_checkpoint(run.net, output)
    if run.val is not None and run.evaluated_step != run.state.step:
        log_metrics(run, validate(run))
    write_failures(run)
    get_logger(__name__).info(f"done: {run.state.step} steps; weights in {output / WEIGHTS_NAME}")
