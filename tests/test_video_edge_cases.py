"""Unusual but valid videos decode exactly: one frame, 4K, odd paths, variable frame rate."""

import numpy as np
import pytest
from backends import backend_param
from bad_corpus import write_rotated, write_variable_frame_rate

import vidclip
from vidclip.synthetic import decode_all_frames, index_frames, read_frame_index, write_video
from vidclip.video import load_frames


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord", backend_param("torchcodec")])
def test_single_frame_video_gives_t_copies_and_one_real_frame(tmp_path, backend):
    path = write_video(tmp_path / "one.mp4", index_frames(1, 64, 64))
    frames, mask = vidclip.load_video(path, 4, return_mask=True, decoder=backend)
    assert frames.shape == (4, 64, 64, 3) and mask.tolist() == [True, False, False, False]
    assert np.array_equal(frames[0].numpy(), decode_all_frames(path)[0])


@pytest.mark.slow
def test_4k_frames_decode_exactly(tmp_path):
    path = write_video(tmp_path / "uhd.mp4", index_frames(6, 2160, 3840), options={"preset": "ultrafast"})
    sampled = load_frames(path, 3)
    assert sampled.frames.shape == (3, 2160, 3840, 3)
    assert np.array_equal(sampled.frames.numpy(), decode_all_frames(path)[sampled.indices.numpy()])


@pytest.mark.parametrize("name", ["with space.mp4", "vidéo_日本語.mp4", "-dash first.mp4"])
def test_paths_with_spaces_and_non_ascii_characters(tmp_path, name):
    folder = tmp_path / "a folder ü"
    folder.mkdir()
    path = write_video(folder / name, index_frames(12, 64, 64))
    sampled = load_frames(path, 4)
    assert [read_frame_index(f) for f in sampled.frames.numpy()] == sampled.indices.tolist()


@pytest.mark.parametrize("backend", ["auto", backend_param("torchcodec")])
def test_variable_frame_rate_frames_are_counted_not_timed(tmp_path, backend):
    gaps = [33, 33, 100, 17, 17, 250, 33, 33, 66, 33, 33, 500, 33, 33, 33, 33]  # very uneven frame durations
    path = tmp_path / "vfr.mp4"
    write_variable_frame_rate(path, index_frames(len(gaps), 64, 64), gaps)
    reference = decode_all_frames(path)
    assert len(reference) == len(gaps)
    for strategy in ("uniform", "random", "tail"):
        sampled = load_frames(path, 5, strategy, seed=1, decoder=backend)
        assert sampled.num_total_frames == len(gaps)
        assert np.array_equal(sampled.frames.numpy(), reference[sampled.indices.numpy()])
        assert [read_frame_index(f) for f in sampled.frames.numpy()] == sampled.indices.tolist()


@pytest.mark.parametrize(("degrees", "white_edge"), [(90, "left"), (-90, "right"), (180, "bottom")])
@pytest.mark.parametrize("backend", ["auto", backend_param("torchcodec")])
def test_rotated_phone_video_comes_out_upright(tmp_path, degrees, white_edge, backend):
    frames = np.zeros((6, 48, 64, 3), dtype=np.uint8)
    frames[:, :8] = 255  # the stored picture's top edge is white
    path = tmp_path / f"rotated_{degrees}.mp4"
    write_rotated(path, frames, degrees)
    sampled = load_frames(path, 3, decoder=backend)
    upright = sampled.frames.float().mean(dim=(0, 3))  # (H, W) brightness
    expected_shape = (48, 64) if degrees == 180 else (64, 48)
    assert tuple(upright.shape) == expected_shape
    edges = {
        "left": upright[:, :4].mean(),
        "right": upright[:, -4:].mean(),
        "top": upright[:4].mean(),
        "bottom": upright[-4:].mean(),
    }
    assert edges[white_edge] > 200 and min(v for k, v in edges.items() if k != white_edge) < 60
