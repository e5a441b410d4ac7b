"""The run configuration: typed dataclasses are the schema, OmegaConf loads and merges YAML into them.

``load_config(["base.yaml", "exp.yaml"], ["train.lr=1e-5"])`` merges the files in order, then the dotlist
overrides, validates every key and type against the dataclasses below, and hands back a plain :class:`Config`
(library code never sees OmegaConf objects). A misspelt key or a value of the wrong type fails here, with the
key's dotted name, instead of hours later. ``save_config`` writes the resolved config a run can be rebuilt from.

No Hydra: it would take over ``main``, argv and the output folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Task = Literal["retrieval", "classification"]
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
MAX_TIMEOUT = 7 * 24 * 3600.0  # a week: larger "limits" are nonsense (and overflow the interval timer)
# Other spellings users bring from Accelerate ("no") and PyTorch ("float32"...): mapped, with a hint.
# YAML reads an unquoted ``no`` as false, which OmegaConf hands a str field as "False".
_PRECISION_ALIASES = {
    "no": "fp32",
    "False": "fp32",
    "false": "fp32",
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
}
Sampling = Literal["uniform", "random", "head", "tail", "fps"]
Tracker = Literal["tensorboard", "wandb", "none"]


class ConfigError(ValueError):
    """A config that does not fit the schema or contradicts itself; the message names the key."""


@dataclass
class ModelConfig:
    """What ``vidclip.create_model`` builds (the saved ``ModelSpec`` of every checkpoint comes from it)."""

    name: str = "ViT-B-32"  # any open_clip model name, or "tiny"
    pretrained: str | None = "openai"  # open_clip pretrained tag or a local weights file; null = random init
    head: str = "mean"  # a registered temporal head (vidclip.list_heads())
    num_frames: int = 12
    head_options: dict[str, Any] = field(default_factory=dict)  # keyword options of the head
    freeze_backbone: bool | None = None  # null = the head's default (frozen for prompt/adapter heads)


@dataclass
class DataConfig:
    """Where the annotations and videos are, and how frames are sampled from them."""

    format: str = "csv"  # a registered annotation reader (vidclip.data.list_formats())
    train: str | None = None  # the split files; what each holds depends on the format
    val: str | None = None
    test: str | None = None
    annotations: str | None = None  # a file shared by the splits (MSR-VTT's MSRVTT_data.json)
    video_root: str | None = None  # video paths are relative to it; null = the split file's folder
    class_names: str | None = None  # classification: one class name per line (integer labels index it)
    templates: list[str] = field(default_factory=lambda: ["a video of a {}."])  # classification prompts
    options: dict[str, Any] = field(default_factory=dict)  # format-specific reader options
    sampling: Sampling = "random"  # frame sampling for training
    eval_sampling: Sampling = "uniform"  # frame sampling for validation and test
    augment: bool = True  # training: one random resized crop + flip per video; false = the eval transform
    fps: float | None = None  # sample among frames at this rate (CLIP4Clip: 1); null = all frames
    decoder: str = "auto"  # auto (PyAV), pyav, decord, torchcodec or nvdec (GPU): vidclip.video.DECODERS
    num_workers: int | None = None  # DataLoader worker processes per process; null = min(4, available CPUs)
    timeout: float = 600.0  # seconds one video's decoding may take before it counts as failed; 0 = no limit
    max_pixels: int = 8192 * 4320  # pixel budget of a frame (DCI 8K), checked before decoding; 0 = no limit
    max_words: int | None = None  # caption length in tokens incl. start/end; null = the model's context


@dataclass
class TrainConfig:
    """Optimisation and the run's rhythm. ``batch_size`` is the GLOBAL batch of one optimizer step."""

    batch_size: int = 128  # across all processes and accumulation steps
    eval_batch_size: int | None = None  # null = the per-step micro-batch (batch_size / grad_accumulation)
    max_steps: int | None = None  # optimizer steps; wins over epochs when both are set
    epochs: int | None = None
    lr: float = 1e-4  # for the new modules (head, adapters, prompts)
    backbone_lr_scale: float = 1.0  # CLIP's own weights train at lr * this (CLIP4Clip's coef_lr)
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: float = 0.1  # below 1: a fraction of the total steps; 1 or more: a number of steps
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast); Accelerate's "no" still reads as fp32
    grad_checkpointing: bool = False
    grad_accumulation: int = 1  # retrieval negatives then come from one micro-batch (batch / this) only
    grad_clip: float | None = 1.0  # max global gradient norm; null = no clipping
    max_skipped_steps: int = (
        20  # fp16: steps in a row the GradScaler may skip for inf/NaN gradients, then stop
    )
    logit_scale: float | None = None  # null = the model's learnable one (clamped); a number = fixed
    max_logit_scale: float = 100.0  # the learnable scale is clamped to this after each step (CLIP)
    seed: int = 42
    save_every: int | None = None  # steps between checkpoints; one is always written at the end
    eval_every: int | None = None  # steps between validations; one always runs at the end if val is set
    log_every: int = 10
    log_with: Tracker = "tensorboard"  # skipped with a log line when the package is not installed
    project_name: str = "vidclip"


