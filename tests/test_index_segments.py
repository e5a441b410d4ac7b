"""Windows of long videos: where they lie, the streaming decode that feeds them, and their embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vidclip
from vidclip.index.segments import encode_windows, frames_shared, plan_windows
from vidclip.inference.pipeline import EncodeOptions
from vidclip.synthetic.videos import decode_all_frames, read_frame_index
from vidclip.video import get_video_transform, iter_frames, open_video


@pytest.mark.parametrize(
    "frames, fps, segment, stride, t, starts",
    [
        (250, 25, 4.0, 2.0, 4, [0.0, 2.0, 4.0, 6.0]),  # 10 s: windows every 2 s, the last ends at 10 s
        (250, 25, 4.0, 4.0, 4, [0.0, 4.0, 6.0]),  # the last window moved back to end at the end
        (100, 25, 4.0, 2.0, 4, [0.0]),  # exactly one window long
        (240, 24, 3.0, 1.5, 3, [0.0, 2.0, 3.0, 5.0, 6.0, 7.0]),  # 10 s: starts rounded to the 1 s grid
    ],
)
def test_windows_cover_the_video_on_a_shared_grid(frames, fps, segment, stride, t, starts):
    plan = plan_windows(frames, fps, segment=segment, stride=stride, frames_per_window=t)
    assert plan.starts == pytest.approx(starts)
    assert plan.ends[-1] == pytest.approx(frames / fps)
    for start, end, window in zip(plan.starts, plan.ends, plan.frames, strict=True):
        assert end - start == pytest.approx(min(segment, frames / fps - start))
        times = np.array(window) / fps
        assert (times >= start - 1e-9).all() and (times < end).all()  # every frame inside its window
        assert window == sorted(window)
    step = segment / t  # frames sit at the centres of steps: shared by overlapping windows
    assert plan.frames[0] == [int((j + 0.5) * step * fps) for j in range(t)]


def test_a_short_video_is_one_window_sampled_like_a_whole_video():
    plan = plan_windows(30, 25, segment=4.0, stride=2.0, frames_per_window=8)
    assert plan.starts == [0.0] and plan.ends == [pytest.approx(1.2)]
    assert plan.frames[0] == vidclip.sample_indices(30, 8, "uniform").tolist()
    assert all(plan.mask[0])
    tiny = plan_windows(3, 25, segment=4.0, stride=2.0, frames_per_window=8)
    assert tiny.mask[0] == [True] * 3 + [False] * 5 and tiny.frames[0][3:] == [2] * 5


def test_a_video_without_frame_rate_cannot_be_windowed():
    with pytest.raises(ValueError, match="frame rate"):
        plan_windows(100, 0.0, segment=4, stride=2, frames_per_window=4)


@pytest.mark.parametrize("codec", ["libx264", "libx264rgb"])
def test_streaming_decode_gives_the_reference_frames(index_video, codec):
    path = index_video(num_frames=90, codec=codec, options={"g": "10"} if codec == "libx264" else None)
    wanted = [0, 3, 4, 5, 17, 40, 41, 60, 89]
    reference = decode_all_frames(path)
    reader = open_video(path)
    try:
        streamed = list(iter_frames(reader, wanted[::-1] + [5]))  # any order, repeats: each once, in order
        assert [i for i, _ in streamed] == wanted
        for index, frame in streamed:
            assert read_frame_index(frame.numpy()) == index
            assert np.array_equal(frame.numpy(), reference[index])
    finally:
        reader.close()


def test_streaming_decode_of_a_backend_without_it_asks_in_chunks(index_video):
    path = index_video(num_frames=40)
    reader = open_video(path)

    class Plain:  # a backend with only get_frames
        num_frames, fps = reader.num_frames, reader.fps
        asked: list[list[int]] = []

        def get_frames(self, indices):
            self.asked.append(list(indices))
            return reader.get_frames(indices)

    plain = Plain()
    streamed = list(iter_frames(plain, list(range(0, 40, 2)), chunk=8))
    reader.close()
    assert [i for i, _ in streamed] == list(range(0, 40, 2))
    assert [len(a) for a in plain.asked] == [8, 8, 4]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    from vidclip.synthetic.videos import index_frames, write_video

    path = tmp_path_factory.mktemp("long") / "long.mp4"
    write_video(path, index_frames(200, 64, 64), fps=25)  # 8 s
    return str(path)


@pytest.mark.parametrize("head", ["mean", "seq_transformer", "ted_adapter"])
@pytest.mark.parametrize("workers", [0, 2])
def test_window_embeddings_equal_encoding_each_window_as_a_video(long_video, head, workers):
    """Frames decoded once and (for heads with nothing in the image tower) encoded once give what encoding
    every window's frames as a video of its own gives."""
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", head=head, num_frames=4).eval()
    assert frames_shared(model) == (head != "ted_adapter")
    options = EncodeOptions(num_workers=workers, batch_size=3)
    (result,) = list(encode_windows(model, [long_video], options, segment=2.0, stride=1.0, keep_frames=True))
    assert result.error is None
    plan = plan_windows(200, 25, segment=2.0, stride=1.0, frames_per_window=4)
    assert result.starts == plan.starts and len(result.embeddings) == len(plan.starts) == 7
    reader = open_video(long_video)
    transform = get_video_transform(model)
    with torch.no_grad():
        for w, window in enumerate(plan.frames):
            video = transform(reader.get_frames(window))[None]  # (1, T, 3, S, S)
            expected = model.encode_video(video)
            np.testing.assert_allclose(result.embeddings[w], expected.pooled[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(result.frames[w], expected.frames[0].numpy(), atol=1e-5)
    reader.close()


def test_a_broken_video_costs_its_own_row_only(long_video, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    model = vidclip.create_model("tiny", num_frames=4).eval()
    results = {
        r.path: r
        for r in encode_windows(
            model,
            [str(broken), long_video, str(tmp_path / "gone.mp4")],
            EncodeOptions(num_workers=2),
            segment=2.0,
            stride=2.0,
        )
    }
    assert results[long_video].error is None and len(results[long_video].starts) == 4
    assert results[str(broken)].error and results[str(tmp_path / "gone.mp4")].error == "no such file"
