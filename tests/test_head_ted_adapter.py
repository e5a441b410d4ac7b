"""ted_adapter: identity at initialisation, the temporal convolution looks at the right frames, only adapters train."""

import pytest
import torch

import vidclip
from vidclip.heads.ted_adapter import AdaptedBlock, TEDAdapter

T = 4


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    adapted = vidclip.create_model("tiny", head="ted_adapter", num_frames=T).eval()
    torch.manual_seed(0)
    plain = vidclip.create_model("tiny", head="mean", num_frames=T).eval()
    return adapted, plain


def adapters(model) -> list[TEDAdapter]:
    return [m for m in model.clip.modules() if isinstance(m, TEDAdapter)]


def test_untrained_model_equals_plain_clip(pair):
    adapted, plain = pair
    video = torch.randn(2, T, 3, 32, 32)
    # equal up to float reassociation (measured 7e-7: the wrapped block's tensors have another memory layout)
    assert torch.allclose(adapted.encode_video(video).frames, plain.encode_video(video).frames, atol=1e-5)
    assert len(adapters(adapted)) == len(adapted.clip.visual.transformer.resblocks) == 2


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
    valid = torch.ones(1, T, 1, 1)
    out = adapter.enhance(video, valid)
    per_frame = adapter.enhance_up(adapter.enhance_down(video) * 1.0)  # what each frame would give alone
    assert torch.allclose(out[:, 1:], per_frame[:, :-1], atol=1e-5)  # shifted by one frame forwards
    assert torch.allclose(out[:, 0], adapter.enhance_up.bias.expand_as(out[:, 0]), atol=1e-6)  # zero padding


def test_difference_branch_is_zero_for_a_still_video(pair):
    adapted, _ = pair
    adapter = TEDAdapter(64, 8, adapted.head.context)
    with torch.no_grad():
        adapter.diff_conv.weight.normal_()
    still = torch.randn(1, 1, 16, 64).expand(1, T, 16, 64)
    out = adapter.difference(still, torch.ones(1, T, 1, 1))
    assert torch.allclose(out, adapter.diff_up.bias.expand_as(out), atol=1e-5)
    moving = still + torch.arange(T).view(1, T, 1, 1)
    assert not torch.allclose(adapter.difference(moving, torch.ones(1, T, 1, 1)), out, atol=1e-3)


def test_only_the_adapters_train_and_gradient_checkpointing_works():
    model = vidclip.create_model("tiny", head="ted_adapter", num_frames=T).train()
    groups = model.parameter_groups()
    assert groups["backbone"] == []
    assert groups["new"] and all(".adapter." in name for name, _ in groups["new"])
    model.clip.set_grad_checkpointing(True)
    for adapter in adapters(model):
        torch.nn.init.normal_(adapter.enhance_conv.weight)
    model.encode_video(torch.randn(2, T, 3, 32, 32)).pooled.sum().backward()
    assert all(p.grad is not None for _, p in groups["new"])


def test_options_are_validated():
    with pytest.raises(ValueError, match="out of range"):
        vidclip.create_model("tiny", head="ted_adapter", blocks=[5])
    with pytest.raises(ValueError, match="bottleneck"):
        vidclip.create_model("tiny", head="ted_adapter", bottleneck=0)
    model = vidclip.create_model("tiny", head="ted_adapter", blocks=[1], bottleneck=16)
    assert len(adapters(model)) == 1
