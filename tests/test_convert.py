"""``vidclip.convert.from_clip4clip``: key mapping and errors on tiny models, and parity with CLIP4Clip's code.

The parity fixture (tests/fixtures/clip4clip_parity.pt) holds CLIP4Clip's own outputs on seeded random ViT-B/32
weights; tools/make_clip4clip_parity_fixture.py made it from a CLIP4Clip checkout and regenerates the same
weights here from the seed and the recorded key shapes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vidclip
from vidclip.convert import from_clip4clip

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/clip4clip_parity.pt"
HEADS = {"meanP": "mean", "seqTransf": "seq_transformer", "seqLSTM": "seq_lstm"}
TOLERANCE = 1e-3  # the bar on similarities; measured differences are ~1e-7


def _fixture_tool():
    spec = importlib.util.spec_from_file_location(
        "make_clip4clip_parity_fixture", ROOT / "tools/make_clip4clip_parity_fixture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- parity with CLIP4Clip (ViT-B/32, random weights) ---------------------------------------------------------
@pytest.fixture(scope="module")
def recorded():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def parity(recorded):
    """The recorded CLIP4Clip outputs, the regenerated weights (all three heads' keys) and the inputs."""
    tool = _fixture_tool()
    state = tool.random_state_dict(recorded["shapes"], recorded["seed"])
    inputs = tool.make_inputs(recorded["seed"])
    assert torch.equal(inputs["tokens"], recorded["tokens"])
    assert torch.equal(inputs["video_mask"], recorded["video_mask"])
    return recorded, state, inputs


def test_fixture_is_informative(recorded):
    sims = {header: recorded["models"][header]["similarity"] for header in HEADS}
    for sim in sims.values():
        assert sim.std(dim=1).min() > 5e-3  # videos differ for every caption, by far more than the tolerance
    assert (sims["seqTransf"] - sims["meanP"]).abs().max() > 10 * TOLERANCE  # the temporal head matters
    assert (sims["seqLSTM"] - sims["meanP"]).abs().max() > 10 * TOLERANCE
    assert not recorded["video_mask"].all()  # padded frames are exercised


@pytest.mark.slow
@pytest.mark.parametrize("sim_header", list(HEADS))
def test_similarities_match_clip4clip(parity, sim_header):
    fixture, state, inputs = parity
    recorded = fixture["models"][sim_header]
    model = from_clip4clip({key: state[key] for key in recorded["keys"]}, "ViT-B-32", num_frames=4).eval()
    assert model.spec.head == HEADS[sim_header]
    tokens = F.pad(inputs["tokens"], (0, 77 - inputs["tokens"].shape[1]))  # CLIP4Clip's 32 tokens, 0-padded
    with torch.no_grad():
        video = model.encode_video(inputs["video"], inputs["video_mask"])
        text = model.encode_text(tokens)
        sim = model.similarity(text, video)
    torch.testing.assert_close(video.frames, recorded["frame_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(text, recorded["text_features"], atol=1e-4, rtol=1e-4)
    assert (sim - recorded["similarity"]).abs().max() <= TOLERANCE
    logits = model.logit_scale.exp() * sim
    assert (logits - recorded["logits"]).abs().max() <= 100 * TOLERANCE


# -- mapping and errors, on the tiny model --------------------------------------------------------------------
def clip4clip_state_of(model: vidclip.VideoCLIP) -> dict[str, torch.Tensor]:
    """Write a tiny VideoCLIP's weights under CLIP4Clip's names, CLIP's matrices in fp16 as CLIP4Clip saves them."""
    clip = {f"clip.{k}": v.half() if v.ndim >= 2 else v for k, v in model.clip.state_dict().items()}
    head = model.head.state_dict()
    renamed = {
        "position_embedding.": "frame_position_embeddings.",
        "transformer.": "transformerClip.",
        "lstm.": "lstm_visual.",
    }
    for key, value in head.items():
        prefix = next(p for p in renamed if key.startswith(p))
        clip[renamed[prefix] + key.removeprefix(prefix)] = value
    return clip


@pytest.mark.parametrize("head", ["mean", "seq_transformer", "seq_lstm"])
def test_round_trip_through_clip4clip_names(head):
    torch.manual_seed(0)
    original = vidclip.create_model("tiny", head=head, num_frames=4).eval()
    state = clip4clip_state_of(original)
    if head == "seq_lstm":
        state["frame_position_embeddings.weight"] = torch.randn(32, 64)  # CLIP4Clip stores it, never uses it
    converted = from_clip4clip(state, "tiny", num_frames=4).eval()
    assert converted.spec.head == head and converted.spec.quick_gelu
    assert all(p.dtype == torch.float32 for p in converted.parameters())
    video, mask = torch.randn(2, 4, 3, 32, 32), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    text = torch.randint(1, 1000, (3, 32))
    with torch.no_grad():
        expected = original.similarity(original.encode_text(text), original.encode_video(video, mask))
        got = converted.similarity(converted.encode_text(text), converted.encode_video(video, mask))
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # fp16 storage rounds the weights


def test_layer_count_and_table_size_are_read_off_the_checkpoint():
    original = vidclip.create_model(
        "tiny", head="seq_transformer", num_frames=4, num_layers=2, max_positions=8
    )
    converted = from_clip4clip(clip4clip_state_of(original), "tiny", num_frames=4)
    assert converted.spec.head_options == {"num_layers": 2, "max_positions": 8}


def test_loads_a_file(tmp_path):
    original = vidclip.create_model("tiny", head="seq_transformer", num_frames=4)
    path = tmp_path / "pytorch_model.bin.0"
    torch.save(clip4clip_state_of(original), path)
    converted = from_clip4clip(path, "tiny", num_frames=4)
    torch.testing.assert_close(
        converted.head.position_embedding.weight, original.head.position_embedding.weight
    )
    with pytest.raises(FileNotFoundError):
        from_clip4clip(tmp_path / "missing.bin", "tiny")


def test_unknown_and_missing_keys_are_listed():
    state = clip4clip_state_of(vidclip.create_model("tiny", head="mean", num_frames=4))
    with pytest.raises(ValueError, match=r"cross\.pooler\.dense\.weight.*tightTransf"):
        from_clip4clip({**state, "cross.pooler.dense.weight": torch.zeros(2, 2)}, "tiny", num_frames=4)
    incomplete = {k: v for k, v in state.items() if k != "clip.ln_final.weight"}
    with pytest.raises(ValueError, match=r"missing: clip\.ln_final\.weight"):
        from_clip4clip(incomplete, "tiny", num_frames=4)
    with pytest.raises(ValueError, match=r"wrong shape.*is model_name the architecture"):
        from_clip4clip(state, "ViT-B-32", num_frames=4)


def test_head_can_be_forced_and_must_fit():
    state = clip4clip_state_of(vidclip.create_model("tiny", head="mean", num_frames=4))
    with pytest.raises(
        ValueError, match=r"missing: head\.position_embedding\.weight, head\.transformer\.resblocks"
    ):
        from_clip4clip(state, "tiny", num_frames=4, head="seq_transformer")
    with pytest.raises(ValueError, match="no equivalent of head 'query_scored'"):
        from_clip4clip(state, "tiny", head="query_scored")
