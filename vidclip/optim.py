"""AdamW parameter groups, the warmup + cosine schedule, and the logit-scale rules of CLIP training.

Groups: CLIP's own weights ("backbone") train at ``lr · backbone_lr_scale`` (CLIP4Clip's coef_lr), the head
and the modules it installed ("new") at ``lr``; each splits into decayed and not decayed.

No weight decay on
- parameters with fewer than 2 dimensions: biases, LayerNorm gains, the logit scale, class tokens. Decay
  pulls them towards 0, which for a gain or a temperature is not "simpler", just wrong;
- embedding tables (``nn.Embedding``: token and frame-position embeddings) and parameters a module lists in
  ``no_weight_decay()`` (timm's convention, which open_clip follows for its positional and class
  embeddings; prompt and adapter modules use it for their prompt tokens). These are additive vectors looked
  up or added to the input, not linear maps; shrinking them erases what was learnt for rare tokens/positions.
Everything else (the weight matrices of linear and convolution maps) is decayed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vidclip.config import TrainConfig


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters excluded from weight decay (see the module docstring)."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, nn.Embedding):
            names.update(prefix + name for name, _ in module.named_parameters(recurse=False))
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            names.update(prefix + name for name in declared())
    names.update(name for name, param in model.named_parameters() if param.ndim < 2)
    return names


def create_param_groups(
    model: nn.Module, lr: float, backbone_lr_scale: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups {backbone, new} x {decay, no_decay} of the trainable parameters; empty groups dropped.

    ``model`` must offer ``parameter_groups()`` -> {"backbone": [(name, p)], "new": [...]} (VideoCLIP does).
    """
    exempt = no_weight_decay_names(model)
    groups = []
    for part, named in model.parameter_groups().items():
        part_lr = lr * backbone_lr_scale if part == "backbone" else lr
        decay = [p for name, p in named if name not in exempt]
        keep = [p for name, p in named if name in exempt]
        for kind, params, wd in (("decay", decay, weight_decay), ("no_decay", keep, 0.0)):
            if params:
                groups.append({"name": f"{part}/{kind}", "params": params, "lr": part_lr, "weight_decay": wd})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def create_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`create_param_groups` with the config's betas and eps.

    Fused (one kernel updates every parameter) where PyTorch's default loops over them: the optimizer step
    of ViT-B/32 + seqTransf on a CPU thread takes 0.4 s instead of 2.3 s (``tools/bench_train_step.py``),
    and the update is the same to float rounding. Fused kernels exist for
    CPU, CUDA, MPS and XPU (not XLA). Not with fp16: the GradScaler always calls a fused step (it skips
    inside), so Accelerate could not tell a skipped step and the schedule would advance on it.
    """
    groups = create_param_groups(model, config.lr, config.backbone_lr_scale, config.weight_decay)
    fused = True if config.precision != "fp16" else None  # None: PyTorch's default (foreach on a GPU)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``warmup`` below 1 is a fraction of ``total_steps``; 1 or more is a number of steps."""
    return int(warmup * total_steps) if warmup < 1 else min(int(warmup), total_steps)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor at ``step``: linear from 0 to 1 over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup  # step + 1: the first step already trains (at lr / warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def create_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step schedule: each group's lr times :func:`cosine_with_warmup`."""
    num_warmup = warmup_steps(warmup, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, num_warmup, total_steps)
    )


def configure_logit_scale(model: nn.Module, fixed: float | None) -> None:
    """``fixed`` = a number: freeze ``model.logit_scale`` at log(fixed). None: leave it as the model has it
    (learnable unless the backbone is frozen, as in CLIP and CLIP4Clip)."""
    if fixed is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(fixed))
        model.logit_scale.requires_grad_(False)


@torch.no_grad()
def clamp_logit_scale(model: nn.Module, max_scale: float) -> None:
    """Keep exp(logit_scale) <= ``max_scale`` (CLIP: 100), applied after each optimizer step."""
    model.logit_scale.clamp_(max=math.log(max_scale))
