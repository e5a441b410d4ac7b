"""Moments: neighbouring windows that score high merge into one time range; reranking on frame features."""

from __future__ import annotations

import numpy as np
import pytest

from vidclip.index import find_moments, temporal_iou
from vidclip.index.rerank import rerank_scores
from vidclip.index.rows import RowBatch, write_rows
from vidclip.index.store import IndexMeta, sync_index
from vidclip.index.video_index import VideoIndex


def windows(n: int, segment: float = 4.0, stride: float = 2.0):
    starts = np.arange(n) * stride
    return np.arange(n), starts, starts + segment


def test_a_run_of_high_windows_is_one_moment():
    rows, starts, ends = windows(10)
    scores = np.array([0.1, 0.12, 0.6, 0.8, 0.9, 0.85, 0.2, 0.1, 0.11, 0.1])  # the bar: 0.53
    (best, *rest) = find_moments(rows, starts, ends, scores)
    # windows 2..5 (4 s to 14 s), each standing for the 2 s around its centre: 5 s to 13 s
    assert (best.start, best.end, best.best) == (5.0, 13.0, 4)
    assert best.score == pytest.approx(0.9) and rest == []


def test_separate_runs_are_separate_moments_best_first():
    rows, starts, ends = windows(12)
    scores = np.full(12, 0.1)
    scores[[1, 2]] = [0.7, 0.75]
    scores[[8, 9, 10]] = [0.8, 0.95, 0.8]
    moments = find_moments(rows, starts, ends, scores)
    assert [(m.start, m.end) for m in moments] == [(17.0, 23.0), (3.0, 7.0)]


def test_a_single_window_video_is_its_own_moment():
    (moment,) = find_moments(np.array([7]), np.array([0.0]), np.array([3.5]), np.array([0.4]))
    assert (moment.first, moment.last, moment.start, moment.end) == (7, 7, 0.0, 3.5)


@pytest.mark.parametrize(
    "a, b, iou", [((0, 10), (5, 15), 1 / 3), ((0, 4), (4, 8), 0.0), ((2, 6), (2, 6), 1.0)]
)
def test_temporal_iou(a, b, iou):
    assert temporal_iou(a, b) == pytest.approx(iou)


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def event_index(tmp_path):
    """Two videos of 4-s windows every 2 s; in video a an event lies under windows 3-6 (centres 8 s to 14 s)."""
    rng = np.random.default_rng(0)
    dim = 64
    query = unit(np.eye(dim)[0])
    meta = IndexMeta(
        identity={"model_name": "x"}, model={}, root=str(tmp_path), dim=dim, segment=4.0, stride=2.0, frames=2
    )
    noise = unit(rng.normal(size=(20, dim)))
    weight = np.zeros(12)
    weight[3:7] = [0.8, 1.0, 1.0, 0.8]
    a = unit(noise[:12] + 4 * weight[:, None] * query)
    b = noise[12:]
    frames_a = np.stack([a, a], axis=1)  # (N, T=2, D)
    frames_b = np.stack([b, b], axis=1)
    frames_b[5, 1] = query  # one frame of video b shows the query exactly
    for first, (video, emb, fr) in enumerate([("a.mp4", a, frames_a), ("b.mp4", b, frames_b)]):
        n = len(emb)
        s = list(np.arange(n) * 2.0)
        write_rows(tmp_path, first, RowBatch([video] * n, s, [x + 4 for x in s], emb[:n], fr[:n]), {})
    sync_index(tmp_path, meta, "flat")
    return VideoIndex.load(tmp_path), query


def test_search_merges_the_event_windows_into_its_moment(event_index):
    index, query = event_index
    top = index.search_embedding(query, k=1, moments=True)
    assert top["video"][0] == "a.mp4"
    assert temporal_iou((top["start"][0], top["end"][0]), (7.0, 15.0)) == 1.0
    windows_only = index.search_embedding(query, k=1)
    assert windows_only["end"][0] - windows_only["start"][0] == 4.0  # a window is not the moment


