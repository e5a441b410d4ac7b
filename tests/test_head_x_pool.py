"""The x_pool head: X-Pool's own outputs on random weights, masking, chunking, init, dropout, gradients.

The parity fixture (tests/fixtures/xpool_parity.safetensors) holds X-Pool's pooling and similarity matrices on
seeded random weights and inputs; tools/make_xpool_parity_fixture.py made it from an X-Pool checkout.
"""

from pathlib import Path

import pytest
import test_train
import torch
import torch.nn.functional as F
from test_train import base_args, read_metrics, run_train

import vidclip
from vidclip.config import load_config
from vidclip.heads import create_head
from vidclip.heads.x_pool import XPOOL_KEY_MAP, convert_xpool_state_dict
from vidclip.model import VideoFeatures

data, config_file, fresh_accelerate_state = (
    test_train.data,
    test_train.config_file,
    test_train.fresh_accelerate_state,
)
ROOT = Path(__file__).parents[1]
FIXTURE = ROOT / "tests/fixtures/xpool_parity.safetensors"
WIDTH = 32
PARITY = 1e-6


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    return load_file(str(FIXTURE))


def xpool_head(fixture, heads: int):
    """An x_pool head holding the fixture's X-Pool weights, in eval mode."""
    head = create_head("x_pool", num_heads=heads)
    head.build(WIDTH)
    head.load_state_dict(convert_xpool_state_dict(fixture, prefix=f"heads_{heads}.weights."), strict=True)
    return head.eval()


def random_head(width: int = WIDTH, seed: int = 0, **options):
    """An x_pool head with every parameter moved off its identity init."""
    torch.manual_seed(seed)
    head = create_head("x_pool", **options)
    head.build(width)
    with torch.no_grad():
        for param in head.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return head.eval()


