#!/usr/bin/env bash
# One-call GPU check of issues 8 and 18 on a bare H100/H200 machine (PyTorch + Triton, no network, nothing installed).
#
#   bash benchmarks/device_check.sh                 # from anywhere; runs from the source tree (PYTHONPATH=src)
#   OUT=/some/dir bash benchmarks/device_check.sh   # logs and JSON results there (else a temporary folder)
#   PLAN_ONLY=1 bash benchmarks/device_check.sh     # print the plan and exit
#   RUN_WITHOUT_CUDA=1 LIMIT_CAP=8 bash benchmarks/device_check.sh   # the GPU run's machinery on a CPU, every
#                                                   # step capped at 8 s (timeouts, partial JSON, the table)
#
# Certain to finish: every step runs under `timeout --kill-after=5 LIMIT`, the step limits plus the kill graces
# add up to at most 450 s (checked below; the script refuses to start otherwise), and a step never gets more than
# what is left of that budget. Every step writes to $OUT as it goes: its output is appended to steps.log line by
# line, the Python benchmarks rewrite their JSON after every row, and summary.txt is rewritten after every step.
# The table comes last. Files under $OUT (at most 8, as the device tool returns): summary.txt, steps.log,
# bench_anatomy.json, bench_linear.json, bench_train_step.json, bench_kernels.json.
#
# Steps, in order (issue 18):
#   1. versions: GPU, driver, torch, CUDA, Triton, cuSPARSELt runtime version and wheel, SparseLinear's probe
#   2. anatomy probe (benchmarks/bench_anatomy.py, ~30 s): layout bit-compare against torch._cslt_compress plus
#      product checks, output contiguity, host vs device time per sparse call (synchronised, pipelined, CUDA
#      graph), re-pack two-pass vs bitmask apply, _cslt_sparse_mm_search. A wrong layout (exit 3) skips 4-6.
#   3. SparseLinear / accelerate_ GPU tests (pytest -m gpu, tests/unit)
#   4. bench_linear on 4 shapes
#   5. bench_train_step --all, 3 warm-up + 12 timed steps per mode
#   6. bench_kernels at 8192^2 and the GPT-2-medium set, GPU methods only
#   7. pytest -m gpu tests/kernels: the full-size GPU cases only (the small ones run under the interpreter in CI)
# Without CUDA it rehearses: prints the plan, checks that every Python step parses its arguments (--dry-run) and
# that the pytest selections collect, and exits 0 (seconds).
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR="${TMPDIR:-/tmp}/nmsparse-numba-cache"
PY="${PYTHON:-python3}"

versions() {
    echo "device_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
        --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    "$PY" - <<'EOF' 2>&1
import importlib.metadata as md
import sys

import torch

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}")
cs = getattr(torch.backends, "cusparselt", None)
print(f"cusparselt runtime: {cs.version() if cs is not None and cs.is_available() else 'not available'}")
wheels = sorted(f"{d.metadata['Name']} {d.version}" for d in md.distributions()
                if "cusparselt" in (d.metadata["Name"] or "").lower())
print(f"cusparselt wheel: {', '.join(wheels) or 'none installed'}")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as exc:
    print(f"triton: not importable ({type(exc).__name__})")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}, sm{''.join(map(str, torch.cuda.get_device_capability(0)))}")
    from nmsparse.nn.linear import direct_cslt_reason, sparse_unavailable_reason
    for dt in (torch.bfloat16, torch.float16):
        r = sparse_unavailable_reason("cuda", dt, in_features=4096, out_features=16384)
        print(f"SparseLinear sparse path, {dt}: {'available' if r is None else r}")
        if r is None:
            d = direct_cslt_reason("cuda", dt)
            print(f"SparseLinear route, {dt}: {'direct torch._cslt_sparse_mm' if d is None else 'class: ' + d}")
EOF
}

if [ "${1:-}" = "--versions" ]; then
    versions
    exit $?
