"""GPU decoding (``nvdec``, torchcodec on CUDA): refused with what to do where it cannot run, decoded in the main
process by every pipeline, and, on a GPU, the same frames as the CPU decoders within codec rounding."""

import os
import sys
import threading
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from backends import NEEDS_TORCHCODEC

import vidclip
from vidclip.commands import extract
from vidclip.inference import encode_videos
from vidclip.synthetic import decode_all_frames, index_frames, read_frame_index, write_video
from vidclip.video import (
    DECODERS,
    DecoderUnavailableError,
    check_decoder,
    decodes_on_device,
    frames_device,
    load_frames,
    nvdec_cpu_fallbacks,
)
from vidclip.video.decoders import torchcodec as torchcodec_backend
from vidclip.video.decoders.pyav import PyAVReader
from vidclip.video.decoders.torchcodec import _load_torchcodec

NEEDS_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu decode")
    return [
        write_video(folder / f"v{i}.mp4", index_frames(frames, 64, 96), fps=25)
        for i, frames in enumerate([40, 6, 90])
    ]


class MainProcessRecorder(PyAVReader):
    """A CPU stand-in for a GPU decoder: flagged on-device, it records the process and thread each video is
    opened in."""

    on_device = True
    opened_in: list[tuple[int, str]] = []

    def __init__(self, path: str):
        MainProcessRecorder.opened_in.append((os.getpid(), threading.current_thread().name))
        super().__init__(path)


@pytest.fixture
def on_device_decoder(monkeypatch):
    MainProcessRecorder.opened_in = []
    monkeypatch.setitem(DECODERS, "recorder", MainProcessRecorder)
    return "recorder"


