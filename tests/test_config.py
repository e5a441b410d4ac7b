"""Config loading: YAML files merged in order, dotlist overrides, plain dataclasses out, errors that name the
key; the shipped configs load and the CLIP4Clip ones hold the paper's numbers."""

from dataclasses import is_dataclass
from pathlib import Path

import pytest

from vidclip.config import (
    Config,
    ConfigError,
    TrainConfig,
    config_to_dict,
    diff_configs,
    load_config,
    save_config,
)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_are_plain_dataclasses():
    config = load_config()
    assert isinstance(config, Config) and isinstance(config.train, TrainConfig)
    assert all(is_dataclass(part) for part in (config.model, config.data, config.train))
    assert (
        type(config.model.head_options) is dict and type(config.train.betas) is tuple
    )  # no OmegaConf objects


def test_files_merge_in_order_and_overrides_win(tmp_path):
    base = write(tmp_path / "base.yaml", "train: {lr: 1.0e-4, batch_size: 64}\nmodel: {head: mean}\n")
    exp = write(tmp_path / "exp.yaml", "train: {lr: 5.0e-5}\nmodel: {head_options: {temperature: 0.2}}\n")
    config = load_config([base, exp], ["train.batch_size=32", "model.head=query_scored"])
    assert config.train.lr == 5e-5 and config.train.batch_size == 32
    assert config.model.head == "query_scored" and config.model.head_options == {"temperature": 0.2}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "train.lrr: Key 'lrr' not in 'TrainConfig'"),
        ("train.batch_size=many", "train.batch_size: Value 'many'"),
        ("train.precision=fp8", "train.precision must be one of fp32, bf16, fp16, got 'fp8'"),
        ("task=segmentation", "task: Invalid value 'segmentation'"),
        ("data.sampling=sometimes", "data.sampling: Invalid value 'sometimes'"),
        ("train.lr=-1", "train.lr must be positive"),
        ("train.warmup=-0.1", "train.warmup must be >= 0"),
        ("train.grad_accumulation=3", "multiple of train.grad_accumulation"),
        ("train.max_steps=0", "train.max_steps must be positive or null"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config([], [override])


def test_a_typo_in_a_file_names_the_file_and_the_key(tmp_path):
    path = write(tmp_path / "bad.yaml", "model: {nmae: tiny}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model.nmae"):
        load_config([path])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config([], ["train.lr"])
    with pytest.raises(ConfigError, match="invalid YAML in the command-line overrides"):
        load_config([], ["data.templates=[a {} video]"])  # unquoted {} is a YAML mapping


def test_templates_need_a_slot_for_the_class_name():
    with pytest.raises(ConfigError, match="has no"):
        load_config([], ["task=classification", "data.templates=[a video]"])


def test_saved_config_loads_back_equal(tmp_path):
    config = load_config([], ["train.lr=3e-5", "model.head_options.num_layers=2", "data.max_words=24"])
    assert load_config([save_config(config, tmp_path / "run" / "config.yaml")]) == config


def test_diff_names_changed_keys():
    a, b = load_config(), load_config([], ["train.lr=1e-3", "model.head_options.x=1"])
    assert diff_configs(a, b) == ["model.head_options.x: None -> 1", "train.lr: 0.0001 -> 0.001"]
    assert diff_configs(a, b, ignore=["train.lr", "model.head_options.x"]) == []


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    config = load_config([path])
    assert config.output_dir.startswith("runs/")
    assert config_to_dict(config)["train"]["batch_size"] == config.train.batch_size


@pytest.mark.parametrize("name", ["msrvtt_meanp.yaml", "msrvtt_seqtransf.yaml"])
def test_clip4clip_configs_hold_the_papers_settings(name):
    config = load_config([Path(__file__).parent.parent / "configs" / "retrieval" / name])
    model, data, train = config.model, config.data, config.train
    assert (model.name, model.pretrained, model.num_frames) == ("ViT-B-32", "openai", 12)
    assert (data.format, data.max_words, data.fps, data.sampling, data.augment) == (
        "msrvtt",
        32,
        1.0,
        "fps",
        False,
    )
    assert (train.lr, train.backbone_lr_scale, train.batch_size, train.epochs) == (1e-4, 1e-3, 128, 5)
    assert (train.weight_decay, train.warmup, train.betas, train.eps, train.grad_clip) == (
        0.2,
        0.1,
        (0.9, 0.98),
        1e-6,
        1.0,
    )
