"""Retrieval metrics exactly as CLIP4Clip reports them, for one or several captions per video.

A query's rank is 1 + the number of gallery items scored strictly higher than its target (CLIP4Clip's
``compute_metrics``; on exact ties CLIP4Clip emits every tied position, which only matters for constant
matrices). R@K = 100 x the fraction of queries with rank <= K; MdR / MnR = median / mean rank.

Several captions per video (MSR-VTT full and 7k protocols, ``text_to_video`` given): text->video ranks each
caption's own video among all videos; video->text first takes, for every video, the best of each video's
captions (the max over a video's captions, as CLIP4Clip's ``tensor_video_to_text_sim`` does) and ranks the
video's own caption group among all groups.
"""

from __future__ import annotations

import numpy as np
import torch


def _ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """scores: (Q, G), target: (Q,) gallery index -> 1-based rank of each query's target (Q,)."""
    own = scores.gather(1, target[:, None])  # (Q, 1)
    return (scores > own).sum(dim=1) + 1


def _summary(prefix: str, ranks: torch.Tensor) -> dict[str, float]:
    ranks_np = ranks.cpu().numpy().astype(np.float64)
    out = {f"{prefix}/R@{k}": float(100.0 * np.mean(ranks_np <= k)) for k in (1, 5, 10)}
    out[f"{prefix}/MdR"] = float(np.median(ranks_np))
    out[f"{prefix}/MnR"] = float(np.mean(ranks_np))
    return out


def retrieval_metrics(sim: torch.Tensor, text_to_video: torch.Tensor | None = None) -> dict[str, float]:
    """sim: (N_text, N_video) similarities -> {"t2v/R@1", "t2v/R@5", "t2v/R@10", "t2v/MdR", "t2v/MnR", "v2t/..."}.

    Without ``text_to_video`` the matrix must be square and text i belongs to video i. With it, a (N_text,)
    integer tensor gives each text's video index, and every video needs at least one text.
    """
    t2v, v2t = retrieval_ranks(sim, text_to_video)
    return {**_summary("t2v", t2v), **_summary("v2t", v2t)}


def retrieval_ranks(
    sim: torch.Tensor, text_to_video: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1-based ranks behind :func:`retrieval_metrics`: text->video (N_text,) and video->text (N_video,)."""
    sim = torch.as_tensor(sim).detach().float().cpu()
    if sim.ndim != 2:
        raise ValueError(f"sim must be a 2-D (N_text, N_video) matrix, got shape {tuple(sim.shape)}")
    num_texts, num_videos = sim.shape
    if text_to_video is None:
        if num_texts != num_videos:
            raise ValueError(
                f"sim is {num_texts}x{num_videos}: a non-square matrix needs text_to_video (each text's video index)"
            )
        text_to_video = torch.arange(num_texts)
    text_to_video = torch.as_tensor(text_to_video).long().cpu()
    if text_to_video.shape != (num_texts,):
        raise ValueError(f"text_to_video must have shape ({num_texts},), got {tuple(text_to_video.shape)}")
    if text_to_video.min() < 0 or text_to_video.max() >= num_videos:
        raise ValueError(
            f"text_to_video must hold video indices in [0, {num_videos}), got out-of-range values"
        )
    counts = torch.bincount(text_to_video, minlength=num_videos)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"every video needs at least one text; videos {missing} have none")
    if torch.isnan(sim).any():
        raise ValueError("sim contains NaN")
    t2v = _ranks(sim, text_to_video)
    # best[v, g] = max over the captions of video g of sim(caption, v): (N_video, N_video)
    best = torch.full((num_videos, num_videos), float("-inf"))
    best = best.scatter_reduce(1, text_to_video[None].expand(num_videos, -1), sim.T, reduce="amax")
    return t2v, _ranks(best, torch.arange(num_videos))


def dual_softmax(sim: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Dual-softmax re-scoring (CAMoE's DSL) for text->video ranking: S * softmax(S / τ over texts) * N_text.

    It uses the whole query set as a prior, so it is a transductive inference trick: report it beside plain
    numbers, never instead of them. For video->text ranking apply it to ``sim.T`` and transpose back.
    """
    sim = torch.as_tensor(sim).float()
    return sim * torch.softmax(sim / temperature, dim=0) * sim.shape[0]
