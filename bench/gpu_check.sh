#!/usr/bin/env bash
# make gpu-check: what this project checks and measures on a GPU, in as few
# runs as a GPU session's call limit allows (each phase well under 10 minutes
# on an H100; run them as separate calls where the limit is tight):
#   tests  build/tests/test_dist (NCCL all-reduce on 2 GPUs; skips on one),
#          build/tests/test_cuda (every op forward and backward against the
#          CPU backend, grads per architecture with f32, bf16 and f16 models,
#          50 AdamW steps against the CPU run, the co-training ops and a
#          packed pass against each adapter alone), then the attention cases once
#          more under compute-sanitizer: racecheck (shared-memory races in the
#          tiled kernels) and memcheck (out-of-bounds accesses)
#   bench  make bench-gpu (tokens/s, GPU peak, MFU, ratio to the PyTorch peer;
#          co-training: 4 small jobs packed vs one after another)
# Without a phase argument it runs both. Every phase appends to
# $LR_GPU_OUT/gpu-check.log (default build/gpu-check) and the figures for
# bench/RESULTS.md, with the date and device, to $LR_GPU_OUT/results.md.
# Without a usable GPU it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD=${LR_BUILD:-build}
OUTDIR=${LR_GPU_OUT:-$BUILD/gpu-check}
LOG=$OUTDIR/gpu-check.log
RES=$OUTDIR/results.md
phases=${*:-tests bench}
for p in $phases; do
    case $p in
    tests | bench) ;;
    *) echo "gpu-check: unknown phase '$p' (tests, bench)" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUTDIR"

[ -x "$BUILD/lora-worker" ] && [ -x "$BUILD/tests/test_cuda" ] && [ -x "$BUILD/tests/test_dist" ] || {
    echo "gpu-check: $BUILD/lora-worker, $BUILD/tests/test_cuda or test_dist not built (run make)" >&2
    exit 2
}
probe=$("$BUILD/lora-worker" probe)
if grep -q '^no usable GPU' <<<"$probe"; then
    echo "gpu-check: skipped: $(grep '^no usable GPU' <<<"$probe")"
    exit 0
fi
device=$(grep -m1 'cuda:0' <<<"$probe" || head -n1 <<<"$probe")
stamp=$(date -u +%Y-%m-%d)
echo "gpu-check: $(date -u +%Y-%m-%dT%H:%MZ), $device" | tee -a "$LOG"

rc=0
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)

run_tests() {
    local t0=$SECONDS out
    out=$("$BUILD/tests/test_cuda" 2>&1)
    local st=$?
    printf '%s\n' "$out" >>"$LOG"
    local summary
    summary=$(tail -n1 <<<"$out")
    echo "gpu-check: test_cuda: $summary ($((SECONDS - t0)) s)"
    [ $st = 0 ] || { rc=1; grep -E '^(FAIL|  )' <<<"$out" | head -20; }
    {
        echo "#### test_cuda, $stamp, $device"
        echo
        echo "$summary"
        echo
        echo '```'
        grep -E '^    ' <<<"$out" # the errors the cases print (grads, attention, loss curves)
        echo '```'
        echo
    } >>"$RES"
    if [ -z "$sanitizer" ]; then
        echo "gpu-check: compute-sanitizer not found: racecheck/memcheck not run" | tee -a "$LOG" "$RES"
        return
    fi
    for tool in racecheck memcheck; do
        t0=$SECONDS
        out=$(timeout 240 "$sanitizer" --tool "$tool" --error-exitcode 3 "$BUILD/tests/test_cuda" op_attention 2>&1)
        st=$?
        printf '%s\n' "$out" >>"$LOG"
        local line
        case $st in
        0) line="compute-sanitizer $tool on the attention cases: clean ($((SECONDS - t0)) s)" ;;
        124) line="compute-sanitizer $tool on the attention cases: did not finish in 240 s" ;;
        *) line="compute-sanitizer $tool on the attention cases: FAILED (exit $st): $(grep -m1 -E 'ERROR|Race|Invalid' <<<"$out")"; rc=1 ;;
        esac
        echo "gpu-check: $line"
        echo "- $line" >>"$RES"
    done
    echo >>"$RES"
    # data-parallel: NCCL sums device memory on 2 GPUs (skips, saying so, on one)
    out=$("$BUILD/tests/test_dist" 2>&1)
    st=$?
    printf '%s\n' "$out" >>"$LOG"
    echo "gpu-check: test_dist: $(tail -n1 <<<"$out")$(grep -m1 '^skip nccl' <<<"$out" | sed 's/^/ -- /')"
    [ $st = 0 ] || { rc=1; grep -E '^FAIL' <<<"$out"; }
    printf -- '- test_dist (NCCL all-reduce): %s\n\n' "$(tail -n1 <<<"$out")" >>"$RES"
}

run_bench() {
    local out t0=$SECONDS
    out=$(bash bench/run_gpu.sh 2>&1)
    local st=$?
    printf '%s\n' "$out" >>"$LOG"
    printf '%s\n' "$out" | sed -n '/^shape /,$p'
    [ $st = 0 ] || { rc=1; tail -n5 <<<"$out"; }
    {
        echo "#### make bench-gpu, $stamp, $device ($((SECONDS - t0)) s)"
        echo
        echo '```'
        sed -n '/^shape /,$p' <<<"$out"
        echo '```'
        echo
    } >>"$RES"
}

for p in $phases; do
    if [ "$p" = tests ]; then run_tests; else run_bench; fi
done
echo "gpu-check: log $LOG, figures for bench/RESULTS.md in $RES"
exit $rc