@pytest.mark.parametrize("heads", [1, 4])
def test_similarities_equal_xpools_own(fixture, heads):
    head = xpool_head(fixture, heads)
    text, frames = fixture["text"], fixture["frames"]
    full = torch.ones(frames.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        sim = head.score(text, frames, full)  # (N, B)
        pooled = head.pool_per_text(text, frames, full)  # (N, B, D)
    assert (sim - fixture[f"heads_{heads}.sims_training"]).abs().max() <= PARITY
    num_videos = frames.shape[0]  # sims_inference: (B, texts per video, B), texts grouped by their video
    grouped = sim.reshape(num_videos, -1, num_videos)
    assert (grouped - fixture[f"heads_{heads}.sims_inference"]).abs().max() <= PARITY
    assert (pooled.transpose(0, 1) - fixture[f"heads_{heads}.pooled"]).abs().max() <= 1e-5


def test_parity_needs_the_raw_text(fixture):
    """X-Pool's LayerNorm sees the raw text: scoring L2-normalised text is close, and not X-Pool."""
    head = xpool_head(fixture, 1)
    text, frames = fixture["text"], fixture["frames"]
    full = torch.ones(frames.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        off = head.score(F.normalize(text, dim=-1), frames, full) - fixture["heads_1.sims_training"]
    assert off.abs().max() > 10 * PARITY


def record_score_text(model, monkeypatch) -> list[torch.Tensor]:
    seen = []
    score = model.head.score

    def recording(text, frames, mask):
        seen.append(text.clone())
        return score(text, frames, mask)

    monkeypatch.setattr(model.head, "score", recording)
    return seen


@pytest.mark.parametrize(("name", "raw"), [("x_pool", True), ("query_scored", False)])
def test_similarity_hands_raw_text_only_to_heads_that_declare_it(name, raw, monkeypatch):
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head=name, num_frames=4).eval()
    seen = record_score_text(model, monkeypatch)
    text = 5 * torch.randn(3, 64)
    video = VideoFeatures(torch.randn(2, 4, 64), torch.ones(2, 4, dtype=torch.bool))
    model.similarity(text, video, chunk_size=2)
    got = torch.cat(seen)
    assert torch.equal(got, text) if raw else torch.allclose(got, F.normalize(text, dim=-1))


def test_padded_frames_get_no_weight():
    """A padded video scores as the same video cut to its real frames, whatever the padding holds."""
    head = random_head()
    text = 3 * torch.randn(5, WIDTH)
    frames = torch.randn(3, 6, WIDTH)
    lengths = [6, 4, 1]
    mask = torch.arange(6) < torch.tensor(lengths)[:, None]  # (B, T)
    frames[~mask] = float("nan")
    with torch.no_grad():
        scores = head.score(text, frames, mask)
        for b, length in enumerate(lengths):
            cut = head.score(text, frames[b : b + 1, :length], torch.ones(1, length, dtype=torch.bool))
            torch.testing.assert_close(scores[:, b : b + 1], cut, atol=1e-6, rtol=0)
    # real frames anywhere in the sequence, not only first
    scattered = torch.tensor([[False, True, False, True, False, False]])
    alone = frames[:1, [1, 3]]
    with torch.no_grad():
        torch.testing.assert_close(
            head.score(text, frames[:1], scattered),
            head.score(text, alone, torch.ones(1, 2, dtype=torch.bool)),
            atol=1e-6,
            rtol=0,
        )


def test_a_video_without_real_frames_scores_zero():
    head = random_head()
    mask = torch.tensor([[True, True, False], [False, False, False]])
    with torch.no_grad():
        scores = head.score(torch.randn(4, WIDTH), torch.randn(2, 3, WIDTH), mask)
    assert torch.isfinite(scores).all() and torch.all(scores[:, 1] == 0) and torch.all(scores[:, 0] != 0)


@pytest.mark.parametrize(("text_chunk", "video_chunk"), [(1, 1), (2, 3), (3, 256), (256, 2)])
def test_chunked_equals_unchunked(text_chunk, video_chunk):
    whole = random_head()
    chunked = random_head(text_chunk_size=text_chunk, video_chunk_size=video_chunk)
    text, frames = torch.randn(7, WIDTH), torch.randn(5, 4, WIDTH)
    mask = torch.rand(5, 4) < 0.7
    mask[:, 0] = True
    with torch.no_grad():
        expected = whole.score(text, frames, mask)
        pooled = F.normalize(whole.pool_per_text(text, frames, mask), dim=-1)  # (N, B, D), all at once
        torch.testing.assert_close(chunked.score(text, frames, mask), expected, atol=1e-6, rtol=0)
        by_hand = torch.einsum("nd,nbd->nb", F.normalize(text, dim=-1), pooled)
        torch.testing.assert_close(expected, by_hand, atol=1e-6, rtol=0)


def test_one_attention_call_per_block_through_sdpa(sdpa_calls):
    """Attention is one fused scaled_dot_product_attention call per (text chunk, video chunk) block (the model's
    count, both towers plus this one call, is in tests/test_model.py with the other heads)."""
    head = random_head(text_chunk_size=2, video_chunk_size=2)
    calls = sdpa_calls
    head.score(torch.randn(5, WIDTH), torch.randn(3, 4, WIDTH), torch.ones(3, 4, dtype=torch.bool))
    assert len(calls) == 3 * 2  # ceil(5 / 2) text chunks x ceil(3 / 2) video chunks
    assert max(shape[0] * shape[2] for shape in calls) <= 2 * 2  # videos x texts per block


def test_projections_start_as_identities():
    model = vidclip.create_model("tiny", head="x_pool", num_frames=4)
    head = model.head
    assert head.width == 64
    for name in ("query", "key", "value", "attn_out", "linear"):
        layer = getattr(head, name)
        assert torch.equal(layer.weight, torch.eye(64)) and torch.equal(layer.bias, torch.zeros(64)), name
    for name in ("input_norm", "attn_norm", "output_norm"):
        norm = getattr(head, name)
        assert torch.equal(norm.weight, torch.ones(64)) and torch.equal(norm.bias, torch.zeros(64)), name
    assert sorted(head.state_dict()) == sorted(
        f"{m}.{p}" for m in XPOOL_KEY_MAP.values() for p in ("weight", "bias")
    )
    assert model.parameter_groups()["backbone"]  # CLIP is fine-tuned with it, as X-Pool does


def test_dropout_acts_only_in_training():
    head = random_head(dropout=0.3)
    plain = random_head(dropout=0.0)  # the same weights (same seed), no dropout
    text, frames, mask = torch.randn(4, WIDTH), torch.randn(3, 5, WIDTH), torch.ones(3, 5, dtype=torch.bool)
    with torch.no_grad():
        eval_scores = head.score(text, frames, mask)
        assert torch.equal(eval_scores, head.score(text, frames, mask))
        torch.testing.assert_close(eval_scores, plain.train().score(text, frames, mask), atol=1e-6, rtol=0)
        head.train()
        torch.manual_seed(1)
        first = head.score(text, frames, mask)
        second = head.score(text, frames, mask)
    assert not torch.allclose(first, second) and not torch.allclose(first, eval_scores)


def test_gradient_reaches_every_parameter():
    head = random_head().train()
    frames = torch.randn(3, 5, WIDTH, requires_grad=True)
    text = torch.randn(4, WIDTH, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True] + [False] * 4])
    head.score(text, frames, mask).sum().backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    assert text.grad.abs().sum() > 0 and frames.grad[mask].abs().sum() > 0
    assert torch.all(frames.grad[~mask] == 0)  # padded frames do not take part


