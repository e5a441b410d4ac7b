"""ted_adapter: the visual adapters are the identity at initialisation (the whole model is plain CLIP with
text_adapters=False), the temporal convolutions look at the right frames, padding counts as absent, M2-CLIP's
text adapter, only the adapters train, and the ViT-B/16 parameter counts."""

import pytest
import torch

import vidclip
from vidclip.heads.ted_adapter import AdaptedBlock, FrameAdapter, TEDAdapter, TextAdapter

T = 4


@pytest.fixture(scope="module")
def pair():
    """Untrained ted_adapter without its text adapter (not zero-initialised, as M2-CLIP's), and plain CLIP."""
    torch.manual_seed(0)
    adapted = vidclip.create_model("tiny", head="ted_adapter", num_frames=T, text_adapters=False).eval()
    torch.manual_seed(0)
    plain = vidclip.create_model("tiny", head="mean", num_frames=T).eval()
    return adapted, plain


@pytest.fixture(scope="module")
def trained():
    """A ted_adapter model whose adapters are off their zero init (as after some training)."""
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head="ted_adapter", num_frames=T).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.new_modules():
            for param in module.parameters():
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def adapters(model) -> list[TEDAdapter]:
    return [m for m in model.clip.modules() if isinstance(m, TEDAdapter)]


def all_valid(batch: int = 1) -> torch.Tensor:
    return torch.ones(batch, T, dtype=torch.bool)


def test_untrained_model_without_text_adapters_equals_plain_clip(pair):
    adapted, plain = pair
    video = torch.randn(2, T, 3, 32, 32)
    ours, theirs = adapted.encode_video(video), plain.encode_video(video)
    # equal up to float reassociation (measured 7e-7: the wrapped block's tensors have another memory layout)
    assert torch.allclose(ours.frames, theirs.frames, atol=1e-5)
    assert torch.allclose(ours.pooled, theirs.pooled, atol=1e-5)  # the frame adapter starts as the identity
    tokens = vidclip.get_tokenizer("tiny")(["a dog", "a cat on a mat"])
    # the text tower is CLIP's (2e-6 apart, not bitwise: plain's weights train, another attention kernel path)
    assert torch.allclose(adapted.encode_text(tokens), plain.encode_text(tokens), atol=1e-5)
    assert len(adapters(adapted)) == len(adapted.clip.visual.transformer.resblocks) == 2
    assert isinstance(adapted.head.frame_adapter, FrameAdapter)
    assert not any(isinstance(m, TextAdapter) for m in adapted.clip.modules())


def test_text_adapter_is_on_by_default_in_the_last_text_block(pair):
    """M2-CLIP's text adapter: only the last text block's acts, and it is not the identity at init."""
    plain = pair[1]
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head="ted_adapter", num_frames=T).eval()
    blocks = model.clip.transformer.resblocks
    assert [type(b.adapter) for b in blocks if isinstance(b, AdaptedBlock)] == [TextAdapter]
    assert isinstance(blocks[-1], AdaptedBlock)
    adapter = blocks[-1].adapter
    assert adapter.down.bias.abs().sum() == 0 and adapter.up.bias.abs().sum() == 0  # M2-CLIP's init
    assert adapter.up.weight.abs().sum() > 0  # weights keep PyTorch's init: an untrained adapter acts
    tokens = vidclip.get_tokenizer("tiny")(["a dog", "a cat on a mat"])
    assert not torch.allclose(model.encode_text(tokens), plain.encode_text(tokens), atol=1e-3)
    video = torch.randn(2, T, 3, 32, 32)  # the video side is still plain CLIP
    assert torch.allclose(model.encode_video(video).pooled, plain.encode_video(video).pooled, atol=1e-5)


