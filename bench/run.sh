#!/usr/bin/env bash
# make bench: LoRA training throughput of the CPU engine next to PyTorch doing
# the same step on the same shapes in the same run, plus the OpenBLAS sgemm
# roofline measured here and now (these machines are noisy: only ratios
# measured together mean anything).
#
# Shapes (LoRA r=16 on every linear layer, f32, random tokens):
#   gpt2-124m preset     4 x 256 tokens per step
#   qwen2.5-0.5b preset  1 x 512 tokens per step
# FLOPs per token = 4 x matmul weights (lm_head included: forward + input-
# gradient backward) + 6 x layers x heads x head_dim x (T+1) (causal attention).
# Then the HTTP load test (bench/http_load.sh) unless LR_BENCH_SKIP_HTTP=1.
#
# Environment: LR_BUILD (default build), LR_BENCH_THREADS (2), LR_BENCH_STEPS (3),
# LR_BENCH_MODELS (default build/bench-models), LR_BENCH_SHAPES ("gpt2 qwen").
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LR_BUILD:-build}
W=$B/lora-worker
TH=${LR_BENCH_THREADS:-2}
STEPS=${LR_BENCH_STEPS:-3}
MODELS=${LR_BENCH_MODELS:-$B/bench-models}
SHAPES=${LR_BENCH_SHAPES:-gpt2 qwen}
PY=/usr/bin/python3
mkdir -p "$MODELS"

sg=$("$W" bench --sgemm 2048 --threads "$TH")
sg_gflops=$(echo "$sg" | $PY -c 'import json,sys; print(json.load(sys.stdin)["gflops"])')
echo "OpenBLAS sgemm 2048^3, $TH threads: $sg_gflops GFLOP/s (the roofline)"
echo

printf '%-14s %-8s %12s %12s %8s %10s %9s %10s %10s\n' shape batch "lorad tok/s" "torch tok/s" ratio "GFLOP/s" "% sgemm" "lorad RSS" "torch RSS"
for s in $SHAPES; do
  case $s in
    gpt2) preset=gpt2-124m; arch=gpt2; bs=4; T=256 ;;
    qwen) preset=qwen2.5-0.5b; arch=qwen2; bs=1; T=512 ;;
    *) echo "unknown shape $s"; exit 1 ;;
  esac
  dir=$MODELS/$preset-f32
  [ -f "$dir/model.safetensors" ] || "$W" mkmodel --arch $arch --preset $preset --seed 1 --dtype f32 --out "$dir" >/dev/null
  ours=$("$W" bench --model "$dir" --batch $bs --seq $T --steps "$STEPS" --threads "$TH" --r 16)
  theirs=$($PY bench/torch_lora_step.py --preset $preset --batch $bs --seq $T --threads "$TH" --steps "$STEPS" --r 16)
  $PY - "$ours" "$theirs" "$sg_gflops" "$preset" "${bs}x$T" <<'PY'
import json, sys
o, t, sg = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
print("%-14s %-8s %12.0f %12.0f %7.2fx %10.1f %8.0f%% %8.0f MB %8.0f MB" % (
    sys.argv[4], sys.argv[5], o["tokens_per_s"], t["tokens_per_s"], o["tokens_per_s"] / t["tokens_per_s"],
    o["gflops"], 100 * o["gflops"] / sg, o["peak_rss_mb"], t["peak_rss_mb"]))
PY
done
echo
echo "ratio = lorad tokens/s over PyTorch $($PY -c 'import torch; print(torch.__version__)') tokens/s (same shapes, threads, LoRA r=16 all-linear)"
echo "FLOPs/token = 4 x matmul weights (lm_head included) + 6 x layers x heads x head_dim x (T+1)"
if [ "${LR_BENCH_SKIP_HTTP:-0}" != 1 ] && [ -x bench/http_load.sh ]; then
  echo
  bash bench/http_load.sh
fi
