#!/usr/bin/env bash
# One-call GPU check of issue 8 on a bare H100/H200 machine (PyTorch + Triton, no network, nothing installed).
#
#   bash benchmarks/device_check.sh            # from anywhere; runs from the source tree (PYTHONPATH=src)
#   OUT=/some/dir bash benchmarks/device_check.sh   # full logs and JSON results there (else a temporary folder)
#
# Steps (each with its own timeout; about 8 minutes at most in all):
#   1. environment: GPU, driver, torch / CUDA / cuSPARSELt / Triton versions, the SparseLinear capability probe
#   2. GPU tests: pytest -m gpu on every test file with a gpu marker, then tests/kernels (Triton vs torch twins)
#   3. benchmarks/bench_kernels.py (helper G1's mask kernels; skipped with a note when the script is absent)
#   4. benchmarks/bench_linear.py   (forward, dX, dW, re-pack: dense vs 2:4-T sparse)
#   5. benchmarks/bench_train_step.py --all (decoder step: dense, masked-dense, sparse, sparse-all)
# A short table comes last. Without CUDA it says "no CUDA", checks that the scripts import and parse their
# arguments, and exits 0. Files written under $OUT: summary.txt, tests.log, bench_*.log and bench_*.json
# (at most 8 files, as the device tool returns).
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR="${TMPDIR:-/tmp}/nmsparse-numba-cache"
PY="${PYTHON:-python3}"
RES="${OUT:-$(mktemp -d -t nmsparse-device-check.XXXXXX)}"
mkdir -p "$RES"
SUMMARY="$RES/summary.txt"
: >"$SUMMARY"
ROWS=()
T_START=$(date +%s)

row() {  # name status seconds note
    ROWS+=("$(printf '%-18s %-8s %6s  %s' "$1" "$2" "$3" "$4")")
}

run_step() {  # name limit_seconds log command...
    local name=$1 limit=$2 log=$3
    shift 3
    local t0 rc status
    t0=$(date +%s)
    echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout --kill-after=15 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=TIMEOUT ;;
        *) status="FAIL($rc)" ;;
    esac
    LAST_STATUS=$status
    LAST_SECONDS=$(($(date +%s) - t0))
    echo "=== $name: $status after ${LAST_SECONDS}s" | tee -a "$log"
}

# ------------------------------------------------------------------------------------------------ 1. environment
{
    echo "device_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
        --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    timeout 40 "$PY" - <<'EOF' 2>&1
import sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}")
cs = getattr(torch.backends, "cusparselt", None)
print(f"cusparselt: {cs.version() if cs is not None and cs.is_available() else 'not available'}")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as exc:
    print(f"triton: not importable ({type(exc).__name__})")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}, sm{''.join(map(str, torch.cuda.get_device_capability(0)))}")
    from nmsparse.nn.linear import sparse_unavailable_reason
    for dt in (torch.bfloat16, torch.float16):
        r = sparse_unavailable_reason("cuda", dt, in_features=4096, out_features=16384)
        print(f"SparseLinear sparse path, {dt}: {'available' if r is None else r}")
EOF
} | tee -a "$SUMMARY"

if ! timeout 30 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA: skipping the GPU tests and the GPU benchmarks; checking that the scripts import and parse" \
        | tee -a "$SUMMARY"
    fails=0
    for script in benchmarks/bench_kernels.py benchmarks/bench_linear.py benchmarks/bench_train_step.py; do
        if [ ! -f "$script" ]; then
            row "$(basename "$script" .py)" absent 0 "script not in this checkout"
            continue
        fi
        t0=$(date +%s)
        if timeout 120 "$PY" "$script" --help >/dev/null 2>"$RES/help.err"; then
            row "$(basename "$script" .py)" ok $(($(date +%s) - t0)) "--help (imports and argument parsing)"
        else
            row "$(basename "$script" .py)" FAIL $(($(date +%s) - t0)) "$(tail -n 1 "$RES/help.err")"
            fails=$((fails + 1))
        fi
    done
    rm -f "$RES/help.err"
    {
        echo
        printf '%-18s %-8s %6s  %s\n' step status secs note
        printf '%s\n' "${ROWS[@]}"
        echo "no CUDA: GPU parts skipped; results in $RES"
    } | tee -a "$SUMMARY"
    [ "$fails" -eq 0 ] && exit 0 || exit 1
fi

# ------------------------------------------------------------------------------------------------ 2. GPU tests
TESTS_LOG="$RES/tests.log"
# tests/kernels runs whole in the next step
mapfile -t GPU_FILES < <(grep -rl --include='test_*.py' 'mark.gpu' tests | grep -v '^tests/kernels/' | sort)
if [ "${#GPU_FILES[@]}" -gt 0 ]; then
    run_step "pytest -m gpu" 110 "$TESTS_LOG" "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu "${GPU_FILES[@]}"
    row "pytest -m gpu" "$LAST_STATUS" "$LAST_SECONDS" "$(grep -E '(passed|failed|error|skipped)' "$TESTS_LOG" | tail -n 1)"
else
    row "pytest -m gpu" absent 0 "no test file has a gpu marker"
fi
if [ -d tests/kernels ]; then
    n0=$(wc -l <"$TESTS_LOG")
    run_step "tests/kernels" 70 "$TESTS_LOG" "$PY" -m pytest -q -rs -p no:cacheprovider tests/kernels
    row "tests/kernels" "$LAST_STATUS" "$LAST_SECONDS" \
        "$(tail -n +"$((n0 + 1))" "$TESTS_LOG" | grep -E '(passed|failed|error|skipped)' | tail -n 1)"
fi

# ------------------------------------------------------------------------------------------------ 3-5. benchmarks
bench() {  # script limit note-grep args...
    local script=$1 limit=$2 pattern=$3
    shift 3
    local name log
    name=$(basename "$script" .py)
    log="$RES/$name.log"
    if [ ! -f "$script" ]; then
        row "$name" absent 0 "script not in this checkout"
        return
    fi
    run_step "$name" "$limit" "$log" "$PY" "$script" --out "$RES" "$@"
    tail -n 30 "$log" | grep -v '^===' 
    row "$name" "$LAST_STATUS" "$LAST_SECONDS" "$(grep -E "$pattern" "$log" | tail -n 1 | cut -c1-110)"
}
bench benchmarks/bench_kernels.py 90 'target|exact|ms' --budget 2
bench benchmarks/bench_linear.py 90 '^target' --repeats 30 --warmup 5
bench benchmarks/bench_train_step.py 100 '^target' --all

# ------------------------------------------------------------------------------------------------ table
{
    echo
    echo "device_check summary ($(($(date +%s) - T_START)) s in all; logs and JSON in $RES)"
    printf '%-18s %-8s %6s  %s\n' step status secs note
    printf '%s\n' "${ROWS[@]}"
} | tee -a "$SUMMARY"
case "${ROWS[*]}" in
    *FAIL* | *TIMEOUT*) exit 1 ;;
esac
exit 0
