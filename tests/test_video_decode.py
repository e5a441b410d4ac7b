"""Decoding: the frames are the frames — equal to a reference decode of every frame, at the sampled indices."""

import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from backends import backend_param
from bad_corpus import write_audio_only
from dataset_fixtures import caption_videos

import vidclip
from vidclip.synthetic import decode_all_frames, index_frames, read_frame_index, write_video
from vidclip.video import DECODERS, load_frames

ASSET = "tests/assets/bigbuckbunny.mp4"
BACKENDS = ["pyav", "auto", "decord", "torchcodec"]

# (codec, height, width, fps, suffix): B-frame H.264 at 25 and 29.97 fps, sizes that are not multiples of
# 16, lossless RGB H.264 with truly odd sizes, VP9 in WebM and AV1 (SVT-AV1) in Matroska and MP4.
CASES = {
    "h264_25fps": ("libx264", 64, 64, 25, ".mp4"),
    "h264_29.97fps": ("libx264", 64, 64, Fraction(30000, 1001), ".mp4"),
    "h264_62x98": ("libx264", 62, 98, 25, ".mp4"),
    "h264_72x100": ("libx264", 72, 100, 25, ".mp4"),
    "h264_64x96": ("libx264", 64, 96, 25, ".mp4"),
    "h264_no_bframes": ("libx264", 64, 64, 25, ".mp4", {"bf": "0"}),  # I-frames at every scene cut
    "h264rgb_odd_63x97": ("libx264rgb", 63, 97, 25, ".mkv"),
    "vp9": ("libvpx-vp9", 64, 64, 25, ".webm"),
    "av1_mkv": ("libsvtav1", 64, 64, 25, ".mkv"),
    "av1_mp4": ("libsvtav1", 64, 64, 24, ".mp4"),
}
# decord2 raises on the 64x96 frame size and, after seeking, returns wrong frames (e.g. frame 0 for frame 18) on
# H.264 with non-IDR I-frames, and near-miss colours on odd-sized VP9: "auto" therefore decodes with PyAV.
DECORD_WRONG = {"h264_64x96", "h264_no_bframes", "h264rgb_odd_63x97"}


def frame_types(path) -> str:
    with av.open(str(path)) as container:
        return "".join({1: "I", 2: "P", 3: "B"}.get(int(f.pict_type), "?") for f in container.decode(video=0))


@pytest.fixture(scope="module")
def videos(index_video):
    return {
        name: index_video(60, *spec[1:3], spec[0], *spec[3:5], options=spec[5] if len(spec) > 5 else None)
        for name, spec in CASES.items()
    }


def test_generated_h264_really_has_b_frames(videos):
    assert "B" in frame_types(videos["h264_25fps"]) and "B" in frame_types(videos["h264_29.97fps"])


@pytest.mark.parametrize(
    ("case", "backend"),
    [backend_param(b, c) for c in CASES for b in BACKENDS if not (b == "decord" and c in DECORD_WRONG)],
)
@pytest.mark.parametrize("strategy", ["uniform", "random", "tail"])
def test_frames_equal_the_reference_decode(videos, case, backend, strategy):
    path = videos[case]
    reference = decode_all_frames(path)  # (N, H, W, 3): PyAV, every frame in order
    sampled = load_frames(path, 8, strategy, seed=5, decoder=backend)
    assert sampled.num_total_frames == len(reference) == 60
    assert sampled.frames.dtype == torch.uint8 and sampled.frames.shape == (8, *reference.shape[1:])
    assert np.array_equal(sampled.frames.numpy(), reference[sampled.indices.numpy()])
    # and the decoded frame i really is frame i of the file
    assert [read_frame_index(f) for f in sampled.frames.numpy()] == sampled.indices.tolist()


@pytest.mark.parametrize("backend", [backend_param(b) for b in BACKENDS])
def test_real_video_matches_the_reference(backend):
    reference = decode_all_frames(ASSET)
    sampled = load_frames(ASSET, 12, "uniform", decoder=backend)
    assert sampled.num_total_frames == 132 and sampled.fps == pytest.approx(25.0)
    assert sampled.frames.shape == (12, 720, 1280, 3)
    assert np.array_equal(sampled.frames.numpy(), reference[sampled.indices.numpy()])


