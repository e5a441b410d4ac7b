"""Save and load VideoCLIP weights as safetensors, with the spec that rebuilds the model inside the file.

A checkpoint is one ``model.safetensors`` whose metadata holds the ``ModelSpec`` (open_clip model name,
pretrained tag, head and options, frames) and the vidclip version, so the file alone rebuilds the model, with
no download and no pickle. A training run directory holds ``model.safetensors`` at the end and
``checkpoints/step_XXXXXXXX/model.safetensors`` along the way; ``load_checkpoint(run_dir)`` takes the final one,
else the latest step. A step folder also holds what ``vidclip train --resume`` needs (optimizer, scheduler,
RNG states, as safetensors and JSON: nothing read back is a pickle) and the run's ``config.yaml``; it is written under a hidden
name and renamed when complete, so a crash mid-save never leaves a step folder that looks usable.

``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]`` names the ``model.safetensors`` of a Hugging Face Hub repository
(published with :func:`vidclip.hub.push_to_hub`): it is downloaded into, or read from, huggingface_hub's cache
(``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads the cache only), and then loads like a local file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from vidclip.fileio import atomic_path
from vidclip.model import ModelSpec, VideoCLIP, WeightsDownloadError, build_model

WEIGHTS_NAME = "model.safetensors"
CHECKPOINTS_DIR = "checkpoints"
SPEC_METADATA_KEY = "vidclip_spec"
HUB_PREFIX = "hf-hub:"


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
        path = path / WEIGHTS_NAME  # atomic_path makes the folder (a full disk there, too, names the file)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    metadata = {SPEC_METADATA_KEY: json.dumps(asdict(model.spec)), "vidclip_version": __version__}
    with atomic_path(path) as tmp:  # a crash never leaves a half-written checkpoint under the real name
        save_file(state, str(tmp), metadata=metadata)
    return path


def find_weights(path: str | os.PathLike) -> Path:
    """The weights file a path names: the file itself, ``DIR/model.safetensors``, the latest step checkpoint,
    or for ``hf-hub:ORG/NAME`` the file in the local Hugging Face cache (downloaded first when not there)."""
    if str(path).startswith(HUB_PREFIX):
        return download_from_hub(str(path))
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
    """Rebuild the VideoCLIP saved at ``path`` (a run directory, a .safetensors file, or ``hf-hub:ORG/NAME``,
    which downloads that file only) without downloading pretrained weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights = find_weights(path)
    # errors name the repository, not only a file deep in the cache
    shown = f"{path} ({weights})" if str(path).startswith(HUB_PREFIX) else str(weights)
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:
        raise ValueError(f"{shown} is not a readable safetensors checkpoint: {err}") from err
    if SPEC_METADATA_KEY not in metadata:
        raise ValueError(f"{shown} has no vidclip model spec in its metadata: not written by vidclip")
    spec = ModelSpec(**json.loads(metadata[SPEC_METADATA_KEY]))
    model = build_model(spec, load_pretrained=False)
    state = load_file(str(weights))
    broken = [
        name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if broken:  # a run that diverged: every embedding it made would be NaN
        raise ValueError(
            f"{shown} holds non-finite weights (NaN or inf) in {len(broken)} tensors, e.g. {broken[:3]}: "
            "the training run that wrote it diverged; use an earlier checkpoint"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{shown} does not match its model spec: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device)


def parse_hub_path(path: str) -> tuple[str, str | None, str | None]:
    """``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]`` -> (repo id, subfolder, revision); the revision (a branch,
    tag or commit) comes last, so it may hold slashes (``@refs/pr/1``)."""
    location, at, revision = path.removeprefix(HUB_PREFIX).partition("@")
    parts = location.split("/")
    if len(parts) < 2 or not all(parts) or (at and not revision):
        raise ValueError(
            f"{path!r} is not a Hub checkpoint name: write hf-hub:ORG/NAME, optionally followed by "
            "/SUBFOLDER and @REVISION (a branch, tag or commit)"
        )
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None


def download_from_hub(path: str) -> Path:
    """The ``model.safetensors`` that ``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]`` names, in huggingface_hub's
    cache: downloaded when missing or stale; with ``HF_HUB_OFFLINE=1`` or no network, the cached copy. Every
    failure is one line: FileNotFoundError (no such repository, revision or file), WeightsDownloadError (not
    cached and the Hub out of reach), ValueError (a malformed name, a gated or refused repository)."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    from vidclip.version import __version__

    repo_id, subfolder, revision = parse_hub_path(path)
    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    wanted = f"{subfolder}/{WEIGHTS_NAME}" if subfolder else WEIGHTS_NAME
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id,
                WEIGHTS_NAME,
                subfolder=subfolder,
                revision=revision,
                library_name="vidclip",
                library_version=__version__,
            )
        )
    except errors.HFValidationError as err:
        raise ValueError(f"{path}: {err}") from None
    except errors.LocalEntryNotFoundError:  # not in the cache, and offline or the Hub out of reach
        if constants.HF_HUB_OFFLINE:
            raise WeightsDownloadError(
                f"{path} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                "HF_HUB_OFFLINE is set: download it once where the Hub is reachable "
                f"(`hf download {repo_id}`, or load it without HF_HUB_OFFLINE), or point HF_HUB_CACHE at a "
                "cache that holds it"
            ) from None
        raise WeightsDownloadError(
            f"{path} could not be downloaded: the Hugging Face Hub is out of reach (network, proxy or "
            f"HF_ENDPOINT) and {wanted} of {where} is not in the local cache ({constants.HF_HUB_CACHE})"
        ) from None
    except errors.GatedRepoError:
        raise ValueError(
            f"{path}: {repo_id} is gated: accept its conditions on https://huggingface.co/{repo_id} and log "
            "in (`hf auth login`, or set HF_TOKEN)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{path}: no repository {repo_id} on the Hugging Face Hub (or it is private: log in with "
            "`hf auth login`, or set HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{path}: {repo_id} has no revision {revision!r}") from None
    except errors.EntryNotFoundError:
        raise FileNotFoundError(
            f"{path}: {where} holds no {wanted}, so it is not a vidclip model (an open_clip model on the Hub "
            f"loads with create_model('{HUB_PREFIX}{repo_id}') or --model {HUB_PREFIX}{repo_id})"
        ) from None
    except errors.HfHubHTTPError as err:
        raise ValueError(
            f"{path}: the Hugging Face Hub refused the download: {str(err).splitlines()[0]}"
        ) from None
