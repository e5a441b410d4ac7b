"""``vidclip.convert.from_hf_clip``: parity with transformers' own CLIPModel on small random models.

Each test builds a random ``CLIPModel`` from a ``CLIPConfig`` and ``save_pretrained``s it: no network
(``HF_HUB_OFFLINE=1``; the tokenizer's vocab.json and merges.txt are made from open_clip's BPE file).
"""

from __future__ import annotations

import json

import pytest
import torch

import vidclip
from vidclip.convert import from_hf_clip
from vidclip.convert.hf_clip import convert_hf_clip_state_dict, open_clip_config

transformers = pytest.importorskip(
    "transformers", reason="transformers (a test dependency in .[dev]) is not installed"
)

PARITY = 1e-5
CONTEXT = 16
SENTENCES = [
    "A man is playing a guitar.",
    "two dogs run on the beach, quickly!",
    "don't stop",
    "a very long caption that the context length of sixteen tokens cuts short before its end",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def hf_config(act: str = "quick_gelu", eps: float = 1e-6, **text_options):
    """A 2-layer CLIPConfig with towers of different widths, so a transposed or swapped tensor cannot fit."""
    text = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    vision = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=3)
    return transformers.CLIPConfig(
        text_config={**text, "max_position_embeddings": CONTEXT, "hidden_act": act, "layer_norm_eps": eps}
        | text_options,
        vision_config={**vision, "image_size": 32, "patch_size": 8, "hidden_act": act, "layer_norm_eps": eps},
        projection_dim=40,
    )


