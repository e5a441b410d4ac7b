"""Share a vidclip model on the Hugging Face Hub: ``push_to_hub(run_dir, "ORG/NAME")``, then anyone loads it
with ``vidclip.load_checkpoint("hf-hub:ORG/NAME")`` (or ``--checkpoint hf-hub:ORG/NAME`` on any command).

The repository holds what a run folder holds, minus the training state: ``model.safetensors`` (weights, and
the spec that rebuilds the model in its metadata: no pickle), the run's ``config.yaml`` when there is one, and
a generated model card ``README.md`` (front matter ``library_name: vidclip``, tags, license; the model spec,
the training config and the last value of each metric). The weights file is uploaded byte for byte, so
``vidclip extract`` gives embeddings from the Hub the same identity as from the run folder.
Loading (``hf-hub:``) lives in :mod:`vidclip.checkpoint`, which this module builds on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vidclip.checkpoint import (
    CHECKPOINTS_DIR,
    HUB_PREFIX,
    WEIGHTS_NAME,
    find_weights,
    load_checkpoint,
    save_checkpoint,
)
from vidclip.model import ModelSpec, VideoCLIP

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
CARD_NAME = "README.md"
TASK_TAGS = {"retrieval": "video-text-retrieval", "classification": "video-classification"}


def push_to_hub(
    model_or_run: VideoCLIP | str | os.PathLike,
    repo_id: str,
    *,
    config: Any = None,
    metrics: Mapping[str, float] | bool | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload vidclip model",
) -> str:
    """Upload a model to the Hub repository ``repo_id`` (created if missing) and return the commit's URL.

    ``model_or_run``: a run folder (``vidclip train``'s output: its final ``model.safetensors``, else the
    latest step checkpoint, with its ``config.yaml`` and ``metrics.jsonl``), a ``.safetensors`` file vidclip
    wrote, or a ``VideoCLIP``. ``config``: None (or True) = the run's ``config.yaml``; False = none; else a
    YAML file, a mapping or a vidclip ``Config``. ``metrics``: None (or True) = the last value of each metric
    in the run's ``metrics.jsonl`` (up to the checkpoint's step); False = none; else a mapping shown as given.
    The weights are checked first (a vidclip spec, finite, matching it): nothing unloadable is published.
    ``revision`` is a branch to push to; ``token`` defaults to the logged-in one (``hf auth login``)."""
    from huggingface_hub import HfApi, errors
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except errors.HFValidationError as err:
        raise ValueError(f"repo_id {repo_id!r}: {err}") from None
    with tempfile.TemporaryDirectory(prefix="vidclip-hub-") as staging:
        folder = Path(staging)
        spec, run_config, run_metrics = stage_model(model_or_run, folder)
        config_text = config_yaml(run_config if config is None or config is True else config)
        if config_text is not None:
            (folder / CONFIG_NAME).write_text(config_text)
        shown = dict(metrics) if isinstance(metrics, Mapping) else ({} if metrics is False else run_metrics)
        card = model_card(repo_id, spec, config=config_text, metrics=shown, license=license, tags=tags)
        (folder / CARD_NAME).write_text(card)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision
            )
        except errors.HfHubHTTPError as err:
            raise ValueError(
                f"pushing to {repo_id} failed: {str(err).splitlines()[0]} (log in with `hf auth login`, or "
                "pass token= a write token)"
            ) from None


def stage_model(model_or_run: VideoCLIP | str | os.PathLike, folder: Path) -> tuple[ModelSpec, Any, dict]:
    """Put the weights in ``folder/model.safetensors``; return the spec, and the run's config file and last
    metrics (a run folder only; None and {} otherwise)."""
    if isinstance(model_or_run, VideoCLIP):
        save_checkpoint(model_or_run, folder / WEIGHTS_NAME)
        return model_or_run.spec, None, {}
    weights = find_weights(model_or_run)
    spec = load_checkpoint(weights).spec  # refuses what would not load back, naming the file and the reason
    link_or_copy(weights, folder / WEIGHTS_NAME)
    run = Path(model_or_run)
    if str(model_or_run).startswith(HUB_PREFIX) or not run.is_dir():
        return spec, None, {}
    config = next((p for p in (weights.parent / CONFIG_NAME, run / CONFIG_NAME) if p.is_file()), None)
    step = weights.parent.name.removeprefix("step_") if weights.parent.parent.name == CHECKPOINTS_DIR else ""
    return spec, config, read_last_metrics(run / METRICS_NAME, int(step) if step.isdigit() else None)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (a model can be gigabytes), else a copy."""
    try:
        os.link(source.resolve(), target)
    except OSError:
        shutil.copyfile(source, target)


