#!/usr/bin/env bash
# Every check that needs a GPU, in one call, for the README's GPU figures (issue: performance).
#
#   bash tools/gpu_checks.sh [OUT_DIR]
#
# Runs the GPU-marked tests (NVDEC frames vs the CPU's, nvdec extraction vs pyav, transforms on the GPU), then
# the benchmarks whose GPU numbers the README lacks: decode (CPU decoders vs nvdec), extraction (bf16, pyav vs
# nvdec end to end against model-bound, and torch.compile), and the bf16 training step. Each writes its output
# to OUT_DIR (default: ./gpu-checks) as well as to the terminal.
#
# Needs vidclip's dependencies and, for nvdec, torchcodec and FFmpeg 4-8 (4-9 from torchcodec 0.16) shared libraries. On a machine with
# no network, carry wheels (pip download ... -d .whl) and the FFmpeg .deb packages (apt-get download
# libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8 and their
# library dependencies), unpack those with `dpkg -x PKG.deb /tmp/ffmpeg` and export
# LD_LIBRARY_PATH=/tmp/ffmpeg/usr/lib/x86_64-linux-gnu before running this script.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-checks}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

python -c "import torch; assert torch.cuda.is_available(), 'no GPU visible'; print(torch.cuda.get_device_name())" \
    || exit 1
python -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$out/tests.txt"
python tools/bench_decode.py 2>&1 | tee "$out/bench_decode.txt"
python tools/bench_extract.py --videos 64 --batch-size 32 --num-workers 8 --precision bf16 --sweep 8 16 32 64 \
    --compile 2>&1 \
    | tee "$out/bench_extract.txt"
python tools/bench_train_step.py --precision bf16 2>&1 | tee "$out/bench_train_step.txt"
