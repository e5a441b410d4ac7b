"""Moments: runs of neighbouring windows of one video that score high, merged into one start and end.

A 10-second event seen through 4-second windows every 2 seconds lights up several windows; the moment is
the run of consecutive windows around the best one that score at least half-way between the video's typical
window (the median) and its best (the full width at half maximum of the score curve), from the middle
between its first window and the one before to the middle between its last and the one after. A single
window above that bar is a moment of one window; separate runs in one video are separate moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HALF = 0.5  # where the bar sits between the video's median window and its best window


@dataclass(frozen=True)
class Moment:
    """A time range of one video: its first and last window (row ids), start/end seconds, best score."""

    first: int
    last: int
    start: float
    end: float
    score: float
    best: int  # the row id of the best window


def find_moments(
    rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, *, level: float = HALF
) -> list[Moment]:
    """The moments of one video from its windows in time order (``rows`` ids, ``starts``/``ends`` seconds,
    ``scores``), best first. A run of windows spans the parts of the video its windows stand for: each window
    the stretch nearer its centre than its neighbours' (the first from the video's start, the last to its
    end), so overlapping windows do not stretch a moment by half a window at each side."""
    if len(scores) == 0:
        return []
    peak, typical = float(scores.max()), float(np.median(scores))
    bar = typical + level * (peak - typical)
    above = scores >= bar - 1e-7
    centres = (np.asarray(starts, float) + np.asarray(ends, float)) / 2
    bounds = np.concatenate(
        [[starts[0]], (centres[1:] + centres[:-1]) / 2, [ends[-1]]]
    )  # window i: [b_i, b_i+1]
    moments, i = [], 0
    while i < len(scores):
        if not above[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(scores) and above[j + 1]:
            j += 1
        best = i + int(np.argmax(scores[i : j + 1]))
        moments.append(
            Moment(
                int(rows[i]),
                int(rows[j]),
                float(bounds[i]),
                float(bounds[j + 1]),
                float(scores[best]),
                int(rows[best]),
            )
        )
        i = j + 1
    return sorted(moments, key=lambda m: -m.score)


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two time ranges (start, end) in seconds."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0
