"""``vidclip.convert.from_m2clip``: parity with M2-CLIP's own code, its ViT-B/16 checkpoint layout, and errors.

The fixtures (tests/fixtures/m2clip_parity.*) were made by tools/make_m2clip_parity_fixture.py from an M2-CLIP
checkout: ``.pth`` is a checkpoint its ``save_model`` wrote (adapters only) for a small CLIP built by its own
constructor, ``.pt`` the seed that regenerates that CLIP's backbone, the inputs and M2-CLIP's features,
``.json`` the same small CLIP as an open_clip config.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import vidclip
from vidclip.convert import from_m2clip
from vidclip.convert.m2clip import _head_options, _new_module_keys, _vidclip_state_dict

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures"
CHECKPOINT = FIXTURES / "m2clip_parity.pth"
MODEL = "m2clip_parity"  # the open_clip config in tests/fixtures/m2clip_parity.json
TOLERANCE = 1e-5  # fp32 on both sides, same formulas: measured differences are ~1e-6
NOT_IN_VIDCLIP = r"mlm_adapter\.\* .*transformer\.resblocks\.12\.\* \(text block 12.*visual\.adapter_fc\.\* "


def _fixture_tool():
    spec = importlib.util.spec_from_file_location(
        "make_m2clip_parity_fixture", ROOT / "tools/make_m2clip_parity_fixture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recorded():
    vidclip.model.register_model_configs()
    open_clip.add_model_config(FIXTURES / f"{MODEL}.json")
    return torch.load(FIXTURES / "m2clip_parity.pt", weights_only=True)


@pytest.fixture(scope="module")
def backbone(recorded):
    """The CLIP the fixture's adapters ran on, under M2-CLIP's (= OpenAI's) names, text block 12 included."""
    return _fixture_tool().random_state_dict(recorded["backbone_shapes"], recorded["seed"])


@pytest.fixture(scope="module")
def pretrained_file(backbone, tmp_path_factory):
    """That CLIP as an open_clip weights file (OpenAI's 12 text blocks), as ``pretrained=`` takes one."""
    path = tmp_path_factory.mktemp("m2clip") / "clip.pt"
    torch.save({k: v for k, v in backbone.items() if not k.startswith("transformer.resblocks.12.")}, path)
    return str(path)


def adapters() -> dict[str, torch.Tensor]:
    return torch.load(CHECKPOINT, weights_only=True)["model"]


def convert(source, **kwargs) -> vidclip.VideoCLIP:
    """from_m2clip on the small CLIP, expecting the warning that names what vidclip does not load."""
    with pytest.warns(UserWarning, match=NOT_IN_VIDCLIP):
        return from_m2clip(source, MODEL, num_frames=4, **kwargs).eval()


def features(model: vidclip.VideoCLIP, recorded) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        video = model.encode_video(recorded["video"])
        adapted = model.head.encode_frames(video.frames, video.mask)  # M2-CLIP's t_adapter output
        return {"frames": adapted, "pooled": video.pooled, "text": model.encode_text(recorded["tokens"])}


# -- parity with M2-CLIP's code ----------------------------------------------------------------------------------
def test_fixture_is_informative(recorded, pretrained_file):
    # the tool checked in M2-CLIP's code: encode_text ignores text block 12, block 11's adapter acts
    assert recorded["text_blocks"] == {"block_12_idle": True, "block_11_adapter_acts": True}
    plain = features(vidclip.create_model(MODEL, pretrained_file, "mean", num_frames=4).eval(), recorded)
    assert (plain["frames"] - recorded["frame_features"]).abs().max() > 1000 * TOLERANCE  # adapters matter
    assert (plain["text"] - recorded["text_features"]).abs().max() > 1000 * TOLERANCE
    for name in ("video_features", "text_features"):  # each video, each caption gives its own features
        rows = recorded[name]
        assert torch.cdist(rows, rows).add(torch.eye(len(rows))).min() > 1000 * TOLERANCE


def test_adapter_checkpoint_on_pretrained_matches_m2clip(recorded, pretrained_file):
    model = convert(CHECKPOINT, pretrained=pretrained_file)
    assert model.spec.head == "ted_adapter" and model.spec.head_options == {"bottleneck": 32}
    assert model.spec.quick_gelu and model.spec.pretrained == pretrained_file
    ours = features(model, recorded)
    torch.testing.assert_close(ours["frames"], recorded["frame_features"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(ours["frames"].mean(1), recorded["video_features"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(ours["text"], recorded["text_features"], atol=TOLERANCE, rtol=0)
    # vidclip's meanP: normalise each adapted frame, average, normalise (M2-CLIP normalises the average only)
    meanp = F.normalize(F.normalize(recorded["frame_features"], dim=-1).mean(1), dim=-1)
    torch.testing.assert_close(ours["pooled"], meanp, atol=TOLERANCE, rtol=0)


def test_full_state_dict_matches_m2clip_without_pretrained(recorded, backbone):
    half = {k: v.half() if v.ndim >= 2 else v for k, v in backbone.items()}  # M2-CLIP's frozen fp16 matrices
    exact = convert({**backbone, **adapters()})
    ours = features(exact, recorded)
    torch.testing.assert_close(ours["frames"], recorded["frame_features"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(ours["text"], recorded["text_features"], atol=TOLERANCE, rtol=0)
    rounded = convert({**half, **adapters()})
    assert all(p.dtype == torch.float32 for p in rounded.parameters())
    # fp16 storage rounds the backbone (relative 5e-4 per weight): the features move, but stay close
    for name in ("frames", "text"):  # measured 1.2e-3 and 1.6e-3
        torch.testing.assert_close(features(rounded, recorded)[name], ours[name], atol=5e-3, rtol=0)


def test_head_options_are_read_off_the_checkpoint(recorded, pretrained_file):
    """Adapters on some ViT blocks only; a text adapter only in the idle block 12 (M2-CLIP's ViT-B/32 12x384)."""
    state = {
        k: v
        for k, v in adapters().items()
        if not k.startswith(("visual.transformer.resblocks.0.", "transformer.resblocks.11."))
    }
    model = convert(state, pretrained=pretrained_file)
    assert model.spec.head_options == {"bottleneck": 32, "blocks": [1], "text_adapters": False}
    plain = vidclip.create_model(MODEL, pretrained_file, "mean", num_frames=4).eval()
    with torch.no_grad():  # M2-CLIP's encode_text never runs block 12: its text is CLIP's
        torch.testing.assert_close(
            model.encode_text(recorded["tokens"]), plain.encode_text(recorded["tokens"]), atol=1e-5, rtol=0
        )


# -- M2-CLIP's real ViT-B/16 12x384 checkpoint layout (recorded by its constructor on the meta device) -----------
def test_vit_b16_checkpoint_fills_every_adapter_of_ted_adapter(recorded):
    shapes = recorded["vit_b16"]["checkpoint_shapes"]
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert _head_options(state, "ViT-B-16") == {"bottleneck": 384}  # the head's defaults: all 12 blocks
    with torch.device("meta"):
        model = vidclip.create_model("ViT-B-16", head="ted_adapter", num_frames=8, device="meta")
    mapped, extras = _vidclip_state_dict(state, model)
    expected = model.state_dict()
    assert set(mapped) == _new_module_keys(model)  # every adapter filled, nothing else
    assert all(mapped[key].shape == expected[key].shape for key in mapped)
    assert {key.rsplit(".", 2)[0] for key in extras} == {
        "transformer.resblocks.12.adapter_pre_mlp",  # the idle 13th text block's adapter
        "mlm_adapter",
        "mlm_adapter.transform",
        "visual",  # visual.adapter_fc.{weight,bias}
    }
    # M2-CLIP's 16.1 M trainable = vidclip's ted_adapter + what vidclip does not load
    in_extras = sum(torch.Size(shapes[key]).numel() for key in extras)
    assert recorded["vit_b16"]["trainable"] == 16_138_136
    assert recorded["vit_b16"]["trainable"] - in_extras == model.num_trainable_parameters() == 14_905_984


# -- refusals ---------------------------------------------------------------------------------------------------
def test_adapter_only_checkpoint_needs_pretrained():
    with pytest.raises(ValueError, match="holds only its adapters.*pass pretrained="):
        from_m2clip(CHECKPOINT, MODEL, num_frames=4)


def test_unknown_and_missing_keys_are_listed(recorded, pretrained_file):
    state = adapters()
    pre_attn = {"visual.transformer.resblocks.0.adapter_pre_attn.fc1.weight": torch.zeros(32, 64)}
    with pytest.raises(
        ValueError, match=r"adapter_pre_attn\.fc1\.weight \[unsupported: adapters before attention"
    ):
        from_m2clip({**state, **pre_attn}, MODEL, pretrained_file, num_frames=4)
    text = {"transformer.resblocks.3.adapter_pre_mlp.textad_fc1.weight": torch.zeros(32, 64)}
    with pytest.raises(ValueError, match=r"resblocks\.3\.adapter_pre_mlp.*outside the last text block"):
        from_m2clip({**state, **text}, MODEL, pretrained_file, num_frames=4)
    with pytest.raises(ValueError, match=r"no place in vidclip's ted_adapter model m2clip_parity: foo\.bar"):
        from_m2clip({**state, "foo.bar": torch.zeros(1)}, MODEL, pretrained_file, num_frames=4)
    incomplete = {k: v for k, v in state.items() if k != "visual.t_adapter.conv.bias"}
    with pytest.raises(ValueError, match=r"missing: head\.frame_adapter\.conv\.bias$"):
        convert(incomplete, pretrained=pretrained_file)


def test_wrong_architecture_is_refused_with_the_shapes(backbone):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the extras warning comes first
        with pytest.raises(ValueError, match=r"wrong shape.*is model_name the architecture"):
            from_m2clip({**backbone, **adapters()}, "tiny", num_frames=4)


def test_files_that_are_not_m2clip_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="no M2-CLIP checkpoint"):
        from_m2clip(tmp_path / "missing.pth", MODEL, "openai")
    path = tmp_path / "list.pth"
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match=r"list\.pth is neither M2-CLIP's saved dict"):
        from_m2clip(path, MODEL, "openai")
    torch.save({"model": {"epoch": 3}}, path)
    with pytest.raises(ValueError, match="nor a state dict of tensors: found"):
        from_m2clip(path, MODEL, "openai")