# -- where it cannot run ---------------------------------------------------------------------------------------
def test_nvdec_without_a_gpu_is_refused_before_any_work(videos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        torch.cuda, "is_available", lambda: False
    )  # a machine without a GPU, wherever this runs
    with pytest.raises(DecoderUnavailableError, match="GPU"):
        check_decoder("nvdec")
    with pytest.raises(DecoderUnavailableError):
        vidclip.load_video(videos[0], 4, decoder="nvdec")
    assert (
        extract.main(
            [str(videos[0]), "--out", str(tmp_path / "out"), "--model", "tiny", "--decoder", "nvdec"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--decoder nvdec" in err and "GPU" in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_missing_torchcodec_says_what_to_install(monkeypatch):
    _load_torchcodec.cache_clear()
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # import fails as if not installed
    try:
        with pytest.raises(DecoderUnavailableError, match="pip install torchcodec"):
            check_decoder("torchcodec")
    finally:
        _load_torchcodec.cache_clear()


def test_training_refuses_a_decoder_it_cannot_run_as_a_config_error(tmp_path, monkeypatch):
    from vidclip.config import ConfigError, load_config
    from vidclip.train.state import preflight

    (tmp_path / "train.csv").write_text("video,caption\na.mp4,a caption\n")
    config_file = tmp_path / "c.yaml"
    config_file.write_text(
        f"task: retrieval\ntrain: {{max_steps: 1}}\ndata: {{format: csv, train: {tmp_path / 'train.csv'}}}\n"
    )
    with pytest.raises(ConfigError, match="data.decoder: unknown decoder"):
        preflight(load_config([config_file], ["data.decoder=nvdc", f"output_dir={tmp_path / 'run'}"]), False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    with pytest.raises(ConfigError, match="data.decoder: decoder 'nvdec' decodes on an NVIDIA GPU"):
        preflight(load_config([config_file], ["data.decoder=nvdec", f"output_dir={tmp_path / 'run'}"]), False)


def test_torchcodec_that_imports_without_ffmpeg_is_refused(monkeypatch):
    """From 0.16 torchcodec imports without FFmpeg's libraries (for its image decoders): say what to install."""
    torchcodec = pytest.importorskip("torchcodec", reason="torchcodec (vidclip[gpu]) is not installed")
    _load_torchcodec.cache_clear()
    monkeypatch.setattr(torchcodec, "ffmpeg_major_version", None, raising=False)
    try:
        with pytest.raises(DecoderUnavailableError, match="FFmpeg's shared libraries"):
            check_decoder("torchcodec")
    finally:
        _load_torchcodec.cache_clear()


# -- when NVDEC cannot decode a codec: torchcodec decodes on the CPU, and says so -------------------------------
class FallbackStatus:
    """torchcodec's CpuFallbackStatus (0.10+): truthy once known to have fallen back."""

    def __init__(self, fell_back: bool, known: bool = True):
        self.fell_back, self.status_known = fell_back, known

    def __bool__(self):
        return self.status_known and self.fell_back

    def __str__(self):
        return "[CUDA] Fallback status: Falling back due to: Video not supported"


class FakeCudaDecoder:
    """torchcodec's VideoDecoder as ``nvdec`` uses it, on the CPU: PyAV's frames, and a fallback status that a
    test sets (``fallback``: a FallbackStatus, or None for a torchcodec older than 0.10, which has none)."""

    fallback: FallbackStatus | None = None
    decides_on_first_frame = False  # FFmpeg's CUDA backend knows only after decoding a frame

    def __init__(self, path, **options):
        self._reader = PyAVReader(str(path))
        self.metadata = SimpleNamespace(num_frames=self._reader.num_frames, average_fps=self._reader.fps)
        if FakeCudaDecoder.fallback is not None:
            known = not FakeCudaDecoder.decides_on_first_frame
            self.cpu_fallback = FallbackStatus(FakeCudaDecoder.fallback.fell_back, known)

    def get_frames_at(self, indices):
        if hasattr(self, "cpu_fallback"):
            self.cpu_fallback.status_known = True
        return SimpleNamespace(data=self._reader.get_frames(indices))


@pytest.fixture
def fake_gpu(monkeypatch):
    """``nvdec`` on a machine without a GPU: CUDA said to be there, torchcodec's decoder faked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torchcodec_backend, "_load_torchcodec", lambda: FakeCudaDecoder)
    monkeypatch.setattr(torchcodec_backend, "_cpu_fallback_paths", [])  # this process has seen none yet
    monkeypatch.setattr(FakeCudaDecoder, "decides_on_first_frame", False)
    return FakeCudaDecoder


def decode_all_with_nvdec(videos) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the once-only is ours, not the warnings filter's
        for path in videos:
            sampled = load_frames(path, 4, decoder="nvdec")
            assert [read_frame_index(f) for f in sampled.frames.numpy()] == sampled.indices.tolist()
    return [w for w in caught if "on the CPU, not with NVDEC" in str(w.message)]


@pytest.mark.parametrize("decides_on_first_frame", [False, True])
def test_nvdec_falling_back_to_the_cpu_warns_once_and_counts(
    videos, fake_gpu, monkeypatch, decides_on_first_frame
):
    monkeypatch.setattr(fake_gpu, "fallback", FallbackStatus(True))
    monkeypatch.setattr(fake_gpu, "decides_on_first_frame", decides_on_first_frame)
    warned = decode_all_with_nvdec(videos)
    assert len(warned) == 1 and warned[0].category is RuntimeWarning
    assert str(videos[0]) in str(warned[0].message) and "Video not supported" in str(warned[0].message)
    assert nvdec_cpu_fallbacks() == len(videos)
    assert decode_all_with_nvdec(videos[:1]) == [] and nvdec_cpu_fallbacks() == len(videos) + 1


@pytest.mark.parametrize("fallback", [FallbackStatus(False), None], ids=["decoded-on-gpu", "torchcodec<0.10"])
def test_nvdec_decoding_on_the_gpu_warns_nothing(videos, fake_gpu, monkeypatch, fallback):
    monkeypatch.setattr(fake_gpu, "fallback", fallback)
    assert decode_all_with_nvdec(videos) == [] and nvdec_cpu_fallbacks() == 0


# -- how the pipelines use it ----------------------------------------------------------------------------------
def test_on_device_decoders_decode_in_the_main_process(videos, on_device_decoder, tmp_path):
    """Forked DataLoader workers cannot use CUDA: a GPU decoder's videos are decoded in the main process,
    whatever --num-workers says, in a thread that runs ahead of the model, and the result equals the CPU
    decoder's in workers."""
    assert (
        decodes_on_device("nvdec") and decodes_on_device(on_device_decoder) and not decodes_on_device("pyav")
    )
    assert frames_device("pyav") == torch.device("cpu")
    model = vidclip.create_model("tiny", num_frames=4).eval()
    in_workers = encode_videos(model, [str(v) for v in videos], num_workers=2, batch_size=2)
    in_main = encode_videos(
        model, [str(v) for v in videos], num_workers=2, batch_size=2, decoder=on_device_decoder
    )
    assert MainProcessRecorder.opened_in == [(os.getpid(), "vidclip-decode-ahead")] * len(videos)
    assert torch.equal(in_main.features.pooled, in_workers.features.pooled)

    MainProcessRecorder.opened_in = []
    out = tmp_path / "out"
    options = ["--model", "tiny", "--num-frames", "4", "--num-workers", "2", "--decoder", on_device_decoder]
    assert extract.main([*map(str, videos), "--out", str(out), *options]) == 0
    assert MainProcessRecorder.opened_in == [(os.getpid(), "vidclip-decode-ahead")] * len(videos)
    assert len(pd.read_parquet(out)) == len(videos)


@NEEDS_TORCHCODEC
def test_torchcodec_backend_feeds_the_pipelines_like_pyav(videos):
    model = vidclip.create_model("tiny", num_frames=4).eval()
    paths = [str(v) for v in videos]
    ours = encode_videos(model, paths, num_workers=0, decoder="torchcodec")
    reference = encode_videos(model, paths, num_workers=0, decoder="pyav")
    assert torch.equal(ours.features.pooled, reference.features.pooled)


# -- on a GPU --------------------------------------------------------------------------------------------------
class TestOnGpu:
    pytestmark = [*NEEDS_GPU, NEEDS_TORCHCODEC]

    def test_nvdec_frames_are_the_cpu_frames_within_codec_rounding(self, videos):
        for path in videos:
            reference = decode_all_frames(path)
            sampled = load_frames(path, 8, "uniform", decoder="nvdec")
            assert sampled.frames.is_cuda and sampled.frames.dtype == torch.uint8
            frames = sampled.frames.cpu().numpy()
            assert frames.shape == (8, *reference.shape[1:])
            assert [read_frame_index(f) for f in frames] == sampled.indices.tolist()  # the right frames
            difference = np.abs(frames.astype(np.int16) - reference[sampled.indices.numpy()].astype(np.int16))
            assert difference.mean() < 2.0, difference.mean()  # YUV->RGB on the GPU rounds differently

    def test_nvdec_extraction_matches_cpu_decoding(self, videos, tmp_path):
        common = ["--model", "tiny", "--num-frames", "4", "--device", "cuda"]
        for decoder in ("pyav", "nvdec"):
            out = tmp_path / decoder
            assert extract.main([*map(str, videos), "--out", str(out), *common, "--decoder", decoder]) == 0
        gpu = pd.read_parquet(tmp_path / "nvdec").sort_values("video")
        cpu = pd.read_parquet(tmp_path / "pyav").sort_values("video")
        for a, b in zip(gpu["embedding"], cpu["embedding"], strict=True):
            a, b = np.asarray(a), np.asarray(b)
            assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999
