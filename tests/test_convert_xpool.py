"""``vidclip.convert.from_xpool``: X-Pool's checkpoints (OpenAI-layout and HF-layout CLIP) as vidclip models.

The pooling weights and X-Pool's own similarities come from tests/fixtures/xpool_parity.safetensors (made from
an X-Pool checkout, see tests/test_head_x_pool.py); the CLIP is a small random one of the same width (32),
registered here as the open_clip model ``xpool-test``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vidclip.convert import from_xpool
from vidclip.model import VideoFeatures

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/xpool_parity.safetensors"
MODEL = "xpool-test"
PARITY = 1e-6  # the pooling: X-Pool's sims vs ours (fp32, the same operations up to reassociation)
TOWERS = 1e-5  # CLIP features vs open_clip's / transformers' own
CONTEXT = 16
MODEL_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


@pytest.fixture(scope="module", autouse=True)
def registered(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / f"{MODEL}.json"
    path.write_text(json.dumps(MODEL_CFG))
    open_clip.add_model_config(path)


@pytest.fixture(scope="module")
def fixture():
    return load_file(str(FIXTURE))


def pooling_state(fixture, heads: int = 1) -> dict[str, torch.Tensor]:
    prefix = f"heads_{heads}.weights."
    return {f"pool_frames.{k.removeprefix(prefix)}": v for k, v in fixture.items() if k.startswith(prefix)}


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return module.eval()


def openai_clip():
    """open_clip's CLIP: its parameter names are OpenAI's (what X-Pool's model/clip_model.py builds)."""
    return randomised(open_clip.create_model(MODEL, force_quick_gelu=True))


def hf_clip():
    """transformers' CLIPModel of the same network (X-Pool's --huggingface; eos_token_id 2, as in
    openai/clip-vit-base-patch32's config: pooled at the highest id, like open_clip)."""
    transformers = pytest.importorskip(
        "transformers", reason="transformers (a test dependency in .[dev]) is not installed"
    )
    config = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT,
            eos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=48,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=3,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    return randomised(transformers.CLIPModel(config))


def xpool_state(clip: torch.nn.Module, fixture, heads: int = 1) -> dict[str, torch.Tensor]:
    """What X-Pool's CLIPTransformer.state_dict() holds: clip.* and pool_frames.*."""
    return {**{f"clip.{k}": v for k, v in clip.state_dict().items()}, **pooling_state(fixture, heads)}


def xpool_pooled(pooling: dict[str, torch.Tensor], text: torch.Tensor, frames: torch.Tensor, heads: int):
    """X-Pool's Transformer.forward (eval: no dropout) and sim_matrix_training, transcribed from its code."""

    def linear(x, name):
        return x @ pooling[f"pool_frames.{name}.weight"].T + pooling[f"pool_frames.{name}.bias"]

    def norm(x, name):
        w, b = pooling[f"pool_frames.{name}.weight"], pooling[f"pool_frames.{name}.bias"]
        return F.layer_norm(x, (x.shape[-1],), w, b)

    num_texts, dim = text.shape
    num_vids, num_frames, _ = frames.shape
    head_dim = dim // heads
    text, frames = norm(text, "layer_norm1"), norm(frames, "layer_norm1")
    q = linear(text, "cross_attn.q_proj").reshape(num_texts, heads, head_dim).permute(1, 2, 0)
    k = linear(frames, "cross_attn.k_proj").reshape(num_vids, num_frames, heads, head_dim).permute(0, 2, 1, 3)
    v = linear(frames, "cross_attn.v_proj").reshape(num_vids, num_frames, heads, head_dim).permute(0, 2, 3, 1)
    weights = F.softmax(k @ q / math.sqrt(head_dim), dim=2)
    attention = (v @ weights).permute(0, 3, 1, 2).reshape(num_vids, num_texts, dim)
    attn_out = norm(linear(attention, "cross_attn.out_proj"), "layer_norm2")
    pooled = norm(attn_out + linear(attn_out, "linear_proj"), "layer_norm3")  # (num_vids, num_texts, D)
    return pooled


def xpool_sims(pooling, raw_text, frames, heads):
    """sim_matrix_training: the raw text features normalised, against each video as pooled for that text."""
    pooled = xpool_pooled(pooling, raw_text, frames, heads)
    text = raw_text / raw_text.norm(dim=-1, keepdim=True)
    pooled = pooled / pooled.norm(dim=-1, keepdim=True)
    return torch.bmm(text.unsqueeze(1), pooled.permute(1, 2, 0)).squeeze(1)  # (num_texts, num_vids)


def inputs(seed: int = 1):
    """Videos (2, 3 frames, 3, 32, 32) and 5 token rows: ids below the eos 49407, one eos per row."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(2, 3, 3, 32, 32, generator=gen)
    ids = torch.randint(1, 49000, (5, CONTEXT), generator=gen)
    for row, place in enumerate((15, 9, 4, 12, 6)):
        ids[row, place] = 49407
    return video, ids


def features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# -- parity ---------------------------------------------------------------------------------------------------
def test_the_transcribed_reference_is_xpools_own(fixture):
    for heads in (1, 4):
        sims = xpool_sims(pooling_state(fixture, heads), fixture["text"], fixture["frames"], heads)
        assert (sims - fixture[f"heads_{heads}.sims_training"]).abs().max() <= PARITY


@pytest.mark.parametrize("layout", ["openai", "huggingface"])
@pytest.mark.parametrize("heads", [1, 4])
def test_similarity_equals_xpools_on_the_fixture(fixture, layout, heads):
    clip = openai_clip() if layout == "openai" else hf_clip()
    model = from_xpool(xpool_state(clip, fixture, heads), MODEL, num_frames=7, num_heads=heads).eval()
    frames = fixture["frames"]
    video = VideoFeatures(frames, torch.ones(frames.shape[:2], dtype=torch.bool))
    with torch.no_grad():
        sim = model.similarity(fixture["text"], video)
    assert (sim - fixture[f"heads_{heads}.sims_training"]).abs().max() <= PARITY


@pytest.mark.parametrize("layout", ["openai", "huggingface"])
def test_towers_and_similarity_end_to_end(fixture, layout):
    clip = openai_clip() if layout == "openai" else hf_clip()
    state = xpool_state(clip, fixture)
    model = from_xpool(state, MODEL, num_frames=3).eval()
    video, ids = inputs()
    with torch.no_grad():
        if layout == "openai":
            image, text = clip.encode_image(video.flatten(0, 1)), clip.encode_text(ids)
        else:
            image = features(clip.get_image_features(pixel_values=video.flatten(0, 1)))
            text = features(clip.get_text_features(input_ids=ids))
        frames = model.encode_video(video)
        ours = model.encode_text(ids)
        sim = model.similarity(ours, frames)
    assert (frames.frames.flatten(0, 1) - image).abs().max() <= TOWERS
    assert (ours - text).abs().max() <= TOWERS
    assert torch.equal(model.logit_scale.detach(), clip.logit_scale.detach())
    reference = xpool_sims(pooling_state(fixture), text, image.reshape(2, 3, -1), heads=1)
    assert (sim - reference).abs().max() <= TOWERS  # the towers' 1e-5 carries into the pooling


# -- X-Pool's files -------------------------------------------------------------------------------------------
def trainer_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """What X-Pool's _save_checkpoint writes: its AdamW's state (step an int, as in modules/optimization.py)."""
    params = [torch.nn.Parameter(torch.randn(4)) for _ in range(2)]
    optimizer = torch.optim.AdamW(params)
    params[0].sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    saved["state"][0]["step"] = int(saved["state"][0]["step"])
    saved["param_groups"][0]["correct_bias"] = True
    return {"epoch": 5, "state_dict": state, "optimizer": saved}


def test_reads_the_trainers_file_with_weights_only(tmp_path, fixture):
    clip = openai_clip()
    path = tmp_path / "model_best.pth"
    torch.save(trainer_checkpoint(xpool_state(clip, fixture)), path)
    model = from_xpool(path, MODEL, num_frames=3)
    bare = from_xpool(xpool_state(clip, fixture), MODEL, num_frames=3)
    assert model.spec.head == "x_pool" and model.spec.quick_gelu is True
    for (name, a), (_, b) in zip(model.state_dict().items(), bare.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


class _Pickled:
    pass


def test_a_pickle_that_would_run_code_is_refused(tmp_path, fixture):
    path = tmp_path / "checkpoint-epoch1.pth"
    torch.save({**trainer_checkpoint(xpool_state(openai_clip(), fixture)), "scheduler": _Pickled()}, path)
    with pytest.raises(ValueError, match=rf"{path} is not a X-Pool checkpoint vidclip can read safely"):
        from_xpool(path, MODEL)


def test_keys_that_do_not_fit_are_listed_with_the_source(tmp_path, fixture):
    state = xpool_state(openai_clip(), fixture)
    state["text_proj.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"the state dict: keys with no place .*text_proj\.weight"):
        from_xpool(state, MODEL)
    state = xpool_state(openai_clip(), fixture)
    del state["pool_frames.layer_norm3.bias"]
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(
        ValueError, match=rf"{tmp_path / 'bare.pth'}: .*missing \['pool_frames.layer_norm3.bias'\]"
    ):
        from_xpool(tmp_path / "bare.pth", MODEL)
    state = xpool_state(hf_clip(), fixture)
    del state["clip.vision_model.encoder.layers.1.self_attn.v_proj.bias"]
    with pytest.raises(
        ValueError, match=r"missing: vision_model\.encoder\.layers\.1\.self_attn\.v_proj\.bias"
    ):
        from_xpool(state, MODEL)


def test_another_architecture_is_refused_with_the_hint(fixture):
    with pytest.raises(ValueError, match=r"wrong shape .*is model_name the architecture"):
        from_xpool(xpool_state(openai_clip(), fixture), "tiny")


def test_legacy_hf_position_ids_are_ignored(fixture):
    """X-Pool's released checkpoints come from transformers < 4.31, which saved position_ids buffers."""
    state = xpool_state(hf_clip(), fixture)
    state["clip.text_model.embeddings.position_ids"] = torch.arange(CONTEXT)[None]
    state["clip.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    assert from_xpool(state, MODEL, num_frames=3).spec.head == "x_pool"
