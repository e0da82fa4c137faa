#!/usr/bin/env bash
# The prepared check for a session with a GPU (benchmarks/README.md, "On a GPU"): (a) the device and versions,
# (b) the tests that run on CUDA (PLOT_HF_TEST_DEVICE=cuda, plus the CUDA-only fp16 tests), (c) the step-cost
# benchmark on the GPU. Each part is bounded by a timeout (defaults: 150 s + 270 s; a few minutes expected on an
# H200); the benchmark runs even if a test fails, and the exit codes are recorded. Output: $OUT/ if set, else
# ./gpu_check_out/ (env.txt, tests.txt, step_cost_cuda.txt, summary.txt). Python wheels missing on the machine
# (clarabel; datasets, dill, multiprocess for the tests' helpers) are installed from .whl/ when it is there.
# Knobs: PYTHON (default python3), GPU_CHECK_TEST_TIMEOUT, GPU_CHECK_BENCH_TIMEOUT (seconds), GPU_CHECK_BENCH_ARGS
# (extra benchmark arguments, e.g. "--skip fidelity" or "--classes 100").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEST=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$DEST"
PY=${PYTHON:-python3}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-150}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT:-270}
read -r -a BENCH_EXTRA <<<"${GPU_CHECK_BENCH_ARGS:-}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
        .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
fi
has() { "$PY" -c "import $1" >/dev/null 2>&1; }

# (a) the device and the versions
{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi -L || echo "nvidia-smi -L failed"
    "$PY" - <<'EOF' || echo "the version probe failed"
import importlib
import sys

import torch

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"cuda:0 {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}")
for name in ("numpy", "scipy", "timm", "transformers", "accelerate", "clarabel", "datasets", "hypothesis", "xdist"):
    try:
        print(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as err:  # report and go on
        print(f"{name} MISSING: {type(err).__name__}: {err}")
EOF
} 2>&1 | tee "$DEST/env.txt"

# (b) the tests on CUDA: the files that honour PLOT_HF_TEST_DEVICE, and the fp16 + GradScaler tests (CUDA only).
# tests/helpers.py imports datasets; test_solver_accuracy needs clarabel: files whose imports are missing are left
# out (and listed), rather than failing the collection. test_solvers (the slowest, ~1 minute on 2 CPU cores) last.
files=()
missing=()
for f in test_mixed_precision test_step test_epo_lp test_solver_accuracy test_moo_core test_models test_losses \
    test_solvers; do
    needs=()
    case $f in
        test_mixed_precision | test_step) needs=(datasets) ;;
        test_solver_accuracy) needs=(datasets clarabel) ;;
        test_solvers) needs=(hypothesis) ;;
    esac
    ok=1
    for m in "${needs[@]}"; do has "$m" || { ok=0; missing+=("tests/$f.py (no $m)"); }; done
    if [ "$ok" = 1 ]; then files+=("tests/$f.py"); fi
done
workers=()
if has xdist; then workers=(-n 4); fi
tests_rc=0
{
    echo "# PLOT_HF_TEST_DEVICE=cuda pytest ${workers[*]} ${files[*]} (timeout ${TEST_TIMEOUT}s)"
    if [ "${#missing[@]}" -gt 0 ]; then echo "# left out, imports missing: ${missing[*]}"; fi
    PLOT_HF_TEST_DEVICE=cuda timeout -k 10 "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider --maxfail=10 \
        "${workers[@]}" "${files[@]}"
} 2>&1 | tee "$DEST/tests.txt" || tests_rc=$?

# (c) the benchmark on the GPU (the solver table needs Clarabel for its reference objectives)
skip=()
if ! has clarabel; then skip=(--skip solvers); fi
bench_rc=0
{
    echo "# step_cost.py --device cuda --reps 3 --pretrain 100 ${skip[*]} ${BENCH_EXTRA[*]} (timeout ${BENCH_TIMEOUT}s)"
    timeout -k 10 "$BENCH_TIMEOUT" "$PY" benchmarks/step_cost.py --device cuda --reps 3 --pretrain 100 "${skip[@]}" \
        "${BENCH_EXTRA[@]}"
} 2>&1 | tee "$DEST/step_cost_cuda.txt" || bench_rc=$?

{
    echo "tests exit code: $tests_rc (124: timed out)"
    echo "benchmark exit code: $bench_rc (124: timed out)"
    if [ "${#skip[@]}" -gt 0 ]; then echo "benchmark: solver table skipped (no clarabel)"; fi
    echo "benchmark last line: $(tail -n 1 "$DEST/step_cost_cuda.txt")"
} | tee "$DEST/summary.txt"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
