"""Sharing on the Hugging Face Hub, offline: ``push_to_hub`` uploads into a local folder (HfApi patched), the
folder is laid out as huggingface_hub's cache (``models--ORG--NAME/snapshots/<rev>/`` + ``refs/<branch>``) and
``load_checkpoint("hf-hub:ORG/NAME")`` reads it with HF_HUB_OFFLINE set."""

from __future__ import annotations

import hashlib
import json
import shutil
import types
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import constants, errors

import vidclip
from vidclip.checkpoint import find_weights, parse_hub_path, step_checkpoint_dir
from vidclip.commands import extract
from vidclip.config import Config, ModelConfig, save_config
from vidclip.hub import push_to_hub, read_last_metrics
from vidclip.model import WeightsDownloadError

NUM_FRAMES = 4


class FakeHub:
    """What push_to_hub sends lands in ``remote/ORG/NAME/<branch>/``; ``publish`` copies a repository into the
    local cache as huggingface_hub lays it out, under a fresh commit hash."""

    def __init__(self, root: Path):
        self.remote, self.cache = root / "remote", root / "cache"
        self.calls: list[tuple[str, dict]] = []

    def upload_folder(self, *, repo_id, folder_path, commit_message, revision=None):
        self.calls.append(("upload_folder", {"repo_id": repo_id, "commit_message": commit_message}))
        shutil.copytree(folder_path, self.remote / repo_id / (revision or "main"), dirs_exist_ok=True)
        return f"https://huggingface.co/{repo_id}/commit/0123abcd"

    def files(self, repo_id: str, branch: str = "main") -> dict[str, Path]:
        folder = self.remote / repo_id / branch
        return {str(path.relative_to(folder)): path for path in folder.rglob("*") if path.is_file()}

    def publish(self, repo_id: str, branch: str = "main", source: Path | None = None) -> Path:
        commit = hashlib.sha1(f"{repo_id}@{branch}{len(self.calls)}".encode()).hexdigest()
        repo = self.cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(source or self.remote / repo_id / branch, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
        return repo / "snapshots" / commit


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hub")
    fake.cache.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: fake.upload_folder(**kw))
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_repo",
        lambda self, repo_id, **kw: fake.calls.append(("create_repo", kw)),
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_branch", lambda self, repo_id, **kw: fake.calls.append(("branch", kw))
    )
    # huggingface_hub reads its environment once, at import: the constants are what it consults afterwards
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(fake.cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(fake.cache))
    return fake


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vidclip.create_model("tiny", head="seq_transformer", num_frames=NUM_FRAMES).eval()