def test_decord_is_not_the_default_because_it_misreads_some_streams(videos):
    """Why ``auto`` is PyAV: decord returns another frame after seeking in this ordinary H.264 stream."""
    path = videos["h264_no_bframes"]
    indices = [3, 11, 18, 26, 33, 41, 48, 56]
    exact = DECODERS["pyav"](str(path)).get_frames(indices)
    assert [read_frame_index(f) for f in exact.numpy()] == indices
    decord_frames = DECODERS["decord"](str(path)).get_frames(indices)
    if [read_frame_index(f) for f in decord_frames.numpy()] == indices:
        warnings.warn("decord now decodes this stream exactly: reconsider the default decoder", stacklevel=1)


@pytest.mark.parametrize("backend", [backend_param(b) for b in BACKENDS])
def test_short_video_gives_t_frames_and_a_mask(index_video, backend):
    path = index_video(5, 64, 64)
    frames, mask = vidclip.load_video(path, 8, return_mask=True, decoder=backend)
    assert frames.shape[0] == 8 and mask.tolist() == [True] * 5 + [False] * 3
    assert [read_frame_index(f) for f in frames.numpy()] == [0, 1, 2, 3, 4, 4, 4, 4]
    sampled = load_frames(path, 8, decoder=backend)
    assert sampled.indices.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


def test_fps_sampling_reads_the_video_frame_rate(index_video):
    path = index_video(100, 64, 64, fps=25)  # 4 s
    sampled = load_frames(path, 12, "fps", fps=1.0)
    assert (
        sampled.indices.tolist()[:4] == [0, 25, 50, 75] and sampled.mask.tolist() == [True] * 4 + [False] * 8
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("gop", ["50", "250"])  # 250: x264's default, targets far past their keyframe
@pytest.mark.parametrize("backend", ["pyav", "auto", backend_param("torchcodec")])
def test_seeking_is_exact_on_long_videos_with_sparse_indices(index_video, gop, backend):
    path = index_video(600, 64, 64, options={"g": gop})
    reference = decode_all_frames(path)
    for strategy in ("uniform", "random", "head", "tail"):
        sampled = load_frames(path, 6, strategy, seed=2, decoder=backend)
        assert np.array_equal(sampled.frames.numpy(), reference[sampled.indices.numpy()]), strategy


def test_frames_nothing_refers_to_are_skipped_unless_wanted(videos):
    """Between wanted frames only the frames others depend on are decoded (skip_frame NONREF), yet every wanted
    frame is exact: ask for each B-frame on its own, and for all of them at once."""
    path = videos["h264_25fps"]
    reference = decode_all_frames(path)
    b_frames = [i for i, kind in enumerate(frame_types(path)) if kind == "B"]
    reader = DECODERS["pyav"](str(path))
    try:
        for i in b_frames[::3]:
            assert np.array_equal(reader.get_frames([i]).numpy(), reference[[i]]), i
        assert np.array_equal(reader.get_frames(b_frames).numpy(), reference[b_frames])
        reader._container.seek(reader._pts[0], backward=True, any_frame=False, stream=reader._stream)
        decoded = sum(1 for _ in reader._decode_keeping(keep=set()))
    finally:
        reader.close()
    assert decoded < len(reference)  # without skipping, every frame from the key frame on is decoded


@pytest.mark.timeout(120)
def test_seek_that_lands_before_its_key_frame_is_not_retried_forever(tmp_path):
    """libx264 marks scene-cut I-frames as key frames, but FFmpeg's seek to one can land on the IDR frame
    before it: that seek point must be dropped (it once looped forever on some of these generated clips)."""
    for name, _ in caption_videos(tmp_path, seed=0, copies=2):
        reference = decode_all_frames(tmp_path / name)
        sampled = load_frames(tmp_path / name, 4, decoder="pyav")
        assert np.array_equal(sampled.frames.numpy(), reference[sampled.indices.numpy()]), name


def test_decoders_are_registered_and_unknown_ones_refused(index_video):
    assert {"decord", "pyav"} <= set(DECODERS)
    with pytest.raises(ValueError, match="unknown decoder"):
        vidclip.load_video(index_video(10), 4, decoder="nvdec-magic")


def test_load_video_returns_only_frames_by_default(index_video):
    frames = vidclip.load_video(index_video(30), 4)
    assert isinstance(frames, torch.Tensor) and frames.shape == (4, 64, 64, 3)


# -- bad files -------------------------------------------------------------------------------------------------
def write_faststart_mp4(path, frames):
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad videos")  # a space in the path, too
    good = write_video(folder / "good.mp4", index_frames(50, 64, 64))
    data = open(good, "rb").read()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end: cut off
    write_faststart_mp4(folder / "fast.mp4", index_frames(50, 64, 64))
    fast = (folder / "fast.mp4").read_bytes()
    (folder / "fast_cut.mp4").write_bytes(fast[: int(len(fast) * 0.6)])  # index lists frames the data lacks
    write_audio_only(folder / "audio.mp4")
    (folder / "folder.mp4").mkdir()
    return folder


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", [backend_param(b) for b in BACKENDS])
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.mp4", "empty file"),
        ("notes.mp4", "not a video"),
        ("cut.mp4", "truncated"),
        ("fast_cut.mp4", "truncated"),
        ("audio.mp4", "no video stream"),
        ("folder.mp4", "directory"),
    ],
)
def test_bad_files_raise_a_named_readable_error(bad_files, name, reason, backend):
    path = bad_files / name
    with pytest.raises(vidclip.VideoDecodeError) as info:
        vidclip.load_video(path, 8, decoder=backend)
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert reason in info.value.reason


