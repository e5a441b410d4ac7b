"""The temporal diagnostic: order-blind heads sit exactly at chance, an order-aware head learns the order."""

import sys
from pathlib import Path

import pytest
import torch

import vidclip

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import temporal_diagnostic  # noqa: E402


@pytest.mark.parametrize("name", ["mean", "query_scored", "vop", "x_pool"])
def test_order_blind_heads_sit_at_chance(name):
    result = temporal_diagnostic.run_head(name, steps=5, num_frames=8, batch_size=8, seed=0)
    assert result.accuracy == pytest.approx(50.0)


@pytest.mark.slow
def test_seq_transformer_learns_frame_order():
    result = temporal_diagnostic.run_head("seq_transformer", steps=150, num_frames=8, batch_size=32, seed=0)
    assert result.accuracy >= 90.0


def test_default_run_covers_every_registered_head():
    names = {temporal_diagnostic.parse_head(spec)[0] for spec in temporal_diagnostic.default_heads()}
    assert names == set(vidclip.list_heads()) and "x_pool" in names


def test_table_lists_every_result():
    rows = [temporal_diagnostic.DiagnosticResult("mean", False, 0, 50.0)]
    assert "| `mean` | no | 0 | 50.0% |" in temporal_diagnostic.format_table(rows)


def test_head_options_are_parsed_from_the_name():
    assert temporal_diagnostic.parse_head("vop:variant=F+C,num_prompts=4,text_prompts=false") == (
        "vop",
        {"variant": "F+C", "num_prompts": 4, "text_prompts": False},
    )
    assert temporal_diagnostic.parse_head("mean") == ("mean", {})
    with pytest.raises(SystemExit, match="key=value"):
        temporal_diagnostic.parse_head("vop:F")


def test_vop_text_prompts_collapse_the_two_class_texts():
    """Why VoP's variants stay at chance in the diagnostic (README): trained text prompts make "played forwards"
    and "played backwards" the same text, after which the video side gets no gradient."""
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head="vop", num_frames=8, freeze_backbone=True, variant="F")
    tokens = vidclip.get_tokenizer("tiny")(list(temporal_diagnostic.CLASS_TEXTS))
    videos, labels = temporal_diagnostic.with_reversed(temporal_diagnostic.make_videos(model, 16, 8, 0))

    def text_cosine() -> float:
        with torch.no_grad():
            text = model.encode_text(tokens)
        return torch.nn.functional.cosine_similarity(text[0], text[1], dim=0).item()

    before = text_cosine()
    temporal_diagnostic.train_head(model, tokens, videos, labels, steps=60, batch_size=16, seed=0, lr=1e-3)
    assert before < 0.999 < text_cosine()