@pytest.fixture
def run_dir(model, tmp_path):
    """What ``vidclip train`` leaves: config.yaml, metrics.jsonl, model.safetensors."""
    run = tmp_path / "run"
    vidclip.save_checkpoint(model, run)
    config = Config(
        task="retrieval", output_dir=str(run), model=ModelConfig(name="tiny", head="seq_transformer")
    )
    config.train.lr = 3e-4
    save_config(config, run / "config.yaml")
    rows = [{"step": 10, "train/loss": 2.5}, {"step": 20, "train/loss": 1.25, "val/t2v/R@1": 41.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def similarities(model) -> torch.Tensor:
    torch.manual_seed(1)
    video = torch.randn(3, NUM_FRAMES, 3, model.image_size, model.image_size)  # (B, T, 3, S, S)
    tokens = vidclip.get_tokenizer(model.spec.model_name)(["a dog", "a cat", "a man cooking"])
    with torch.no_grad():
        return model.similarity(model.encode_text(tokens), model.encode_video(video))


def test_a_pushed_run_loads_back_from_the_cache_with_the_same_similarities(hub, model, run_dir):
    url = push_to_hub(run_dir, "org/tiny-video", license="mit", tags=["msrvtt"])
    assert url == "https://huggingface.co/org/tiny-video/commit/0123abcd"
    files = hub.files("org/tiny-video")
    assert set(files) == {"model.safetensors", "README.md", "config.yaml"}
    # byte for byte: vidclip extract identifies the model by the file's digest
    assert files["model.safetensors"].read_bytes() == (run_dir / "model.safetensors").read_bytes()
    snapshot = hub.publish("org/tiny-video")

    loaded = vidclip.load_checkpoint("hf-hub:org/tiny-video").eval()
    assert loaded.spec == model.spec
    torch.testing.assert_close(similarities(loaded), similarities(model), rtol=0, atol=0)
    assert find_weights("hf-hub:org/tiny-video") == snapshot / "model.safetensors"


def test_the_model_card_holds_the_spec_config_and_metrics(hub, run_dir):
    push_to_hub(run_dir, "org/tiny-video", license="mit", tags=["msrvtt"])
    card = hub.files("org/tiny-video")["README.md"].read_text()
    _, front, body = card.split("---\n", 2)
    front = yaml.safe_load(front)
    assert front["library_name"] == "vidclip" and front["license"] == "mit"
    assert {"vidclip", "open_clip", "video-text-retrieval", "msrvtt"} <= set(front["tags"])
    assert "`tiny`" in body and "`seq_transformer`" in body and f"| frames | `{NUM_FRAMES}` |" in body
    assert 'vidclip.load_checkpoint("hf-hub:org/tiny-video")' in body
    assert (
        "## Metrics (step 20)" in body
        and "| val/t2v/R@1 | 41.5 |" in body
        and "| train/loss | 1.25 |" in body
    )
    config = yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert config["train"]["lr"] == 3e-4 and config["task"] == "retrieval"
    assert yaml.safe_load(hub.files("org/tiny-video")["config.yaml"].read_text()) == config


def test_a_model_object_with_given_metrics_and_no_config(hub, model):
    push_to_hub(model, "org/from-memory", metrics={"k400/top1": 0.61234}, private=True)
    assert ("create_repo", {"private": True, "exist_ok": True}) in hub.calls
    files = hub.files("org/from-memory")
    assert set(files) == {"model.safetensors", "README.md"}
    card = files["README.md"].read_text()
    assert "| k400/top1 | 0.6123 |" in card and "Training config" not in card and "license" not in card
    hub.publish("org/from-memory")
    torch.testing.assert_close(
        similarities(vidclip.load_checkpoint("hf-hub:org/from-memory")), similarities(model)
    )


def test_a_run_with_only_step_checkpoints_shows_the_metrics_of_that_step(hub, model, tmp_path):
    run = tmp_path / "run"
    step = step_checkpoint_dir(run, 10)
    vidclip.save_checkpoint(model, step)
    save_config(Config(model=ModelConfig(name="tiny")), step / "config.yaml")
    lines = [{"step": 10, "val/t2v/R@1": 20.0}, {"step": 15, "val/t2v/R@1": 30.0}]
    torn = '{"step": 2'  # a crash mid-write
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines) + torn)
    push_to_hub(run, "org/steps", config=False)
    card = hub.files("org/steps")["README.md"].read_text()
    assert "## Metrics (step 10)" in card and "| val/t2v/R@1 | 20 |" in card and "| 30 |" not in card
    assert "config.yaml" not in hub.files("org/steps") and "Training config" not in card


def test_a_malformed_metrics_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2}\nnot json\n{"step": 2, "loss": 1}\n')
    with pytest.raises(ValueError, match=rf"{path}:2 is not a metrics line"):
        read_last_metrics(path)


def test_revisions_and_subfolders(hub, model, run_dir, tmp_path):
    push_to_hub(run_dir, "org/multi", revision="v1")
    assert ("branch", {"branch": "v1", "exist_ok": True}) in hub.calls
    hub.publish("org/multi", branch="v1")
    assert vidclip.load_checkpoint("hf-hub:org/multi@v1").spec == model.spec
    other = vidclip.create_model("tiny", head="mean", num_frames=2)
    layout = tmp_path / "layout"
    vidclip.save_checkpoint(other, layout / "mean-2f")
    hub.publish("org/several", source=layout)
    assert vidclip.load_checkpoint("hf-hub:org/several/mean-2f").spec == other.spec
    with pytest.raises(WeightsDownloadError, match="hf-hub:org/multi is not in the local Hugging Face cache"):
        vidclip.load_checkpoint("hf-hub:org/multi")  # only v1 is cached


@pytest.mark.parametrize(
    "path, expected",
    [
        ("hf-hub:org/name", ("org/name", None, None)),
        ("hf-hub:org/name@v1.0", ("org/name", None, "v1.0")),
        ("hf-hub:org/name/runs/a@refs/pr/1", ("org/name", "runs/a", "refs/pr/1")),
    ],
)
def test_parse_hub_path(path, expected):
    assert parse_hub_path(path) == expected


