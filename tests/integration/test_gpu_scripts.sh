#!/usr/bin/env bash
# The GPU scripts on a machine without a usable GPU: bench/run_gpu.sh (make
# bench-gpu) and bench/gpu_check.sh (make gpu-check) say why they measured
# nothing and exit 0, so a CPU box's `make bench-gpu` is not an error; a bad
# phase name is an error before any GPU is looked for. With a GPU present the
# scripts would run for real, which is not what this test is for: it skips.
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${LR_BUILD:-build}
pass=0 fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
if ! "$BUILD/lora-worker" probe | grep -q '^no usable GPU'; then
    echo "skip gpu_scripts: this machine has a usable GPU (the scripts would measure for real)"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
fi
out=$(LR_BUILD=$BUILD bash bench/run_gpu.sh 2>&1); st=$?
[ $st = 0 ] && grep -q '^bench-gpu: skipped: no usable GPU: ' <<<"$out" && ok run_gpu_skips || bad "run_gpu_skips: exit $st: $out"
dir=$(mktemp -d /tmp/gpucheck.XXXXXX)
trap 'rm -rf "$dir"' EXIT
out=$(LR_BUILD=$BUILD LR_GPU_OUT=$dir bash bench/gpu_check.sh 2>&1); st=$?
[ $st = 0 ] && grep -q '^gpu-check: skipped: no usable GPU: ' <<<"$out" && ok gpu_check_skips || bad "gpu_check_skips: exit $st: $out"
out=$(LR_BUILD=$BUILD LR_GPU_OUT=$dir bash bench/gpu_check.sh tests benchh 2>&1); st=$?
[ $st = 2 ] && grep -q "unknown phase 'benchh'" <<<"$out" && ok gpu_check_bad_phase || bad "gpu_check_bad_phase: exit $st: $out"
echo "$pass passed, $fail failed, 0 skipped"
[ $fail = 0 ]
