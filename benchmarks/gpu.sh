#!/usr/bin/env bash
# miras on a CUDA machine, in under 8 minutes on one H100: the device tests, then the GPU benchmark.
#
#   benchmarks/gpu.sh                      # from the repository root (or anywhere: it cd's there)
#   WHEELS=/path/to/wheels benchmarks/gpu.sh
#
# 1. (WHEELS set) the peers installed from local wheels only (pip --no-index --find-links "$WHEELS"), each on
#    its own, with the installed torch pinned: a wheel that wants another torch is refused, never installed.
#    Without WHEELS nothing is installed: peers that are not importable show as "not installed".
# 2. MIRAS_TEST_DEVICES=cuda pytest tests/test_devices.py: every op family against its recurrence, a memory layer,
#    a language model and packed documents on the GPU (at most TEST_TIMEOUT s, default 120).
# 3. benchmarks/bench_gpu.py: forward and forward + backward tokens/s at T = 2048 and 8192, float32 and bfloat16,
#    ours against fla's Triton kernels and titans-pytorch (no cell starts after BENCH_BUDGET s, default 240; the
#    whole step is killed at BENCH_TIMEOUT s, default 300, its results so far already written).
# Output in OUT (default runs/gpu): tests.log, bench.log, bench_gpu.md, bench_gpu.json, pip.log.
# Exit status: 0 when the tests passed and the benchmark finished; else the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
BENCH_BUDGET=${BENCH_BUDGET:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
start=$(date +%s)

"$PY" - <<'EOF' || { echo "gpu.sh: torch sees no GPU: nothing to do here (on a CPU: bench_gpu.py --device cpu --tiny)"; exit 2; }
import sys, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
mkdir -p "$OUT"

if [ -n "${WHEELS:-}" ]; then
    torch_version=$("$PY" -c "import torch; print(torch.__version__)")
    echo "torch==$torch_version" > "$OUT/constraints.txt"
    for peer in flash-linear-attention titans-pytorch; do
        if "$PY" -m pip install --no-index --find-links "$WHEELS" --constraint "$OUT/constraints.txt" "$peer" \
                >> "$OUT/pip.log" 2>&1; then
            echo "installed $peer from $WHEELS"
        else
            echo "could not install $peer from $WHEELS (see $OUT/pip.log); it will show as not installed"
        fi
    done
    "$PY" -c "import torch, sys; sys.exit(torch.__version__ != '$torch_version')" \
        || { echo "gpu.sh: torch changed during the peer installs"; exit 3; }
fi

echo "== tests/test_devices.py on cuda (at most ${TEST_TIMEOUT} s)"
MIRAS_TEST_DEVICES=cuda timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py \
    2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}

echo "== benchmarks/bench_gpu.py (cells start within ${BENCH_BUDGET} s; killed at ${BENCH_TIMEOUT} s)"
timeout "$BENCH_TIMEOUT" "$PY" benchmarks/bench_gpu.py --device cuda --budget-s "$BENCH_BUDGET" --out-dir "$OUT" \
    2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}

echo "== done in $(( $(date +%s) - start )) s: tests exit $tests, benchmark exit $bench; $OUT/bench_gpu.md"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
