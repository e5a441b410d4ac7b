"""The benchmarks under ``tools/`` run and print their ratio lines, on the tiny model with the smallest sizes.

Each benchmark starts fresh Python processes (so a measurement is not coloured by the one before), which costs
seconds per process on a 2-core machine: the command-line runs are marked slow. The in-process test checks the
train-step benchmark's premise: its two sides do the same work (same first-step loss).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import bench_memory  # noqa: E402
import bench_moments  # noqa: E402
import bench_train_step  # noqa: E402
from backends import torchcodec_missing  # noqa: E402

# One thread per process: these runs are tiny, and several processes share the machine's cores.
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
RATIO = r"(\d+\.\d+)x"


def run_tool(name: str, *args: str, timeout: int = 300) -> str:
    """Run ``tools/NAME`` with ``args``; its stdout, after checking it exited 0."""
    done = subprocess.run(
        [sys.executable, str(TOOLS / name), *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def test_train_step_sides_do_the_same_work(fresh_accelerate_state, tmp_path):
    """vidclip's train_step and the reference loop see the same weights and batch: same first-step loss, and
    both train (the second step's loss differs from the first)."""
    args = bench_train_step.parse_args(
        ["--model", "tiny", "--device", "cpu", "--batch-size", "4", "--num-frames", "2"]
    )
    ours, _ = bench_train_step.build_vidclip_step(args, str(tmp_path))
    reference, _ = bench_train_step.build_reference_step(args, autocast=False)
    first = [ours(), reference()]
    assert first[0] == pytest.approx(first[1], abs=1e-5)
    assert ours() != pytest.approx(first[0], abs=1e-6)
    assert reference() != pytest.approx(first[1], abs=1e-6)


@pytest.mark.parametrize(("precision", "fused"), [("fp32", True), ("bf16", True), ("fp16", None)])
def test_the_trainers_adamw_is_fused_except_under_fp16(precision, fused):
    """What the benchmark found: the trainer's AdamW is fused (its step is 6x faster on a CPU); not with fp16,
    where Accelerate must see the GradScaler skip a step."""
    import vidclip
    from vidclip.config import TrainConfig
    from vidclip.optim import create_optimizer

    model = vidclip.create_model("tiny", num_frames=2)
    optimizer = create_optimizer(model, TrainConfig(precision=precision))
    assert optimizer.defaults["fused"] is fused


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--config", "nope.yaml"], "--config nope.yaml"),
    ],
)
def test_train_step_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench_train_step.parse_args(["--device", "cpu", *argv])
    assert message in capsys.readouterr().err


def test_memory_refuses_a_factor_below_two(capsys):
    with pytest.raises(SystemExit):
        bench_memory.parse_args(["--factor", "1"])
    assert "--factor must be at least 2" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_train_step_prints_its_ratio_and_equal_first_losses():
    out = run_tool(
        "bench_train_step.py",
        *["--model", "tiny", "--device", "cpu", "--batch-size", "2", "--num-frames", "2"],
        *["--steps", "1", "--warmup", "1", "--threads", "1"],
    )
    assert re.search(rf"vidclip / reference = {RATIO}", out), out
    assert re.search(rf"vidclip / reference, CPU time = {RATIO}", out), out
    losses = {
        row.split("|")[1].strip(): row.split("|")[-2].strip()
        for row in out.splitlines()
        if row.startswith("| ")
    }
    assert losses["reference"] == losses["vidclip"], out


@pytest.mark.slow
def test_bench_memory_prints_both_commands_at_both_sizes_and_extract_stays_flat(tmp_path):
    out = run_tool(
        "bench_memory.py",
        *"--videos 3 --factor 2 --num-frames 2 --video-frames 4 --batch-size 2 --num-workers 0".split(),
        *["--allocators", "fixed", "--cache", str(tmp_path)],
    )
    extract = re.search(rf"fixed malloc: extract: peak 6 / 3 videos = {RATIO}", out)
    assert extract and float(extract.group(1)) < 1.1, out
    assert re.search(rf"eval: peak 6 / 3 videos = {RATIO}.*holding the decoded frames would add", out), out
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 6


@pytest.mark.slow
def test_bench_similarity_prints_its_row():
    out = run_tool(
        "bench_similarity.py", *"--texts 40 --videos 30 --frames 3 --dim 8 --chunks 16 --device cpu".split()
    )
    assert re.search(r"^\| 16 \| \d+\.\d+ \| -?\d+ MiB \| -?\d+\.\d+ \|$", out, re.MULTILINE), out


@pytest.mark.slow
def test_bench_decode_prints_its_ratios(tmp_path):
    out = run_tool(
        "bench_decode.py",
        *["--seconds", "2", "--height", "64", "--num-frames", "4", "--repeats", "1", "--gops", "30"],
        *["--cache", str(tmp_path), "--dense-total", "60", "--dense-frames", "20"],
    )
    assert re.search(rf"\| 30 \| .* \| {RATIO} \| {RATIO} \|", out), out
    assert re.search(rf"\| 20 \| [0-9]+ ms \| [0-9]+ ms \| [0-9]+ ms \| {RATIO} \|", out), out