def test_missing_file_is_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        vidclip.load_video(tmp_path / "nope.mp4")


def test_decode_error_is_a_value_error_for_callers_that_catch_bad_input(bad_files):
    with pytest.raises(ValueError):
        vidclip.load_video(bad_files / "notes.mp4")


class _ThreadSettings(torch.utils.data.Dataset):
    def __init__(self, path):
        self.path = str(path)

    def __len__(self):
        return 1

    def __getitem__(self, i):
        reader = DECODERS["pyav"](self.path)
        stream = reader._stream
        settings = (stream.thread_count, str(stream.thread_type))
        reader.close()
        return settings


def test_decoding_in_a_worker_uses_one_thread_and_in_the_main_process_several(index_video):
    """Workers already decode videos in parallel: FFmpeg threads on top only compete for the same cores."""
    dataset = _ThreadSettings(index_video(10))
    in_worker = next(
        iter(torch.utils.data.DataLoader(dataset, num_workers=1, collate_fn=lambda items: items))
    )
    assert in_worker[0][0] == 1
    count, kind = dataset[0]
    assert kind.endswith("AUTO") and count != 1  # frame and slice threads, as many as FFmpeg sees fit


def test_dense_sampling_decodes_forward_instead_of_seeking_to_skip_a_frame(index_video, monkeypatch):
    """A file with a key frame every 3 frames, every other frame wanted: seeking before each would skip one
    frame at a time (2-3x the work of decoding forward); the reader seeks once and decodes on, frames exact."""
    from vidclip.video.decoders import pyav

    path = index_video(num_frames=48, codec="libx264", options={"g": "3", "keyint_min": "3", "bf": "0"})
    seeks = []
    real_seek = pyav.PyAVReader._seek
    monkeypatch.setattr(pyav.PyAVReader, "_seek", lambda self, *a: seeks.append(a[0]) or real_seek(self, *a))
    frames = vidclip.load_video(str(path), 24, "uniform", decoder="pyav")
    indices = vidclip.sample_indices(48, 24, "uniform").tolist()
    assert [read_frame_index(frame.numpy()) for frame in frames] == indices
    assert len(seeks) == 1
    far = vidclip.load_video(str(path), 3, "uniform", decoder="pyav")  # frames 8, 24, 40: seeking pays
    assert [read_frame_index(frame.numpy()) for frame in far] == vidclip.sample_indices(
        48, 3, "uniform"
    ).tolist()
    assert len(seeks) > 2