def test_weights_convert_from_xpool_keys_and_refuse_other_layouts(fixture):
    prefix = "heads_1.weights."
    state = {k: v for k, v in fixture.items() if k.startswith(prefix)}
    converted = convert_xpool_state_dict(state, prefix=prefix)
    assert torch.equal(converted["query.weight"], state[prefix + "cross_attn.q_proj.weight"])
    assert torch.equal(converted["output_norm.bias"], state[prefix + "layer_norm3.bias"])
    missing = {k: v for k, v in state.items() if not k.endswith("linear_proj.bias")}
    with pytest.raises(ValueError, match="missing .*linear_proj.bias"):
        convert_xpool_state_dict(missing, prefix=prefix)
    with pytest.raises(ValueError, match="unknown .*cross_attn.extra.weight"):
        convert_xpool_state_dict({**state, prefix + "cross_attn.extra.weight": torch.zeros(1)}, prefix=prefix)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_heads": 0}, "num_heads must be a positive int"),
        ({"num_heads": 2.0}, "num_heads must be a positive int"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ({"dropout": "0.3"}, "dropout must be a number"),
        ({"text_chunk_size": 0}, "text_chunk_size must be a positive int"),
        ({"video_chunk_size": True}, "video_chunk_size must be a positive int"),
        ({"heads": 2}, "bad options for head 'x_pool'"),
    ],
)
def test_bad_options_fail_naming_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        create_head("x_pool", **options)


def test_heads_must_divide_the_width_and_an_unbuilt_head_says_so():
    with pytest.raises(ValueError, match="num_heads=3 of the x_pool head does not divide the width 64"):
        vidclip.create_model("tiny", head="x_pool", num_heads=3)
    with pytest.raises(RuntimeError, match="x_pool head is not attached"):
        create_head("x_pool").score(
            torch.randn(1, 8), torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool)
        )


def test_config_holds_xpools_msrvtt_recipe():
    config = load_config([ROOT / "configs/retrieval/msrvtt_xpool.yaml"])
    model, data, train = config.model, config.data, config.train
    assert (model.name, model.pretrained, model.head, model.num_frames) == (
        "ViT-B-32",
        "openai",
        "x_pool",
        12,
    )
    assert model.head_options == {"num_heads": 1, "dropout": 0.3}
    assert (data.format, data.sampling, data.eval_sampling, data.augment) == (
        "msrvtt",
        "uniform",
        "uniform",
        True,
    )
    assert (train.batch_size, train.epochs, train.lr, train.weight_decay, train.warmup) == (
        32,
        5,
        3e-5,
        0.2,
        0.1,
    )
    assert train.lr * train.backbone_lr_scale == pytest.approx(1e-6, rel=1e-12)
    assert (train.betas, train.eps, train.grad_clip, train.max_logit_scale) == (
        (0.9, 0.999),
        1e-6,
        1.0,
        100.0,
    )


def test_trains_under_bf16_autocast_and_validates(data, config_file, tmp_path):
    """The real training command: the loss's similarity under autocast, validation, the saved head moved."""
    out = tmp_path / "run"
    extra = [
        "model.head=x_pool",
        "train.max_steps=2",
        "train.precision=bf16",
        f"data.val={data / 'captions.csv'}",
    ]
    assert run_train(config_file, base_args(data, out, *extra)) == 0
    assert any("val/t2v/R@1" in m for m in read_metrics(out))
    head = vidclip.load_checkpoint(out).head
    assert not torch.equal(head.query.weight, torch.eye(64))  # trained off its identity init
