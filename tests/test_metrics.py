"""retrieval_metrics against independent computations written the way CLIP4Clip's metrics.py works."""

import numpy as np
import pytest
import torch

import vidclip
from vidclip.metrics import dual_softmax


def reference_single_caption(x: np.ndarray) -> dict[str, float]:
    """CLIP4Clip's compute_metrics: sort each row descending, find where the diagonal value lands."""
    sx = np.sort(-x, axis=1)
    positions = np.where(sx - np.diag(-x)[:, None] == 0)[1]
    return {
        "R@1": 100 * np.mean(positions == 0),
        "R@5": 100 * np.mean(positions < 5),
        "R@10": 100 * np.mean(positions < 10),
        "MdR": np.median(positions) + 1,
        "MnR": np.mean(positions) + 1,
    }


def reference_multi_caption(sim: np.ndarray, text_to_video: np.ndarray) -> tuple[dict, dict]:
    """A plain loop: t2v ranks the own video per caption; v2t collapses each video's captions to their max."""
    num_videos = sim.shape[1]
    t2v = np.array([1 + np.sum(row > row[v]) for row, v in zip(sim, text_to_video, strict=True)])
    best = np.array(
        [[sim[text_to_video == g, v].max() for g in range(num_videos)] for v in range(num_videos)]
    )
    v2t = np.array([1 + np.sum(best[v] > best[v, v]) for v in range(num_videos)])

    def summary(ranks):
        return {
            "R@1": 100 * np.mean(ranks <= 1),
            "R@5": 100 * np.mean(ranks <= 5),
            "R@10": 100 * np.mean(ranks <= 10),
            "MdR": np.median(ranks),
            "MnR": np.mean(ranks),
        }

    return summary(t2v), summary(v2t)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_caption_matches_clip4clip_computation(seed):
    rng = np.random.default_rng(seed)
    sim = rng.standard_normal((60, 60)) + 2.0 * np.eye(60) * rng.random(60)  # some correct, some not
    got = vidclip.retrieval_metrics(torch.from_numpy(sim))
    for direction, matrix in (("t2v", sim), ("v2t", sim.T)):
        for key, value in reference_single_caption(matrix).items():
            assert got[f"{direction}/{key}"] == pytest.approx(value), (direction, key)
    assert 0 < got["t2v/R@1"] < 100  # the matrix is neither trivial nor hopeless: the test can fail


@pytest.mark.parametrize("seed", [0, 1])
def test_several_captions_per_video_match_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    num_videos = 25
    text_to_video = np.concatenate([np.arange(num_videos), rng.integers(0, num_videos, 40)])
    sim = rng.standard_normal((len(text_to_video), num_videos))
    sim[np.arange(len(text_to_video)), text_to_video] += 1.5
    got = vidclip.retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(text_to_video))
    t2v, v2t = reference_multi_caption(sim, text_to_video)
    for key in t2v:
        assert got[f"t2v/{key}"] == pytest.approx(t2v[key])
        assert got[f"v2t/{key}"] == pytest.approx(v2t[key])


def test_identity_text_to_video_equals_the_square_case():
    sim = torch.randn(30, 30)
    assert vidclip.retrieval_metrics(sim) == vidclip.retrieval_metrics(sim, torch.arange(30))


def test_perfect_and_reversed_rankings():
    perfect = vidclip.retrieval_metrics(torch.eye(12))
    assert perfect["t2v/R@1"] == 100 and perfect["v2t/MdR"] == 1 and perfect["t2v/MnR"] == 1
    worst = vidclip.retrieval_metrics(-torch.eye(12))
    assert worst["t2v/R@10"] == 0 and worst["t2v/MdR"] == 12


@pytest.mark.parametrize(
    ("sim", "text_to_video", "match"),
    [
        (torch.randn(3, 4), None, "non-square"),
        (torch.randn(3), None, "2-D"),
        (torch.randn(3, 2), torch.tensor([0, 1]), "shape"),
        (torch.randn(3, 2), torch.tensor([0, 1, 2]), "indices"),
        (torch.randn(3, 3), torch.tensor([0, 0, 1]), "at least one text"),
        (torch.full((2, 2), float("nan")), None, "NaN"),
    ],
)
def test_bad_input_is_rejected(sim, text_to_video, match):
    with pytest.raises(ValueError, match=match):
        vidclip.retrieval_metrics(sim, text_to_video)


def test_dual_softmax_reweights_by_the_other_modality():
    # Video 0 is every text's favourite ("hub"); DSL discounts it so text 1 finds its own video.
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.1, 0.0, 0.6]])
    assert vidclip.retrieval_metrics(sim)["t2v/R@1"] == pytest.approx(200 / 3)
    rescored = dual_softmax(sim, temperature=0.1)
    expected = sim * torch.softmax(sim / 0.1, dim=0) * 3
    assert torch.allclose(rescored, expected)
    assert vidclip.retrieval_metrics(rescored)["t2v/R@1"] == 100