def test_text_adapter_formula():
    """x + fc2(GELU(fc1(x))) on every token with exact (erf) GELU, as M2-CLIP's TextAdapter (nn.GELU())."""
    torch.manual_seed(0)
    adapter = TextAdapter(8, 4)
    with torch.no_grad():
        adapter.down.bias.normal_()
    x = torch.randn(2, 5, 8)
    h = x @ adapter.down.weight.T + adapter.down.bias
    expected = x + (0.5 * h * (1 + torch.erf(h / 2**0.5))) @ adapter.up.weight.T + adapter.up.bias
    assert torch.allclose(adapter(x), expected, atol=1e-6)
    tanh = x + torch.nn.functional.gelu(h, approximate="tanh") @ adapter.up.weight.T + adapter.up.bias
    assert not torch.allclose(adapter(x), tanh, atol=1e-7)  # the exact GELU, not the tanh approximation


def test_wrapper_calls_the_block_like_open_clip(pair):
    adapted, plain = pair
    block = plain.clip.visual.transformer.resblocks[0]
    identity = TEDAdapter(64, 8, adapted.head.context)
    wrapped = AdaptedBlock(block, identity)
    x = torch.randn(2 * T, 17, 64)  # (B*T, 1 + 16 patches, width)
    layout = vidclip.heads.VideoLayout(2, T, torch.ones(2, T, dtype=torch.bool))
    with adapted.head.video_context(layout):
        assert torch.allclose(wrapped(x), block(x), atol=1e-6)


def test_temporal_convolution_reads_the_previous_frame(pair):
    adapted, _ = pair
    adapter = TEDAdapter(64, 8, adapted.head.context)
    with torch.no_grad():
        adapter.enhance_conv.weight.zero_()
        adapter.enhance_conv.weight[:, 0, 0] = 1.0  # kernel [1, 0, 0]: output t = input t-1
    video = torch.randn(1, T, 17, 64)
    out = adapter.enhance(video, all_valid())
    per_frame = adapter.enhance_up(adapter.enhance_down(video))  # what each frame would give alone
    assert torch.allclose(out[:, 1:], per_frame[:, :-1], atol=1e-5)  # shifted by one frame forwards
    assert torch.allclose(out[:, 0], adapter.enhance_up.bias.expand_as(out[:, 0]), atol=1e-6)  # zero padding


def test_difference_branch_is_zero_for_a_still_video(pair):
    adapted, _ = pair
    adapter = TEDAdapter(64, 8, adapted.head.context)
    with torch.no_grad():
        adapter.diff_conv.weight.normal_()
    still = torch.randn(1, 1, 16, 64).expand(1, T, 16, 64)
    out = adapter.difference(still, all_valid())
    assert torch.allclose(out, adapter.diff_up.bias.expand_as(out), atol=1e-5)
    moving = still + torch.arange(T).view(1, T, 1, 1)
    assert not torch.allclose(adapter.difference(moving, all_valid()), out, atol=1e-3)


def test_frame_adapter_convolves_over_time_and_ignores_padding():
    adapter = FrameAdapter(8)
    with torch.no_grad():
        adapter.conv.weight.zero_()
        adapter.conv.weight[:, 0, 2] = 1.0  # kernel [0, 0, 1]: output t = input t+1
    frames = torch.randn(1, T, 8)
    mask = torch.tensor([[True, True, True, False]])
    out = adapter(frames, mask) - frames
    expected = adapter.up(adapter.down(frames))
    assert torch.allclose(out[:, :2], expected[:, 1:3], atol=1e-6)
    assert torch.allclose(out[:, 2], adapter.up.bias, atol=1e-6)  # its successor is padding: zero


@pytest.mark.parametrize("mask", [[True, True, False, False], [True, False, False, False]])
def test_padded_video_equals_the_video_cut_to_its_real_frames(trained, mask):
    video = torch.randn(1, T, 3, 32, 32)
    mask = torch.tensor([mask])
    real = int(mask.sum())
    garbage = video.clone()
    garbage[~mask] = 1e4 * torch.randn(T - real, 3, 32, 32)
    padded = trained.encode_video(garbage, mask)
    cut = trained.encode_video(video[:, :real])
    assert torch.allclose(padded.pooled, cut.pooled, atol=1e-5)
    assert torch.allclose(padded.frames[:, :real], cut.frames, atol=1e-4)