@pytest.mark.parametrize("path", ["hf-hub:name", "hf-hub:org/", "hf-hub:org//name", "hf-hub:org/name@"])
def test_a_malformed_hub_name_says_how_to_write_one(path):
    with pytest.raises(ValueError, match="write hf-hub:ORG/NAME"):
        vidclip.load_checkpoint(path)


def test_a_repo_not_in_the_cache_offline_is_one_line_that_says_how_to_get_it(hub):
    with pytest.raises(WeightsDownloadError) as info:
        vidclip.load_checkpoint("hf-hub:org/absent")
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None
    assert "hf-hub:org/absent is not in the local Hugging Face cache" in message and str(hub.cache) in message
    assert "HF_HUB_OFFLINE is set" in message and "hf download org/absent" in message


def test_a_repo_without_a_vidclip_spec_is_refused_naming_it(hub, tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "plain").mkdir()
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "plain" / "model.safetensors"))
    hub.publish("org/not-vidclip", source=tmp_path / "plain")
    with pytest.raises(ValueError, match=r"^hf-hub:org/not-vidclip \(.*\) has no vidclip model spec"):
        vidclip.load_checkpoint("hf-hub:org/not-vidclip")
    with pytest.raises(ValueError, match="has no vidclip model spec"):
        push_to_hub(tmp_path / "plain", "org/copy")  # nothing unloadable is published
    assert hub.files("org/copy") == {}


def test_a_refused_push_or_a_bad_repo_id_is_one_line(hub, model, monkeypatch):
    def refuse(self, repo_id, **kwargs):
        raise errors.HfHubHTTPError("401 Unauthorized\nInvalid credentials", response=response(401))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    with pytest.raises(ValueError, match=r"^pushing to org/x failed: 401 Unauthorized \(log in") as info:
        push_to_hub(model, "org/x")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="repo_id 'org/a b'"):
        push_to_hub(model, "org/a b")


def response(status: int):
    """As much of an HTTP response as huggingface_hub's errors read (its HTTP library changes by version)."""
    return types.SimpleNamespace(status_code=status, headers={}, request=None)


@pytest.mark.parametrize(
    "error, kind, words",
    [
        (
            errors.LocalEntryNotFoundError("cannot reach"),
            WeightsDownloadError,
            "the Hugging Face Hub is out of reach",
        ),
        (
            errors.RepositoryNotFoundError("404", response=response(404)),
            FileNotFoundError,
            "no repository org/name",
        ),
        (errors.GatedRepoError("403", response=response(403)), ValueError, "is gated"),
        (
            errors.RevisionNotFoundError("404", response=response(404)),
            FileNotFoundError,
            "has no revision 'v9'",
        ),
        (
            errors.RemoteEntryNotFoundError("404", response=response(404)),
            FileNotFoundError,
            "holds no model.safet",
        ),
        (
            errors.HfHubHTTPError("500 Server Error\nbody", response=response(500)),
            ValueError,
            "500 Server Error",
        ),
    ],
)
def test_each_hub_failure_is_one_line(error, kind, words, monkeypatch):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online: what the Hub answered
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(kind) as info:
        vidclip.load_checkpoint("hf-hub:org/name@v9")
    assert words in str(info.value) and "\n" not in str(info.value) and info.value.__cause__ is None


def test_extract_from_the_hub_is_the_same_model_as_from_the_run(hub, run_dir, index_video, tmp_path, capsys):
    video, out = index_video(num_frames=12), tmp_path / "out"
    assert (
        extract.main([str(video), "--out", str(out), "--checkpoint", str(run_dir), "--num-workers", "0"]) == 0
    )
    push_to_hub(run_dir, "org/tiny-video")
    hub.publish("org/tiny-video")
    capsys.readouterr()
    hub_args = [str(video), "--out", str(out), "--checkpoint", "hf-hub:org/tiny-video", "--num-workers", "0"]
    assert extract.main(hub_args) == 0  # the same identity: the rows already there count as done
    assert "1 skipped (already done)" in capsys.readouterr().out
    assert extract.main([*hub_args[:-3], "hf-hub:org/absent", "--num-workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hf-hub:org/absent is not in the local Hugging Face cache" in err
