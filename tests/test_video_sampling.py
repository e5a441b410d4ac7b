"""Frame sampling: exact index tables per strategy, and properties every strategy must keep."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vidclip
from vidclip.video.sampling import SAMPLING_STRATEGIES, pad_indices


@pytest.mark.parametrize(
    ("num_total", "num_frames", "strategy", "kwargs", "expected"),
    [
        (100, 4, "uniform", {}, [12, 37, 62, 87]),  # centres of [0,25) [25,50) [50,75) [75,100)
        (10, 4, "uniform", {}, [1, 3, 6, 8]),  # segments [0,2) [2,5) [5,7) [7,10)
        (12, 12, "uniform", {}, list(range(12))),
        (100, 4, "head", {}, [0, 1, 2, 3]),  # CLIP4Clip slice_framepos=0
        (100, 4, "tail", {}, [96, 97, 98, 99]),  # slice_framepos=1
        (5, 8, "uniform", {}, [0, 1, 2, 3, 4]),  # shorter than T: every frame, once
        (5, 8, "random", {"seed": 3}, [0, 1, 2, 3, 4]),
        (300, 12, "fps", {"video_fps": 30.0}, [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]),  # 10 s at 1 fps
        # 30 s at 1 fps -> 30 candidates, thinned by linspace(0, 29, 12) (CLIP4Clip's slice_framepos=2)
        (900, 12, "fps", {"video_fps": 30.0}, [30 * i for i in (0, 2, 5, 7, 10, 13, 15, 18, 21, 23, 26, 29)]),
        (100, 3, "fps", {"video_fps": 29.97, "fps": 2.0}, [0, 44, 89]),  # 2 fps of 29.97: 0, 14, 29, 44, ...
        (300, 4, "head", {"video_fps": 30.0, "fps": 1.0}, [0, 30, 60, 90]),  # a rate first, then the strategy
        (300, 2, "tail", {"video_fps": 30.0, "fps": 1.0}, [240, 270]),
    ],
)
def test_index_table(num_total, num_frames, strategy, kwargs, expected):
    assert vidclip.sample_indices(num_total, num_frames, strategy, **kwargs).tolist() == expected


def test_fps_candidates_at_29_97_follow_the_clock():
    # 1 fps of 29.97 fps video: frame floor(k * 29.97) is the first frame of second k
    idx = vidclip.sample_indices(3000, 200, "fps", video_fps=29.97)
    assert idx.tolist() == [int(np.floor(k * 29.97 + 1e-6)) for k in range(len(idx))]
    assert len(idx) == 101  # ceil(3000 / 29.97)


def test_random_is_seeded_and_stays_in_its_segment():
    a = vidclip.sample_indices(1000, 8, "random", seed=1)
    assert torch.equal(a, vidclip.sample_indices(1000, 8, "random", seed=1))
    assert not torch.equal(a, vidclip.sample_indices(1000, 8, "random", seed=2))
    bounds = [i * 1000 // 8 for i in range(9)]
    assert all(bounds[i] <= a[i] < bounds[i + 1] for i in range(8))
    draws = torch.stack([vidclip.sample_indices(1000, 8, "random", seed=s) for s in range(50)])
    assert draws[:, 0].unique().numel() > 20  # it really varies within the segment


def test_random_uses_a_given_generator():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(
        vidclip.sample_indices(500, 6, "random", generator=g1),
        vidclip.sample_indices(500, 6, "random", generator=g2),
    )


@settings(max_examples=300, deadline=None)
@given(
    num_total=st.integers(1, 5000),
    num_frames=st.integers(1, 64),
    strategy=st.sampled_from(SAMPLING_STRATEGIES),
    video_fps=st.sampled_from([None, 24.0, 25.0, 29.97, 30.0, 59.94]),
    seed=st.integers(0, 10),
)
def test_every_strategy_in_range_sorted_deterministic(num_total, num_frames, strategy, video_fps, seed):
    kwargs = {"seed": seed}
    if strategy == "fps" or video_fps is not None:
        kwargs.update(video_fps=video_fps or 25.0, fps=1.0)
    idx = vidclip.sample_indices(num_total, num_frames, strategy, **kwargs)
    assert idx.dtype == torch.long and 1 <= len(idx) <= num_frames
    assert int(idx.min()) >= 0 and int(idx.max()) < num_total
    assert bool((idx[1:] > idx[:-1]).all()), "indices must be strictly increasing"
    assert torch.equal(idx, vidclip.sample_indices(num_total, num_frames, strategy, **kwargs))
    if "fps" not in kwargs and num_total >= num_frames:
        assert len(idx) == num_frames


def test_pad_indices_repeats_the_last_and_masks_it():
    indices, mask = pad_indices(torch.tensor([0, 3, 7]), 5)
    assert indices.tolist() == [0, 3, 7, 7, 7]
    assert mask.tolist() == [True, True, True, False, False]
    full, full_mask = pad_indices(torch.arange(4), 4)
    assert full.tolist() == [0, 1, 2, 3] and bool(full_mask.all())


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, 4), {}, "num_total_frames"),
        ((10, 0), {}, "num_frames"),
        ((10, 4, "middle"), {}, "strategy must be one of"),
        ((10, 4, "fps"), {}, "video_fps"),
        ((10, 4, "uniform"), {"fps": -1.0, "video_fps": 25.0}, "fps must be positive"),
    ],
)
def test_bad_arguments_name_themselves(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        vidclip.sample_indices(*args, **kwargs)
