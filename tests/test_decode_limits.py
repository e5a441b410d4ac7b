"""Memory is bounded by design: a pixel budget checked from the header before decoding, resizing whose memory
does not grow with a frame's aspect ratio; and a video that kills its DataLoader worker costs its own row."""

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import get_worker_info

import vidclip
from vidclip.commands import extract, zeroshot
from vidclip.config import ConfigError, load_config
from vidclip.synthetic import index_frames, write_video
from vidclip.video import (
    DECODERS,
    DecoderUnavailableError,
    VideoDecodeError,
    check_decoder,
    load_frames,
    register_decoder,
)
from vidclip.video.decoders import DEFAULT_MAX_PIXELS, base, check_frame_size

CLAIMED = 12000  # the frame size the patched files claim: 12000 x 12000 = 144 MP, 432 MB a frame as RGB
BUDGET = (
    f"frame size {CLAIMED}x{CLAIMED} is above the pixel budget of {DEFAULT_MAX_PIXELS} pixels (--max-pixels)"
)
DEATH = "the decoding process died (killed by signal 9: out of memory?)"


def encode_tiny(path: Path, codec: str, pix_fmt: str, frames: int = 4, size: int = 32, fmt=None) -> bytearray:
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = size, size, pix_fmt
        for i in range(frames):
            image = np.full((size, size, 3), 30 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return bytearray(path.read_bytes())


def write_mpeg2_claiming(path: Path, side: int) -> Path:
    """A 300-byte MPEG-2 stream of 32x32 frames whose sequence headers claim ``side`` x ``side``: the size is
    in the header (12 bits in the sequence header, 2 more in its extension)."""
    data = encode_tiny(path, "mpeg2video", "yuv420p", fmt="mpeg2video")
    low, high = side & 0xFFF, side >> 12
    at = data.find(b"\x00\x00\x01\xb3")
    while at >= 0:  # sequence header: width (12 bits), height (12 bits)
        data[at + 4 : at + 7] = bytes([low >> 4, (low & 0xF) << 4 | low >> 8, low & 0xFF])
        at = data.find(b"\x00\x00\x01\xb3", at + 4)
    at = data.find(b"\x00\x00\x01\xb5")
    while at >= 0:  # sequence extension (id 1): ... horizontal (2 bits) and vertical (2 bits) size extension
        if data[at + 4] >> 4 == 1:
            bits = int.from_bytes(data[at + 4 : at + 8], "big") & ~(0xF << 13)
            data[at + 4 : at + 8] = (bits | high << 15 | high << 13).to_bytes(4, "big")
        at = data.find(b"\x00\x00\x01\xb5", at + 4)
    path.write_bytes(data)
    return path


def write_png_claiming(path: Path, side: int) -> Path:
    """A 6 kB AVI of 32x32 PNG frames whose PNG headers claim ``side`` x ``side`` (the container says 32x32):
    FFmpeg's stream probe, run while the file opens, decodes a frame at the claimed size."""
    data = encode_tiny(path, "png", "rgb24")
    at = data.find(b"IHDR")
    while at >= 0:
        data[at + 4 : at + 12] = struct.pack(">II", side, side)
        at = data.find(b"IHDR", at + 4)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    root = tmp_path_factory.mktemp("huge")
    return {
        "header": write_mpeg2_claiming(root / "claims 12000 in its header.m2v", CLAIMED),
        "frame": write_png_claiming(root / "claims 12000 in its frames.avi", CLAIMED),
    }


def runnable(decoder: str) -> str:
    try:
        check_decoder(decoder)
    except DecoderUnavailableError as err:
        pytest.skip(str(err))
    return decoder


# -- the pixel budget ------------------------------------------------------------------------------------------
def test_the_default_budget_takes_8k_and_refuses_a_30000_square_frame():
    check_frame_size("8k.mp4", 7680, 4320, DEFAULT_MAX_PIXELS)  # 8K UHD
    check_frame_size("dci.mp4", 8192, 4320, DEFAULT_MAX_PIXELS)  # DCI 8K
    with pytest.raises(VideoDecodeError, match="frame size 30000x30000 is above the pixel budget"):
        check_frame_size("huge.mp4", 30000, 30000, DEFAULT_MAX_PIXELS)
    check_frame_size("huge.mp4", 30000, 30000, 0)  # 0: no budget


@pytest.mark.parametrize("decoder", ["pyav", "decord", "torchcodec"])
@pytest.mark.parametrize("kind", ["header", "frame"])
def test_a_small_file_claiming_a_huge_frame_is_refused_before_decoding(huge, kind, decoder):
    with pytest.raises(VideoDecodeError) as refused:
        load_frames(huge[kind], 2, decoder=runnable(decoder))
    assert refused.value.reason == BUDGET and refused.value.path == str(huge[kind])


def test_refusing_a_huge_frame_keeps_memory_low(huge):
    # Measured before the budget: the PNG one grew the process by 1659 MB (FFmpeg's stream probe, and then the
    # failure's diagnosis, decoded the claimed 12000 x 12000 frame); with the budget, by 21 MB.
    code = textwrap.dedent(f"""
        import resource, vidclip
        from vidclip.video import VideoDecodeError, load_frames
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in {[str(huge["frame"]), str(huge["header"])]!r}:
            try:
                load_frames(path, 4)
            except VideoDecodeError as err:
                print(err.reason)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    *reasons, grown_mb = out.strip().splitlines()
    assert reasons == [BUDGET, BUDGET] and int(grown_mb) < 100


def test_the_budget_is_a_setting_from_the_library_to_the_command_line(index_video, tmp_path):
    video = index_video(6, 48, 64)
    assert load_frames(video, 2, max_pixels=48 * 64).frames.shape == (2, 48, 64, 3)
    with pytest.raises(VideoDecodeError, match="frame size 64x48 is above the pixel budget of 3071 pixels"):
        load_frames(video, 2, max_pixels=48 * 64 - 1)
    out = tmp_path / "out"
    args = [video, "--out", out, "--model", "tiny", "--num-frames", "2", "--num-workers", "0"]
    assert extract.main([*map(str, args), "--max-pixels", "3071"]) == 0
    assert pd.read_parquet(out)["error"].tolist() == [
        "frame size 64x48 is above the pixel budget of 3071 pixels (--max-pixels)"
    ]
    assert load_config([], ["data.max_pixels=3071"]).data.max_pixels == 3071
    assert load_config().data.max_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(ConfigError, match="data.max_pixels"):
        load_config([], ["data.max_pixels=-1"])


@pytest.fixture
def registry():
    saved = dict(DECODERS), dict(base._AUTO_PREFERENCE)
    yield
    DECODERS.clear()
    DECODERS.update(saved[0])
    base._AUTO_PREFERENCE.clear()
    base._AUTO_PREFERENCE.update(saved[1])


def test_a_registered_decoder_without_a_budget_of_its_own_is_guarded_by_a_header_read(huge, registry):
    opened = []

    @register_decoder("no_budget")
    class NoBudget:  # a user's backend: knows nothing of budgets, would decode whatever it is given
        def __init__(self, path):
            opened.append(path)
            raise AssertionError("opened a file above the budget")

    with pytest.raises(VideoDecodeError, match="above the pixel budget"):
        load_frames(huge["header"], 2, decoder="no_budget")
    assert opened == []


# -- resizing: memory does not grow with the aspect ratio -----------------------------------------------------
def test_resizing_a_thin_frame_stays_small():
    # 12 frames of 2 x 4096 at S=224: resizing first made 224 x 458752 a frame. Measured: the transform grew the
    # process by 3565 MB before (cropping first), 32 MB after.
    code = textwrap.dedent("""
        import resource, torch
        from vidclip.video.transforms import VideoTransform
        frames = torch.randint(0, 256, (12, 2, 4096, 3), dtype=torch.uint8)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = VideoTransform(size=224, mean=(0.5,) * 3, std=(0.5,) * 3)(frames)
        assert out.shape == (12, 3, 224, 224), out.shape
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) < 200


# -- a video that kills its worker ------------------------------------------------------------------------------
KILLERS = ("kills 1.mp4", "kills 2.mp4")


@pytest.fixture
def kill_workers(monkeypatch):
    """Decoding a video named in KILLERS kills the DataLoader worker decoding it with SIGKILL, as the kernel's
    OOM killer does (never the main process: there it raises)."""
    from vidclip.data import dataset

    real = dataset.load_frames

    def load(path, *args, **kwargs):
        if os.path.basename(path) in KILLERS:
            assert get_worker_info() is not None, "would kill the test process"
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dataset, "load_frames", load)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Seven videos; the second and the sixth kill their worker (a window of in-flight batches holds both)."""
    root = tmp_path_factory.mktemp("killers")
    names = ["a.mp4", KILLERS[0], "c.mp4", "d.mp4", "e.mp4", KILLERS[1], "g.mp4"]
    for i, name in enumerate(names):
        write_video(root / name, index_frames(6 + i, 32, 32), fps=25)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = vidclip.create_model("tiny", num_frames=4)
    return str(vidclip.save_checkpoint(model, tmp_path_factory.mktemp("run")).parent)


def without_killers(videos: Path, tmp_path: Path) -> Path:
    alone = tmp_path / "alone"
    alone.mkdir()
    for path in videos.iterdir():
        if path.name not in KILLERS:
            (alone / path.name).symlink_to(path)
    return alone


ENCODING = ["--num-workers", "2", "--batch-size", "2", "--checkpoint"]


@pytest.mark.slow
def test_extract_gives_a_video_that_kills_its_worker_its_own_row(videos, checkpoint, kill_workers, tmp_path):
    out = tmp_path / "out"
    assert extract.main([str(videos), "--out", str(out), *ENCODING, checkpoint]) == 0
    table = pd.read_parquet(out).set_index("video")
    dead = table[table["error"].notna()]
    assert sorted(Path(v).name for v in dead.index) == sorted(KILLERS) and set(dead["error"]) == {DEATH}
    alone = tmp_path / "out_alone"
    assert (
        extract.main([str(without_killers(videos, tmp_path)), "--out", str(alone), *ENCODING, checkpoint])
        == 0
    )
    reference = pd.read_parquet(alone)
    assert len(table) == len(reference) + len(KILLERS) and reference["error"].isna().all()
    for _, row in reference.iterrows():
        ours = table.loc[str(videos / Path(row["video"]).name)]
        np.testing.assert_allclose(ours["embedding"], row["embedding"], atol=1e-6)


@pytest.mark.slow
def test_zeroshot_gives_a_video_that_kills_its_worker_its_own_row(videos, checkpoint, kill_workers, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red square\ngreen circle\nblue\n")

    def run(folder: Path, output: Path) -> pd.DataFrame:
        argv = [str(folder), "--labels-file", str(labels), "--output", str(output), *ENCODING, checkpoint]
        assert zeroshot.main(argv) == 0
        table = pd.read_csv(output)
        return table.set_index(table["video"].map(lambda v: Path(v).name))

    ours = run(videos, tmp_path / "preds.csv")
    reference = run(without_killers(videos, tmp_path), tmp_path / "alone.csv")
    assert ours.loc[list(KILLERS), "error"].tolist() == [DEATH, DEATH]
    assert ours.loc[list(KILLERS), "label"].isna().all()
    kept = ours.drop(index=list(KILLERS))
    assert kept["error"].isna().all() and kept["label"].tolist() == reference["label"].tolist()
    np.testing.assert_allclose(kept["score"], reference["score"], atol=1e-5)


@pytest.mark.slow
def test_a_worker_death_is_never_raised_in_the_code_that_consumes_the_batches(
    videos, checkpoint, kill_workers
):
    # torch's SIGCHLD handler would raise "DataLoader worker ... is killed by signal" in the main thread at
    # whatever line it is on: here the consumer's sleep, in extract the writing of a part.
    from vidclip.inference import iter_encoded

    model = vidclip.load_checkpoint(checkpoint)
    paths = [str(path) for path in sorted(videos.iterdir())]
    errors, count = [], 0
    for batch in iter_encoded(model, paths, num_workers=2, batch_size=1):
        time.sleep(1.0)  # busy when the workers die: they decode ahead
        errors += batch.errors
        count += len(batch.index)
    assert count == len(paths) and sorted(Path(p).name for p, _ in errors) == sorted(KILLERS)


class OomScore(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read())


@pytest.mark.skipif(
    not os.path.exists("/proc/self/oom_score_adj"), reason="needs Linux (/proc/self/oom_score_adj)"
)
def test_workers_offer_themselves_to_the_oom_killer_before_the_main_process():
    from vidclip.data.dataset import init_worker

    main = OomScore()[0]
    loader = torch.utils.data.DataLoader(
        OomScore(), batch_size=None, num_workers=1, worker_init_fn=init_worker
    )
    assert list(loader) == [1000] and OomScore()[0] == main  # the main process keeps its own


@pytest.mark.parametrize("other_worker_alive", [False, True])
@pytest.mark.parametrize(
    "error",
    [ConnectionResetError(104, "Connection reset by peer"), RuntimeError("received 0 items of ancdata")],
)
def test_a_batch_lost_in_transit_from_a_dead_worker_counts_as_its_death(
    monkeypatch, other_worker_alive, error
):
    """A worker can queue a batch and die before handing over its tensors (they travel by file descriptor):
    receiving it then fails with ConnectionResetError. That is the worker's death, not the run's end; with every
    worker alive the same error is a real one and propagates."""
    from vidclip.inference import surviving

    class Worker:
        def __init__(self, alive: bool) -> None:
            self.alive, self.exitcode = alive, None if alive else -9

        def is_alive(self) -> bool:
            return self.alive

    class Iterator:
        def __init__(self) -> None:
            self._workers, self.calls = [Worker(True), Worker(other_worker_alive)], 0

        def __next__(self):
            self.calls += 1
            if self.calls == 1:
                return {"index": [0, 1]}
            raise error

    class Loader:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __iter__(self):
            return Iterator()

    real_wait = surviving._wait_for_dead_worker
    monkeypatch.setattr(surviving, "DataLoader", Loader)
    monkeypatch.setattr(surviving, "_wait_for_dead_worker", lambda iterator: real_wait(iterator, seconds=0.0))
    batches, death = surviving.SurvivingBatches(dataset=None, batch_size=2, workers=2), surviving._Death()
    if other_worker_alive:
        with pytest.raises(type(error)):
            list(batches._run(range(4), death))
    else:
        assert list(batches._run(range(4), death)) == [{"index": [0, 1]}]
        assert death.exitcode == -9
