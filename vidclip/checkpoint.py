"""Save and load VideoCLIP weights as safetensors, with the spec that rebuilds the model inside the file.

A checkpoint is one ``model.safetensors`` whose metadata holds the ``ModelSpec`` (open_clip model name,
pretrained tag, head and options, frames) and the vidclip version, so the file alone rebuilds the model, with
no download and no pickle. A training run directory holds ``model.safetensors`` at the end and
``checkpoints/step_XXXXXXXX/model.safetensors`` along the way; ``load_checkpoint(run_dir)`` takes the final one,
else the latest step. A step folder also holds what ``vidclip train --resume`` needs (optimizer, scheduler,
RNG states, as safetensors and JSON: nothing read back is a pickle) and the run's ``config.yaml``; it is written under a hidden
name and renamed when complete, so a crash mid-save never leaves a step folder that looks usable.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from vidclip.fileio import atomic_path
from vidclip.model import ModelSpec, VideoCLIP, build_model

WEIGHTS_NAME = "model.safetensors"
CHECKPOINTS_DIR = "checkpoints"
SPEC_METADATA_KEY = "vidclip_spec"


def step_checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """``run_dir/checkpoints/step_XXXXXXXX``: where a run saves its state after ``step`` optimizer steps."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def list_step_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete step checkpoints of a run, as (step, folder), oldest first."""
    found = []
    for folder in (Path(run_dir) / CHECKPOINTS_DIR).glob("step_*"):
        suffix = folder.name.removeprefix("step_")
        if suffix.isdigit() and (folder / WEIGHTS_NAME).is_file():
            found.append((int(suffix), folder))
    return sorted(found)


def save_checkpoint(model: VideoCLIP, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights and spec to ``path`` (a .safetensors file, or a directory to hold one)."""
    from safetensors.torch import save_file

    from vidclip.version import __version__

    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / WEIGHTS_NAME
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    metadata = {SPEC_METADATA_KEY: json.dumps(asdict(model.spec)), "vidclip_version": __version__}
    with atomic_path(path) as tmp:  # a crash never leaves a half-written checkpoint under the real name
        save_file(state, str(tmp), metadata=metadata)
    return path


def find_weights(path: str | os.PathLike) -> Path:
    """The weights file a path names: the file itself, ``DIR/model.safetensors``, or the latest step checkpoint."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if (path / WEIGHTS_NAME).is_file():
        return path / WEIGHTS_NAME
    steps = list_step_checkpoints(path)
    if steps:
        return steps[-1][1] / WEIGHTS_NAME
    raise FileNotFoundError(f"{path} holds no {WEIGHTS_NAME} (nor {CHECKPOINTS_DIR}/step_*/{WEIGHTS_NAME})")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> VideoCLIP:
    """Rebuild the VideoCLIP saved at ``path`` (a run directory or a .safetensors file) without downloading."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights = find_weights(path)
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:
        raise ValueError(f"{weights} is not a readable safetensors checkpoint: {err}") from err
    if SPEC_METADATA_KEY not in metadata:
        raise ValueError(f"{weights} has no vidclip model spec in its metadata: not written by vidclip")
    spec = ModelSpec(**json.loads(metadata[SPEC_METADATA_KEY]))
    model = build_model(spec, load_pretrained=False)
    state = load_file(str(weights))
    broken = [
        name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if broken:  # a run that diverged: every embedding it made would be NaN
        raise ValueError(
            f"{weights} holds non-finite weights (NaN or inf) in {len(broken)} tensors, e.g. {broken[:3]}: "
            "the training run that wrote it diverged; use an earlier checkpoint"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its model spec: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device)