def test_reversing_the_frames_changes_a_trained_adapter(trained, pair):
    video = torch.randn(2, T, 3, 32, 32)
    assert not torch.allclose(trained.encode_video(video).pooled, trained.encode_video(video.flip(1)).pooled)
    untrained = pair[0]  # zero-initialised: plain CLIP + mean pooling, which is order-blind
    forwards, backwards = untrained.encode_video(video).pooled, untrained.encode_video(video.flip(1)).pooled
    assert torch.allclose(forwards, backwards, atol=1e-5)


def test_only_the_adapters_train_and_gradient_checkpointing_works():
    model = vidclip.create_model("tiny", head="ted_adapter", num_frames=T).train()
    groups = model.parameter_groups()
    assert groups["backbone"] == []
    names = [name for name, _ in groups["new"]]
    assert names and all(".adapter." in name or name.startswith("head.frame_adapter.") for name in names)
    model.clip.set_grad_checkpointing(True)
    for adapter in adapters(model):
        torch.nn.init.normal_(adapter.enhance_conv.weight)
        torch.nn.init.normal_(adapter.diff_conv.weight)
    torch.nn.init.normal_(model.head.frame_adapter.conv.weight)
    text = model.encode_text(vidclip.get_tokenizer("tiny")(["a dog"]))
    (model.encode_video(torch.randn(2, T, 3, 32, 32)).pooled.sum() + text.sum()).backward()
    assert any(name.startswith("clip.transformer.") for name in names)  # the text adapter trains too
    assert all(p.grad is not None for _, p in groups["new"])
    assert all(p.grad is None for p in model.clip.parameters() if not p.requires_grad)


def test_options_are_validated():
    with pytest.raises(ValueError, match="out of range"):
        vidclip.create_model("tiny", head="ted_adapter", blocks=[5])
    with pytest.raises(ValueError, match="bottleneck"):
        vidclip.create_model("tiny", head="ted_adapter", bottleneck=0)
    model = vidclip.create_model(
        "tiny", head="ted_adapter", blocks=[1], bottleneck=16, frame_adapter=False, text_adapters=False
    )
    assert len(adapters(model)) == 1 and model.head.frame_adapter is None
    assert not any(isinstance(m, TextAdapter) for m in model.clip.modules())


@pytest.mark.parametrize("text_adapters", [True, False])
def test_trainable_parameters_on_vit_b16(text_adapters):
    with torch.device("meta"):  # counts only: no memory, no init time
        model = vidclip.create_model(
            "ViT-B-16", head="ted_adapter", num_frames=8, device="meta", text_adapters=text_adapters
        )
    block = 2 * (768 * 384 + 384) + 2 * (384 * 768 + 768) + (384 * 3 + 384) + (384 * 9 + 384)
    frame = (512 * 256 + 256) + (256 * 512 + 512) + (256 * 3 + 256)
    text = (512 * 384 + 384) + (384 * 512 + 512)  # one text adapter, ViT-B/16's 512-wide text tower
    assert (block, frame, text) == (1_187_328, 263_936, 394_112)
    expected = (
        14_905_984 if text_adapters else 14_511_872
    )  # M2-CLIP's own count: tests/test_convert_m2clip.py
    assert model.num_trainable_parameters() == 12 * block + frame + text_adapters * text == expected


def test_builds_in_bf16_precision():
    model = vidclip.create_model("tiny", head="ted_adapter", num_frames=T, precision="bf16")
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
    pooled = model.encode_video(torch.randn(2, T, 3, 32, 32, dtype=torch.bfloat16)).pooled
    assert pooled.dtype == torch.bfloat16 and torch.isfinite(pooled).all()