@dataclass
class Config:
    """A training or evaluation run."""

    task: Task = "retrieval"
    output_dir: str = "runs/vidclip"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_config(paths: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = ()) -> Config:
    """Merge YAML files in order, then ``key.sub=value`` overrides, into a validated :class:`Config`."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    merged = OmegaConf.structured(Config)
    source = "the defaults"
    try:
        for path in paths:
            source = str(path)
            if not Path(path).is_file():
                found = Path(path).exists()  # a folder, a FIFO (reading it would block), a device
                raise ConfigError(
                    f"config {path} is not a regular file" if found else f"config file not found: {path}"
                )
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        source = "the command-line overrides"
        bad = [item for item in overrides if "=" not in item]
        if bad:
            raise ConfigError(f"overrides must look like key.sub=value, got {bad}")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config in {source}: {_describe(err)}") from None
    except yaml.YAMLError as err:  # e.g. an unquoted "{}" (a YAML mapping) in a dotlist value
        raise ConfigError(f"invalid YAML in {source}: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError as err:  # a binary file (a checkpoint, an image) given as a config
        raise ConfigError(
            f"{source} is not a YAML config: not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    except OSError as err:  # e.g. permission denied
        raise ConfigError(f"cannot read config file {source}: {err.strerror or err}") from None
    validate_config(config)
    return config


def normalize_precision(value: str, key: str = "precision") -> Precision:
    """``value`` in the one precision vocabulary (fp32, bf16, fp16); another common spelling (Accelerate's
    ``no``, ``float16``...) is mapped with a warning that names the spelling to use; anything else is refused."""
    import warnings

    if value in PRECISIONS:
        return value  # type: ignore[return-value]
    if value in _PRECISION_ALIASES:
        mapped = _PRECISION_ALIASES[value]
        warnings.warn(
            f"{key}: {value!r} is read as {mapped!r}; write {mapped} (the spelling {value!r} goes in a later "
            "release)",
            FutureWarning,  # shown by default: the user wrote it, not a library
            stacklevel=2,
        )
        return mapped  # type: ignore[return-value]
    raise ConfigError(f"{key} must be one of {', '.join(PRECISIONS)}, got {value!r}")


def check_timeout(seconds: float, key: str = "--timeout") -> float:
    """A per-video time limit must be a finite number of seconds, 0 meaning none: ``inf``, ``nan``, ``1e30`` or
    a negative value would turn every video into a failure (or never fire), so they are refused up front."""
    import math

    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_TIMEOUT:
        raise ConfigError(
            f"{key} must be 0 (no limit) or a number of seconds up to {MAX_TIMEOUT:g}, got {seconds!r}"
        )
    return float(seconds)


def _describe(err: Exception) -> str:
    """OmegaConf's message, first line, with the full dotted key it names."""
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    return f"{key}: {message}" if key else message


def validate_config(config: Config) -> None:
    """Checks across keys that types alone cannot express; raises ConfigError naming the key."""
    train, model, data = config.train, config.model, config.data
    train.precision = normalize_precision(train.precision, "train.precision")
    check_timeout(data.timeout, "data.timeout")
    positive = {
        "model.num_frames": model.num_frames,
        "train.batch_size": train.batch_size,
        "train.grad_accumulation": train.grad_accumulation,
        "train.log_every": train.log_every,
        "train.lr": train.lr,
        "train.max_logit_scale": train.max_logit_scale,
    }
    optional_positive = {
        "train.max_steps": train.max_steps,
        "train.epochs": train.epochs,
        "train.eval_batch_size": train.eval_batch_size,
        "train.save_every": train.save_every,
        "train.eval_every": train.eval_every,
        "train.grad_clip": train.grad_clip,
        "train.logit_scale": train.logit_scale,
        "data.max_words": data.max_words,
        "data.fps": data.fps,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    for key, value in optional_positive.items():
        if value is not None and not value > 0:
            raise ConfigError(f"{key} must be positive or null, got {value}")
    for key, value in {
        "train.backbone_lr_scale": train.backbone_lr_scale,
        "train.weight_decay": train.weight_decay,
        "train.warmup": train.warmup,
        "data.num_workers": data.num_workers if data.num_workers is not None else 0,
        "data.max_pixels": data.max_pixels,
        "train.seed": train.seed,
        "train.max_skipped_steps": train.max_skipped_steps,
    }.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if train.batch_size % train.grad_accumulation:
        raise ConfigError(
            f"train.batch_size ({train.batch_size}) must be a multiple of train.grad_accumulation "
            f"({train.grad_accumulation}): each accumulation step takes an equal share of the batch"
        )
    if config.task == "classification" and not data.templates:
        raise ConfigError("data.templates must hold at least one prompt template for classification")
    for template in data.templates:
        if "{}" not in template:
            raise ConfigError(f"data.templates: {template!r} has no '{{}}' for the class name")


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict of the config (tuples as lists, as YAML writes them)."""
    return _plain(asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def config_to_yaml(config: Config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(config)))


def save_config(config: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically; ``load_config([path])`` gives it back."""
    from vidclip.fileio import write_text_atomic

    return write_text_atomic(path, config_to_yaml(config))


def flatten(tree: dict[str, Any], prefix: str = "", keep_empty: bool = True) -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4} (for trackers and diffs); empty dicts stay as values
    unless ``keep_empty`` is False."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and (value or not keep_empty):
            flat.update(flatten(value, name + ".", keep_empty))
        else:
            flat[name] = value
    return flat


def diff_configs(old: Config, new: Config, ignore: Iterable[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs, as ``key: old -> new`` lines."""
    a, b = (flatten(config_to_dict(c), keep_empty=False) for c in (old, new))
    skip = set(ignore)
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(a.keys() | b.keys())
        if key not in skip and a.get(key) != b.get(key)
    ]
