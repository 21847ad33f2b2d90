#!/usr/bin/env bash
# One-command GPU check (issue 15): the tests marked `gpu` on CUDA, then the speed
# benchmarks in their quick modes (with --device cuda where a benchmark has that option),
# in under 5 minutes on one GPU. Everything goes to a log (default
# benchmarks/results/gpu_check-<date>.log; GPU_CHECK_LOG=PATH to choose).
# Exit status: 0 all passed, 1 a test or benchmark failed, 3 no CUDA device here.
#
#   benchmarks/gpu_check.sh            # from the repository root
#   PYTHON=python3 benchmarks/gpu_check.sh
set -u -o pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
LOG="${GPU_CHECK_LOG:-benchmarks/results/gpu_check-$(date -u +%Y%m%d-%H%M%S).log}"
mkdir -p "$(dirname "$LOG")"
BUDGET_S="${GPU_CHECK_BUDGET_S:-300}"  # the whole check; each step gets what is left
START=$(date +%s)

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

say "# certrl gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
if ! "$PYTHON" - >>"$LOG" 2>&1 <<'EOF'
import sys
import torch
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}")
if not torch.cuda.is_available():
    sys.exit(1)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB")
EOF
then
    say "gpu_check: FAILED: no CUDA device is available here (torch.cuda.is_available() is"
    say "False); run this on a machine with an NVIDIA GPU and a CUDA build of torch. Log: $LOG"
    exit 3
fi
tail -n +2 "$LOG" | sed -n '1,4p'

status=0
run_step() {  # name, command...
    local name="$1"; shift
    local t; t=$(left)
    if [ "$t" -le 5 ]; then
        say "== $name: SKIPPED (the ${BUDGET_S}s budget is spent)"; status=1; return
    fi
    say "== $name: $* (limit ${t}s)"
    local t0; t0=$(date +%s)
    timeout "$t" "$@" >>"$LOG" 2>&1
    local rc=$?
    if [ "$rc" -eq 124 ]; then
        say "== $name: TIMED OUT at the ${BUDGET_S}s budget (GPU_CHECK_BUDGET_S to raise it)"
    else
        say "== $name: exit $rc after $(( $(date +%s) - t0 ))s"
    fi
    [ "$rc" -eq 0 ] || status=1
}

device_flag() {  # --device cuda when the benchmark has the option
    if "$PYTHON" "$1" --help 2>/dev/null | grep -q -- "--device"; then
        echo "--device cuda"
    else
        say "   ($1 has no --device option: it measures the CPU path)" >&2
    fi
}

run_step "gpu tests" "$PYTHON" -m pytest -q -p no:xdist -m gpu -rs tests/test_gpu.py
# shellcheck disable=SC2046
run_step "bounds_speed mlp" "$PYTHON" benchmarks/bounds_speed.py --repeats 2 --only mlp \
    $(device_flag benchmarks/bounds_speed.py)
# shellcheck disable=SC2046
run_step "bounds_speed cnn" "$PYTHON" benchmarks/bounds_speed.py --repeats 2 --only cnn \
    $(device_flag benchmarks/bounds_speed.py)
# shellcheck disable=SC2046
run_step "certify_speed" "$PYTHON" benchmarks/certify_speed.py --quick \
    $(device_flag benchmarks/certify_speed.py)
# shellcheck disable=SC2046
run_step "train_speed" "$PYTHON" benchmarks/train_speed.py --quick \
    $(device_flag benchmarks/train_speed.py)

if [ "$status" -eq 0 ]; then
    say "gpu_check: PASSED in $(( $(date +%s) - START ))s. Log: $LOG"
else
    say "gpu_check: FAILED (see the exit codes above) in $(( $(date +%s) - START ))s. Log: $LOG"
fi
exit "$status"
