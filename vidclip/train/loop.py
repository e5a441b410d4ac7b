"""The training loop: one step in Accelerate's order (accumulate, forward + loss under autocast, backward,
clip, optimizer and scheduler step, zero), and the loop over epochs that logs, checkpoints, validates and
stops cleanly on a signal.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import torch

from vidclip.losses import class_embeddings, classification_loss, contrastive_loss
from vidclip.optim import clamp_logit_scale
from vidclip.train.evaluation import log_metrics, validate
from vidclip.train.state import RunError, TrainingDiverged, save_state

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from vidclip.train.state import Run

MAX_FAILURE_WARNINGS = 20  # further undecodable videos are only counted (and listed at the end)


def compute_loss(run: Run, batch: dict[str, Any]) -> torch.Tensor:
    """Encode the batch through the prepared model and apply the task's loss over the global batch."""
    scale = run.net.logit_scale.exp()
    if run.class_tokens is None:
        text, video = run.model(batch["video"], batch["tokens"], batch["mask"])
        return contrastive_loss(run.net.similarity, text, video, scale, batch["valid"])
    text, video = run.model(batch["video"], run.class_tokens, batch["mask"])  # text: every class x template
    classes = class_embeddings(text, len(run.config.data.templates))
    return classification_loss(run.net.similarity, classes, video, batch["label"], scale, batch["valid"])


