#!/usr/bin/env bash
# The speed issue's GPU checks (goal 4) as one prepared command for a lent GPU machine: the
# `device` tool's `run`, from the repository root, within one call of 10 minutes:
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".gpudata"], timeout_s=590)
#
# 1. the GPU test tier (tests/test_gpu.py: every module on CUDA in float32 and bf16-mixed, the
#    training step as a CUDA graph replayed without host syncs to the eager steps' parameters,
#    exact resume), at most 5 minutes;
#    (on an H200, 2026-12-04: 47 passed in 54 s);
# 2. bench/gpu_steps.py (steps/s eager and replayed from a CUDA graph), at most 4 minutes (2.4 there).
# Logs and the benchmark's page come back from $OUT; copy the page to docs/BENCHMARKS_GPU.md.
#
# That machine's python3 has torch, lightning, torchmetrics, torchvision, tensorboard and pytest,
# not jsonargparse, which the config tests need; and ../shared/data does not travel. Before the
# call, here:
#   printf '/.whl/\n/.gpudata/\n' >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: -d .whl jsonargparse docstring-parser typeshed-client
#   mkdir -p .gpudata && cp -r ../shared/data/binarized_mnist .gpudata/
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
[ -d .gpudata ] && export EIM_DATA_DIR="$PWD/.gpudata"
nvidia-smi -L 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_bench_gpu_steps.py 2>&1 | tee "$OUT/test_gpu.log"
echo "pytest rc=$?" | tee -a "$OUT/test_gpu.log"
timeout 240 python3 bench/gpu_steps.py --steps 400 --warmup 50 --rounds 3 --output "$OUT/BENCHMARKS_GPU.md" 2>&1 \
    | tee "$OUT/gpu_steps.log"
echo "gpu_steps rc=$?" | tee -a "$OUT/gpu_steps.log"