@pytest.mark.slow
def test_bench_extract_prints_each_decoder_against_model_bound(tmp_path):
    decoders = ["pyav", "torchcodec"] if torchcodec_missing() is None else ["pyav"]
    out = run_tool(
        "bench_extract.py",
        *"--model tiny --videos 4 --seconds 1 --height 64 --num-frames 4 --batch-size 2 --num-workers 0".split(),
        *["--decoders", *decoders, "--cache", str(tmp_path)],
    )
    assert re.search(r"model-bound \(pre-decoded tensors\)\s+\d+\.\d+ videos/s", out), out
    for decoder in decoders:
        assert re.search(rf"decoder {decoder}\s+\d+\.\d+ videos/s\s+= \d+% of model-bound", out), out


def test_bench_moments_long_videos_show_each_event_exactly_when_its_truth_says(tmp_path):
    """The benchmark's premise: its ground truth is right. A frame shows the event's colour inside the event's
    time range and only grey noise outside it."""
    import numpy as np

    import vidclip
    from vidclip.synthetic.demo_data import COLOURS

    args = bench_moments.parse_args(
        "--videos 1 --seconds 20 20 --event-seconds 4 6 --size 32 --seed 3".split()
    )
    events = bench_moments.make_long_videos(tmp_path, args)
    frames = vidclip.load_video(tmp_path / events[0].video, 160, "uniform").numpy().astype(float)  # 20 s x 8
    assert len(frames) == 160
    for event in events:
        colour = np.array(COLOURS[event.colour], dtype=float)
        near = (np.abs(frames - colour).max(axis=-1) < 40).sum(axis=(1, 2))  # pixels of the colour, per frame
        inside = np.arange(160) / bench_moments.FPS
        shown = (inside >= event.start) & (inside < event.end)
        assert (near[shown] > 20).all() and (near[~shown & ~_any_other(events, event, inside)] == 0).all()


def _any_other(events, event, times):
    import numpy as np

    mask = np.zeros(len(times), dtype=bool)
    for other in events:
        if other is not event:
            mask |= (times >= other.start) & (times < other.end)
    return mask


@pytest.mark.slow
def test_bench_moments_prints_both_answers_and_their_ratio(tmp_path):
    out = run_tool(
        "bench_moments.py",
        *"--videos 2 --seconds 20 24 --event-seconds 4 8 --steps 4 --num-frames 4 --num-workers 0".split(),
        *["--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "moments.json")],
    )
    for method in ("moments", "best window"):
        assert re.search(rf"^\| {method} \| \d+% \| \d\.\d\d \| \d+% \|$", out, re.MULTILINE), out
    assert re.search(r"moments / best window: IoU >= 0.5 (\d+\.\d+x|inf)", out), out
    result = json.loads((tmp_path / "moments.json").read_text())
    assert 2 <= len(result["events"]) <= 4  # one or two events per video
    assert all(0 <= e["iou_moment"] <= 1 and 0 <= e["iou_window"] <= 1 for e in result["events"])
    assert sum(q["events"] for q in result["queries"]) == len(result["events"])


@pytest.mark.slow
def test_bench_index_video_prints_frames_per_second_against_model_bound(tmp_path):
    out = run_tool(
        "bench_index_video.py",
        *"--model tiny --seconds 6 --height 64 --num-frames 4 --segment 2 --num-workers 0 --device cpu".split(),
        *["--cache", str(tmp_path), "--json", str(tmp_path / "index.json")],
    )
    assert re.search(r"model-bound \(transformed frames in memory\)\s+\d+\.\d frames/s", out), out
    assert re.search(r"end to end\s+\d+\.\d frames/s\s+= \d+% of model-bound", out), out
    result = json.loads((tmp_path / "index.json").read_text())
    # 6 s, windows of 2 s every 1 s on a grid of 0.5 s: every grid point once, 12 frames for 5 windows
    assert (result["windows"], result["frames_encoded"]) == (5, 12)


@pytest.mark.slow
def test_bench_index_prints_each_kind_against_flat_and_the_goal(tmp_path):
    out = run_tool("bench_index.py", "--quick", "--json", str(tmp_path / "rows.json"))
    for kind in (r"HNSW32,Flat", r"IVF\d+,PQ\d+x\d+"):
        assert re.search(
            rf"^clustered 5000: {kind} vs Flat: p50 speedup = {RATIO}.* recall@10 (0\.9\d\d|1\.000)$",
            out,
            re.M,
        ), out
    assert re.search(r"^\| uniform \(worst case\) \| 2000 \| Flat \(auto\) \|", out, re.M), out
    assert re.search(r"^goal at 5000 clustered vectors: .*: met \(Flat", out, re.M), out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {row["index"].split(",")[0][:3] for row in rows} == {"Fla", "HNS", "IVF"}


@pytest.mark.slow
def test_bench_loader_prints_the_three_sources_and_shards_equal_files(tmp_path):
    out = run_tool(
        "bench_loader.py",
        *"--model tiny --videos 4 --seconds 1 --height 144 --num-frames 4 --batch-size 2 --epochs 1 --repeats 1".split(),
        *["--shards", "2", "4", "--cache", str(tmp_path)],
    )
    for source in ("original", "prepared", "shards:2", "shards:4"):
        assert re.search(rf"\| {source} \| [0-9.]+ \| [0-9]+ MiB \| 0 \|", out), out
    assert re.search(rf"prepared / original: {RATIO}", out) and re.search(rf"shards / prepared: {RATIO}", out)
    assert "evaluation from shards == from files: True" in out
    assert re.search(rf"from its bytes in memory \({RATIO}\)", out), out
