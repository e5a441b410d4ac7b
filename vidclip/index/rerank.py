"""Reranking an index's top candidates on their stored frame features (``--frame-features``).

``max_frame`` is CLIPRerank's rule: the candidate's index score plus ``weight`` times the best cosine between
the query and one of its frames, so a short moment that one frame shows rises above a window that is only on
topic on average. ``query_scored`` rescores each candidate with the text-conditioned ``query_scored`` head
(a softmax over frames of query-frame cosines weights the frames; parameter-free), which needs no training.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

RerankMode = Literal["max_frame", "query_scored"]
RERANK_MODES: tuple[str, ...] = ("max_frame", "query_scored")
DEFAULT_WEIGHT = 0.5  # max_frame: index score + 0.5 x best frame cosine


def rerank_scores(
    scores: np.ndarray,
    frames: np.ndarray,
    query: np.ndarray,
    mode: RerankMode = "max_frame",
    weight: float = DEFAULT_WEIGHT,
) -> np.ndarray:
    """New scores (n,) of candidates with index ``scores`` (n,) and frame features ``frames`` (n, T, D), for
    the unit ``query`` (D,)."""
    if mode not in RERANK_MODES:
        raise ValueError(f"rerank must be one of {', '.join(RERANK_MODES)}, got {mode!r}")
    frames = np.asarray(frames, dtype=np.float32)
    if mode == "max_frame":
        unit = frames / np.maximum(np.linalg.norm(frames, axis=-1, keepdims=True), 1e-12)
        return scores + weight * (unit @ query).max(axis=1)
    from vidclip.heads import create_head

    head = create_head("query_scored")
    mask = torch.ones(frames.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        return head.score(torch.from_numpy(query[None]), torch.from_numpy(frames), mask)[0].numpy()