fi

RES="${OUT:-$(mktemp -d -t nmsparse-device-check.XXXXXX)}"
mkdir -p "$RES"
SUMMARY="$RES/summary.txt"
LOG="$RES/steps.log"
: >"$LOG"
GRACE=5
BUDGET=450
T_START=$(date +%s)
ROWS=()
HEADER=""

# name | limit seconds | command (run by bash -c from the repository root; $RES is the results folder)
STEPS=(
    "versions|20|bash benchmarks/device_check.sh --versions"
    "anatomy|50|$PY benchmarks/bench_anatomy.py --out \"\$RES\""
    "sparse-linear-tests|45|$PY -m pytest -v -rs -p no:cacheprovider -m gpu tests/unit/test_sparse_linear.py tests/unit/test_sparse_linear_direct.py tests/unit/test_accelerate.py"
    "bench_linear|45|$PY benchmarks/bench_linear.py --out \"\$RES\" --repeats 20 --warmup 5 --shapes 'mlp.fc1 d4096' 'attn.proj d4096' 'mlp.fc1 d2048' 'attn.proj d2048'"
    "bench_train_step|95|$PY benchmarks/bench_train_step.py --out \"\$RES\" --all --warmup 3 --steps 12 --refresh-every 12"
    "bench_kernels|60|$PY benchmarks/bench_kernels.py --out \"\$RES\" --sizes 8192x8192 gpt2-medium --gpu-only --repeats 10 --budget 1.5"
    "kernel-tests|60|$PY -m pytest -v -rs -p no:cacheprovider -m gpu tests/kernels"
)
SPEED_STEPS=" bench_linear bench_train_step bench_kernels "


row() {  # name status seconds note
    ROWS+=("$(printf '%-20s %-9s %5s  %s' "$1" "$2" "$3" "$4")")
    write_summary
}

write_summary() {
    {
        [ -n "$HEADER" ] && printf '%s\n' "$HEADER"
        echo "device_check summary ($(($(date +%s) - T_START)) s so far of a ${BUDGET} s budget; logs and JSON in $RES)"
        printf '%-20s %-9s %5s  %s\n' step status secs note
        [ "${#ROWS[@]}" -gt 0 ] && printf '%s\n' "${ROWS[@]}"
    } >"$SUMMARY"
}

# ------------------------------------------------------------------------------------------------ plan
total=0
plan="device_check plan (each step: timeout --kill-after=${GRACE} LIMIT; budget ${BUDGET} s incl. kill graces):"
i=0
for spec in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$spec"
    i=$((i + 1))
    total=$((total + limit + GRACE))
    plan+=$'\n'"$(printf '  %d. %-20s %4s s  %s' "$i" "$name" "$limit" "$cmd")"
done
plan+=$'\n'"  total: ${total} s of step limits and kill graces (budget ${BUDGET} s); speed steps 4-6 are skipped if the anatomy probe finds the layout wrong"
echo "$plan" | tee -a "$LOG"
if [ "$total" -gt "$BUDGET" ]; then
    echo "device_check: the step limits add up to ${total} s > ${BUDGET} s; fix STEPS" | tee -a "$LOG"
    exit 2
fi
[ "${PLAN_ONLY:-0}" = 1 ] && exit 0