def train_step(run: Run, batch: dict[str, Any]) -> torch.Tensor:
    """One micro-batch: forward, backward; with the last micro-batch of a step also clip, step and zero
    (Accelerate turns optimizer/scheduler steps into no-ops while accumulating)."""
    accelerator, clip = run.accelerator, run.config.train.grad_clip
    with accelerator.accumulate(run.model):
        with accelerator.autocast():  # the loss's similarity runs outside the model's own forward
            loss = compute_loss(run, batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients:  # the norm is of DDP-averaged gradients: the same on every process
            norm = accelerator.clip_grad_norm_(run.model.parameters(), clip or math.inf)
            check_finite(run, norm, loss)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def check_finite(run: Run, grad_norm: torch.Tensor, loss: torch.Tensor) -> None:
    """Stop before an optimizer step on non-finite gradients. Under fp16 the GradScaler skips such steps and
    lowers its scale, so up to ``train.max_skipped_steps`` in a row are let through first."""
    if bool(torch.isfinite(grad_norm)):
        run.skipped_steps = 0
        return
    if run.accelerator.mixed_precision == "fp16":
        run.skipped_steps += 1
        if run.skipped_steps <= run.config.train.max_skipped_steps:
            return
    step, cfg = run.state.step + 1, run.config.train
    kept = (
        f"the last checkpoint, step {run.saved_step}, is kept"
        if run.saved_step >= 0
        else "no checkpoint was written"
    )
    raise TrainingDiverged(
        f"step {step}: the loss is {loss.item():.4g} and the gradients are not finite (NaN or inf), so training "
        f"stopped before this step could spoil the weights; {kept}. The usual causes: too high a learning rate "
        f"(train.lr={cfg.lr:g}), train.eps={cfg.eps:g}, or fp16 overflow (try bf16)"
    )


def record_failures(run: Run, batch: dict[str, Any]) -> None:
    """Warn (up to a limit) once per video that could not be decoded; its slot in the batch is invalid."""
    from accelerate.logging import get_logger

    for path, reason in batch["errors"]:
        if path in run.state.failed:
            continue
        run.state.failed[path] = reason
        if len(run.state.failed) <= MAX_FAILURE_WARNINGS:
            more = (
                " (further ones are listed at the end)"
                if len(run.state.failed) == MAX_FAILURE_WARNINGS
                else ""
            )
            message = f"skipping a video that cannot be decoded: {path}: {reason}{more}"
            get_logger(__name__).warning(message, main_process_only=False)


def check_first_batch(run: Run, batch: dict[str, Any]) -> None:
    """Fail fast when no video of the first global batch decodes (usually a wrong data.video_root)."""
    if int(run.accelerator.reduce(batch["valid"].sum(), "sum")) == 0:
        examples = "; ".join(f"{path}: {reason}" for path, reason in batch["errors"][:3])
        raise RunError(
            f"no video of the first batch could be decoded (check data.train and data.video_root): {examples}"
        )


class StopSignal:
    """SIGINT (Ctrl-C) and SIGTERM (schedulers, preemption) ask the loop to stop after the current step,
    the same step on every process. A second Ctrl-C raises KeyboardInterrupt at once; a repeat within
    ``grace`` seconds is not a second Ctrl-C but a launcher (torchrun, accelerate launch) forwarding the one
    the whole process group already got."""

    def __init__(self, grace: float = 2.0) -> None:
        self.received = False
        self.grace = grace
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received:
            if signum == signal.SIGINT and time.monotonic() - self._first > self.grace:
                raise KeyboardInterrupt
            return
        self.received, self._first = True, time.monotonic()
        print(
            "\nvidclip train: stopping after this step to save a checkpoint (Ctrl-C again quits at once)",
            file=sys.stderr,
        )

    def requested(self, accelerator) -> bool:
        """True on every process as soon as any process got a signal (a collective on several processes)."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor(float(self.received), device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum") > 0)


class LossMeter:
    """Mean training loss and throughput since the last log line (the loss is averaged over processes)."""

    def __init__(self, device: torch.device) -> None:
        self.total, self.count, self.steps = torch.zeros((), device=device), 0, 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.float()
        self.count += 1

    def read(self, accelerator, batch_size: int) -> dict[str, float]:
        loss = accelerator.reduce(self.total, "mean").item() / max(self.count, 1)
        rate = self.steps * batch_size / max(time.perf_counter() - self.start, 1e-9)
        self.total.zero_()
        self.count, self.steps, self.start = 0, 0, time.perf_counter()
        return {"train/loss": loss, "train/videos_per_s": rate}


def epoch_loader(run: Run, epoch: int, done_steps: int) -> DataLoader:
    """The training loader at ``epoch``, after its first ``done_steps`` optimizer steps (for a resume)."""
    run.train.sampler.set_epoch(epoch)
    loader = run.train.loader
    skipped = done_steps * run.config.train.grad_accumulation
    if hasattr(loader, "skip"):  # a shard stream: it skips the samples without decoding them
        loader.set_epoch(epoch)
        return loader.skip(skipped)
    if done_steps:
        loader = run.accelerator.skip_first_batches(loader, skipped)
    loader.set_epoch(epoch)
    return loader


def after_step(run: Run, meter: LossMeter, bar) -> None:
    """Log, clamp the logit scale, checkpoint and validate on the configured step multiples."""
    cfg, step = run.config.train, run.state.step
    meter.steps += 1
    if run.net.logit_scale.requires_grad:
        clamp_logit_scale(run.net, cfg.max_logit_scale)
    if step % cfg.log_every == 0 or step == run.total_steps:
        values = meter.read(run.accelerator, cfg.batch_size)
        values["train/lr"] = run.scheduler.get_last_lr()[-1]  # the new modules' rate
        values["train/logit_scale"] = run.net.logit_scale.exp().item()
        log_metrics(run, values, echo=not sys.stderr.isatty())  # on a terminal the progress bar shows them
        bar.set_postfix(
            loss=f"{values['train/loss']:.4f}",
            lr=f"{values['train/lr']:.2e}",
            videos_s=f"{values['train/videos_per_s']:.1f}",
        )
    if cfg.save_every and step % cfg.save_every == 0:
        save_state(run)
    if cfg.eval_every and step % cfg.eval_every == 0 and run.val is not None:
        log_metrics(run, validate(run))


def fit(run: Run, stop: StopSignal) -> bool:
    """Train from ``run.state.step`` to ``total_steps``; False if a signal stopped it (after a whole step)."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    state, accelerator = run.state, run.accelerator
    meter = LossMeter(accelerator.device)
    bar = tqdm(  # a terminal gets the bar; logs and notebooks get the log lines (after_step) instead
        total=run.total_steps,
        initial=state.step,
        unit="step",
        disable=not accelerator.is_local_main_process or not sys.stderr.isatty(),
    )
    with bar, logging_redirect_tqdm():
        while state.step < run.total_steps:
            epoch, done = divmod(state.step, run.steps_per_epoch)
            for batch in epoch_loader(run, epoch, done):
                record_failures(run, batch)
                if state.step == 0 and meter.count == 0:
                    check_first_batch(run, batch)
                meter.add(train_step(run, batch))
                if not accelerator.sync_gradients:
                    continue  # accumulating: the optimizer step comes with the last micro-batch
                state.step += 1
                bar.update(1)
                after_step(run, meter, bar)
                if stop.requested(accelerator):
                    return False
                if state.step >= run.total_steps:
                    break
    return True
