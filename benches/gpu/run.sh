#!/usr/bin/env bash
# The GPU run of issue 10, for the device tool (see benches/gpu/README.md):
#   1. the kernel tests on the GPU, bf16 included;
#   2. device ceilings (copy bandwidth, bf16 matmul) and kernel timings beside torch;
#   3. transformers' generate on <= 16 requests (the reference, same model shape);
#   4. rsllm: single-stream decode and offline throughput (1000 x 512 in / 256 out),
#      Llama-3-8B shape, dummy bf16 weights on the device.
# Needs the abi3 wheel in dist/ (make wheel) and, where the machine lacks them, pure
# Python dependency wheels in .whl/ (gguf). Writes JSON under $OUT (benches/results/gpu
# when unset). Every stage has its own time limit so the others still report.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-benches/results/gpu}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
SITE=/tmp/rsllm-site

stage() { echo "=== $1 ($(date +%T))"; }

stage install
wheel=$(ls dist/rsllm-*abi3*.whl 2>/dev/null | head -1)
if [ -z "$wheel" ]; then
    echo "no abi3 wheel in dist/: run 'make wheel' here and carry dist"
    exit 1
fi
extra=$(ls .whl/*.whl 2>/dev/null || true)
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$wheel" $extra || exit 1
export PYTHONPATH="$SITE:benches/gpu"
$PY -c "import rsllm, rsllm.kernels as k; print('rsllm', rsllm.__version__, 'kernels available:', k.available())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

stage "kernel tests (bf16 on the GPU)"
xdist=""
$PY -c "import xdist" 2>/dev/null && xdist="-n 8"
timeout 120 $PY -m pytest tests/test_kernels_attention.py tests/test_kernels_layers.py \
    tests/test_kernels_compile.py -q -p no:cacheprovider $xdist \
    --junitxml="$OUT/kernel_tests.xml"

stage "device ceilings"
timeout 60 $PY benches/gpu/peaks.py --out "$OUT/peaks.json"

stage "kernel timings beside torch"
timeout 60 $PY benches/gpu/kernel_bench.py --out "$OUT/kernel_bench.json"

stage "transformers generate (reference)"
timeout 90 $PY benches/gpu/hf_generate.py --out "$OUT/hf.json" --num-prompts 16

stage "rsllm engine: single stream, then offline throughput"
timeout 200 $PY benches/gpu/engine.py --out "$OUT/engine.json" --num-prompts 1000 \
    --throughput-budget-s 90

stage summary
$PY benches/gpu/summary.py "$OUT"