def read_last_metrics(path: Path, up_to_step: int | None = None) -> dict[str, Any]:
    """The last value of each metric in a run's ``metrics.jsonl`` (lines ``{"step": N, "name": value}``), as
    ``{"step": N, ...}``; lines after ``up_to_step`` are left out. A torn last line (a crash mid-write) is
    skipped; a malformed line before it is refused, naming the file and the line."""
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    last: dict[str, Any] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if number == len(lines):
                break
            raise ValueError(
                f"{path}:{number} is not a metrics line ({err}); fix it or pass metrics="
            ) from None
        if up_to_step is not None and isinstance(row.get("step"), int) and row["step"] > up_to_step:
            continue
        last.update(row)
    return last


def config_yaml(config: Any) -> str | None:
    """The training config as YAML text, from a YAML file, a mapping or a vidclip ``Config``; or None."""
    if config is None or config is False:
        return None
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config {path}: no such file")
        return path.read_text()
    import yaml

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists, as YAML writes them
    if not isinstance(config, Mapping):
        raise ValueError(
            f"config: expected a YAML file, a mapping or a vidclip Config, got {type(config).__name__}"
        )
    return yaml.safe_dump(dict(config), sort_keys=False)


def model_card(
    repo_id: str,
    spec: ModelSpec,
    *,
    config: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
) -> str:
    """The repository's ``README.md``: YAML front matter the Hub reads, how to load it, the spec, the config
    and the metrics."""
    from huggingface_hub import ModelCardData

    from vidclip.version import __version__

    task = _config_task(config)
    all_tags = list(
        dict.fromkeys(["vidclip", "open_clip", "video", *filter(None, [TASK_TAGS.get(task)]), *tags])
    )
    front = ModelCardData(library_name="vidclip", license=license, tags=all_tags).to_yaml()
    pretrained = f"`{spec.pretrained}`" if spec.pretrained else "none (random initialisation)"
    lines = [
        f"---\n{front}\n---\n",
        f"# {repo_id}\n",
        f"A vidclip video-language model: the open_clip model `{spec.model_name}` "
        f"(pretrained {pretrained}) with the `{spec.head}` temporal head over {spec.num_frames} frames.\n",
        "## Use\n",
        "```python\nimport vidclip\n\n"
        f'model = vidclip.load_checkpoint("{HUB_PREFIX}{repo_id}").eval()\n'
        "transform = vidclip.get_video_transform(model, train=False)\n"
        f"tokenizer = vidclip.get_tokenizer({json.dumps(spec.model_name)})\n```\n",
        "or on the command line: "
        f"`vidclip extract videos/ --out embeddings/ --checkpoint {HUB_PREFIX}{repo_id}`\n",
        "## Model\n",
        "| | |\n|---|---|",
        *(f"| {name} | {_cell(value)} |" for name, value in _spec_rows(spec)),
        f"| vidclip version | `{__version__}` |\n",
    ]
    if metrics:
        step = metrics.get("step")
        lines += [
            f"## Metrics{f' (step {step})' if step is not None else ''}\n",
            "| metric | value |\n|---|---|",
        ]
        lines += [f"| {name} | {_number(value)} |" for name, value in metrics.items() if name != "step"]
        lines.append("")
    if config:
        lines += ["## Training config\n", f"```yaml\n{config.rstrip()}\n```\n"]
    return "\n".join(lines)


def _spec_rows(spec: ModelSpec) -> list[tuple[str, Any]]:
    frozen = {None: "the head's default", True: "frozen", False: "trained"}[spec.freeze_backbone]
    return [
        ("open_clip model", spec.model_name),
        ("pretrained", spec.pretrained),
        ("head", spec.head),
        ("head options", spec.head_options),
        ("frames", spec.num_frames),
        ("backbone", frozen),
        ("QuickGELU", spec.quick_gelu),
        ("preprocessing", spec.preprocess_cfg),
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "none"
    return f"`{json.dumps(value)}`" if isinstance(value, (dict, list)) else f"`{value}`"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _config_task(config: str | None) -> str | None:
    if not config:
        return None
    import yaml

    try:
        parsed = yaml.safe_load(config)
    except yaml.YAMLError:
        return None
    return parsed.get("task") if isinstance(parsed, dict) else None