# ------------------------------------------------------------------------------------------------ CPU rehearsal
if [ "${RUN_WITHOUT_CUDA:-0}" != 1 ] && \
    ! timeout 30 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    HEADER="no CUDA: rehearsal only (every Python step parses its arguments, every pytest selection collects)"
    echo "$HEADER" | tee -a "$LOG"
    fails=0
    for spec in "${STEPS[@]}"; do
        IFS='|' read -r name limit cmd <<<"$spec"
        case $cmd in
            "bash benchmarks/device_check.sh --versions") check="$cmd" ;;
            *"-m pytest"*) check="$cmd --collect-only" ;;
            *) check="$cmd --dry-run" ;;
        esac
        t0=$(date +%s)
        if RES="$RES" timeout --kill-after="$GRACE" 60 bash -c "$check" >>"$LOG" 2>&1; then
            row "$name" rehearsed $(($(date +%s) - t0)) "limit ${limit} s: $(tail -n 1 "$LOG" | cut -c1-90)"
        else
            row "$name" FAIL $(($(date +%s) - t0)) "$(tail -n 1 "$LOG" | cut -c1-100)"
            fails=$((fails + 1))
        fi
    done
    echo
    cat "$SUMMARY"
    [ "$fails" -eq 0 ] && exit 0 || exit 1
fi

# ------------------------------------------------------------------------------------------------ GPU run
skip_speed=""
for spec in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$spec"
    left=$((BUDGET - ($(date +%s) - T_START) - GRACE))
    if [ -n "$skip_speed" ] && [[ $SPEED_STEPS == *" $name "* ]]; then
        row "$name" skipped 0 "$skip_speed"
        continue
    fi
    if [ "$left" -lt 5 ]; then
        row "$name" skipped 0 "no time left in the ${BUDGET} s budget"
        continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    [ -n "${LIMIT_CAP:-}" ] && [ "$limit" -gt "$LIMIT_CAP" ] && limit=$LIMIT_CAP
    echo "=== $name (limit ${limit} s): $cmd" | tee -a "$LOG"
    t0=$(date +%s)
    n0=$(wc -l <"$LOG")
    RES="$RES" timeout --kill-after="$GRACE" "$limit" bash -c "$cmd" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    secs=$(($(date +%s) - t0))
    case $rc in
        0) status=ok ;;
        124 | 137) status=TIMEOUT ;;
        *) status="FAIL($rc)" ;;
    esac
    out=$(tail -n +"$((n0 + 1))" "$LOG")
    case $name in
        versions)
            HEADER=$(grep -E '^(gpu|python|cusparselt|triton|device)' <<<"$out" | tr '\n' ';' | cut -c1-500)
            note=$(grep -E '^SparseLinear route, torch.bfloat16' <<<"$out" | cut -c1-120) ;;
        anatomy)
            note=$(grep -E "^verdict:" <<<"$out" | tail -n 1 | cut -c1-240)
            if [ "$rc" -eq 3 ]; then
                status="WRONG"
                skip_speed="anatomy: the fused packer's layout is wrong; speed figures would time wrong products"
            fi ;;
        *tests)
            note=$(grep -E '(passed|failed|error|skipped|no tests ran)' <<<"$out" | tail -n 1 | tr -d '=' \
                | sed 's/^ *//' | cut -c1-120)
            [ -z "$note" ] && note="$(grep -c ' PASSED' <<<"$out") passed, $(grep -cE ' (FAILED|ERROR)' <<<"$out") failed before the limit" ;;
        bench_linear) note=$(grep -E '^(target|path)' <<<"$out" | tr '\n' ' ' | cut -c1-160) ;;
        bench_train_step) note=$(grep -E '^(target|calculator)' <<<"$out" | tr '\n' ' ' | cut -c1-160) ;;
        bench_kernels) note="$(grep -cE '^ *8192x8192 ' <<<"$out") rows at 8192^2; $(grep -E '8192x8192 exact24-triton' <<<"$out" | tail -n 1 | awk '{print "exact 2:4-T " $4 " ms"}')" ;;
        *) note=$(tail -n 1 <<<"$out" | cut -c1-120) ;;
    esac
    echo "=== $name: $status after ${secs} s" | tee -a "$LOG"
    row "$name" "$status" "$secs" "$note"
done

# ------------------------------------------------------------------------------------------------ table
echo
cat "$SUMMARY"
case "${ROWS[*]}" in
    *FAIL* | *TIMEOUT* | *WRONG*) exit 1 ;;
esac
exit 0