def hf_model(config, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # off HF's init (LayerNorms at 1/0, logit scale 2.66): every tensor must map right
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def saved(model, folder):
    model.save_pretrained(folder)
    return folder


def features(output) -> torch.Tensor:
    """get_*_features: a tensor (transformers 4), or an output whose pooler_output is it (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def random_inputs(config, seed: int = 1):
    """Pixels (3, 3, S, S) and token ids (3, L): ids below the eos id, one eos per row at varying places."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(3, 3, 32, 32, generator=gen)
    eos = config.text_config.eos_token_id
    ids = torch.randint(0, 49000, (3, CONTEXT), generator=gen)
    ids[ids == eos] = 0
    for row, place in enumerate((CONTEXT - 1, 9, 4)):
        ids[row, place] = eos
    return pixels, ids


def assert_towers_match(hf, model, pixels, ids):
    with torch.no_grad():
        image = features(hf.get_image_features(pixel_values=pixels))
        text = features(hf.get_text_features(input_ids=ids))
        video = model.encode_video(pixels[:, None])  # each image a one-frame video
        ours = model.encode_text(ids)
    assert (video.frames[:, 0] - image).abs().max() <= PARITY
    assert (ours - text).abs().max() <= PARITY
    assert torch.equal(model.logit_scale.detach(), hf.logit_scale.detach())


# -- parity ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_features_equal_transformers(tmp_path, act):
    config = hf_config(act)
    hf = hf_model(config)
    model = from_hf_clip(saved(hf, tmp_path), num_frames=1).eval()
    assert model.spec.quick_gelu is (act == "quick_gelu")
    assert_towers_match(hf, model, *random_inputs(config))


def test_the_activation_is_read_from_the_config(tmp_path):
    """The gelu checkpoint read as quick_gelu is off by far more than the tolerance: the parity above needs it."""
    hf = hf_model(hf_config("gelu"))
    state = hf.state_dict()
    wrong = from_hf_clip(state, config=hf_config("quick_gelu"), num_frames=1).eval()
    pixels, ids = random_inputs(hf.config)
    with torch.no_grad():
        image = features(hf.get_image_features(pixel_values=pixels))
        assert (wrong.encode_video(pixels[:, None]).frames[:, 0] - image).abs().max() > 100 * PARITY


@pytest.mark.parametrize("eos", [2, 49407, 300])
def test_text_pools_where_transformers_does(eos):
    """eos_token_id 2 (configs before transformers 4.31): the highest id; any other: the first eos."""
    config = hf_config(eos_token_id=eos)
    hf = hf_model(config)
    pixels, ids = random_inputs(config)
    ids[:, 2] = 48999  # above the eos id 300, before it: argmax and first-eos pooling disagree
    model = from_hf_clip(hf.state_dict(), config=config, num_frames=1).eval()
    assert_towers_match(hf, model, pixels, ids)


def test_config_read_as_a_dict_and_from_a_weights_file_with_its_image_normalisation(tmp_path):
    config = hf_config()
    hf = hf_model(config)
    saved(hf, tmp_path)
    from_dict = from_hf_clip(hf.state_dict(), config=json.loads((tmp_path / "config.json").read_text()))
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    from_file = from_hf_clip(tmp_path / "model.safetensors")
    assert from_file.spec.preprocess_cfg["mean"] == mean and from_file.spec.preprocess_cfg["std"] == std
    assert from_dict.spec.model_name == from_file.spec.model_name  # the same config, the same name
    for a, b in zip(from_dict.state_dict().values(), from_file.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_pytorch_model_bin_with_legacy_position_ids(tmp_path):
    """transformers < 4.31 saved position_ids buffers; a .bin is read with weights_only."""
    config = hf_config()
    hf = hf_model(config)
    state = dict(hf.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(CONTEXT)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = from_hf_clip(tmp_path, num_frames=1).eval()
    assert_towers_match(hf, model, *random_inputs(config))


def test_layer_norm_eps_and_mlp_width_follow_the_config():
    cfg = open_clip_config(hf_config(eps=1e-6).to_dict())
    assert cfg["vision_cfg"]["norm_kwargs"] == {"eps": 1e-6} == cfg["text_cfg"]["norm_kwargs"]
    odd = open_clip_config(
        {"vision_config": {"hidden_size": 176, "intermediate_size": 240, "num_attention_heads": 2}}
    )
    assert int(176 * (240 / 176)) == 239  # the plain ratio would build a narrower MLP than the weights
    assert int(176 * odd["vision_cfg"]["mlp_ratio"]) == 240


@pytest.mark.parametrize(
    "head, options", [("seq_transformer", {"num_layers": 1}), ("ted_adapter", {"text_adapters": False})]
)
def test_heads_start_from_their_own_init_on_the_converted_clip(tmp_path, head, options):
    """ted_adapter wraps CLIP's blocks (renaming their keys): it attaches after the weights are in. Its
    adapters start at zero (the text adapter does not, so it is off here): the towers give CLIP's features."""
    config = hf_config()
    hf = hf_model(config)
    model = from_hf_clip(saved(hf, tmp_path), head=head, num_frames=1, **options).eval()
    assert (model.spec.head, model.spec.head_options) == (head, options)
    assert_towers_match(hf, model, *random_inputs(config))


# -- the tokenizer ---------------------------------------------------------------------------------------------
def hf_tokenizer(folder):
    """transformers' CLIPTokenizer on open_clip's own BPE (vocab.json + merges.txt, HF's layout)."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (folder / "vocab.json").write_text(json.dumps({specials.get(t, t): i for t, i in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def test_open_clip_tokenizer_gives_the_hf_tokenizers_text_features(tmp_path):
    config = hf_config()
    hf = hf_model(config)
    model = from_hf_clip(saved(hf, tmp_path / "model"), num_frames=1).eval()
    ours = vidclip.get_tokenizer(model.spec.model_name)(SENTENCES)  # the context length comes from the config
    theirs = hf_tokenizer(tmp_path)(
        SENTENCES, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt"
    )["input_ids"]
    assert ours.shape == theirs.shape == (len(SENTENCES), CONTEXT)
    assert (ours[:, 0] == 49406).all() and (theirs[:, 0] == 49406).all()
    for row_ours, row_theirs in zip(ours, theirs, strict=True):  # HF pads with eos, open_clip with 0
        end = int((row_ours == 49407).nonzero()[0]) + 1
        assert torch.equal(row_ours[:end], row_theirs[:end])
        assert (row_ours[end:] == 0).all() and (row_theirs[end:] == 49407).all()
    assert ours[-1, -1] == 49407  # the long caption is cut with its eos kept
    with torch.no_grad():
        text = features(hf.get_text_features(input_ids=theirs))
        assert (model.encode_text(ours) - text).abs().max() <= PARITY


# -- the spec round trip, and refusals ---------------------------------------------------------------------------
def test_a_saved_checkpoint_rebuilds_the_model_in_a_fresh_process(tmp_path):
    from open_clip import factory

    config = hf_config("gelu")
    hf = hf_model(config)
    model = from_hf_clip(saved(hf, tmp_path / "hf"), head="seq_transformer", num_frames=1).eval()
    path = vidclip.save_checkpoint(model, tmp_path / "run")
    factory._MODEL_CONFIGS.pop(
        model.spec.model_name
    )  # as a new process: only the checkpoint knows the config
    loaded = vidclip.load_checkpoint(path).eval()
    assert loaded.spec == model.spec
    assert_towers_match(hf, loaded, *random_inputs(config))


def test_missing_and_unknown_keys_are_listed_with_the_file(tmp_path):
    hf = hf_model(hf_config())
    state = dict(hf.state_dict())
    del state["text_model.encoder.layers.1.self_attn.k_proj.weight"]
    del state["vision_model.post_layernorm.bias"]
    state["text_model.pooler.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError) as err:
        from_hf_clip(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "pytorch_model.bin") in message and "\n" not in message
    for key in (
        "layers.1.self_attn.k_proj.weight",
        "vision_model.post_layernorm.bias",
        "text_model.pooler.weight",
    ):
        assert key in message


def test_a_config_that_does_not_fit_the_weights_is_refused_naming_the_keys(tmp_path):
    hf = hf_model(hf_config())
    with pytest.raises(ValueError, match=r"missing: .*text_model\.encoder\.layers\.2\."):
        from_hf_clip(hf.state_dict(), config=hf_config(num_hidden_layers=3))
    with pytest.raises(ValueError, match=r"wrong shape .*token_embedding"):
        from_hf_clip(hf.state_dict(), config=hf_config(vocab_size=1000))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "siglip"}, "not a transformers CLIPModel"),
        ({"text_config": {"hidden_act": "gelu_new"}}, "hidden_act"),
        ({"text_config": {"hidden_act": "gelu"}}, "hidden_act"),  # towers differ: open_clip has one flag
        ({"vision_config": {"num_channels": 1}}, "num_channels"),
    ],
)
def test_configs_open_clip_cannot_build_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        open_clip_config({"text_config": {}, "vision_config": {}} | change)


def test_unreadable_sources_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CLIPModel weights"):
        from_hf_clip(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        from_hf_clip(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        from_hf_clip(tmp_path)
    with pytest.raises(ValueError, match="needs config="):
        from_hf_clip({})
    with pytest.raises(ValueError, match="unknown head"):
        from_hf_clip(tmp_path, head="nope")


def test_state_dict_conversion_infers_layers_from_the_keys():
    hf = hf_model(hf_config())
    converted = convert_hf_clip_state_dict(hf.state_dict())
    assert "transformer.resblocks.1.attn.in_proj_weight" in converted
    assert converted["visual.proj"].shape == (48, 40)  # (width, embed): HF's Linear weight transposed
