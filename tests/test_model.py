"""VideoCLIP on the tiny model: the mean head against a hand computation, validation, checkpoints."""

import pytest
import torch
import torch.nn.functional as F

import vidclip
from vidclip.model import VideoFeatures


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vidclip.create_model("tiny", head="mean", num_frames=4).eval()


def test_mean_head_equals_hand_computation_with_mask(model):
    video = torch.randn(2, 4, 3, 32, 32)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = model.encode_video(video, mask)
    frames = model.clip.encode_image(video.flatten(0, 1)).view(2, 4, -1)  # (B, T, D), plain CLIP per frame
    assert torch.allclose(out.frames, frames, atol=1e-6)
    for b in range(2):
        valid = F.normalize(frames[b][mask[b]], dim=-1)  # only the real frames
        expected = F.normalize(valid.mean(0), dim=-1)
        assert torch.allclose(out.pooled[b], expected, atol=1e-6)


def test_masked_frames_do_not_change_the_embedding(model):
    video = torch.randn(1, 4, 3, 32, 32)
    mask = torch.tensor([[True, True, True, False]])
    garbage = video.clone()
    garbage[0, 3] = torch.randn(3, 32, 32) * 100
    a, b = model.encode_video(video, mask).pooled, model.encode_video(garbage, mask).pooled
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(
        a, model.encode_video(garbage).pooled, atol=1e-3
    )  # unmasked garbage does matter


def test_video_with_no_valid_frame_gives_zero_vector_not_nan(model):
    out = model.encode_video(torch.randn(1, 4, 3, 32, 32), torch.zeros(1, 4, dtype=torch.bool))
    assert torch.equal(out.pooled, torch.zeros_like(out.pooled))


def test_similarity_is_cosine_and_single_video_accepted(model):
    tokenizer = vidclip.get_tokenizer("tiny")
    text = model.encode_text(tokenizer(["a red ball", "a blue cube", "a dog"]))
    single = model.encode_video(torch.randn(4, 3, 32, 32))  # (T, 3, S, S): one video
    assert single.pooled.shape == (1, 64)
    sim = model.similarity(text, single)
    expected = F.normalize(text, dim=-1) @ single.pooled.T
    assert sim.shape == (3, 1) and torch.allclose(sim, expected)
    assert sim.abs().max() <= 1 + 1e-6


def test_mean_head_is_order_blind(model):
    video = torch.randn(1, 4, 3, 32, 32)
    assert torch.allclose(
        model.encode_video(video).pooled, model.encode_video(video.flip(1)).pooled, atol=1e-6
    )


@pytest.mark.parametrize(
    ("video", "mask", "match"),
    [
        (torch.zeros(1, 4, 3, 32, 32, dtype=torch.uint8), None, "float tensor"),
        (torch.zeros(1, 4, 3, 64, 64), None, r"\(B, T, 3, 32, 32\)"),
        (torch.zeros(4, 32, 32, 3), None, "shape"),
        (torch.zeros(2, 4, 3, 32, 32), torch.ones(2, 3, dtype=torch.bool), "mask"),
        ([[1.0]], None, "torch.Tensor"),
    ],
)
def test_encode_video_rejects_bad_input_with_named_argument(model, video, mask, match):
    with pytest.raises(ValueError, match=match):
        model.encode_video(video, mask)


def test_encode_text_and_similarity_validate(model):
    with pytest.raises(ValueError, match="tokens"):
        model.encode_text(torch.zeros(2, 32))
    with pytest.raises(ValueError, match="VideoFeatures"):
        model.similarity(torch.zeros(2, 64), torch.zeros(2, 64))
    features = model.encode_video(torch.randn(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="text must have shape"):
        model.similarity(torch.zeros(2, 10), features)


def test_create_model_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown head 'nope'.*mean"):
        vidclip.create_model("tiny", head="nope")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        vidclip.create_model("not-a-model")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        vidclip.create_model("tiny", pretrained="/no/such/dir/missing.pt")
    with pytest.raises(ValueError, match="bad options for head 'mean'"):
        vidclip.create_model("tiny", head="mean", temperature=0.1)


def test_openai_tags_get_quick_gelu_and_tiny_config_is_registered():
    from vidclip.model import _tag_uses_quick_gelu

    assert _tag_uses_quick_gelu("ViT-B-32", "openai")  # open_clip 3 would only warn; vidclip obeys the tag
    assert not _tag_uses_quick_gelu("ViT-B-32", None)
    model = vidclip.create_model("tiny")
    assert model.spec.quick_gelu  # tiny.json asks for QuickGELU, as OpenAI CLIP
    assert model.image_size == 32 and model.num_frames == 12


def test_checkpoint_round_trip_rebuilds_the_same_model(model, tmp_path):
    path = vidclip.save_checkpoint(model, tmp_path / "run")
    assert path.name == "model.safetensors"
    loaded = vidclip.load_checkpoint(tmp_path / "run")
    assert loaded.spec == model.spec
    video = torch.randn(2, 4, 3, 32, 32)
    assert torch.equal(loaded.encode_video(video).pooled, model.encode_video(video).pooled)


def test_load_checkpoint_rejects_foreign_and_missing_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no vidclip model spec"):
        vidclip.load_checkpoint(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.safetensors"):
        vidclip.load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        vidclip.load_checkpoint(tmp_path)


def test_video_features_slice_and_cat():
    features = VideoFeatures(torch.randn(5, 4, 8), torch.ones(5, 4, dtype=torch.bool), torch.randn(5, 8))
    joined = VideoFeatures.cat([features[:2], features[2:]])
    assert torch.equal(joined.frames, features.frames) and torch.equal(joined.pooled, features.pooled)
    assert len(features[1:3]) == 2


def test_freeze_backbone_leaves_only_new_modules_trainable():
    model = vidclip.create_model("tiny", freeze_backbone=True)
    groups = model.parameter_groups()
    assert groups["backbone"] == [] and model.num_trainable_parameters() == 0  # mean has no parameters
    model.set_backbone_frozen(False)
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("head", ["mean", "seq_transformer", "ted_adapter", "vop", "x_pool"])
def test_every_attention_runs_through_sdpa(head, sdpa_calls):
    """In training every attention (image tower, text tower, the head's own transformer) is one call of PyTorch's
    fused scaled_dot_product_attention (flash / memory-efficient kernels on a GPU), never a hand-written
    softmax; in inference nn.MultiheadAttention may take its own fused fast path instead."""
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head=head, num_frames=4).train()
    calls = sdpa_calls
    video = model.encode_video(torch.randn(2, 4, 3, model.image_size, model.image_size))
    text = model.encode_text(vidclip.get_tokenizer("tiny")(["a", "b"]))
    model.similarity(text, video).sum().backward()
    visual = model.clip.visual.transformer.resblocks
    text_blocks = model.clip.transformer.resblocks
    head_blocks = getattr(getattr(model.head, "transformer", None), "resblocks", [])
    own = 1 if head == "x_pool" else 0  # x_pool's cross-attention of the text over the frames, one call
    assert len(calls) == len(visual) + len(text_blocks) + len(head_blocks) + own > 0