def test_rerank_lifts_the_window_whose_frame_shows_the_query(event_index):
    index, query = event_index
    plain = index.search_embedding(query, k=20)
    reranked = index.search_embedding(query, k=20, rerank=True)
    row_b5 = int(np.flatnonzero((plain["video"] == "b.mp4") & (plain["start"] == 10.0))[0])
    new_b5 = int(np.flatnonzero((reranked["video"] == "b.mp4") & (reranked["start"] == 10.0))[0])
    assert new_b5 < row_b5
    frames = np.asarray(index.vectors)[:, None, :].repeat(2, 1)
    expected = rerank_scores(np.asarray(index.vectors) @ query, frames, query, "max_frame", 0.5)
    np.testing.assert_allclose(expected, 1.5 * (np.asarray(index.vectors) @ query), atol=1e-6)


def test_query_scored_rerank_weights_frames_by_the_query():
    query = unit(np.eye(8)[0])
    frames = unit(np.stack([[np.eye(8)[0], np.eye(8)[1]], [np.eye(8)[1], np.eye(8)[1]]]))  # (2, T=2, D)
    scores = rerank_scores(np.zeros(2), frames, query, "query_scored")
    assert scores[0] > 0.9 and scores[1] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="rerank must be one of"):
        rerank_scores(np.zeros(2), frames, query, "nope")


def test_the_first_and_last_windows_reach_the_ends_of_the_video():
    rows, starts, ends = windows(5)  # 0-4 ... 8-12 s
    scores = np.array([0.9, 0.8, 0.1, 0.1, 0.85])  # the bar: 0.85
    moments = find_moments(rows, starts, ends, scores)
    assert [(m.start, m.end) for m in moments] == [(0.0, 3.0), (9.0, 12.0)]


# IVF-PQ probes 8 of its 64 lists here (auto picks it only above ~3.7M vectors, where it probes 32-64 of
# thousands); its codes are refined on the stored vectors, so what it finds is ranked exactly.
@pytest.mark.parametrize("kind, recall", [("hnsw", 0.95), ("ivf_pq", 0.85)])
def test_an_approximate_index_finds_what_exact_search_finds_with_exact_scores(tmp_path, kind, recall):
    rng = np.random.default_rng(1)
    dim, n = 32, 3000
    centres = unit(rng.normal(size=(30, dim)))
    vectors = unit(centres[rng.integers(0, 30, n)] + 0.3 * rng.normal(size=(n, dim)))
    for name, index_type in (("exact", "flat"), ("approx", kind)):
        folder = tmp_path / name
        meta = IndexMeta(identity={"model_name": "x"}, model={}, root=str(tmp_path), dim=dim)
        for first in range(0, n, 1000):  # three parts, as three runs would add them
            batch = vectors[first : first + 1000]
            videos = [f"v{first + i}.mp4" for i in range(len(batch))]
            write_rows(folder, first, RowBatch(videos, [0.0] * len(batch), [1.0] * len(batch), batch), {})
        sync_index(folder, meta, index_type)
    exact, approx = VideoIndex.load(tmp_path / "exact"), VideoIndex.load(tmp_path / "approx")
    assert approx.meta.ann["kind"] == kind and len(approx) == n
    hits = []
    for query in unit(centres[:10] + 0.2 * rng.normal(size=(10, dim))):
        want, got = exact.search_embedding(query, k=10), approx.search_embedding(query, k=10)
        hits.append(len(set(want["video"]) & set(got["video"])) / 10)
        by_video = dict(zip(want["video"], want["score"], strict=True))
        for video, score in zip(got["video"], got["score"], strict=True):  # every reported score is exact
            assert score == pytest.approx(float(vectors[int(video[1:-4])] @ query), abs=1e-5)
            assert video not in by_video or by_video[video] == pytest.approx(score, abs=1e-6)
    assert np.mean(hits) >= recall
